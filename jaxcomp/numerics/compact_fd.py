"""Fourth-order compact (Numerov/Chawla-type) finite differences for ``u'' = F(x, u, u')``.

On the uniform grid ``x_i = a + i h`` (``i = 0..N``) the interior equations are

    u_{i+1} - 2 u_i + u_{i-1} = h^2 / 12 (F_{i+1} + 10 F_i + F_{i-1}),                      (1)

which is O(h^4) only if the ``u'`` used inside ``F`` is accurate enough.  Following Chawla's
construction (a chain of corrected difference formulas that keeps every equation on three points):

    ubar'_{i+-1} = +-(3 u_{i+-1} - 4 u_i + u_{i-+1}) / (2h)                     [O(h^2)]
    Fbar_{i+-1}  = F(x_{i+-1}, u_{i+-1}, ubar'_{i+-1})
    ubar'_i      = (u_{i+1} - u_{i-1}) / (2h) - h/12 (Fbar_{i+1} - Fbar_{i-1})      [O(h^4)]
    F_i          = F(x_i, u_i, ubar'_i)
    u~'_{i+1}    = (u_{i+1} - u_i) / h + h/24 (7 Fbar_{i+1} + 6 F_i - Fbar_{i-1})    [O(h^3)]
    u~'_{i-1}    = (u_i - u_{i-1}) / h - h/24 (7 Fbar_{i-1} + 6 F_i - Fbar_{i+1})
    F_{i+-1}     = F(x_{i+-1}, u_{i+-1}, u~'_{i+-1})

The O(h^3) errors of ``u~'_{i+1}`` and ``u~'_{i-1}`` are equal and opposite to leading order, so
they cancel in ``F_{i+1} + F_{i-1}`` and the local truncation error of (1) is O(h^6): the scheme is
fourth order for general ``F``.  A Robin/Neumann end (``beta != 0``) is closed with the compact
Taylor relation

    u_1 = u_0 + h u'_0 + h^2/24 (7 F_0 + 6 F_1 - F_2) + O(h^5),   u'_0 = (gamma - alpha u_0) / beta,

(``F_2`` uses ``u'_2 = u'_0 + 2h F_1 + O(h^3)``), which keeps the global error O(h^4).  A Dirichlet
end is the row ``alpha u_0 = gamma``.  Every row couples ``u_{i-1}, u_i, u_{i+1}`` except the two
Robin rows (``u_0..u_2``), so the Newton Jacobian is tridiagonal after an elimination at each end;
it is recovered from three Jacobian-vector products (3-colouring) and solved with
``jax.lax.linalg.tridiagonal_solve``.  Linear ``F`` needs exactly one such solve.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.numerics.bernstein import _check_degree
from jaxcomp.numerics.problem import BVP, newton, x64


def _rhs(F, nodes):
    """``F`` at grid nodes ``k`` (an index or slice) for the shifted problem of ``nodes``.

    ``nodes = (x, s0, s1, s2)`` describes ``v'' = F(x, s0 + v, s1 + v') - s2`` (all zeros except
    ``x`` for a plain problem; the error equation of ``bvp.residual_correction`` otherwise).
    Keeping the shifts as arrays lets one compiled Newton step serve every approximation.
    """
    x, s0, s1, s2 = nodes

    def rhs(k, v, dv):
        return F(x[k], s0[k] + v, s1[k] + dv) - s2[k]

    return rhs


def _interior(rhs, u, h):
    """Interior stencil at nodes ``1..N-1``: residual of (1), ``ubar'_i`` and ``F_i``."""
    m, c, p = slice(None, -2), slice(1, -1), slice(2, None)
    um, u0, up = u[m], u[c], u[p]
    fp_bar = rhs(p, up, (3 * up - 4 * u0 + um) / (2 * h))
    fm_bar = rhs(m, um, (-up + 4 * u0 - 3 * um) / (2 * h))
    du0 = (up - um) / (2 * h) - h / 12 * (fp_bar - fm_bar)
    f0 = rhs(c, u0, du0)
    dup = (up - u0) / h + h / 24 * (7 * fp_bar + 6 * f0 - fm_bar)
    dum = (u0 - um) / h - h / 24 * (7 * fm_bar + 6 * f0 - fp_bar)
    fp, fm = rhs(p, up, dup), rhs(m, um, dum)
    res = up - 2 * u0 + um - h * h / 12 * (fp + 10 * f0 + fm)
    return res, du0, f0


