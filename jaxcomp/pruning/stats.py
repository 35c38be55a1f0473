"""Sparsity statistics of a params pytree."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxcomp.pruning.select import Where, named_leaves, select


def sparsity_report(params: Any, where: Where | str | None = None) -> dict[str, Any]:
    """Fraction of exact zeros per selected leaf and over all selected leaves (not jittable).

    Returns ``{"layers": {path: sparsity}, "global": sparsity, "zeros": int, "total": int}``.
    """
    flags = jax.tree.leaves(select(params, where))
    layers, zeros, total = {}, 0, 0
    for (path, x), f in zip(named_leaves(params), flags):
        if not f:
            continue
        z = int(np.sum(np.asarray(x) == 0))
        layers[path] = z / x.size
        zeros += z
        total += int(x.size)
    return {"layers": layers, "global": zeros / total, "zeros": zeros, "total": total}
