"""The interface every few-shot method implements (FewSAR's unified testbed, Sec. III).

A method is a Flax NNX module with a ``backbone`` and:

- ``training``: ``"episodic"`` (trained on episodes through ``episode_loss``) or ``"pretrain"``
  (standard classification on the base classes through ``classify_loss``; fine-tuning methods).
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

    def episode_loss(self, support_x: jax.Array, query_x: jax.Array):
        """Cross-entropy of the query scores (``(loss, metrics)``)."""
        way, q = query_x.shape[:2]
        fs, fq = self.embed_episode(support_x, query_x)
        loss, acc = cross_entropy(self.logits(fs, fq), episode_labels(way, q))
        return loss, {"accuracy": acc}

    def predict_features(self, support: jax.Array, query: jax.Array, key: jax.Array) -> jax.Array:
        del key
        return self.logits(support, query)
