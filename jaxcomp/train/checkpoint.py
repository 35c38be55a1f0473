"""Orbax checkpoints of a training run: params, optimizer state, model state and data position.

Writes are atomic (Orbax writes to a temporary directory and renames it when complete), keep the
newest ``max_to_keep``, and may be asynchronous. ``restore`` puts every array back with the
sharding of the given target trees, so a resumed run continues exactly: the data position is the
step (``DataStream`` is step-indexed) and every PRNG key lives in the restored state.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _abstract(tree: Any) -> Any:
    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(one, tree)


class Checkpointer:
    """A thin wrapper over ``orbax.checkpoint.CheckpointManager`` for ``(params, model_state,
    opt_state)`` plus JSON metadata (step, data position, anything small)."""

    def __init__(
        self,
        directory: str,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        create: bool = True,
    ):
        directory = os.path.abspath(directory)
        if not create and not os.path.isdir(directory):
            raise FileNotFoundError(f"checkpoint directory does not exist: {directory}")
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = directory
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
        """Save ``state`` (a dict of pytrees) and JSON ``meta`` at ``step``."""
        meta = {"step": int(step), **(meta or {})}
        return self._mgr.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore(self, target: dict[str, Any], step: int | None = None) -> tuple[dict, dict]:
        """Restore ``(state, meta)`` at ``step`` (default: latest) into the structure, dtypes and
        shardings of ``target``. Raises ``FileNotFoundError`` when there is no checkpoint and
        ``ValueError`` when the stored checkpoint does not match ``target`` or is corrupt."""
        self.wait()
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}"
            )
        try:
            out = self._mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(target)), meta=ocp.args.JsonRestore()
                ),
            )
        except (FileNotFoundError, ValueError, KeyError, OSError, TypeError) as e:
            raise ValueError(
                f"checkpoint at step {step} in {self.directory} is corrupt or does not match the "
                f"target: {type(e).__name__}: {e}"
            ) from e
        return out["state"], out["meta"]

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()


def restore_latest(directory: str, target: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the newest checkpoint under an existing ``directory`` (``FileNotFoundError`` if
    the directory or a checkpoint is missing)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory does not exist: {directory}")
    ckpt = Checkpointer(directory, create=False, async_save=False)
    try:
        return ckpt.restore(target)
    finally:
        ckpt.close()