# Node indices seen from each end: the right end is the left end of the mirrored grid s = -x, on
# which derivatives change sign (du/ds = -du/dx); ``side`` carries that sign.
_ENDS = {+1: (0, 1, 2), -1: (-1, -2, -3)}


def _boundary_row(rhs, bc, gamma, u, f1, h, side):
    """Boundary equation at ``x_0`` (side=+1) or ``x_N`` (side=-1)."""
    alpha, beta = bc
    i0, i1, i2 = _ENDS[side]
    if beta == 0.0:
        return (alpha * u[i0] - gamma) / alpha
    g0 = side * (gamma - alpha * u[i0]) / beta  # u'_0 in the (possibly mirrored) coordinate
    f0 = rhs(i0, u[i0], side * g0)
    f2 = rhs(i2, u[i2], side * (g0 + 2 * h * f1))
    return u[i1] - u[i0] - h * g0 - h * h / 24 * (7 * f0 + 6 * f1 - f2)


def fd4_residual(F, bcs, gammas, nodes, u):
    """The ``N + 1`` equations of the compact scheme (interior (1) and the two boundary rows)."""
    x = nodes[0]
    h = x[1] - x[0]
    rhs = _rhs(F, nodes)
    res, _, f = _interior(rhs, u, h)
    left = _boundary_row(rhs, bcs[0], gammas[0], u, f[0], h, +1)
    right = _boundary_row(rhs, bcs[1], gammas[1], u, f[-1], h, -1)
    return jnp.concatenate([left[None], res, right[None]])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _nodal_derivatives(F, bcs, gammas, nodes, u):
    """O(h^4) approximations of ``u'`` at every node (``ubar'_i`` inside; closures at the ends)."""
    h = nodes[0][1] - nodes[0][0]
    rhs = _rhs(F, nodes)
    _, du, f = _interior(rhs, u, h)

    def end(bc, gamma, f1, du2, side):
        alpha, beta = bc
        i0, i1, i2 = _ENDS[side]
        if beta != 0.0:
            return (gamma - alpha * u[i0]) / beta
        # ``g`` is the derivative in the (possibly mirrored) coordinate, as in ``_boundary_row``.
        f2 = rhs(i2, u[i2], du2)
        g = (-3 * u[i0] + 4 * u[i1] - u[i2]) / (2 * h)  # O(h^2) start; each pass gains O(h)
        for _ in range(3):
            f0 = rhs(i0, u[i0], side * g)
            g = (u[i1] - u[i0]) / h - h / 24 * (7 * f0 + 6 * f1 - f2)
        return side * g

    left = end(bcs[0], gammas[0], f[0], du[1], +1)
    right = end(bcs[1], gammas[1], f[-1], du[-2], -1)
    return jnp.concatenate([left[None], du, right[None]])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _tridiagonal_newton_step(F, bcs, gammas, nodes, u):
    """Newton step ``u - J^{-1} G(u)``, ``J`` recovered from 3 JVPs (see module docstring)."""
    m = u.shape[0]
    g, jvp = jax.linearize(lambda v: fd4_residual(F, bcs, gammas, nodes, v), u)
    idx = jnp.arange(m)
    colours = jnp.stack([jvp((idx % 3 == k).astype(u.dtype)) for k in range(3)])  # (3, m)
    diag = colours[idx % 3, idx]
    upper = colours[(idx + 1) % 3, idx].at[-1].set(0.0)
    lower = colours[(idx - 1) % 3, idx].at[0].set(0.0)
    rhs = -g
    # Row 0 also couples u_2 and row N couples u_{N-2}: eliminate them with rows 1 and N-1.
    j02, jn = colours[2, 0], colours[(m - 3) % 3, m - 1]
    r0 = j02 / upper[1]
    diag = diag.at[0].add(-r0 * lower[1])
    upper = upper.at[0].add(-r0 * diag[1])
    rhs = rhs.at[0].add(-r0 * rhs[1])
    rn = jn / lower[m - 2]
    lower = lower.at[m - 1].add(-rn * diag[m - 2])
    diag = diag.at[m - 1].add(-rn * upper[m - 2])
    rhs = rhs.at[m - 1].add(-rn * rhs[m - 2])
    du = jax.lax.linalg.tridiagonal_solve(lower, diag, upper, rhs[:, None])[:, 0]
    return u + du, jnp.max(jnp.abs(du)), jnp.max(jnp.abs(g))


