"""Which leaves of a params pytree are prunable.

A *where* predicate is ``where(path: str, leaf) -> bool``, evaluated in Python on the static tree
structure (never on traced values). Paths are ``/``-joined key names with Flax NNX's trailing
``value`` attribute dropped, e.g. ``"blocks/0/conv1/kernel"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax

Where = Callable[[str, Any], bool]

#: Path components that mark embeddings / norms / biases; never pruned by ``default_where``.
_NEVER = re.compile(r"(^|/)(bias|scale|embedding|embeddings|pos_embed|cls_token|norm[^/]*)$")


def path_str(path: tuple) -> str:
    """``jax.tree_util`` key path -> ``"a/b/0/kernel"`` (NNX ``.value`` attributes dropped)."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey):
            if key.name == "value":
                continue
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:  # pragma: no cover - future key types
            parts.append(str(key))
    return "/".join(parts)


def default_where(path: str, leaf: Any) -> bool:
    """Kernels of Dense/Conv layers: leaves with ``ndim >= 2`` whose name is not a bias, norm scale
    or embedding. This is the set CrAM, jaxpruner and the N:M literature prune by default."""
    if getattr(leaf, "ndim", 0) < 2:
        return False
    name = path.rsplit("/", 1)[-1]
    if _NEVER.search(path) or "embed" in name:
        return False
    return True


def regex_where(include: str, exclude: str | None = None, *, base: Where | None = None) -> Where:
    """A predicate selecting leaves whose path matches ``include`` (``re.search``) and not
    ``exclude``; ``base`` (e.g. ``default_where``) must also hold when given.

    ``select`` raises ``ValueError`` naming the pattern if it matches no leaf of the tree.
    """
    inc = re.compile(include)
    exc = re.compile(exclude) if exclude else None

    def where(path: str, leaf: Any) -> bool:
        if base is not None and not base(path, leaf):
            return False
        return bool(inc.search(path)) and not (exc and exc.search(path))

    where.pattern = include  # type: ignore[attr-defined]
    return where


def as_where(where: Where | str | None) -> Where:
    """Accepts a predicate, a regex string (combined with ``default_where``) or None (default)."""
    if where is None:
        return default_where
    if isinstance(where, str):
        return regex_where(where, base=default_where)
    if not callable(where):
        raise ValueError(f"where must be a callable or a regex string, got {where!r}")
    return where


def select(params: Any, where: Where | str | None = None) -> Any:
    """Pytree of Python bools (same structure as ``params``): which leaves are prunable.

    Raises ``ValueError`` if no leaf is selected (a regex that matches nothing is a typo).
    """
    pred = as_where(where)
    flags = jax.tree_util.tree_map_with_path(lambda p, x: bool(pred(path_str(p), x)), params)
    if not any(jax.tree.leaves(flags)):
        name = getattr(pred, "pattern", getattr(pred, "__name__", repr(pred)))
        paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        raise ValueError(
            f"where={name!r} selects no leaf of the params tree; leaves are: {paths[:20]}"
            + (" ..." if len(paths) > 20 else "")
        )
    return flags


def named_leaves(params: Any) -> list[tuple[str, Any]]:
    """``[(path_str, leaf), ...]`` in tree-flatten order."""
    return [(path_str(p), x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]]


def nm_where(m: int, base: Where | str | None = None) -> Where:
    """Leaves selected by ``base`` (default ``default_where``) whose input dimension (axis
    ``ndim - 2``: Dense ``in``, Conv ``in``) is divisible by ``m``; the others (e.g. a first
    conv with 1 or 3 input channels) are left dense, as NVIDIA's ASP does for 2:4."""
    pred = as_where(base)

    def where(path: str, leaf: Any) -> bool:
        return pred(path, leaf) and leaf.shape[leaf.ndim - 2] % m == 0

    where.pattern = f"nm_where({m})"  # type: ignore[attr-defined]
    return where
