"""Residual (error-equation) correction of an approximate BVP solution, and ``solve_bvp``.

Given an approximation ``u~`` of ``u'' = F(x, u, u')`` (e.g. the Bernstein-Galerkin solution), the
error ``e = u - u~`` satisfies the *error equation*

    e'' = F(x, u~ + e, u~' + e') - u~''(x),
    alpha1 e(a) + beta1 e'(a) = gamma1 - (alpha1 u~(a) + beta1 u~'(a))       (and likewise at b),

whose boundary data vanish when ``u~`` satisfies the boundary conditions (the Galerkin trial space
does).  Solving it with the fourth-order compact scheme gives ``e_h`` whose error is the scheme's
truncation error *of e* (``~ h^4 e^(6)``) rather than of ``u``: ``u~ + e_h`` is far more accurate
than ``u~`` once the grid resolves ``e``, and more accurate than the compact scheme on ``u`` alone
when ``u~`` also captures the high derivatives of ``u`` (Bernstein degree >= 6 in
``experiments/bvp.py``; for a degree <= 5 ``u~`` and ``F`` free of ``u'`` the two coincide).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.numerics.bernstein import _check_degree
from jaxcomp.numerics.compact_fd import solve_fd4
from jaxcomp.numerics.galerkin import BernsteinSolution, galerkin
from jaxcomp.numerics.problem import BVP, x64


def _derivatives(approx) -> tuple[Callable, Callable, Callable]:
    """``u~, u~', u~''`` as vectorised functions (``approx.derivative`` or autodiff)."""
    if hasattr(approx, "derivative"):
        return approx, (lambda x: approx.derivative(x, 1)), (lambda x: approx.derivative(x, 2))
    if not callable(approx):
        raise ValueError(f"approx must be a callable u(x), got {approx!r}")

    def scalar(s):
        return jnp.reshape(approx(s), ())

    def vectorised(f):
        return lambda x: jax.vmap(f)(jnp.ravel(x)).reshape(jnp.shape(x))

    return approx, vectorised(jax.grad(scalar)), vectorised(jax.grad(jax.grad(scalar)))


def hermite_interpolate(
    grid: jax.Array, values: jax.Array, slopes: jax.Array, x: jax.Array, k: int = 0
) -> jax.Array:
    """Piecewise cubic Hermite interpolant (or its ``k``-th derivative, ``k <= 2``), uniform grid.

    With O(h^4) nodal values and slopes the interpolant is O(h^4) accurate.
    """
    if k not in (0, 1, 2):
        raise ValueError(f"derivative order k must be 0, 1 or 2, got {k}")
    concrete = not isinstance(x, jax.core.Tracer)
    xp = np if concrete else jnp
    grid, values, slopes = (xp.asarray(a) for a in (grid, values, slopes))
    n = grid.shape[0] - 1
    h = (grid[-1] - grid[0]) / n
    i = xp.clip(xp.floor((x - grid[0]) / h).astype(np.int32), 0, n - 1)
    s = (x - grid[i]) / h
    u0, u1, m0, m1 = values[i], values[i + 1], h * slopes[i], h * slopes[i + 1]
    if k == 0:
        w = (2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2)
    elif k == 1:
        w = (6 * s**2 - 6 * s, 3 * s**2 - 4 * s + 1, -6 * s**2 + 6 * s, 3 * s**2 - 2 * s)
    else:
        w = (12 * s - 6, 6 * s - 4, -12 * s + 6, 6 * s - 2)
    out = (w[0] * u0 + w[1] * m0 + w[2] * u1 + w[3] * m1) / h**k
    return jnp.asarray(out)


