from jaxcomp.optim.compress import lowrank, topk  # noqa: F401  (efcp)
from jaxcomp.optim.ggt import GGTState, ggt  # noqa: F401  (efcp)
from jaxcomp.optim.mfac import MFACState, mfac  # noqa: F401  (efcp)
from jaxcomp.optim.utils import state_nbytes  # noqa: F401  (efcp)
