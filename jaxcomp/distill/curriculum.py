"""Layer-wise curriculum distillation as data (InDistill Sec. 3.2).

A curriculum is a tuple of ``Stage``s, each naming the student features it trains (indices into
``Cnn32.features``: 0-2 blocks, 3 fc1, 4 logits), the loss on each (``"mse"``, ``"pkt"`` or
``"ce"``), its length in epochs and a learning-rate scale. The active stage is a pure function of
the global step (``Curriculum.stage_index``), so a run compiles one train step per stage and a run
restarted from any checkpoint, even mid-stage, continues exactly (``fit_curriculum``).

The reference (``kd_from_aux_to_student.py``) trains block 1 by MSE for 3 epochs, block 2 for 4,
block 3 for 5, then fc1 by PKT to epoch 60 and 10 more at a tenth of the learning rate, with no
cross-entropy; ``indistill_curriculum`` builds exactly that.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxcomp.distill.pkt import feature_mse, pkt_loss

LOSSES = ("mse", "pkt", "ce")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One curriculum stage: ``losses[i]`` on student feature ``features[i]`` (summed with
    ``weights``) for ``epochs`` epochs at ``lr_scale`` times the base learning rate."""

    features: tuple[int, ...]
    losses: tuple[str, ...]
    epochs: int
    lr_scale: float = 1.0
    weights: tuple[float, ...] | None = None

    def __post_init__(self):
        feats = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        losses = (self.losses,) if isinstance(self.losses, str) else tuple(self.losses)
        object.__setattr__(self, "features", tuple(int(f) for f in feats))
        object.__setattr__(self, "losses", losses)
        if not feats or len(feats) != len(losses):
            raise ValueError(
                f"a stage needs one loss per feature, got features {feats} and losses {losses}"
            )
        for loss in losses:
            if loss not in LOSSES:
                raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs}")
        if not self.lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0, got {self.lr_scale}")
        w = (1.0,) * len(feats) if self.weights is None else tuple(float(x) for x in self.weights)
        if len(w) != len(feats):
            raise ValueError(f"need {len(feats)} weights, got {self.weights}")
        object.__setattr__(self, "weights", w)


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """Stages run in order; an epoch is ``steps_per_epoch`` steps. Feature indices must be in
    ``[0, num_features)``."""

    stages: tuple[Stage, ...]
    steps_per_epoch: int
    num_features: int = 5

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ValueError("a curriculum needs at least one stage")
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        for i, st in enumerate(self.stages):
            if not isinstance(st, Stage):
                raise ValueError(f"stage {i} is not a Stage: {st!r}")
            for f in st.features:
                if not 0 <= f < self.num_features:
                    raise ValueError(
                        f"unknown feature index {f} in stage {i}; the student has features "
                        f"0..{self.num_features - 1}"
                    )

    @property
    def epoch_boundaries(self) -> tuple[int, ...]:
        """First epoch of every stage, then the total number of epochs."""
        return tuple(int(x) for x in np.cumsum([0] + [s.epochs for s in self.stages]))

    @property
    def boundaries(self) -> tuple[int, ...]:
        """First global step of every stage, then the total number of steps."""
        return tuple(e * self.steps_per_epoch for e in self.epoch_boundaries)

    @property
    def total_steps(self) -> int:
        return self.boundaries[-1]

    def stage_index(self, step: Any) -> Any:
        """Index of the stage active at global ``step`` (int, or traced: ``jnp`` int32)."""
        inner = self.boundaries[1:-1]
        if isinstance(step, (int, np.integer)):
            if not 0 <= step < self.total_steps:
                raise ValueError(f"step must be in [0, {self.total_steps}), got {step}")
            return int(np.searchsorted(inner, step, side="right"))
        return jnp.sum(jnp.asarray(step) >= jnp.asarray(inner, jnp.int32)).astype(jnp.int32)

    def stage_at(self, step: int) -> Stage:
        return self.stages[self.stage_index(step)]


