"""Classic two-point boundary value problems with closed-form solutions (for tests and experiments).

Each entry is a :class:`~jaxcomp.numerics.problem.BVP` with ``exact`` set:

* ``dirichlet_linear``: ``u'' - u = x``, ``u(0) = u(1) = 0``; ``u = sinh x / sinh 1 - x``.
* ``robin_linear``: ``u'' + x u' - u = f``, ``u'(0) = 1`` (Neumann),
  ``u(1) + u'(1) = e (2 cos 1 - sin 1)`` (Robin); ``u = e^x cos x``.
* ``bratu``: ``u'' + e^u = 0``, ``u(0) = u(1) = 0`` (Bratu, lambda = 1);
  ``u = -2 log(cosh((x - 1/2) theta / 2) / cosh(theta / 4))``, ``theta = sqrt(2) cosh(theta/4)``.
* ``cubic``: ``u'' = 2 u^3``, ``u(0) - u'(0) = 2`` (Robin), ``u(1) = 1/2``; ``u = 1 / (1 + x)``.
* ``robin_nonlinear``: ``u'' = -(u')^2``, ``u(0) - u'(0) = -1``, ``u(1) + 2 u'(1) = log 2 + 1``;
  ``u = log(1 + x)`` (nonlinear in ``u'``, Robin at both ends).
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp

from jaxcomp.numerics.problem import BVP


def bratu_theta(lam: float = 1.0) -> float:
    """The smaller root of ``theta = sqrt(2 lam) cosh(theta / 4)`` (Newton from 1)."""
    if not 0 < lam < 3.51383:
        raise ValueError(f"Bratu's problem has a solution only for 0 < lam < 3.51383, got {lam}")
    theta = 1.0
    for _ in range(100):
        g = theta - math.sqrt(2 * lam) * math.cosh(theta / 4)
        dg = 1 - math.sqrt(2 * lam) * math.sinh(theta / 4) / 4
        theta -= g / dg
    return theta


def _robin_linear_rhs(x):
    ex = jnp.exp(x)
    return -2 * ex * jnp.sin(x) + x * ex * (jnp.cos(x) - jnp.sin(x)) - ex * jnp.cos(x)


def classic_problems() -> dict[str, BVP]:
    """The problems listed in the module docstring, keyed by name.

    The same ``BVP`` objects are returned on every call, so compiled solvers are reused.
    """
    return dict(_classic_problems())


@functools.cache
def _classic_problems() -> dict[str, BVP]:
    theta = bratu_theta(1.0)
    e = math.e
    return {
        "dirichlet_linear": BVP.linear(
            1.0, 0.0, -1.0, lambda x: x, 0.0, 1.0, (1, 0, 0), (1, 0, 0),
            exact=lambda x: jnp.sinh(x) / math.sinh(1.0) - x,
        ),
        "robin_linear": BVP.linear(
            1.0, lambda x: x, -1.0, _robin_linear_rhs, 0.0, 1.0,
            (0, 1, 1), (1, 1, e * (2 * math.cos(1.0) - math.sin(1.0))),
            exact=lambda x: jnp.exp(x) * jnp.cos(x),
        ),
        "bratu": BVP(
            lambda x, u, du: -jnp.exp(u), 0.0, 1.0, (1, 0, 0), (1, 0, 0),
            exact=lambda x: -2 * jnp.log(jnp.cosh((x - 0.5) * theta / 2) / math.cosh(theta / 4)),
        ),
        "cubic": BVP(
            lambda x, u, du: 2 * u**3, 0.0, 1.0, (1, -1, 2), (1, 0, 0.5),
            exact=lambda x: 1 / (1 + x),
        ),
        "robin_nonlinear": BVP(
            lambda x, u, du: -(du**2), 0.0, 1.0, (1, -1, -1), (1, 2, math.log(2.0) + 1),
            exact=lambda x: jnp.log1p(x),
        ),
    }  # fmt: skip
