"""The shared battery itself, run on optax's own SGD with momentum as a control."""

import optax
import optax_battery  # noqa: I001  (tests/ is on sys.path)
import pytest


def sgd(learning_rate):
    return optax.sgd(learning_rate, momentum=0.9)


@pytest.mark.parametrize("check", optax_battery.CHECKS, ids=lambda c: c.__name__)
def test_battery_on_sgd(check):
    assert check(sgd, {"learning_rate": 0.1})
