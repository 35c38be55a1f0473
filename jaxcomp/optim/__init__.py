"""optax GradientTransformations: CrAM and the EFCP preconditioners."""

from jaxcomp.optim.cram import CrAMState, cram

__all__ = ["CrAMState", "cram"]
