"""Jitted, explicitly sharded train steps; checkpoints; metrics; a resumable loop."""

from jaxcomp.train.checkpoint import Checkpointer, restore_latest
from jaxcomp.train.loop import Preempted, fit
from jaxcomp.train.mesh import (
    batch_sharding,
    initialize_distributed,
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
    extra_pass_state,
    make_eval_step,
    make_train_step,
    shard_train_state,
    split_model,
)
from jaxcomp.train.workdir import (
    WorkdirLock,
    WorkdirLockedError,
    config_diff,
    config_hash,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from jaxcomp.train.writers import (
    JsonlWriter,
    TensorBoardWriter,
    create_default_writer,
    read_tensorboard_scalars,
)

__all__ = [
    "Checkpointer",
    "JsonlWriter",
    "Preempted",
    "TensorBoardWriter",
    "WorkdirLock",
    "WorkdirLockedError",
    "config_diff",
    "config_hash",
    "create_default_writer",
    "read_tensorboard_scalars",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
    "MetricsWriter",
    "Progress",
    "TrainShardings",
    "batch_sharding",
    "classification_loss",
    "evaluate",
    "extra_pass_state",
    "fit",
    "initialize_distributed",
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
