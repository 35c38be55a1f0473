"""Bernstein-Galerkin weighted-residual method for ``u'' = F(x, u, u')`` (Robin conditions).

The trial function is ``u_n = theta + sum_j c_j phi_j`` (``bernstein.ModifiedBasis``): it satisfies
both boundary conditions for every ``c``.  Galerkin's condition makes the residual
``R = u_n'' - F(x, u_n, u_n')`` orthogonal to each ``phi_i``; after integrating ``phi_i u_n''`` by
parts this is the weak form

    G_i(c) = [phi_i u_n']_a^b - int_a^b phi_i' u_n' dx - int_a^b phi_i F(x, u_n, u_n') dx = 0,

where the boundary flux ``u_n'(a)`` equals ``(gamma1 - alpha1 u_n(a)) / beta1`` for Robin/Neumann
conditions (and is multiplied by ``phi_i(a) = 0`` for Dirichlet ones).  Integrals use
Gauss-Legendre quadrature.  ``G`` is affine in ``c`` for linear problems (one solve) and is solved
by Newton's method with the Jacobian from ``jax.jacfwd`` otherwise.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.numerics.bernstein import BernsteinBasis, _check_degree, bernstein
from jaxcomp.numerics.problem import BVP, newton, x64


@dataclasses.dataclass(frozen=True, eq=False)
class BernsteinSolution:
    """A degree-``n`` Bernstein expansion ``u(x) = sum_i coefficients[i] B_{i,n}(x)``.

    Callable and vectorised (float64); ``derivative(x, k)`` gives ``u^(k)(x)``.  ``iterations`` is
    the number of Newton steps the solver took (1 for a linear problem).
    """

    basis: BernsteinBasis
    coefficients: jax.Array
    iterations: int = 0

    @x64
    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        return self.derivative(x, 0)

    @x64
    def derivative(self, x: jax.typing.ArrayLike, k: int = 1) -> jax.Array:
        """``k``-th derivative of the expansion at ``x``."""
        if isinstance(x, jax.core.Tracer):
            return self.basis(x, k) @ self.coefficients
        return jnp.asarray(np.asarray(self.basis(x, k)) @ np.asarray(self.coefficients))


def gauss_legendre(num: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on ``[a, b]`` (exact up to polynomial degree 2 num - 1)."""
    t, w = np.polynomial.legendre.leggauss(num)
    return a + 0.5 * (b - a) * (t + 1.0), 0.5 * (b - a) * w


def weak_residual(F, data, c: jax.Array) -> jax.Array:
    """``G_i(c)`` of the weak form (module docstring) by Gauss-Legendre quadrature."""
    xq, wq, M, d, B0, B1, phi, dphi, phi_ends, dB_ends = data
    coef = d + M @ c
    u, du = B0 @ coef, B1 @ coef
    flux = dB_ends @ coef  # u_n'(a), u_n'(b): equal to the Robin data since u_n satisfies the BCs
    boundary = phi_ends[1] * flux[1] - phi_ends[0] * flux[0]
    return boundary - dphi.T @ (wq * du) - phi.T @ (wq * F(xq, u, du))


@functools.partial(jax.jit, static_argnums=0)
def _jacobian(F, data, c):
    return jax.jacfwd(lambda v: weak_residual(F, data, v))(c)


#: Below this normalised smallest singular value the linearised problem counts as singular.
SINGULAR_TOL = 1e-7


def normalized_min_singular_value(
    jac: np.ndarray, basis: BernsteinBasis, M: np.ndarray, a: float, b: float
) -> float:
    """Smallest singular value of the Galerkin Jacobian in the ``H^1`` metric of the trial space.

    With ``S = int phi_i' phi_j' + L^-2 int phi_i phi_j`` (``L = b - a``, ``phi = B M`` the
    modified basis, exact Gauss-Legendre quadrature) and ``S = C C^T``, this is
    ``sigma_min(C^-1 J C^-T)``: invariant under the choice of basis and the basis' conditioning,
    about 1 for ``u'' = u`` and ``|1 - k / lambda_1|`` for ``u'' + k u = 0`` with Dirichlet
    conditions (``lambda_1 = pi^2 / L^2``). A singular linearised operator (pure Neumann
    conditions on ``u'' = f(x)``, resonance ``u'' + (j pi / L)^2 u = 0``) gives rounding level,
    ``1e-13`` to ``1e-17`` at degree >= 8; the classic test problems give 0.8 to 1.
    """
    xq, wq = gauss_legendre(basis.n + 2, a, b)  # exact for the degree-2n integrands
    phi = np.asarray(basis(jnp.asarray(xq), 0)) @ M
    dphi = np.asarray(basis(jnp.asarray(xq), 1)) @ M
    gram = dphi.T @ (wq[:, None] * dphi) + phi.T @ (wq[:, None] * phi) / (b - a) ** 2
    chol = np.linalg.cholesky(gram)
    left = np.linalg.solve(chol, np.asarray(jac))
    return float(np.linalg.svd(np.linalg.solve(chol, left.T).T, compute_uv=False)[-1])


