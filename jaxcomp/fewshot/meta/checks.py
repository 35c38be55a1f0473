"""Shape checks shared by the feature-level meta-learning heads (R2-D2, Versa, LEO)."""

from __future__ import annotations

import jax


def check_episode_features(
    support: jax.Array, query: jax.Array, feat_dim: int | None = None
) -> None:
    """``ValueError`` unless ``support`` is ``(way, shot, D)`` and ``query`` ``(M, D)`` features
    (and ``D == feat_dim`` when given), naming the shapes."""
    if support.ndim != 3 or query.ndim != 2:
        raise ValueError(
            f"support must be (way, shot, D) and query (M, D) features, got {support.shape} "
            f"and {query.shape}"
        )
    if support.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"support and query feature dims differ: {support.shape[-1]} vs {query.shape[-1]}"
        )
    if feat_dim is not None and support.shape[-1] != feat_dim:
        raise ValueError(f"features have dim {support.shape[-1]}, the model expects {feat_dim}")
