"""Logit and hidden-state knowledge distillation, as in LoSparse's distillation runs.

LoSparse (Li et al., ICML 2023, §4 and the reference ``run_glue_distil.py``) trains the compressed
student with the task loss plus ``alpha_output`` times the logit distillation loss of Hinton et al.
(2015, §2) at temperature ``T = 2`` and ``alpha_layer`` times the sum over all hidden states
(embedding output and every layer) of their mean squared error to the fine-tuned dense teacher.
The teacher's outputs are constants (``jax.lax.stop_gradient``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["distillation_loss", "hidden_state_mse", "logit_distillation"]


def logit_distillation(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: float = 2.0
) -> jax.Array:
    """``T^2 KL(softmax(z_t / T) || softmax(z_s / T))`` averaged over the batch (Hinton et al.
    2015, §2; the ``T^2`` keeps the gradient scale independent of ``T``).

    This is the reference's ``F.kl_div(log_softmax(z_s / T), softmax(z_t / T),
    reduction="batchmean") * T**2``: the sum over classes and all leading axes, divided by the
    size of the first axis. Logits are ``(batch, ..., classes)``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    zs = jnp.asarray(student_logits, jnp.float32) / temperature
    zt = jax.lax.stop_gradient(jnp.asarray(teacher_logits, jnp.float32)) / temperature
    if zs.shape != zt.shape:
        raise ValueError(f"logit shapes differ: student {zs.shape}, teacher {zt.shape}")
    log_ps, log_pt = jax.nn.log_softmax(zs, axis=-1), jax.nn.log_softmax(zt, axis=-1)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps))
    return kl / zs.shape[0] * temperature**2


def hidden_state_mse(
    student_hidden: Sequence[ArrayLike],
    teacher_hidden: Sequence[ArrayLike],
    attention_mask: ArrayLike | None = None,
) -> jax.Array:
    """``sum_l mean((h_s^l - h_t^l)^2)`` over the hidden states (embedding output, layer 1, ...,
    layer L, e.g. ``BertModel(..., output_hidden_states=True)[1]``), the reference's sum of
    ``MSELoss()`` over all 13 states of BERT-base.

    The reference averages over every position, padding included (the default here). With
    ``attention_mask`` (``(batch, seq)``, > 0 for tokens) the mean is over real tokens only.
    """
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(
            f"got {len(student_hidden)} student and {len(teacher_hidden)} teacher hidden states"
        )
    total = jnp.zeros((), jnp.float32)
    for i, (hs, ht) in enumerate(zip(student_hidden, teacher_hidden)):
        hs = jnp.asarray(hs, jnp.float32)
        ht = jax.lax.stop_gradient(jnp.asarray(ht, jnp.float32))
        if hs.shape != ht.shape:
            raise ValueError(f"hidden state {i}: student {hs.shape} != teacher {ht.shape}")
        sq = (hs - ht) ** 2
        if attention_mask is None:
            total = total + sq.mean()
        else:
            m = (jnp.asarray(attention_mask) > 0).astype(jnp.float32)[..., None]
            total = total + (sq * m).sum() / jnp.maximum(m.sum() * hs.shape[-1], 1.0)
    return total


def distillation_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    student_hidden: Sequence[ArrayLike] = (),
    teacher_hidden: Sequence[ArrayLike] = (),
    *,
    temperature: float = 2.0,
    alpha_output: float = 1.0,
    alpha_layer: float = 1.0,
    attention_mask: ArrayLike | None = None,
) -> jax.Array:
    """LoSparse's distillation term (reference ``run_glue_distil.py``), added to the task loss:
    ``alpha_output * logit_distillation(T) + alpha_layer * hidden_state_mse``. A term whose
    ``alpha`` is 0 is skipped (the reference's defaults for its GLUE runs include
    ``alpha_output=0, alpha_layer=15``)."""
    loss = jnp.zeros((), jnp.float32)
    if alpha_output:
        loss = loss + alpha_output * logit_distillation(student_logits, teacher_logits, temperature)
    if alpha_layer:
        loss = loss + alpha_layer * hidden_state_mse(student_hidden, teacher_hidden, attention_mask)
    return loss
