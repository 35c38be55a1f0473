"""Device meshes and sharding rules: the same code on 1 CPU, 8 fake devices or a TPU pod.

Mesh axes are ``("data", "fsdp", "model")``. Batches are split over ``data`` x ``fsdp``;
parameters are replicated, or sharded over ``fsdp`` along their largest divisible dimension, or
placed by explicit ``(regex, PartitionSpec)`` rules on their path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxcomp.pruning.select import path_str

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

Rule = tuple[str, "PartitionSpec | str"]


def make_mesh(
    data: int | None = None,
    fsdp: int = 1,
    model: int = 1,
    *,
    devices: Sequence[jax.Device] | None = None,
    axis_type: str = "auto",
) -> Mesh:
    """A ``("data", "fsdp", "model")`` mesh over ``devices`` (default: all devices of all hosts).

    ``data=None`` takes all devices not used by ``fsdp * model``. ``axis_type`` is passed to
    every axis explicitly: ``"auto"`` (sharding propagated by the compiler from the shardings
    given to ``jit``) or ``"explicit"`` (JAX's sharding-in-types mode).
    """
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or model < 1:
        raise ValueError(f"fsdp and model must be >= 1, got fsdp={fsdp}, model={model}")
    if data is None:
        data = len(devices) // (fsdp * model)
    if data < 1 or data * fsdp * model != len(devices):
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} x model={model} does not cover {len(devices)} devices"
        )
    kinds = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
    if axis_type not in kinds:
        raise ValueError(f"axis_type must be 'auto' or 'explicit', got {axis_type!r}")
    return jax.make_mesh(
        (data, fsdp, model), AXES, axis_types=(kinds[axis_type],) * 3, devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ``data`` x ``fsdp``."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def _fsdp_spec(shape: tuple[int, ...], size: int, min_size: int) -> PartitionSpec:
    if size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % size == 0:
            spec = [None] * len(shape)
            spec[d] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def param_shardings(
    params: Any,
    mesh: Mesh,
    rules: Sequence[Rule] = (),
    *,
    fsdp_min_size: int = 2**14,
) -> Any:
    """``NamedSharding`` for every leaf of ``params`` (arrays or ``ShapeDtypeStruct``s).

    The first rule whose regex matches the leaf path wins; a rule's value is a ``PartitionSpec``,
    ``"replicated"`` or ``"fsdp"``. Without a matching rule, leaves of at least ``fsdp_min_size``
    entries are FSDP-sharded when the mesh has an ``fsdp`` axis > 1, others replicated. A rule
    that matches no leaf is an error (a typo would silently replicate everything).
    """
    compiled = [(re.compile(pat), spec) for pat, spec in rules]
    used = [False] * len(compiled)
    fsdp = mesh.shape["fsdp"]

    def one(path, leaf):
        p = path_str(path)
        shape = tuple(leaf.shape)
        for i, (rx, spec) in enumerate(compiled):
            if rx.search(p):
                used[i] = True
                if spec == "replicated":
                    return replicated(mesh)
                if spec == "fsdp":
                    return NamedSharding(mesh, _fsdp_spec(shape, fsdp, 0))
                if not isinstance(spec, PartitionSpec):
                    raise ValueError(f"rule {rx.pattern!r}: unknown sharding {spec!r}")
                if len(spec) > len(shape):
                    raise ValueError(
                        f"rule {rx.pattern!r}: spec {spec} has more dims than {p} {shape}"
                    )
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, _fsdp_spec(shape, fsdp, fsdp_min_size))

    out = jax.tree_util.tree_map_with_path(one, params)
    for (pat, _), u in zip(rules, used):
        if not u:
            raise ValueError(f"sharding rule {pat!r} matches no parameter")
    return out


def like_params_shardings(tree: Any, params: Any, param_sh: Any, mesh: Mesh) -> Any:
    """Shardings for an optimizer state: a leaf whose path ends with a parameter's path and has
    its shape gets that parameter's sharding (momenta, masks, ...); one with an extra leading axis,
    shape ``(n, *param.shape)`` (a per-leaf window of past gradients, e.g. ``mfac(...,
    layout="leaves")``), gets it on the trailing axes and keeps the leading axis whole; all else
    is replicated. For states whose sharded leaves have other shapes (block-wise top-k windows),
    see ``shard_train_state(..., tx=)``."""
    by_path = {
        path_str(p): (tuple(x.shape), s)
        for (p, x), s in zip(
            jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_sh)
        )
    }
    # Longest paths first, so "a/b/kernel" wins over "b/kernel".
    keys = sorted(by_path, key=len, reverse=True)

    def one(path, leaf):
        p = path_str(path)
        shape = tuple(getattr(leaf, "shape", ()))
        for k in keys:
            if not (p == k or p.endswith("/" + k)):
                continue
            param_shape, sharding = by_path[k]
            if param_shape == shape:
                return sharding
            if (
                len(shape) == len(param_shape) + 1
                and shape[1:] == param_shape
                and isinstance(sharding, NamedSharding)
            ):
                spec = tuple(sharding.spec) + (None,) * (len(param_shape) - len(sharding.spec))
                return NamedSharding(sharding.mesh, PartitionSpec(None, *spec))
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place this process's share of a global batch on the mesh (multi-host safe)."""
    sh = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)), batch)


def initialize_distributed() -> bool:
    """``jax.distributed.initialize()`` when this is one process of a multi-process run (a TPU pod
    slice with several workers, or ``JAX_COORDINATOR_ADDRESS`` set); a no-op on a single host.
    Call it first thing in an entry point, before any other JAX call. Returns whether it ran."""
    import os

    multi_worker_tpu = len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    if multi_worker_tpu or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()
        return True
    return False
