"""experiments/losparse_polarity.py: the split, the stored-size accounting, and that every method
ends at its parameter budget after the configured steps (tiny random BERT, synthetic labels)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from flax import nnx

from experiments import losparse_polarity as lp
from experiments.configs.losparse_polarity_smoke import get_config as smoke_config
from experiments.losparse import encoder_linear_params, make_student
from jaxcomp.models import bert
from jaxcomp.nn import losparse as ls
from jaxcomp.pruning.masks import keep_count

TINY = bert.BertConfig(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
)


def test_stratified_split_is_a_partition_with_class_proportions():
    labels = np.array([0] * 60 + [1] * 40)
    parts = lp.stratified_split(labels, 0.1, 0.2, seed=3)
    together = np.sort(np.concatenate(list(parts.values())))
    np.testing.assert_array_equal(together, np.arange(100))  # disjoint and complete
    for name, n0, n1 in (("dev", 6, 4), ("test", 12, 8), ("train", 42, 28)):
        got = labels[parts[name]]
        assert (np.sum(got == 0), np.sum(got == 1)) == (n0, n1), name
    again = lp.stratified_split(labels, 0.1, 0.2, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = lp.stratified_split(labels, 0.1, 0.2, seed=4)
    assert not np.array_equal(parts["test"], other["test"])


def test_csr_bytes_match_scipy():
    rng = np.random.default_rng(0)
    kernels = [rng.normal(size=(20, 30)) * (rng.random((20, 30)) < 0.3) for _ in range(3)]
    expected = 0
    for k in kernels:
        csr = scipy.sparse.csr_matrix(k.T)  # rows = output neurons
        expected += csr.data.size * 4 + csr.indices.size * 2 + csr.indptr.size * 4
    assert lp.csr_bytes(kernels) == expected


@pytest.mark.parametrize("method", lp.METHODS)
def test_each_method_ends_at_its_budget(tmp_path, method):
    cfg = smoke_config()
    cfg.steps, cfg.delta_t, cfg.batch_size, cfg.distill = 12, 2, 4, 0.0
    ratio = 0.3
    dense = bert.BertForSequenceClassification(TINY, 2, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    data = {
        "input_ids": rng.integers(1, 50, size=(16, 8)).astype(np.int32),
        "attention_mask": np.ones((16, 8), np.int32),
        "label": rng.integers(0, 2, size=16).astype(np.int32),
    }
    final_s = None
    if method in lp.STRUCTURED:
        student, final_s = make_student(dense, method, ratio, cfg.lowrank_share)
    else:
        student = nnx.clone(dense)
    tx = lp.compression_tx(method, ratio, final_s, cfg)
    student = lp.train(student, tx, data, cfg, 0, cfg.steps, tmp_path, method, method)
    dense_count = encoder_linear_params(dense)
    if method in lp.STRUCTURED:
        kept = encoder_linear_params(ls.export(student))
        # Whole neurons / ranks rounded per matrix: within one neuron column of every matrix.
        assert abs(kept / dense_count - ratio) < 0.05, kept / dense_count
    else:
        kernels = lp.encoder_kernels(student)
        kept = sum(np.count_nonzero(k) for k in kernels)
        # Per matrix (the config's uniform / layer scope), each with the exact top-k count.
        assert kept == sum(int(keep_count(k.size, 1.0 - ratio)) for k in kernels)
    # The embeddings are frozen in compression runs (train_embeddings=False).
    np.testing.assert_array_equal(
        student.bert.embeddings.word_embeddings.embedding[...],
        dense.bert.embeddings.word_embeddings.embedding[...],
    )
