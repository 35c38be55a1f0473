"""Verified Orbax checkpoints of a training run: params, optimizer state, model state, metadata.

Each step is one Orbax composite checkpoint with three items: ``state`` (the pytrees), ``meta``
(JSON: step, config hash, data position, run id, jaxcomp version, anything small) and
``manifest`` (JSON: for every array its tree path, shape, dtype and SHA-256 of its bytes). Orbax
writes into a temporary directory and renames it when the save is complete, so a process killed
mid-save (``kill -9``) leaves the previous step intact. ``restore``

1. checks the manifest's step against the step directory and the metadata,
2. checks every array's shape and dtype against the target (a checkpoint of another model is
   refused naming the first leaf and both shapes),
3. restores, and recomputes every digest: a flipped bit or a truncated file is reported as a
   ``ValueError`` naming the step and the first array that differs (never a wrong value).

One writer per directory: a ``Checkpointer`` holds, from its first save, an exclusive ``WorkdirLock`` on
its directory (see ``jaxcomp.train.workdir``), so two managers cannot overwrite each other's steps.
``restore(..., target)`` puts every array back with the sharding of the given target trees, so a
resumed run continues exactly.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxcomp.train.workdir import WorkdirLock


class _QuietOrbax(logging.Filter):
    """Drop orbax's INFO chatter (hundreds of lines per run); keep its warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def quiet_orbax_logging() -> None:
    """Install the filter on the ``absl`` logger (idempotent)."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
        logger.addFilter(_QuietOrbax())
    logging.getLogger("orbax").setLevel(max(logging.getLogger("orbax").level, logging.WARNING))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("jaxcomp")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def _abstract(tree: Any) -> Any:
    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(one, tree)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_as_data(tree: Any) -> Any:
    """Typed PRNG keys (``jax.random.key``, e.g. the ``RngState`` of an ``nnx.Dropout``) are stored
    as their ``uint32`` key data; orbax and numpy cannot hold the key dtype itself."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_as_keys(restored: Any, target: Any) -> Any:
    def one(r, t):
        return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r

    return jax.tree.map(one, restored, target)


