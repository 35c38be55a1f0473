"""Two-point boundary value problems ``u'' = F(x, u, u')`` with Robin boundary conditions.

Shared by the Bernstein-Galerkin solver (``galerkin.py``), the fourth-order compact
finite-difference scheme (``compact_fd.py``) and the residual correction (``bvp.py``):

* :class:`BVP` -- the problem ``u'' = F(x, u, u')`` on ``[a, b]`` with
  ``alpha1 u(a) + beta1 u'(a) = gamma1`` and ``alpha2 u(b) + beta2 u'(b) = gamma2``;
* :func:`x64` -- runs an entry point with ``jax_enable_x64`` switched on *only for that call*, so
  the numerics are float64 while the rest of the library keeps JAX's float32 default;
* :func:`newton` -- the Newton loop used by both discretisations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

Coefficient = Callable[[jax.Array], jax.Array] | float
RHS = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

_T = TypeVar("_T", bound=Callable[..., Any])


def x64(fn: _T) -> _T:
    """Decorator: run ``fn`` inside ``jax.enable_x64(True)`` (float64), restoring the flag after.

    The returned arrays stay float64 outside the context; further JAX arithmetic on them outside
    an x64 scope is truncated to float32 by JAX, so evaluate solutions through the callables this
    package returns (which are themselves wrapped).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _check_bc(name: str, bc: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in bc)
    except TypeError as exc:
        raise ValueError(
            f"{name} must be a triple (alpha, beta, gamma) meaning alpha u + beta u' = gamma, "
            f"got {bc!r}"
        ) from exc
    if len(values) != 3:
        raise ValueError(
            f"{name} must be a triple (alpha, beta, gamma) meaning alpha u + beta u' = gamma, "
            f"got {bc!r} of length {len(values)}"
        )
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {bc!r}")
    alpha, beta, _ = values
    if alpha == 0.0 and beta == 0.0:
        raise ValueError(
            f"{name}=(alpha, beta, gamma)={bc!r} is not a boundary condition: alpha and beta are "
            "both zero"
        )
    return values  # type: ignore[return-value]


def check_interval(a: float, b: float) -> tuple[float, float]:
    """Validate ``a < b`` (both finite) and return them as Python floats."""
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"interval ends must be finite, got a={a}, b={b}")
    if not a < b:
        raise ValueError(f"interval must satisfy a < b, got a={a}, b={b}")
    return a, b


@dataclasses.dataclass(frozen=True)
class BVP:
    """``u''(x) = F(x, u, u')`` on ``[a, b]`` with general (Dirichlet / Neumann / Robin) conditions.

    ``left = (alpha1, beta1, gamma1)`` means ``alpha1 u(a) + beta1 u'(a) = gamma1`` and
    ``right = (alpha2, beta2, gamma2)`` means ``alpha2 u(b) + beta2 u'(b) = gamma2``.  ``F`` must be
    vectorised: it receives three arrays of the same shape and returns one.  ``is_linear`` declares
    ``F`` affine in ``(u, u')`` (one Newton step is then exact); ``exact`` is an optional exact
    solution used to report errors.  For ``p u'' + q u' + r u = f`` use :meth:`BVP.linear`.
    """

    F: RHS
    a: float
    b: float
    left: tuple[float, float, float]
    right: tuple[float, float, float]
    is_linear: bool = False
    exact: Callable[[jax.Array], jax.Array] | None = None

    def __post_init__(self):
        if not callable(self.F):
            raise ValueError(f"F must be a callable F(x, u, du), got {self.F!r}")
        a, b = check_interval(self.a, self.b)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "left", _check_bc("left", self.left))
        object.__setattr__(self, "right", _check_bc("right", self.right))

    @classmethod
    def linear(
        cls,
        p: Coefficient,
        q: Coefficient,
        r: Coefficient,
        f: Coefficient,
        a: float,
        b: float,
        left: tuple[float, float, float],
        right: tuple[float, float, float],
        *,
        exact: Callable[[jax.Array], jax.Array] | None = None,
    ) -> BVP:
        """The linear problem ``p(x) u'' + q(x) u' + r(x) u = f(x)`` (``p`` nonzero on ``[a, b]``).

        Each coefficient is a vectorised callable of ``x`` or a constant.  Stored as
        ``F(x, u, du) = (f - q du - r u) / p`` with ``is_linear=True``.
        """
        p_, q_, r_, f_ = (
            _as_function(c, name) for c, name in ((p, "p"), (q, "q"), (r, "r"), (f, "f"))
        )
        a, b = check_interval(a, b)
        with jax.enable_x64(True):
            xs = jnp.linspace(a, b, 257)
            p_vals = np.asarray(p_(xs))
        if not np.all(np.isfinite(p_vals)) or np.min(np.abs(p_vals)) == 0.0:
            raise ValueError(
                f"p(x) must be finite and nonzero on [a, b]=[{a}, {b}], got min |p| = "
                f"{np.min(np.abs(p_vals))}"
            )

        def F(x, u, du):
            return (f_(x) - q_(x) * du - r_(x) * u) / p_(x)

        return cls(F, a, b, left, right, is_linear=True, exact=exact)


def _as_function(c: Coefficient, name: str) -> Callable[[jax.Array], jax.Array]:
    if callable(c):
        return c
    try:
        value = float(c)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"coefficient {name} must be a callable or a number, got {c!r}") from exc
    return lambda x: jnp.full(jnp.shape(x), value, dtype=jnp.result_type(x, float))


def newton(
    step: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    x0: jax.Array,
    *,
    tol: float,
    max_iter: int,
    linear: bool,
    what: str,
) -> tuple[jax.Array, int]:
    """Iterate ``x, |dx|_inf, |G(x)|_inf = step(x)`` until ``|dx| <= tol (1 + |x|)`` or the
    residual at the current iterate is ``|G(x)| <= tol (1 + |G(x_0)|)`` (then that iterate is
    returned: ill-conditioned discretisations stall the step size well above ``tol`` while the
    residual is already at rounding level).

    For a linear (affine) residual one step is exact, so the loop stops after it.  Raises
    ``RuntimeError`` naming the last step and residual if the iteration diverges or stalls.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    x = x0
    dx_norm = res_norm = res0 = float("nan")
    for it in range(1, max_iter + 1):
        prev = x
        x, dx, res = step(x)
        dx_norm, res_norm = float(dx), float(res)
        if it == 1:
            res0 = res_norm
        elif not linear and math.isfinite(res_norm) and res_norm <= tol * (1.0 + res0):
            return prev, it - 1
        if not (math.isfinite(dx_norm) and bool(jnp.all(jnp.isfinite(x)))):
            raise RuntimeError(
                f"{what}: Newton iteration {it} produced non-finite values (singular Jacobian? "
                f"e.g. pure Neumann conditions on u'' = f(x)); last residual {res_norm:.3e}"
            )
        if linear or dx_norm <= tol * (1.0 + float(jnp.max(jnp.abs(x)))):
            return x, it
    raise RuntimeError(
        f"{what}: Newton did not converge in max_iter={max_iter} iterations "
        f"(last step {dx_norm:.3e}, residual {res_norm:.3e}); try a better initial guess"
    )
