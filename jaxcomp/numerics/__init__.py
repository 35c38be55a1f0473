"""Numerics: Bernstein-Galerkin BVP solver with fourth-order compact residual correction.

``u'' = F(x, u, u')`` on ``[a, b]`` with Dirichlet/Neumann/Robin conditions (:class:`BVP`), solved
in float64 (x64 is switched on only inside these entry points):

* :func:`bernstein` -- Bernstein basis, derivatives, boundary-adapted basis;
* :func:`galerkin` -- Bernstein-Galerkin weighted residuals (Newton via ``jax.jacfwd``);
* :func:`compact_fd4` -- fourth-order compact finite differences (tridiagonal Newton);
* :func:`residual_correction` -- solve the error equation of an approximation with ``compact_fd4``;
* :func:`solve_bvp` -- Galerkin followed by the correction.
"""

from jaxcomp.numerics.bernstein import BernsteinBasis, ModifiedBasis, bernstein
from jaxcomp.numerics.bvp import CorrectedSolution, residual_correction, solve_bvp
from jaxcomp.numerics.compact_fd import compact_fd4
from jaxcomp.numerics.galerkin import BernsteinSolution, galerkin
from jaxcomp.numerics.problem import BVP

__all__ = [
    "BVP",
    "BernsteinBasis",
    "BernsteinSolution",
    "CorrectedSolution",
    "ModifiedBasis",
    "bernstein",
    "compact_fd4",
    "galerkin",
    "residual_correction",
    "solve_bvp",
]