def _is_empty(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and 0 in tuple(x.shape)


def _stand_in_empty(tree: Any) -> Any:
    """Orbax cannot store zero-size arrays (e.g. an unused error-feedback buffer): store a 1-byte
    stand-in; the real (empty) array is rebuilt from the target's shape on restore."""
    return jax.tree.map(lambda x: np.zeros((1,), np.int8) if _is_empty(x) else x, tree)


def _abstract_stand_in(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((1,), np.int8) if _is_empty(x) else x, _abstract(tree)
    )


def _put_back_empty(restored: Any, target: Any) -> Any:
    def one(r, t):
        if not _is_empty(t):
            return r
        sharding = getattr(t, "sharding", None)
        empty = np.zeros(t.shape, t.dtype)
        return jax.device_put(empty, sharding) if sharding is not None else jax.numpy.asarray(empty)

    return jax.tree.map(one, restored, target)


def _host_array(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def manifest(state: Any) -> dict[str, dict[str, Any]]:
    """``{tree path: {"shape", "dtype", "sha256"}}`` for every array leaf of ``state`` (digests of
    the C-order bytes; arrays sharded over several processes are gathered first)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if not hasattr(leaf, "shape"):
            continue
        arr = _host_array(leaf)
        out[jax.tree_util.keystr(path)] = {
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
        }
    return out


class Checkpointer:
    """Orbax ``CheckpointManager`` for ``{name: pytree}`` state plus JSON metadata, with an
    integrity manifest per step (see module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        create: bool = True,
        lock: bool = True,
    ):
        quiet_orbax_logging()
        directory = epath.Path(directory)
        if "://" not in os.fspath(directory):
            directory = epath.Path(os.path.abspath(directory))
        if not create and not directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory does not exist: {directory}")
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = directory
        self._lock = None
        self._want_lock = lock and create and jax.process_index() == 0
        self._mgr = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=create
            ),
        )

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any] | None = None) -> bool:
        """Save ``state`` (a dict of pytrees), JSON ``meta`` and the manifest at ``step``."""
        if self._want_lock and self._lock is None:  # the first save makes this the writer
            self._lock = WorkdirLock(self.directory).acquire()
        meta = {"step": int(step), "jaxcomp_version": _version(), **(meta or {})}
        state = _keys_as_data(state)
        man = {"step": int(step), "config_hash": meta.get("config_hash"), "arrays": manifest(state)}
        return self._mgr.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_stand_in_empty(state)),
                meta=ocp.args.JsonSave(meta),
                manifest=ocp.args.JsonSave(man),
            ),
        )

    def _check_step(self, step: int | None) -> int:
        self.wait()
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}"
            )
        return step

    def _json(self, step: int, *names: str) -> dict[str, Any]:
        try:
            out = self._mgr.restore(
                step, args=ocp.args.Composite(**{n: ocp.args.JsonRestore() for n in names})
            )
        except Exception as e:
            raise ValueError(
                f"checkpoint at step {step} in {self.directory}: cannot read {names}: "
                f"{type(e).__name__}: {str(e)[:300]}"
            ) from e
        return {n: out[n] for n in names}

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata of ``step`` (default: latest) without restoring any array."""
        step = self._check_step(step)
        meta = self._json(step, "meta")["meta"]
        if int(meta.get("step", -1)) != step:
            raise ValueError(
                f"checkpoint directory {self.directory}/{step} holds metadata of step "
                f"{meta.get('step')}: refusing a mislabelled checkpoint"
            )
        return meta

    def restore(
        self, target: dict[str, Any], step: int | None = None, *, verify: bool = True
    ) -> tuple[dict, dict]:
        """Restore ``(state, meta)`` at ``step`` (default: latest) into the structure, dtypes and
        shardings of ``target``, verifying the manifest. Raises ``FileNotFoundError`` when there
        is no checkpoint and ``ValueError`` naming the step and array when the stored checkpoint
        does not match ``target`` or is corrupt."""
        step = self._check_step(step)
        meta = self.read_meta(step)
        key_target, target = target, _keys_as_data(target)
        man = self._json(step, "manifest")["manifest"] if verify else None
        if man is not None:
            if int(man.get("step", -1)) != step:
                raise ValueError(
                    f"checkpoint {self.directory}/{step}: manifest is for step {man.get('step')}"
                )
            arrays = man["arrays"]
            for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
                if not hasattr(leaf, "shape"):
                    continue
                key = jax.tree_util.keystr(path)
                if key not in arrays:
                    raise ValueError(
                        f"checkpoint {self.directory}/{step} has no array {key} (the target "
                        f"model differs from the saved one; saved arrays: {list(arrays)[:5]}...)"
                    )
                want = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
                have = (tuple(arrays[key]["shape"]), arrays[key]["dtype"])
                if want != have:
                    raise ValueError(
                        f"checkpoint {self.directory}/{step}: array {key} was saved with shape "
                        f"{have[0]} dtype {have[1]}, the target has shape {want[0]} dtype {want[1]}"
                    )
        try:
            out = self._mgr.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract_stand_in(target))),
            )
        except Exception as e:
            raise ValueError(
                f"checkpoint at step {step} in {self.directory} is corrupt or does not match the "
                f"target: {type(e).__name__}: {str(e)[:500]}"
            ) from e
        state = _put_back_empty(out["state"], target)
        if man is not None:
            got = manifest(state)
            for key, rec in man["arrays"].items():
                if key in got and got[key]["sha256"] != rec["sha256"]:
                    raise ValueError(
                        f"checkpoint {self.directory}/{step} is corrupt: array {key} does not "
                        f"match its SHA-256 in the manifest (bit flip or partial write)"
                    )
        return _data_as_keys(state, key_target), meta

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        try:
            self._mgr.wait_until_finished()
            self._mgr.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


def restore_latest(
    directory: str | os.PathLike, target: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore (and verify) the newest checkpoint under an existing ``directory``
    (``FileNotFoundError`` if the directory or a checkpoint is missing)."""
    if not epath.Path(directory).is_dir():
        raise FileNotFoundError(f"checkpoint directory does not exist: {directory}")
    ckpt = Checkpointer(directory, create=False, async_save=False, lock=False)
    try:
        return ckpt.restore(target)
    finally:
        ckpt.close()