def _check_nonsingular(problem: BVP, data, c: jax.Array, basis, M, degree: int) -> None:
    jac = np.asarray(_jacobian(problem.F, data, c))
    sigma = (
        normalized_min_singular_value(jac, basis, np.asarray(M), problem.a, problem.b)
        if np.all(np.isfinite(jac))
        else float("nan")
    )
    if not sigma >= SINGULAR_TOL:
        nq = len(data[0])
        if nq <= degree:  # too few points: the discrete system itself is rank-deficient
            raise ValueError(
                f"galerkin: quad_points={nq} under-integrates degree {degree} and makes the "
                f"discrete system singular (normalised smallest singular value {sigma:.1e}); use "
                f"quad_points > {degree} (default 2 * degree + 8)"
            )
        raise ValueError(
            f"galerkin: the problem is singular (no unique solution): the linearised operator of "
            f"u'' = F(x, u, u') with left={problem.left}, right={problem.right} on "
            f"[{problem.a}, {problem.b}] has a null space (normalised smallest singular value "
            f"{sigma:.1e} < {SINGULAR_TOL:g} at degree {degree}); e.g. pure Neumann conditions "
            f"on u'' = f(x), or resonance u'' + (k pi / L)^2 u = 0 with Dirichlet conditions"
        )


@functools.partial(jax.jit, static_argnums=0)
def _newton_step(F, data, c):
    g, jac = weak_residual(F, data, c), jax.jacfwd(lambda v: weak_residual(F, data, v))(c)
    dc = jnp.linalg.solve(jac, -g)
    return c + dc, jnp.max(jnp.abs(dc)), jnp.max(jnp.abs(g))


@x64
def galerkin(
    problem: BVP,
    degree: int,
    *,
    quad_points: int | None = None,
    tol: float = 1e-13,
    max_iter: int = 50,
    initial: jax.typing.ArrayLike | None = None,
) -> BernsteinSolution:
    """Bernstein-Galerkin approximation of degree ``degree`` (weak form in the module docstring).

    Args:
      problem: the boundary value problem.
      degree: polynomial degree ``n >= 2`` (``n - 1`` unknowns).
      quad_points: Gauss-Legendre points; default ``2 n + 8``.
      tol: Newton stops when ``|dc|_inf <= tol (1 + |c|_inf)`` or when the weak residual
        ``|G(c)|_inf <= tol * (1 + |G(c_0)|_inf)`` (at degree >= 16 the step stalls at the
        basis' conditioning, about 1e-10, while the residual is at rounding level).
      max_iter: maximum Newton iterations (nonlinear problems).
      initial: optional ``(n - 1,)`` initial coefficients ``c`` (default zeros, i.e. ``u = theta``).

    Raises:
      ValueError: the problem is singular (``normalized_min_singular_value`` of the Jacobian
        below ``SINGULAR_TOL``): pure Neumann ``u'' = f``, resonant ``u'' + pi^2 u = 0``, ...
      RuntimeError: Newton diverged or did not converge in ``max_iter`` steps.

    Returns:
      A :class:`BernsteinSolution`. Polynomial exact solutions of degree ``<= n`` are reproduced
      exactly, because they lie in the trial space and make the residual vanish identically.
    """
    if not isinstance(problem, BVP):
        raise ValueError(f"problem must be a BVP, got {type(problem).__name__}")
    n = _check_degree(degree, minimum=2, what="degree")
    nq = (
        2 * n + 8
        if quad_points is None
        else _check_degree(quad_points, minimum=1, what="quad_points")
    )
    basis = bernstein(n, problem.a, problem.b)
    mod = basis.modified(problem.left, problem.right)
    xq_np, wq_np = gauss_legendre(nq, problem.a, problem.b)
    xq, wq = jnp.asarray(xq_np), jnp.asarray(wq_np)
    M, d = jnp.asarray(mod.M), jnp.asarray(mod.d)
    B0, B1 = basis(xq, 0), basis(xq, 1)
    ends = jnp.asarray([problem.a, problem.b])
    data = (xq, wq, M, d, B0, B1, B0 @ M, B1 @ M, basis(ends, 0) @ M, basis(ends, 1))

    def step(c):
        return _newton_step(problem.F, data, c)

    c0 = jnp.zeros(n - 1) if initial is None else jnp.asarray(initial, jnp.float64)
    if c0.shape != (n - 1,):
        raise ValueError(f"initial must have shape ({n - 1},) for degree {n}, got {c0.shape}")
    if problem.is_linear:  # the Jacobian does not depend on c: check before solving
        _check_nonsingular(problem, data, c0, basis, M, n)
    try:
        c, iterations = newton(
            step, c0, tol=tol, max_iter=max_iter, linear=problem.is_linear, what="galerkin"
        )
    except RuntimeError:
        _check_nonsingular(
            problem, data, c0, basis, M, n
        )  # a clearer error if the problem is singular
        raise
    if not problem.is_linear:
        _check_nonsingular(problem, data, c, basis, M, n)
    return BernsteinSolution(basis, d + M @ c, iterations)
