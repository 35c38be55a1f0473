"""optax GradientTransformations: CrAM, sparse fine-tuning, gradual magnitude and movement
pruning and the EFCP preconditioners."""

from jaxcomp.optim.compress import lowrank, topk  # (efcp)
from jaxcomp.optim.cram import CrAMState, cram
from jaxcomp.optim.ggt import GGTState, ggt, scale_by_ggt  # (efcp)
from jaxcomp.optim.mfac import MFACState, mfac, scale_by_mfac  # (efcp)
from jaxcomp.optim.sparse import (
    GMPState,
    MovementState,
    SparseFinetuneState,
    gmp,
    gmp_sparsity,
    movement_pruning,
    sparse_finetune,
)
from jaxcomp.optim.utils import state_nbytes  # (efcp)

__all__ = [
    "CrAMState",
    "GGTState",
    "GMPState",
    "MFACState",
    "MovementState",
    "SparseFinetuneState",
    "cram",
    "ggt",
    "gmp",
    "gmp_sparsity",
    "lowrank",
    "mfac",
    "movement_pruning",
    "scale_by_ggt",
    "scale_by_mfac",
    "sparse_finetune",
    "state_nbytes",
    "topk",
]
