"""Masked-language-model batching (BERT, Devlin et al., 2019, §3.1 "Task #1: Masked LM").

:func:`mask_tokens` selects each maskable token with probability ``mask_prob`` (15%); a selected
token is replaced by ``[MASK]`` with probability 0.8, by a random token with probability 0.1 and
left unchanged with probability 0.1. The random token is drawn uniformly from ``[low, high)``,
which may differ per position (mixed-vocabulary sequences draw a replacement from the vocabulary
the original token belongs to). Pure numpy with an explicit ``np.random.Generator``, so a batch is
a function of its seed (step-indexed streams resume exactly).

:class:`ArrayStream` is the step-indexed stream of dicts of arrays (token ids, labels) that
``jaxcomp.train.fit`` consumes, the text counterpart of ``DataStream``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

__all__ = ["ArrayStream", "mask_tokens"]


def mask_tokens(
    ids: np.ndarray,
    maskable: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    low: int | np.ndarray,
    high: int | np.ndarray,
    mask_prob: float = 0.15,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
) -> dict[str, np.ndarray]:
    """BERT's masking (§3.1 and Appendix A.1): 15% of tokens, of which 80/10/10.

    Args:
      ids: int token ids ``(batch, seq)``.
      maskable: bool ``(batch, seq)``; False for padding and special tokens.
      rng: numpy generator (the only source of randomness).
      mask_id: the ``[MASK]`` id.
      low, high: random replacements are uniform in ``[low, high)``; ints or arrays broadcastable
        to ``ids`` (per-position vocabulary ranges).
      mask_prob: probability that a maskable token is selected for prediction.
      mask_frac, random_frac: of the selected tokens, the share replaced by ``[MASK]`` and the
        share replaced by a random token (the rest stay unchanged).

    Returns:
      ``{"input_ids", "mlm_labels", "mlm_weights"}``: the corrupted ids, the original ids
      (0 where not selected) and float32 weights (1 where selected).
    """
    ids = np.asarray(ids)
    maskable = np.asarray(maskable, bool)
    if ids.shape != maskable.shape:
        raise ValueError(f"ids {ids.shape} and maskable {maskable.shape} differ in shape")
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if mask_frac < 0 or random_frac < 0 or mask_frac + random_frac > 1:
        raise ValueError(
            f"mask_frac and random_frac must be >= 0 with sum <= 1, got {mask_frac}, {random_frac}"
        )
    low = np.broadcast_to(np.asarray(low), ids.shape)
    high = np.broadcast_to(np.asarray(high), ids.shape)
    if np.any(high[maskable] <= low[maskable]):
        raise ValueError("random replacement ranges must satisfy low < high on maskable tokens")
    selected = maskable & (rng.random(ids.shape) < mask_prob)
    u = rng.random(ids.shape)
    to_mask = selected & (u < mask_frac)
    to_random = selected & (u >= mask_frac) & (u < mask_frac + random_frac)
    random_ids = low + np.floor(rng.random(ids.shape) * (high - low)).astype(ids.dtype)
    out = np.where(to_mask, mask_id, np.where(to_random, random_ids, ids)).astype(np.int32)
    return {
        "input_ids": out,
        "mlm_labels": np.where(selected, ids, 0).astype(np.int32),
        "mlm_weights": selected.astype(np.float32),
    }


@dataclasses.dataclass(frozen=True)
class ArrayStream:
    """Step-indexed batches over a dict of equal-length arrays (exact resume, like
    ``jaxcomp.data.DataStream``): the epoch's permutation comes from ``(seed, epoch)``;
    incomplete final batches are dropped."""

    arrays: Mapping[str, np.ndarray]
    batch_size: int
    seed: int = 0

    def __post_init__(self):
        lengths = {k: len(v) for k, v in self.arrays.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"arrays must be non-empty and of equal length, got {lengths}")
        n = next(iter(lengths.values()))
        if not 1 <= self.batch_size <= n:
            raise ValueError(f"batch_size must be in [1, {n}], got {self.batch_size}")

    @property
    def steps_per_epoch(self) -> int:
        return len(next(iter(self.arrays.values()))) // self.batch_size

    def batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(int(step), self.steps_per_epoch)
        n = len(next(iter(self.arrays.values())))
        perm = np.random.default_rng((self.seed, epoch)).permutation(n)
        idx = perm[i * self.batch_size : (i + 1) * self.batch_size]
        return {k: np.asarray(v)[idx] for k, v in self.arrays.items()}