def indistill_curriculum(
    steps_per_epoch: int,
    *,
    block_epochs: Sequence[int] = (3, 4, 5),
    final_epochs: int = 60,
    finetune_epochs: int = 10,
    finetune_lr_scale: float = 0.1,
) -> Curriculum:
    """The reference schedule: MSE on block k for ``block_epochs[k]`` epochs (k = 0, 1, 2), then
    PKT on fc1 until epoch ``final_epochs``, then ``finetune_epochs`` more at
    ``finetune_lr_scale`` (default 3 / 4 / 5 / 48 / 10 epochs)."""
    stages = [Stage((k,), ("mse",), int(e)) for k, e in enumerate(block_epochs)]
    rest = final_epochs - sum(block_epochs)
    if rest < 1:
        raise ValueError(
            f"final_epochs must exceed the block epochs {tuple(block_epochs)}, got {final_epochs}"
        )
    stages.append(Stage((3,), ("pkt",), rest))
    if finetune_epochs:
        stages.append(Stage((3,), ("pkt",), finetune_epochs, finetune_lr_scale))
    return Curriculum(tuple(stages), steps_per_epoch)


def single_curriculum(
    steps_per_epoch: int,
    features: int | Sequence[int],
    losses: str | Sequence[str],
    *,
    epochs: int = 60,
    finetune_epochs: int = 10,
    finetune_lr_scale: float = 0.1,
) -> Curriculum:
    """One loss set for ``epochs`` then ``finetune_epochs`` at a lower rate: CE and PKT-only
    baselines, and the "all layers at once" ablation (every term from the first step)."""
    stages = [Stage(features, losses, epochs)]
    if finetune_epochs:
        stages.append(Stage(features, losses, finetune_epochs, finetune_lr_scale))
    return Curriculum(tuple(stages), steps_per_epoch)


TargetFn = Callable[[jax.Array], Sequence[jax.Array] | Mapping[int, jax.Array]]


def stage_loss(
    graphdef: nnx.GraphDef,
    stage: Stage,
    target_fn: TargetFn | None,
    *,
    pkt_kernel: str = "combined",
) -> Callable:
    """``loss_fn(params, model_state, batch)`` of one stage (``make_train_step``'s contract).

    The student (``graphdef`` in train mode) must expose ``features(x) -> list``; ``target_fn``
    maps the batch images to the targets of the same indices (a frozen teacher, closed over).
    """
    needs_targets = any(loss != "ce" for loss in stage.losses)
    if needs_targets and target_fn is None:
        raise ValueError(f"stage {stage} has distillation terms but no target_fn")

    def loss_fn(params, model_state, batch):
        model = nnx.merge(graphdef, params, model_state)
        feats = model.features(batch["image"])
        targets = target_fn(batch["image"]) if needs_targets else None
        total = jnp.float32(0.0)
        metrics = {}
        for f, loss, w in zip(stage.features, stage.losses, stage.weights):
            if f >= len(feats):
                raise ValueError(f"unknown feature index {f}; the model has {len(feats)} features")
            if loss == "ce":
                logits = feats[f].astype(jnp.float32)
                value = optax.softmax_cross_entropy_with_integer_labels(
                    logits, batch["label"]
                ).mean()
                metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
            else:
                target = jax.lax.stop_gradient(targets[f])
                if loss == "mse":
                    value = feature_mse(target, feats[f])
                else:
                    value = pkt_loss(target, feats[f], kernel=pkt_kernel)
            metrics[f"{loss}_{f}"] = value
            total = total + w * value
        new_state = nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))
        return total, (new_state, metrics)

    return loss_fn


@dataclasses.dataclass(frozen=True)
class _OffsetStream:
    """``stream`` seen from global step ``offset``: stage-local step s is global step offset + s."""

    stream: Any
    offset: int

    @property
    def seed(self) -> int:
        return self.stream.seed

    @property
    def batch_size(self) -> int:
        return self.stream.batch_size

    def batch(self, step: int):
        return self.stream.batch(self.offset + int(step))


def _set_lr(opt_state: Any, lr: float) -> Any:
    hp = dict(opt_state.hyperparams)
    hp["learning_rate"] = jnp.asarray(lr, jnp.asarray(hp["learning_rate"]).dtype)
    return opt_state._replace(hyperparams=hp)


