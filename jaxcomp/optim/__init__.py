"""optax GradientTransformations: CrAM and the EFCP preconditioners."""

from jaxcomp.optim.compress import lowrank, topk  # (efcp)
from jaxcomp.optim.cram import CrAMState, cram
from jaxcomp.optim.ggt import GGTState, ggt  # (efcp)
from jaxcomp.optim.mfac import MFACState, mfac  # (efcp)
from jaxcomp.optim.utils import state_nbytes  # (efcp)

__all__ = [
    "CrAMState",
    "GGTState",
    "MFACState",
    "cram",
    "ggt",
    "lowrank",
    "mfac",
    "state_nbytes",
    "topk",
]
