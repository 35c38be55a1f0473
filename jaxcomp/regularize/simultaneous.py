"""Simultaneous Learning (Castro, Fortuna, de Queiroz, Moreira, Luz, *Regularization Through
Simultaneous Learning: A Case Study on Plant Classification*, arXiv 2305.13447).

The target classes (``K_T``) and the classes of an auxiliary data set (``K_A``) share one softmax
head of ``K_T + K_A`` outputs; each batch mixes target and auxiliary images, and the loss adds an
*inter-group penalty* that punishes probability mass on the other group (the paper's Sec. 3).

**The loss here is a reconstruction.** The paper's exact equation could not be retrieved offline
(only its abstract, which names "a customized loss function featuring an inter-group penalty").
We implement (``simultaneous_loss``)::

    L = w_T * mean_{i in T} CE_i + w_A * mean_{i in A} CE_i + lambda * mean_i GP_i
    GP_i = -log(1 - sum_{c in other(y_i)} p_ic) = -log P(group(y_i) | x_i)      ("log")
    GP_i =      sum_{c in other(y_i)} p_ic                                      ("linear")

with ``CE_i`` the cross-entropy of the joint ``K_T + K_A`` softmax, group means (so the two groups
weigh ``w_T : w_A`` whatever the batch ratio) and ``lambda = 0`` the joint softmax alone.
Prediction is the argmax over the target classes only (``predict_target``).

Also here: ``multitask_loss`` (the separate-heads multi-task baseline: one softmax per group on a
shared trunk), ``SimultaneousHead`` / ``extend_head`` (turn any classifier with a final
``nnx.Linear`` into a ``K_T + K_A`` classifier, optionally with dropout before it), and the
paper's interpretability analysis (Sec. 5): ``conv_activations`` (global-average-pooled channel
activations of every conv layer) and ``class_correlation`` (per-class mean vectors, their Pearson
correlation matrix across classes, and its mean off-diagonal value).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PENALTIES = ("log", "linear")


@dataclasses.dataclass(frozen=True)
class Groups:
    """Static class groups of a joint head: ``target`` and ``auxiliary`` are disjoint, non-empty
    tuples of class ids whose union is ``range(num_classes)``. Build with ``make_groups`` (which
    validates) or ``Groups.contiguous(K_T, K_A)`` (targets first, then auxiliaries)."""

    target: tuple[int, ...]
    auxiliary: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.target) + len(self.auxiliary)

    @property
    def is_target(self) -> np.ndarray:
        """Bool ``(num_classes,)``: whether each class id belongs to the target group."""
        out = np.zeros(self.num_classes, bool)
        out[list(self.target)] = True
        return out

    @classmethod
    def contiguous(cls, num_target: int, num_auxiliary: int) -> Groups:
        return make_groups(range(num_target), range(num_target, num_target + num_auxiliary))


def make_groups(target: Iterable[int], auxiliary: Iterable[int]) -> Groups:
    """Validate and freeze the two class groups (Sec. 3: the target data set's classes and the
    auxiliary data set's classes, side by side in one output layer)."""
    t = tuple(int(c) for c in target)
    a = tuple(int(c) for c in auxiliary)
    if not t:
        raise ValueError(f"target group must be non-empty, got {t}")
    if not a:
        raise ValueError(f"auxiliary group must be non-empty, got {a}")
    for name, g in (("target", t), ("auxiliary", a)):
        if len(set(g)) != len(g):
            dup = sorted(c for c in set(g) if g.count(c) > 1)
            raise ValueError(f"{name} group has repeated classes {dup}")
        if min(g) < 0:
            raise ValueError(f"{name} group has negative class ids {[c for c in g if c < 0]}")
    overlap = sorted(set(t) & set(a))
    if overlap:
        raise ValueError(f"target and auxiliary groups overlap in classes {overlap}")
    k = len(t) + len(a)
    outside = sorted(c for c in t + a if c >= k)
    if outside:
        raise ValueError(
            f"class ids must cover range({k}) exactly (K_T + K_A = {k}); got ids {outside} >= {k}"
        )
    return Groups(t, a)


def check_labels(labels: Any, groups: Groups) -> None:
    """Raise ``ValueError`` naming the first label outside both groups (concrete labels only;
    traced labels inside ``jit`` cannot be checked and are skipped)."""
    if isinstance(labels, jax.core.Tracer):
        return
    y = np.asarray(labels)
    bad = y[(y < 0) | (y >= groups.num_classes)]
    if bad.size:
        raise ValueError(
            f"label {int(bad[0])} is in neither group (target {groups.target}, "
            f"auxiliary {groups.auxiliary})"
        )


def _check_logits(logits: jax.Array, groups: Groups) -> None:
    if logits.ndim != 2 or logits.shape[-1] != groups.num_classes:
        raise ValueError(
            f"logits must have shape (batch, {groups.num_classes}) for K_T + K_A = "
            f"{len(groups.target)} + {len(groups.auxiliary)}, got {logits.shape}"
        )


def _own_group_lse(logits: jax.Array, labels: jax.Array, groups: Groups):
    """``(in_target (B,), logsumexp over all classes (B,), logsumexp over y_i's group (B,))``."""
    is_t = jnp.asarray(groups.is_target)
    in_t = is_t[labels]
    same = is_t[None, :] == in_t[:, None]  # (B, K): class c is in y_i's group
    lse_all = jax.nn.logsumexp(logits, axis=-1)
    lse_own = jax.nn.logsumexp(jnp.where(same, logits, -jnp.inf), axis=-1)
    return in_t, lse_all, lse_own


def inter_group_penalty(
    logits: jax.Array, labels: jax.Array, groups: Groups, *, kind: str = "log"
) -> jax.Array:
    """Per-sample inter-group penalty ``GP_i`` (reconstruction of the paper's Sec. 3 penalty).

    ``"log"``: ``-log(1 - sum_{c in other group} p_ic) = logsumexp(z) - logsumexp(z_own group)``
    (computed in that stable form); ``"linear"``: the other group's probability mass itself.
    Zero exactly when no probability falls on the other group.
    """
    if kind not in PENALTIES:
        raise ValueError(f"penalty kind must be one of {PENALTIES}, got {kind!r}")
    _check_logits(logits, groups)
    check_labels(labels, groups)
    logits = logits.astype(jnp.float32)
    _, lse_all, lse_own = _own_group_lse(logits, labels, groups)
    log_own = lse_own - lse_all  # log P(own group | x) = log(1 - P(other group | x))
    return -log_own if kind == "log" else -jnp.expm1(log_own)


def _group_means(values: jax.Array, in_t: jax.Array) -> tuple[jax.Array, jax.Array]:
    n_t = jnp.sum(in_t)
    n_a = in_t.shape[0] - n_t
    mean_t = jnp.sum(jnp.where(in_t, values, 0.0)) / jnp.maximum(n_t, 1)
    mean_a = jnp.sum(jnp.where(in_t, 0.0, values)) / jnp.maximum(n_a, 1)
    return mean_t, mean_a


def _check_weights(group_weights: Sequence[float]) -> tuple[float, float]:
    if len(group_weights) != 2 or min(group_weights) < 0:
        raise ValueError(f"group_weights must be two non-negative floats, got {group_weights}")
    return float(group_weights[0]), float(group_weights[1])


def simultaneous_loss(
    logits: jax.Array,
    labels: jax.Array,
    groups: Groups,
    *,
    lam: float = 1.0,
    group_weights: Sequence[float] = (1.0, 1.0),
    penalty: str = "log",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The Simultaneous Learning loss (reconstruction of the paper's Sec. 3; see module doc):
    ``w_T * mean_{i in T} CE_i + w_A * mean_{i in A} CE_i + lam * mean_i GP_i`` over one joint
    softmax of ``K_T + K_A`` logits. ``labels`` are joint class ids; a group absent from the batch
    contributes 0. Returns ``(loss, {"ce_target", "ce_auxiliary", "penalty"})``."""
    w_t, w_a = _check_weights(group_weights)
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    gp = inter_group_penalty(logits, labels, groups, kind=penalty)
    logits = logits.astype(jnp.float32)
    in_t, lse_all, _ = _own_group_lse(logits, labels, groups)
    ce = lse_all - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    ce_t, ce_a = _group_means(ce, in_t)
    pen = jnp.mean(gp)
    loss = w_t * ce_t + w_a * ce_a + lam * pen
    return loss, {"ce_target": ce_t, "ce_auxiliary": ce_a, "penalty": pen}


def multitask_loss(
    logits: jax.Array,
    labels: jax.Array,
    groups: Groups,
    *,
    group_weights: Sequence[float] = (1.0, 1.0),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Separate-heads multi-task baseline: a softmax over the target logits for target samples
    and one over the auxiliary logits for auxiliary samples (two linear heads on a shared trunk
    are one ``K_T + K_A`` linear layer split in two; only the normalisation differs from the
    joint head). ``w_T * mean_T CE_T + w_A * mean_A CE_A``; no inter-group term."""
    w_t, w_a = _check_weights(group_weights)
    _check_logits(logits, groups)
    check_labels(labels, groups)
    logits = logits.astype(jnp.float32)
    in_t, _, lse_own = _own_group_lse(logits, labels, groups)
    ce = lse_own - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    ce_t, ce_a = _group_means(ce, in_t)
    return w_t * ce_t + w_a * ce_a, {"ce_target": ce_t, "ce_auxiliary": ce_a}


def predict_target(logits: jax.Array, groups: Groups) -> jax.Array:
    """Target-only prediction: the argmax over the target logits, as a position in
    ``groups.target`` (``0..K_T-1``); auxiliary outputs never win."""
    _check_logits(logits, groups)
    return jnp.argmax(logits[:, np.asarray(groups.target)], axis=-1)


class SimultaneousHead(nnx.Module):
    """Optional dropout, then one linear layer of ``num_target + num_auxiliary`` outputs (the
    paper's modified final layer, Sec. 3). ``num_auxiliary=0`` is a plain (dropout) head."""

    def __init__(
        self,
        in_features: int,
        num_target: int,
        num_auxiliary: int = 0,
        *,
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if num_target < 1:
            raise ValueError(f"num_target must be >= 1, got {num_target}")
        if num_auxiliary < 0:
            raise ValueError(f"num_auxiliary must be >= 0, got {num_auxiliary}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_target = num_target
        self.num_auxiliary = num_auxiliary
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.linear = nnx.Linear(in_features, num_target + num_auxiliary, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.linear(x)


def extend_head(
    model: nnx.Module,
    num_auxiliary: int,
    *,
    attr: str = "head",
    dropout: float = 0.0,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Replace ``model.<attr>`` (an ``nnx.Linear`` with ``K_T`` outputs, as in every
    ``jaxcomp.models`` classifier) by a ``SimultaneousHead`` with ``K_T + num_auxiliary`` outputs,
    keeping the old weights for the first ``K_T`` outputs. Returns ``model`` (changed in place);
    its groups are ``Groups.contiguous(K_T, num_auxiliary)``."""
    old = getattr(model, attr, None)
    if not isinstance(old, nnx.Linear):
        raise ValueError(f"model.{attr} must be an nnx.Linear head, got {type(old).__name__}")
    k_t = old.out_features
    head = SimultaneousHead(old.in_features, k_t, num_auxiliary, dropout=dropout, rngs=rngs)
    head.linear.kernel[...] = head.linear.kernel[...].at[:, :k_t].set(old.kernel[...])
    if old.bias is not None:
        head.linear.bias[...] = head.linear.bias[...].at[:k_t].set(old.bias[...])
    setattr(model, attr, head)
    return model


@contextlib.contextmanager
def _record_convs(model: nnx.Module, sink: dict[str, jax.Array]):
    names = {
        id(m): "/".join(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)
    }
    original = nnx.Conv.__call__

    def call(self, x, *args, **kwargs):
        y = original(self, x, *args, **kwargs)
        if id(self) in names:
            sink[names[id(self)]] = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
        return y

    nnx.Conv.__call__ = call
    try:
        yield
    finally:
        nnx.Conv.__call__ = original


def _convs(model: nnx.Module) -> list[nnx.Conv]:
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)]


def conv_activations(model: nnx.Module, images: jax.Array) -> dict[str, jax.Array]:
    """Global-average-pooled output channels of every ``nnx.Conv`` in ``model`` on ``images``
    (NHWC): ``{layer path: (N, channels)}`` in call order (the features of the paper's
    interpretability analysis, Sec. 5). Works eagerly and under ``jit``/``vmap`` (a pure
    function that merges the model inside). Run the model in eval mode."""
    if not _convs(model):
        raise ValueError(f"{type(model).__name__} has no nnx.Conv layer")
    sink: dict[str, jax.Array] = {}
    with _record_convs(model, sink):
        model(images)
    return sink


def class_correlation(
    features: jax.Array, labels: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-class mean feature vectors ``(C, D)``, the Pearson correlation matrix of those vectors
    across classes ``(C, C)`` (correlation over the ``D`` channels), and the mean off-diagonal
    correlation (the paper's Sec. 5 summary: lower means more class-specific features). Every
    class must occur in ``labels``."""
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"features must be (N, D) with labels (N,), got {features.shape} and {labels.shape}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not isinstance(labels, jax.core.Tracer):
        present = set(np.unique(np.asarray(labels)).tolist())
        missing = sorted(set(range(num_classes)) - present)
        extra = sorted(present - set(range(num_classes)))
        if missing or extra:
            raise ValueError(
                f"every class in range({num_classes}) must occur exactly; missing {missing}, "
                f"outside {extra}"
            )
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # (N, C)
    means = (onehot.T @ features.astype(jnp.float32)) / jnp.sum(onehot, 0)[:, None]
    centred = means - means.mean(axis=1, keepdims=True)
    unit = centred / jnp.linalg.norm(centred, axis=1, keepdims=True)
    corr = unit @ unit.T
    off = (jnp.sum(corr) - jnp.trace(corr)) / (num_classes * (num_classes - 1))
    return means, corr, off
