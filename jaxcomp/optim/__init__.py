"""optax GradientTransformations: CrAM and the EFCP preconditioners."""

from jaxcomp.optim.compress import lowrank, topk  # (efcp)
from jaxcomp.optim.cram import CrAMState, cram
from jaxcomp.optim.ggt import GGTState, ggt, scale_by_ggt  # (efcp)
from jaxcomp.optim.mfac import MFACState, mfac, scale_by_mfac  # (efcp)
from jaxcomp.optim.utils import state_nbytes  # (efcp)

__all__ = [
    "CrAMState",
    "GGTState",
    "MFACState",
    "cram",
    "ggt",
    "lowrank",
    "mfac",
    "scale_by_ggt",
    "scale_by_mfac",
    "state_nbytes",
    "topk",
]
