"""Bernstein polynomials on ``[a, b]``, their derivatives, and the boundary-adapted basis.

``B_{i,n}(x) = C(n, i) t^i (1 - t)^(n - i)`` with ``t = (x - a) / (b - a)``, ``i = 0..n``.  They are
non-negative, sum to one, and only ``B_0`` (``B_n``) is nonzero at ``a`` (``b``) while only
``B_0, B_1`` (``B_{n-1}, B_n``) have a nonzero derivative there.  The derivative of a Bernstein
expansion is again one of degree ``n - 1``:
``d/dx sum_i c_i B_{i,n} = n / (b - a) sum_i (c_{i+1} - c_i) B_{i,n-1}``.

For the Galerkin method (Bhatti & Bracken-style weighted residuals) the trial function is written as
``u = theta + sum_j c_j phi_j``: the ``phi_j`` span the degree-``n`` polynomials that satisfy the
*homogeneous* boundary conditions, and ``theta`` carries the boundary data.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.numerics.problem import _check_bc, check_interval, x64


def _check_degree(n, *, minimum: int, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"{what} must be an integer, got {n!r}")
    if n < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {n}")
    return int(n)


def _difference_matrix(m: int, length: float) -> np.ndarray:
    """``(m, m + 1)`` matrix: degree-``m`` Bernstein coefficients -> those of the derivative."""
    d = np.zeros((m, m + 1))
    idx = np.arange(m)
    d[idx, idx] = -m / length
    d[idx, idx + 1] = m / length
    return d


@dataclasses.dataclass(frozen=True)
class BernsteinBasis:
    """The ``n + 1`` Bernstein polynomials of degree ``n`` on ``[a, b]`` (see module docstring)."""

    n: int
    a: float = 0.0
    b: float = 1.0

    def derivative_matrix(self, k: int) -> np.ndarray:
        """``E_k`` of shape ``(n - k + 1, n + 1)``: ``B_n^(k)(x) = B_{n-k}(x) @ E_k``."""
        length = self.b - self.a
        e = np.eye(self.n + 1)
        for m in range(self.n, self.n - k, -1):
            e = _difference_matrix(m, length) @ e
        return e

    @x64
    def __call__(self, x: jax.typing.ArrayLike, k: int = 0) -> jax.Array:
        """Values of the ``k``-th derivatives ``B_{i,n}^(k)(x)``, shape ``x.shape + (n + 1,)``."""
        k = _check_degree(k, minimum=0, what="derivative order k")
        if isinstance(x, jax.core.Tracer):
            return _evaluate_jit(self, k, x.astype(jnp.float64))
        # Concrete input: NumPy float64 (no compilation per shape), returned as a JAX array.
        return jnp.asarray(_evaluate(self, k, np.asarray(x, np.float64), np))

    def modified(
        self, left: tuple[float, float, float], right: tuple[float, float, float]
    ) -> ModifiedBasis:
        """The basis adapted to ``alpha1 u(a) + beta1 u'(a) = gamma1`` and the right condition.

        Returns ``phi_j`` (``n - 1`` functions satisfying the homogeneous conditions) and ``theta``
        (satisfying the inhomogeneous ones), both as Bernstein coefficient arrays.  For ``n >= 3``:
        ``phi = [c0 B_0 + c1 B_1, B_2, ..., B_{n-2}, d_{n-1} B_{n-1} + d_n B_n]`` with
        ``c0 = beta1 n/L``, ``c1 = beta1 n/L - alpha1`` (so ``alpha1 phi(a) + beta1 phi'(a) = 0``)
        and the mirror image on the right; interior ``B_i`` vanish with their slope at the ends.
        For ``n = 2`` the single ``phi`` spans the null space of the two boundary functionals.
        ``theta`` is the minimum-norm Bernstein coefficient vector meeting the boundary data.
        """
        return _modified(self, left, right)


def _evaluate(basis: BernsteinBasis, k: int, x, xp=jnp):
    """``B_{i,n}^(k)(x)`` with array module ``xp`` (``jax.numpy`` or ``numpy``)."""
    m = basis.n - k
    if m < 0:
        return xp.zeros(x.shape + (basis.n + 1,), np.float64)
    t = ((x - basis.a) / (basis.b - basis.a))[..., None]
    # de Casteljau-style recursion B_{i,j} = (1 - t) B_{i,j-1} + t B_{i-1,j-1}: no powers, so it is
    # exact at the end points and safe to differentiate.
    vals = xp.ones(x.shape + (1,), np.float64)
    zero = xp.zeros(x.shape + (1,), np.float64)
    for _ in range(m):
        vals = xp.concatenate([vals, zero], -1) * (1.0 - t) + xp.concatenate([zero, vals], -1) * t
    if k == 0:
        return vals
    return vals @ xp.asarray(basis.derivative_matrix(k))


_evaluate_jit = jax.jit(_evaluate, static_argnums=(0, 1))


def _modified(basis: BernsteinBasis, left, right) -> ModifiedBasis:
    n = _check_degree(basis.n, minimum=2, what="degree")
    a1, b1, g1 = _check_bc("left", left)
    a2, b2, g2 = _check_bc("right", right)
    k = n / (basis.b - basis.a)
    # Boundary functionals on Bernstein coefficients: only c_0, c_1 (c_{n-1}, c_n) enter.
    bc = np.zeros((2, n + 1))
    bc[0, 0], bc[0, 1] = a1 - b1 * k, b1 * k
    bc[1, n - 1], bc[1, n] = -b2 * k, a2 + b2 * k
    if np.linalg.matrix_rank(bc) < 2:
        raise ValueError(
            f"boundary conditions left={left}, right={right} are degenerate for degree {n} on "
            f"[{basis.a}, {basis.b}]; use a higher degree"
        )
    if n == 2:
        m = np.cross(bc[0], bc[1])[:, None]
    else:
        m = np.zeros((n + 1, n - 1))
        m[0, 0], m[1, 0] = b1 * k, b1 * k - a1
        m[2 : n - 1, 1 : n - 2] = np.eye(n - 3)
        m[n - 1, n - 2], m[n, n - 2] = b2 * k + a2, b2 * k
    m = m / np.max(np.abs(m), axis=0, keepdims=True)
    theta = bc.T @ np.linalg.solve(bc @ bc.T, np.array([g1, g2]))
    return ModifiedBasis(basis, m, theta, bc)


@dataclasses.dataclass(frozen=True, eq=False)
class ModifiedBasis:
    """``phi_j = B @ M[:, j]`` (homogeneous conditions) and ``theta = B @ d`` (boundary data).

    ``bc`` is the ``(2, n + 1)`` matrix of the boundary functionals on Bernstein coefficients, so
    ``bc @ M = 0`` and ``bc @ d = (gamma1, gamma2)``.
    """

    basis: BernsteinBasis
    M: np.ndarray
    d: np.ndarray
    bc: np.ndarray

    @x64
    def phi(self, x: jax.typing.ArrayLike, k: int = 0) -> jax.Array:
        """``k``-th derivatives of the ``n - 1`` modified basis functions (last axis)."""
        return self.basis(x, k) @ jnp.asarray(self.M)

    @x64
    def theta(self, x: jax.typing.ArrayLike, k: int = 0) -> jax.Array:
        """``k``-th derivative of the function carrying the boundary data."""
        return self.basis(x, k) @ jnp.asarray(self.d)


def bernstein(n: int, a: float = 0.0, b: float = 1.0) -> BernsteinBasis:
    """Bernstein basis of degree ``n`` on ``[a, b]``; ``basis(x, k)`` gives ``k``-th derivatives.

    Use ``bernstein(n, a, b).modified(left, right)`` for the basis satisfying homogeneous boundary
    conditions plus the boundary-data function (Sec. 2 of the Bernstein-Galerkin method).
    """
    n = _check_degree(n, minimum=0, what="degree n")
    a, b = check_interval(a, b)
    if n > 60:
        raise ValueError(f"degree n={n} is too large for a global Bernstein basis (max 60)")
    return BernsteinBasis(n, a, b)