def fit_curriculum(
    graphdef: nnx.GraphDef,
    params: Any,
    model_state: Any,
    curriculum: Curriculum,
    stream: Any,
    *,
    target_fn: TargetFn | None,
    learning_rate: float,
    optimizer: Callable[..., optax.GradientTransformation] = optax.adam,
    reset_opt_state: bool = False,
    pkt_kernel: str = "combined",
    workdir: str | None = None,
    ckpt_every: int = 0,
    log_every: int = 50,
    stop_at: int | None = None,
    progress: bool = True,
    desc: str = "curriculum",
    step_cache: dict | None = None,
    config: Any = None,
) -> tuple[Any, Any, Any, list[dict[str, float]]]:
    """Train through every stage with the one trainer (``jaxcomp.train.fit``).

    One optimizer, ``optax.inject_hyperparams(optimizer)(learning_rate=...)``, runs across stages;
    its learning rate is set to ``learning_rate * stage.lr_scale`` at each stage start, and with
    ``reset_opt_state`` its state is re-initialised there (the reference re-creates Adam every
    epoch). Stage ``i`` checkpoints to ``workdir/stage<i>`` and sees global steps
    ``[boundaries[i], boundaries[i+1])`` of ``stream``, so re-running after an interruption resumes
    exactly. ``stop_at`` ends training at that global step (with a checkpoint), as a preemption
    would. Returns ``(params, model_state, opt_state, history)``; history steps are global.
    Stages that differ only in their learning rate share one compiled step; pass the same
    ``step_cache`` dict to several calls (e.g. seeds) with the same ``target_fn`` object to share
    compiled steps across them too.

    Each stage's checkpoints carry its identity: the stage (features, losses, weights, epochs,
    learning rate), ``pkt_kernel``, ``reset_opt_state`` and the caller's ``config`` (the run's
    other training settings); resuming a stage under a different one is refused by ``fit``,
    naming the fields.
    """
    from jaxcomp.train import fit, make_train_step  # the trainer ties the layers together

    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if stop_at is not None and not 0 <= stop_at <= curriculum.total_steps:
        raise ValueError(f"stop_at must be in [0, {curriculum.total_steps}], got {stop_at}")
    tx = optax.inject_hyperparams(optimizer)(learning_rate=learning_rate)
    opt_state = tx.init(params)
    history: list[dict[str, float]] = []
    b = curriculum.boundaries
    steps = {} if step_cache is None else step_cache
    end_step = curriculum.total_steps if stop_at is None else stop_at
    for i, st in enumerate(curriculum.stages):
        start, end = b[i], b[i + 1]
        if start >= end_step:
            break
        if reset_opt_state and i > 0:
            opt_state = tx.init(params)
        opt_state = _set_lr(opt_state, learning_rate * st.lr_scale)
        sig = (graphdef, st.features, st.losses, st.weights, target_fn, optimizer, pkt_kernel)
        if sig not in steps:
            steps[sig] = make_train_step(
                stage_loss(graphdef, st, target_fn, pkt_kernel=pkt_kernel), tx
            )
        step_fn = steps[sig]
        params, model_state, opt_state, hist = fit(
            step_fn,
            params,
            model_state,
            opt_state,
            _OffsetStream(stream, start),
            min(end, end_step) - start,
            workdir=None if workdir is None else os.path.join(workdir, f"stage{i}"),
            ckpt_every=ckpt_every,
            log_every=log_every,
            progress=progress,
            desc=f"{desc} stage {i}",
            config={
                "run": config,
                "stage": i,
                "features": tuple(st.features),
                "losses": tuple(st.losses),
                "weights": None if st.weights is None else tuple(st.weights),
                "epochs": st.epochs,
                "learning_rate": learning_rate * st.lr_scale,
                "pkt_kernel": pkt_kernel,
                "reset_opt_state": reset_opt_state,
            },
        )
        history += [{**h, "step": h["step"] + start, "stage": i} for h in hist]
    return params, model_state, opt_state, history
