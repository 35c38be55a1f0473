"""The interface every few-shot method implements (FewSAR's unified testbed, Sec. III).

A method is a Flax NNX module with a ``backbone`` and:

- ``training``: ``"episodic"`` (trained on episodes through ``episode_loss``) or ``"pretrain"``
  (standard classification on the base classes through ``classify_loss``; fine-tuning methods),
  or a tuple of those for methods trained in phases (RFS, SKD, MTL): before phase ``i >= 1`` the
  protocol calls ``start_phase(i, rngs)`` on the model holding phase ``i-1``'s weights.
- ``test_on``: ``"features"`` when test-time prediction needs only frozen backbone features
  (every method of this module: the protocol embeds the test pool once and runs the heads of
  thousands of episodes on the features), or ``"images"`` (methods that adapt the backbone per
  episode, e.g. MAML, implement ``predict_images``).
- ``logits(support, query)``: support features ``(way, shot, *F)``, query features
  ``(M, *F)`` -> ``(M, way)`` scores, in the module's current train/eval mode.
- ``predict_features(support, query, key)``: test-time scores; defaults to ``logits``.

Episodes are laid out ``(way, shot|query, H, W, C)``; the episode label of row ``c`` is ``c``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def episode_labels(way: int, per_class: int) -> jax.Array:
    """``[0]*per_class + [1]*per_class + ...``: labels of a class-major flattened episode."""
    return jnp.repeat(jnp.arange(way), per_class)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and accuracy."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


class Frozen(nnx.Variable):
    """A weight that is part of a model's state but never trained (``split_model`` puts only
    ``nnx.Param`` in the trained params): a distillation teacher's weights."""


def frozen_copy(module: nnx.Module) -> nnx.Module:
    """A deep copy of ``module`` whose ``nnx.Param``s are ``Frozen`` (same values): it runs like
    the original but receives no gradient updates, and is checkpointed with the model state."""
    graphdef, state = nnx.split(nnx.clone(module))
    state = jax.tree.map(
        jnp.copy, state
    )  # own buffers: the copy may be donated beside the original
    state = nnx.map_state(
        lambda _, v: Frozen(v.get_value()) if isinstance(v, nnx.Param) else v, state
    )
    return nnx.merge(graphdef, state)


def run_in_eval_mode(module: nnx.Module, *args):
    """``module(*args)`` with its BatchNorm/Dropout in eval mode whatever the mode of the model
    around it (a teacher inside a student that trains), restoring the mode afterwards."""
    modes = [
        (m, m.use_running_average)
        for _, m in nnx.iter_modules(module)
        if hasattr(m, "use_running_average")
    ]
    drops = [
        (m, m.deterministic) for _, m in nnx.iter_modules(module) if hasattr(m, "deterministic")
    ]
    module.eval()
    try:
        return module(*args)
    finally:
        for m, v in modes:
            m.use_running_average = v
        for m, v in drops:
            m.deterministic = v


class FewShotModel(nnx.Module):
    """Base class: a backbone plus an episode head (see the module docstring)."""

    training = "episodic"
    test_on = "features"

    def embed(self, x: jax.Array) -> jax.Array:
        return self.backbone(x)

    def embed_episode(self, support_x: jax.Array, query_x: jax.Array):
        """One backbone pass over support and query images (BatchNorm sees the whole episode,
        as LibFewShot's). Returns ``(support (way, shot, *F), query (way * query, *F))``."""
        way, shot = support_x.shape[:2]
        q = query_x.shape[1]
        img = support_x.shape[2:]
        x = jnp.concatenate([support_x.reshape(way * shot, *img), query_x.reshape(way * q, *img)])
        f = self.embed(x)
        return f[: way * shot].reshape(way, shot, *f.shape[1:]), f[way * shot :]

    def logits(self, support: jax.Array, query: jax.Array) -> jax.Array:
        raise NotImplementedError

    def start_phase(self, phase: int, rngs: nnx.Rngs) -> None:
        """Prepare training phase ``phase >= 1`` (methods with several phases override it)."""
        raise NotImplementedError(f"{type(self).__name__} has one training phase, not {phase + 1}")

    def episode_loss(self, support_x: jax.Array, query_x: jax.Array):
        """Cross-entropy of the query scores (``(loss, metrics)``)."""
        way, q = query_x.shape[:2]
        fs, fq = self.embed_episode(support_x, query_x)
        loss, acc = cross_entropy(self.logits(fs, fq), episode_labels(way, q))
        return loss, {"accuracy": acc}

    def predict_features(self, support: jax.Array, query: jax.Array, key: jax.Array) -> jax.Array:
        del key
        return self.logits(support, query)
