"""experiments/cram_polarity.py: one-shot pruning of the encoder kernels against a numpy brute
force (global magnitude, 2:4), CrAM's selection, a sparse fine-tune that keeps its zeros through
the experiment's trainer, and the seed-paired summary (tiny random BERT, synthetic labels)."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import test_losparse_polarity
from flax import nnx

from experiments import cram_polarity as cp
from experiments import losparse_polarity as lp
from experiments.configs.cram_polarity_smoke import get_config as smoke_config
from jaxcomp.models import bert
from jaxcomp.optim import sparse_finetune
from jaxcomp.pruning.masks import keep_count
from jaxcomp.pruning.select import path_str, select

TINY = test_losparse_polarity.TINY  # the same tiny random BERT


def _model(seed=0):
    return bert.BertForSequenceClassification(TINY, 2, rngs=nnx.Rngs(seed))


def _named_params(model) -> dict:
    _, params, _ = nnx.split(model, nnx.Param, ...)
    flat = jax.tree_util.tree_flatten_with_path(nnx.as_pure(params))[0]
    return {path_str(p): np.asarray(x) for p, x in flat}


def _is_kernel(name: str) -> bool:
    return re.search(cp.KERNELS, name) is not None


def test_one_shot_global_magnitude_equals_numpy_brute_force():
    model = _model()
    before = _named_params(model)
    kernels = {k: v for k, v in before.items() if _is_kernel(k)}
    assert len(kernels) == 6 * TINY.num_hidden_layers
    for s in (0.5, 0.8, 0.9):
        pruned, _ = cp.prune(model, s)
        after = _named_params(pruned)
        mags = np.sort(np.concatenate([np.abs(v).ravel() for v in kernels.values()]))[::-1]
        n = mags.size
        keep = keep_count(n, s)
        threshold = mags[keep - 1]
        kept = 0
        for k, v in before.items():
            if _is_kernel(k):
                # every kept weight is at least the k-th largest magnitude, every pruned one at most
                nz = after[k] != 0
                assert np.all(np.abs(v[nz]) >= threshold) and np.all(np.abs(v[~nz]) <= threshold)
                np.testing.assert_array_equal(after[k][nz], v[nz])
                kept += int(nz.sum())
            else:  # embeddings, biases, LayerNorms, pooler, classifier: untouched
                np.testing.assert_array_equal(after[k], v)
        assert kept == keep
        assert cp.kernel_sparsity(pruned) == pytest.approx(1 - keep / n)


def test_one_shot_2_4_keeps_the_two_largest_of_every_input_group():
    model = _model(1)
    before = _named_params(model)
    pruned, _ = cp.prune(model, (2, 4))
    after = _named_params(pruned)
    for k, v in before.items():
        if not _is_kernel(k):
            np.testing.assert_array_equal(after[k], v)
            continue
        groups = np.abs(v).T.reshape(v.shape[1], -1, 4)  # (out, in / 4, 4)
        got = (after[k] != 0).T.reshape(v.shape[1], -1, 4)
        assert np.all(got.sum(-1) == 2)
        top2 = np.argsort(-groups, axis=-1, kind="stable")[..., :2]
        want = np.zeros_like(got)
        np.put_along_axis(want, top2, True, axis=-1)
        np.testing.assert_array_equal(got, want)
    assert cp.kernel_sparsity(pruned) == pytest.approx(0.5)


def test_cram_compresses_exactly_the_encoder_kernels():
    _, params, _ = nnx.split(_model(), nnx.Param, ...)
    flags = select(nnx.as_pure(params), cp.kernel_where())
    flat = jax.tree_util.tree_flatten_with_path(flags)[0]
    chosen = sorted(path_str(p) for p, f in flat if f)
    assert chosen == sorted(k for k in _named_params(_model()) if _is_kernel(k))
    cfg = smoke_config()
    for name in cp.OPTIMIZERS:
        tx = cp.make_tx(name, cfg, steps=10, seed=0)
        tx.init(nnx.as_pure(params))  # the where selects something, the levels are valid


def test_sparse_finetune_keeps_the_one_shot_zeros_and_trains_the_rest(tmp_path):
    cfg = smoke_config()
    cfg.batch_size = 4
    rng = np.random.default_rng(0)
    data = {
        "input_ids": rng.integers(1, 50, size=(16, 8)).astype(np.int32),
        "attention_mask": np.ones((16, 8), np.int32),
        "label": rng.integers(0, 2, 16).astype(np.int32),
    }
    pruned, mask = cp.prune(_model(), 0.7)
    before = _named_params(pruned)
    tx = sparse_finetune(lp._adamw(1e-3, 6, 0.0, 0.0), mask)
    tuned = lp.train(
        pruned, tx, data, cfg, 0, 6, tmp_path, "ft", "adam", stage_config={"stage": "test"}
    )
    after = _named_params(tuned)
    for k, v in before.items():
        if _is_kernel(k):
            np.testing.assert_array_equal(after[k] == 0, v == 0)  # the same zeros, exactly
            assert not np.allclose(after[k][v != 0], v[v != 0])  # the kept weights moved
    assert cp.kernel_sparsity(tuned) == pytest.approx(0.7, abs=1e-3)


def test_summary_pairs_seeds_against_adam():
    def row(seed, opt, accs):
        return {
            "seed": seed,
            "optimizer": opt,
            "one_shot": [
                {"compression": c, "dev_acc": a, "test_acc": a}
                for c, a in zip(("dense", "0.9"), accs)
            ],
        }

    rows = [
        row(0, "adam", (0.80, 0.50)),
        row(1, "adam", (0.78, 0.55)),
        row(0, "cram_plus_multi", (0.81, 0.70)),
        row(1, "cram_plus_multi", (0.77, 0.72)),
    ]
    s = {(r["optimizer"], r["compression"]): r for r in cp.summarise(rows)}
    c = s[("cram_plus_multi", "0.9")]
    assert c["test_acc_mean"] == pytest.approx(0.71)
    assert c["test_acc_std"] == pytest.approx(np.std([0.70, 0.72], ddof=1))
    assert c["diff_to_adam_mean"] == pytest.approx(np.mean([0.20, 0.17]))
    assert c["diff_to_adam_std"] == pytest.approx(np.std([0.20, 0.17], ddof=1))
    assert s[("adam", "0.9")]["diff_to_adam_mean"] is None
    table = cp.markdown(cp.summarise(rows))
    assert "| 0.9 | 52.5 ± 3.5 | 71.0 ± 1.4 |" in table


def test_diag_loss_and_accuracy_equal_a_direct_evaluation():
    """scripts/cram_polarity_diag.py: its batched, evenly spaced loss/accuracy equals one direct
    forward pass over the same sentences (cross-entropy recomputed in numpy)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "cram_polarity_diag.py"
    spec = importlib.util.spec_from_file_location("cram_polarity_diag", path)
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)

    model = _model()
    rng = np.random.default_rng(0)
    n = 250
    table = {
        "input_ids": rng.integers(1, 50, size=(n, 8)).astype(np.int32),
        "attention_mask": (np.arange(8)[None] < rng.integers(2, 9, size=(n, 1))).astype(np.int32),
        "label": rng.integers(0, 2, size=n).astype(np.int32),
    }
    got = diag.loss_and_accuracy(model, table, 120)
    idx = np.unique(np.linspace(0, n - 1, 120).astype(int))
    logits = np.asarray(model(table["input_ids"][idx], table["attention_mask"][idx]), np.float64)
    y = table["label"][idx]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert got["sentences"] == len(idx)
    np.testing.assert_allclose(got["loss"], -logp[np.arange(len(y)), y].mean(), rtol=1e-5)
    assert got["accuracy"] == np.mean(logits.argmax(-1) == y)