def solve_fd4(
    problem: BVP,
    n: int,
    *,
    shifts: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    initial=None,
    tol: float = 1e-13,
    max_iter: int = 50,
    derivatives: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array | None, int]:
    """``compact_fd4`` that also returns nodal derivatives and the Newton iteration count.

    With ``shifts=(s0, s1, s2)`` (arrays on the ``n + 1`` grid nodes) it solves
    ``v'' = F(x, s0 + v, s1 + v') - s2`` with the boundary conditions of ``problem``.
    """
    if not isinstance(problem, BVP):
        raise ValueError(f"problem must be a BVP, got {type(problem).__name__}")
    n = _check_degree(n, minimum=4, what="number of intervals n")
    x = jnp.asarray(np.linspace(problem.a, problem.b, n + 1))
    if shifts is None:
        shifts = (jnp.zeros(n + 1),) * 3
    nodes = (x, *(jnp.asarray(s, jnp.float64) for s in shifts))
    if initial is None:
        u0 = jnp.zeros(n + 1)
    elif callable(initial):
        u0 = jnp.asarray(initial(x), jnp.float64)
    else:
        u0 = jnp.asarray(initial, jnp.float64)
    if u0.shape != (n + 1,):
        raise ValueError(f"initial must give shape ({n + 1},) on the grid, got {u0.shape}")
    (a1, b1, g1), (a2, b2, g2) = problem.left, problem.right
    bcs, gammas = ((a1, b1), (a2, b2)), jnp.asarray([g1, g2])

    def step(u):
        return _tridiagonal_newton_step(problem.F, bcs, gammas, nodes, u)

    u, iterations = newton(
        step, u0, tol=tol, max_iter=max_iter, linear=problem.is_linear, what="compact_fd4"
    )
    du = _nodal_derivatives(problem.F, bcs, gammas, nodes, u) if derivatives else None
    return x, u, du, iterations


@x64
def compact_fd4(
    problem: BVP,
    n: int,
    *,
    initial=None,
    tol: float = 1e-13,
    max_iter: int = 50,
) -> tuple[jax.Array, jax.Array]:
    """Solve ``problem`` with the fourth-order compact scheme on ``n`` uniform intervals.

    Args:
      problem: the boundary value problem (any mix of Dirichlet / Neumann / Robin ends).
      n: number of intervals (``>= 4``); the grid has ``n + 1`` nodes including both ends.
      initial: initial Newton guess, an ``(n + 1,)`` array or a callable of the grid (default 0).
      tol: Newton stops when ``|du|_inf <= tol (1 + |u|_inf)``.
      max_iter: maximum Newton iterations (a linear ``F`` takes one tridiagonal solve).

    Returns:
      ``(x, u)``: the float64 grid and the approximate solution on it (error O(h^4)).
    """
    x, u, _, _ = solve_fd4(
        problem, n, initial=initial, tol=tol, max_iter=max_iter, derivatives=False
    )
    return x, u
