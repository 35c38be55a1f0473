"""Link-prediction metrics: filtered ranks, MRR, Hits@k (both sides) and AUC-PR (Countries).

Filtered setting (Bordes et al. 2013): when ranking the true object ``o`` of ``(s, p, o)`` against
every constant ``o'``, candidates ``(s, p, o')`` that are known true (train/dev/test) are removed;
likewise for subjects. MRR and Hits@k average over both sides (GNTP Sec. 5, Table 2).

Ties (candidates scored exactly like the true answer) are common with min/max proof scores, so the
tie rule matters: ``"pessimistic"`` ranks every tied candidate above the true answer,
``"optimistic"`` below it, ``"average"`` halfway, and ``"reference"`` is the rule of the GNTP/NTP
evaluation code, ``1 + argsort(argsort(-scores))`` over the candidates in entity-name order (the
reference indexes entities by sorted name), i.e. a tie is broken by name: a tied candidate ranks
above the true answer iff its name sorts before the true answer's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

__all__ = ["TIES", "filtered_rank", "ranking_metrics", "evaluate_ranking", "auc_pr", "name_order"]

TIES = ("pessimistic", "average", "optimistic", "reference")


def name_order(names: Sequence[str]) -> np.ndarray:
    """Position of each name in sorted order: the tie-break key of the ``"reference"`` rule
    (the reference code indexes entities by ``sorted(entity_set)``)."""
    names = list(names)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"candidate names must be unique, got {dup!r} twice")
    order = np.empty(len(names), np.int64)
    order[np.argsort(np.array(names, dtype=object), kind="stable")] = np.arange(len(names))
    return order


def filtered_rank(
    scores: np.ndarray,
    true_index: int,
    filtered: Iterable[int],
    tie: str = "pessimistic",
    *,
    order: np.ndarray | None = None,
):
    """Rank (1 = best) of ``scores[true_index]`` ignoring candidates in ``filtered``.

    ``tie``: ``"pessimistic"`` (ties rank above the true answer), ``"optimistic"``,
    ``"average"`` or ``"reference"`` (a tied candidate ranks above the true answer iff its
    ``order`` key is smaller; ``order`` defaults to the index, and :func:`name_order` gives the
    reference's entity-name order). ``"reference"`` equals
    ``1 + argsort(argsort(-s, stable))[true]`` over the kept candidates sorted by ``order``.
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1 or not 0 <= int(true_index) < scores.shape[0]:
        raise ValueError(
            f"need 1-d scores and 0 <= true_index < {scores.shape[0]}, got scores of shape "
            f"{scores.shape} and true_index={true_index}"
        )
    nan = np.flatnonzero(np.isnan(scores))
    if nan.size:
        raise ValueError(f"scores[{nan[0]}] is NaN ({nan.size} NaN score(s)): cannot rank")
    keep = np.ones(scores.shape[0], bool)
    keep[list(filtered)] = False
    keep[true_index] = True
    target = scores[true_index]
    others = scores[keep]
    greater = int(np.sum(others > target))
    equal = int(np.sum(others == target)) - 1
    if tie == "reference":
        key = np.arange(scores.shape[0]) if order is None else np.asarray(order)
        if key.shape != scores.shape:
            raise ValueError(f"order has shape {key.shape}, scores {scores.shape}: they must match")
        before = keep & (scores == target) & (key < key[true_index])
        return 1 + greater + int(np.sum(before))
    if tie == "pessimistic":
        return 1 + greater + equal
    if tie == "optimistic":
        return 1 + greater
    if tie == "average":
        return 1 + greater + equal / 2
    raise ValueError(f"tie must be one of {TIES}, got {tie!r}")


def ranking_metrics(ranks: Iterable[float], hits=(1, 3, 10)) -> dict:
    """``{"mrr", "hits@k"...}`` from a list of ranks."""
    r = np.asarray(list(ranks), np.float64)
    if r.size == 0:
        raise ValueError("no ranks given")
    bad = np.flatnonzero(~(r >= 1) | ~np.isfinite(r))
    if bad.size:
        raise ValueError(f"ranks must be finite and >= 1, got ranks[{bad[0]}] = {r[bad[0]]}")
    out = {"mrr": float(np.mean(1.0 / r))}
    for k in hits:
        out[f"hits@{k}"] = float(np.mean(r <= k))
    return out


def evaluate_ranking(
    score_fn: Callable[[np.ndarray], np.ndarray],
    test: np.ndarray,
    all_true: Iterable[tuple[int, int, int]],
    num_constants: int,
    *,
    tie: str = "pessimistic",
    hits=(1, 3, 10),
    other_ties: tuple[str, ...] = (),
    names: Sequence[str] | None = None,
) -> dict:
    """Filtered MRR/Hits@k over both sides of every test triple ``(p, s, o)``.

    ``score_fn(goals int (B, 3)) -> (B,)`` is called with the ``num_constants`` subject
    corruptions and object corruptions of one test triple at a time. Metrics for each tie policy
    in ``other_ties`` are added under ``"<metric>[<tie>]"`` keys (same scores). ``names`` (the
    constants' names, index order) sets the ``"reference"`` tie-break to entity-name order, as in
    the GNTP code; without it ties are broken by index.
    """
    known = set(map(tuple, np.asarray(list(all_true)).reshape(-1, 3).tolist()))
    cands = np.arange(num_constants)
    ties = (tie, *other_ties)
    for t in ties:
        if t not in TIES:
            raise ValueError(f"tie must be one of {TIES}, got {t!r}")
    order = None
    if names is not None:
        if len(names) != num_constants:
            raise ValueError(f"names has {len(names)} entries, num_constants is {num_constants}")
        order = name_order(names)
    ranks: dict[str, list] = {t: [] for t in ties}
    for p, s, o in np.asarray(test).tolist():
        subj = np.stack([np.full_like(cands, p), cands, np.full_like(cands, o)], 1)
        obj = np.stack([np.full_like(cands, p), np.full_like(cands, s), cands], 1)
        sc = np.asarray(score_fn(np.concatenate([subj, obj])))
        sc_s, sc_o = sc[:num_constants], sc[num_constants:]
        f_s = [c for c in range(num_constants) if c != s and (p, c, o) in known]
        f_o = [c for c in range(num_constants) if c != o and (p, s, c) in known]
        for t in ties:
            ranks[t].append(filtered_rank(sc_s, s, f_s, t, order=order))
            ranks[t].append(filtered_rank(sc_o, o, f_o, t, order=order))
    out = ranking_metrics(ranks[tie], hits)
    for t in other_ties:
        out.update({f"{k}[{t}]": v for k, v in ranking_metrics(ranks[t], hits).items()})
    return out


def auc_pr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step interpolation).

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over decreasing thresholds (tied scores form one
    threshold); the Countries metric of NTP Sec. 5.1 / GNTP Table 1.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    raw_labels = np.asarray(labels).reshape(-1)
    if scores.shape != raw_labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {raw_labels.shape} differ in shape")
    if not np.all((raw_labels == 0) | (raw_labels == 1)):
        bad = np.flatnonzero(~((raw_labels == 0) | (raw_labels == 1)))[0]
        raise ValueError(f"labels must be 0/1, got labels[{bad}] = {raw_labels[bad]!r}")
    nan = np.flatnonzero(np.isnan(scores))
    if nan.size:
        raise ValueError(f"scores[{nan[0]}] is NaN ({nan.size} NaN score(s))")
    labels = raw_labels.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError("auc_pr needs at least one positive label")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each threshold
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
