"""Compression operators on params pytrees (no training state)."""

from jaxcomp.pruning import schedules
from jaxcomp.pruning.distributions import distribution_mask, erk_densities
from jaxcomp.pruning.masks import (
    apply_mask,
    channel_mask,
    channel_scores,
    check_sparsity,
    keep_count,
    nm_mask,
    topk_mask,
)
from jaxcomp.pruning.one_shot import calibration_batches, one_shot, recalibrate_batch_stats
from jaxcomp.pruning.select import default_where, nm_where, path_str, regex_where, select
from jaxcomp.pruning.stats import sparsity_report

__all__ = [
    "apply_mask",
    "calibration_batches",
    "channel_mask",
    "channel_scores",
    "check_sparsity",
    "default_where",
    "distribution_mask",
    "erk_densities",
    "keep_count",
    "nm_mask",
    "nm_where",
    "one_shot",
    "path_str",
    "recalibrate_batch_stats",
    "regex_where",
    "schedules",
    "select",
    "sparsity_report",
    "topk_mask",
]
