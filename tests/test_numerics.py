"""Bernstein-Galerkin + compact FD4 residual correction (jaxcomp.numerics) vs exact solutions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.numerics import (
    BVP,
    bernstein,
    compact_fd4,
    galerkin,
    residual_correction,
    solve_bvp,
)
from jaxcomp.numerics.compact_fd import _tridiagonal_newton_step, fd4_residual
from jaxcomp.numerics.examples import bratu_theta, classic_problems

BRATU_THETA = 1.5171645990507543  # theta = sqrt(2) cosh(theta / 4), Bratu with lambda = 1

_P = classic_problems()
DIRICHLET, ROBIN, BRATU, ROBIN_NL = (
    _P[k] for k in ("dirichlet_linear", "robin_linear", "bratu", "robin_nonlinear")
)


def _ode_and_bc_residuals(p, xs):
    u = p.exact
    du, d2u = jax.vmap(jax.grad(u)), jax.vmap(jax.grad(jax.grad(u)))
    ends = jnp.asarray([p.a, p.b])
    bc = [
        al * u(ends[k]) + be * du(ends)[k] - ga for k, (al, be, ga) in enumerate([p.left, p.right])
    ]
    return d2u(xs) - p.F(xs, u(xs), du(xs)), jnp.stack(bc)


def test_classic_problems_exact_solutions_satisfy_ode_and_bcs():
    with jax.enable_x64(True):
        xs = jnp.linspace(0.0, 1.0, 7)
        for name, p in _P.items():
            ode, bc = jax.jit(_ode_and_bc_residuals, static_argnums=0)(p, xs)
            assert float(jnp.max(jnp.abs(ode))) < 1e-12, name
            assert float(jnp.max(jnp.abs(bc))) < 1e-12, name
    assert bratu_theta(1.0) == pytest.approx(BRATU_THETA, abs=1e-14)


def _max_err(x, u, problem):
    with jax.enable_x64(True):
        return float(jnp.max(jnp.abs(jnp.asarray(u) - problem.exact(jnp.asarray(x)))))


def test_bernstein_partition_of_unity_and_derivative_identities():
    n, a, b = 7, -1.0, 2.0
    basis = bernstein(n, a, b)
    x = np.linspace(a, b, 41)
    B, dB, d2B = (np.asarray(basis(x, k)) for k in range(3))
    assert B.dtype == np.float64 and B.shape == (41, n + 1)
    np.testing.assert_allclose(B.sum(-1), 1.0, atol=1e-14)  # partition of unity
    assert B.min() >= 0.0
    np.testing.assert_allclose(dB.sum(-1), 0.0, atol=1e-12)  # derivative of the constant 1
    np.testing.assert_allclose(d2B.sum(-1), 0.0, atol=1e-11)
    # Linear precision: sum_i (a + i L / n) B_i = x.
    np.testing.assert_allclose(B @ (a + (b - a) * np.arange(n + 1) / n), x, atol=1e-14)
    # Closed form and B' = n/L (B_{i-1,n-1} - B_{i,n-1}) against autodiff of the closed form.
    t = (x - a) / (b - a)
    i = np.arange(n + 1)
    binom = np.array([math.comb(n, k) for k in i])
    np.testing.assert_allclose(B, binom * t[:, None] ** i * (1 - t[:, None]) ** (n - i), atol=1e-14)
    lower = np.asarray(bernstein(n - 1, a, b)(x))
    pad = np.zeros((x.size, 1))
    expected = n / (b - a) * (np.hstack([pad, lower]) - np.hstack([lower, pad]))
    np.testing.assert_allclose(dB, expected, atol=1e-12)
    with jax.enable_x64(True):
        auto = jax.vmap(jax.jacfwd(jax.jacfwd(lambda s: basis(s, 0))))(jnp.asarray(x[1:-1]))
    np.testing.assert_allclose(d2B[1:-1], np.asarray(auto), rtol=1e-10, atol=1e-10)
    assert np.all(np.asarray(basis(x, n + 1)) == 0.0)


@pytest.mark.parametrize("n", [2, 3, 6])
@pytest.mark.parametrize(
    "left,right",
    [((1, 0, 2.0), (3, 0, -1.0)), ((0, 1, 0.5), (1, 2, 1.5)), ((2, -1, 1.0), (0, 1, -2.0))],
)
def test_modified_basis_satisfies_boundary_conditions(n, left, right):
    a, b = 0.5, 2.0
    mod = bernstein(n, a, b).modified(left, right)
    ends = np.array([a, b])
    phi, dphi = np.asarray(mod.phi(ends, 0)), np.asarray(mod.phi(ends, 1))
    th, dth = np.asarray(mod.theta(ends, 0)), np.asarray(mod.theta(ends, 1))
    assert phi.shape == (2, n - 1) and np.linalg.matrix_rank(mod.M) == n - 1
    np.testing.assert_allclose(left[0] * phi[0] + left[1] * dphi[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(right[0] * phi[1] + right[1] * dphi[1], 0.0, atol=1e-12)
    np.testing.assert_allclose(left[0] * th[0] + left[1] * dth[0], left[2], atol=1e-12)
    np.testing.assert_allclose(right[0] * th[1] + right[1] * dth[1], right[2], atol=1e-12)


def test_galerkin_reproduces_polynomial_solutions_exactly():
    # Linear, variable coefficients, Robin left / Neumann right: u = 1 - 2x + 3x^3 on [0, 2].
    u = lambda x: 1 - 2 * x + 3 * x**3
    du = lambda x: -2 + 9 * x**2
    d2u = lambda x: 18 * x
    p, q, r = (lambda x: 1 + x), (lambda x: x), -2.0
    f = lambda x: p(x) * d2u(x) + q(x) * du(x) + r * u(x)
    left = (2.0, -1.0, 2 * u(0.0) - du(0.0))
    right = (0.0, 1.0, du(2.0))
    lin = BVP.linear(p, q, r, f, 0.0, 2.0, left, right, exact=u)
    x = np.linspace(0.0, 2.0, 51)
    for degree in (3, 5):
        sol = galerkin(lin, degree)
        assert sol.iterations == 1
        np.testing.assert_allclose(np.asarray(sol(x)), u(x), atol=1e-11)
        np.testing.assert_allclose(np.asarray(sol.derivative(x, 2)), d2u(x), atol=1e-9)
    # Nonlinear in u and u': u = x^2 + 1, u'' = 2 + u^3 - (x^2 + 1)^3 + (u' - 2x).
    F = lambda x, v, dv: 2 + v**3 - (x**2 + 1) ** 3 + (dv - 2 * x)
    nl = BVP(F, 0.0, 1.0, (1, 0, 1.0), (1, 1, 4.0))
    for degree in (2, 4):
        sol = galerkin(nl, degree)
        assert 1 < sol.iterations < 10
        np.testing.assert_allclose(np.asarray(sol(x / 2)), (x / 2) ** 2 + 1, atol=1e-12)


@pytest.mark.parametrize(
    "problem", [DIRICHLET, ROBIN, ROBIN_NL], ids=["dirichlet", "robin-linear", "robin-nonlinear"]
)
def test_compact_fd4_observed_order_is_four(problem):
    errors = []
    for n in (16, 32, 64):
        x, u = compact_fd4(problem, n)
        assert x.dtype == jnp.float64 and x.shape == (n + 1,)
        errors.append(_max_err(x, u, problem))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(orders - 4.0) < 0.3), (errors, orders)


def test_tridiagonal_newton_step_matches_dense_newton():
    problem, n = ROBIN_NL, 12
    with jax.enable_x64(True):
        x = jnp.linspace(0.0, 1.0, n + 1)
        nodes = (x, jnp.zeros(n + 1), jnp.zeros(n + 1), jnp.zeros(n + 1))
        bcs = ((1.0, -1.0), (1.0, 2.0))
        gammas = jnp.asarray([problem.left[2], problem.right[2]])
        u = jnp.asarray(np.random.default_rng(0).normal(size=n + 1)) * 0.1 + x
        res = lambda v: fd4_residual(problem.F, bcs, gammas, nodes, v)
        jac = jax.jacfwd(res)(u)
        dense = u - jnp.linalg.solve(jac, res(u))
        tri, _, _ = _tridiagonal_newton_step(problem.F, bcs, gammas, nodes, u)
        # Rows couple at most u_{i-2..i+2}: the Jacobian really is (nearly) tridiagonal.
        assert float(jnp.max(jnp.abs(jnp.triu(jac, 3)))) == 0.0
    np.testing.assert_allclose(np.asarray(tri), np.asarray(dense), rtol=1e-10, atol=1e-12)


def test_residual_correction_reduces_error_by_orders_of_magnitude():
    sols = {}
    for problem, degree in ((ROBIN, 4), (BRATU, 3)):
        sols[problem] = sol = solve_bvp(problem, degree, 64)
        assert sol.errors["galerkin"] > 1e-5
        assert sol.errors["corrected"] < 1e-3 * sol.errors["galerkin"], sol.errors
        # The reported numbers are the true max errors at the grid nodes.
        assert _max_err(sol.grid, sol.values, problem) == pytest.approx(sol.errors["corrected"])
    # Between nodes the Hermite-interpolated correction keeps the gain.
    xs = np.linspace(0.0, 1.0, 301)
    assert _max_err(xs, sols[ROBIN](xs), ROBIN) < 1e-6
    # A plain callable (derivatives by autodiff) is corrected as well.
    rough = lambda x: jnp.exp(x) * jnp.cos(x) + 1e-3 * x * jnp.sin(3 * x)
    out = residual_correction(ROBIN, rough, 32)
    assert out.errors["approx"] > 5e-4 and out.errors["corrected"] < 1e-7


def test_newton_converges_on_bratu():
    sol = galerkin(BRATU, 8)
    assert 2 <= sol.iterations <= 8
    xs = np.linspace(0.0, 1.0, 201)
    assert _max_err(xs, sol(xs), BRATU) < 1e-8
    x, u = compact_fd4(BRATU, 32)
    assert _max_err(x, u, BRATU) < 1e-8
    # A hopeless start makes Newton fail loudly instead of returning garbage.
    with pytest.raises(RuntimeError, match="Newton"):
        compact_fd4(BRATU, 8, initial=jnp.full(9, 50.0), max_iter=3)


def test_x64_is_scoped_to_the_entry_points():
    before = bool(jax.config.jax_enable_x64)
    x, u = compact_fd4(DIRICHLET, 8)
    sol = galerkin(DIRICHLET, 3)
    assert u.dtype == jnp.float64 and sol(np.linspace(0, 1, 5)).dtype == jnp.float64
    assert bool(jax.config.jax_enable_x64) == before  # the flag is restored
    if not before:
        assert jnp.ones(2).dtype == jnp.float32


def test_bad_input_raises_clear_errors():
    F = lambda x, u, du: u
    with pytest.raises(ValueError, match="a=1.0, b=0.0"):
        BVP(F, 1.0, 0.0, (1, 0, 0), (1, 0, 0))
    with pytest.raises(ValueError, match="a=1.0, b=1.0"):
        BVP(F, 1.0, 1.0, (1, 0, 0), (1, 0, 0))
    with pytest.raises(ValueError, match=r"left=.*alpha and beta are both zero"):
        BVP(F, 0.0, 1.0, (0, 0, 1), (1, 0, 0))
    with pytest.raises(ValueError, match="right"):
        BVP(F, 0.0, 1.0, (1, 0, 0), (1, 0))
    with pytest.raises(ValueError, match="F must be a callable"):
        BVP(3.0, 0.0, 1.0, (1, 0, 0), (1, 0, 0))
    with pytest.raises(ValueError, match="p\\(x\\) must be finite and nonzero"):
        BVP.linear(lambda x: x, 0.0, 1.0, 0.0, 0.0, 1.0, (1, 0, 0), (1, 0, 0))
    with pytest.raises(ValueError, match="degree must be >= 2, got 1"):
        galerkin(DIRICHLET, 1)
    with pytest.raises(ValueError, match="number of intervals n must be >= 4, got 3"):
        compact_fd4(DIRICHLET, 3)
    with pytest.raises(ValueError, match="degree must be >= 2, got 1"):
        solve_bvp(DIRICHLET, 1, 16)
    with pytest.raises(ValueError, match="a=2.0, b=0.0"):
        bernstein(3, 2.0, 0.0)
