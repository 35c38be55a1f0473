"""Knowledge distillation: logit/hidden-state KD (LoSparse), PKT, layer-wise curricula, pruned-auxiliary targets (InDistill) and
exact retrieval evaluation."""

from jaxcomp.distill.curriculum import (
    Curriculum,
    Stage,
    fit_curriculum,
    indistill_curriculum,
    single_curriculum,
    stage_loss,
)
from jaxcomp.distill.indistill import PrunedBlocks, layerwise_targets, select_channels
from jaxcomp.distill.kd import distillation_loss, hidden_state_mse, logit_distillation
from jaxcomp.distill.pkt import feature_mse, pkt_loss
from jaxcomp.distill.retrieval import retrieval_metrics

__all__ = [
    "Curriculum",
    "PrunedBlocks",
    "Stage",
    "distillation_loss",
    "feature_mse",
    "hidden_state_mse",
    "fit_curriculum",
    "indistill_curriculum",
    "layerwise_targets",
    "logit_distillation",
    "pkt_loss",
    "retrieval_metrics",
    "select_channels",
    "single_curriculum",
    "stage_loss",
]
