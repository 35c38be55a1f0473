"""Jitted, explicitly sharded train steps; checkpoints; metrics; a resumable loop."""

from jaxcomp.train.checkpoint import Checkpointer, restore_latest
from jaxcomp.train.loop import fit
from jaxcomp.train.mesh import (
    batch_sharding,
    make_mesh,
    param_shardings,
    replicated,
    shard_batch,
)
from jaxcomp.train.metrics import MetricsWriter, Progress, plot_lines, read_jsonl
from jaxcomp.train.step import (
    TrainShardings,
    classification_loss,
    evaluate,
    make_eval_step,
    make_train_step,
    shard_train_state,
    split_model,
)

__all__ = [
    "Checkpointer",
    "MetricsWriter",
    "Progress",
    "TrainShardings",
    "batch_sharding",
    "classification_loss",
    "evaluate",
    "fit",
    "make_eval_step",
    "make_mesh",
    "make_train_step",
    "param_shardings",
    "plot_lines",
    "read_jsonl",
    "replicated",
    "restore_latest",
    "shard_batch",
    "shard_train_state",
    "split_model",
]