@dataclasses.dataclass(frozen=True, eq=False)
class CorrectedSolution:
    """``u(x) = u~(x) + e_h(x)``: approximation plus the compact-FD solution of its error equation.

    ``grid``/``values`` hold the corrected solution at the FD nodes (where it is most accurate);
    between nodes ``e_h`` is the cubic Hermite interpolant of the nodal errors and slopes.
    ``errors`` (when the problem's exact solution is known) maps ``"approx"`` / ``"corrected"`` to
    the max error at the grid nodes.
    """

    approx: Callable[[jax.Array], jax.Array]
    grid: jax.Array
    correction: jax.Array
    correction_slopes: jax.Array
    iterations: int
    errors: dict[str, float] | None = None

    @property
    def values(self) -> jax.Array:
        with jax.enable_x64(True):
            return self.approx(self.grid) + self.correction

    @x64
    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        return self.derivative(x, 0)

    @x64
    def derivative(self, x: jax.typing.ArrayLike, k: int = 1) -> jax.Array:
        """``k``-th derivative (``k <= 2``) of the corrected solution."""
        if not isinstance(x, jax.core.Tracer):
            x = np.asarray(x, np.float64)
        e = hermite_interpolate(self.grid, self.correction, self.correction_slopes, x, k)
        return _derivatives(self.approx)[k](x) + e


def _max_error(u: Callable, exact: Callable, x: jax.Array) -> float:
    return float(jnp.max(jnp.abs(u(x) - exact(x))))


@x64
def residual_correction(
    problem: BVP,
    approx: Callable[[jax.Array], jax.Array],
    n: int,
    *,
    tol: float = 1e-13,
    max_iter: int = 50,
) -> CorrectedSolution:
    """Correct ``approx`` by solving its error equation (module docstring) with ``compact_fd4``.

    Args:
      problem: the boundary value problem ``approx`` approximates.
      approx: vectorised, JAX-traceable ``u~(x)``; if it has ``derivative(x, k)`` (as
        :class:`~jaxcomp.numerics.galerkin.BernsteinSolution` does) that is used for ``u~', u~''``,
        otherwise they come from ``jax.grad``.
      n: number of grid intervals for the compact scheme (``>= 4``).
      tol, max_iter: Newton controls for nonlinear ``F``.

    Returns:
      A :class:`CorrectedSolution` ``u~ + e_h``.
    """
    if not isinstance(problem, BVP):
        raise ValueError(f"problem must be a BVP, got {type(problem).__name__}")
    u0, u1, u2 = _derivatives(approx)
    n = _check_degree(n, minimum=4, what="number of intervals n")
    grid = jnp.asarray(np.linspace(problem.a, problem.b, n + 1))
    shifts = (u0(grid), u1(grid), u2(grid))  # e'' = F(x, u~ + e, u~' + e') - u~'' on the grid
    (a1, b1, g1), (a2, b2, g2) = problem.left, problem.right
    left = (a1, b1, g1 - float(a1 * shifts[0][0] + b1 * shifts[1][0]))
    right = (a2, b2, g2 - float(a2 * shifts[0][-1] + b2 * shifts[1][-1]))
    error_problem = dataclasses.replace(problem, left=left, right=right, exact=None)
    x, e, de, iterations = solve_fd4(error_problem, n, shifts=shifts, tol=tol, max_iter=max_iter)
    errors = None
    if problem.exact is not None:
        errors = {
            "approx": _max_error(u0, problem.exact, x),
            "corrected": float(jnp.max(jnp.abs(u0(x) + e - problem.exact(x)))),
        }
    return CorrectedSolution(approx, x, e, de, iterations, errors)


@x64
def solve_bvp(
    problem: BVP,
    degree: int,
    n: int,
    *,
    quad_points: int | None = None,
    tol: float = 1e-13,
    max_iter: int = 50,
) -> CorrectedSolution:
    """Bernstein-Galerkin of degree ``degree``, then residual correction on ``n`` FD intervals.

    When ``problem.exact`` is set, ``result.errors`` reports the max error of the Galerkin solution
    (``"galerkin"``) and of the corrected one (``"corrected"``) at the grid nodes.
    """
    approx: BernsteinSolution = galerkin(
        problem, degree, quad_points=quad_points, tol=tol, max_iter=max_iter
    )
    out = residual_correction(problem, approx, n, tol=tol, max_iter=max_iter)
    if out.errors is not None:
        errors = {"galerkin": out.errors["approx"], "corrected": out.errors["corrected"]}
        out = dataclasses.replace(out, errors=errors)
    return out
