"""CoOp / CoCoOp prompt learners on the tiny golden CLIP, and the base-to-new protocol."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcomp.models import clip as clip_lib
from jaxcomp.nn import prompts as P

TINY = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_clip")
NAMES = ["cat", "dog", "the bird"]


@pytest.fixture(scope="module")
def clip():
    return clip_lib.load_pretrained(TINY)


@pytest.fixture(scope="module")
def tok():
    return clip_lib.load_tokenizer(TINY)


logits_of = nnx.jit(lambda m, x: m(x))
features_of = nnx.jit(lambda m, f: m.logits_from_features(f))
encode_image = nnx.jit(lambda c, x: c.encode_image(x))
encode_text = nnx.jit(lambda c, t: c.encode_text(t))


def _shape(model, n):
    return nnx.eval_shape(lambda m, x: m(x), model, _pixels(n)).shape


def _pixels(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 16, 16, 3)).astype(np.float32)


def test_coop_shapes(clip, tok):
    coop = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, rngs=nnx.Rngs(0))
    assert coop.ctx[...].shape == (4, 32)
    assert abs(float(coop.ctx[...].std()) - 0.02) < 0.006  # N(0, 0.02)
    # Longest prompt: SOS + 4 ctx + "the" "b i r d" "." + EOS = 12 tokens.
    assert coop.prompts().shape == (3, 12, 32)
    assert _shape(coop, 5) == (5, 3)
    csc = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, class_specific=True, rngs=nnx.Rngs(0))
    assert csc.ctx[...].shape == (3, 4, 32)
    assert _shape(csc, 2) == (2, 3)
    init = P.CoOp(clip, NAMES, tokenize=tok.encode, ctx_init="a photo of a", rngs=nnx.Rngs(0))
    assert init.n_ctx == 9  # byte-level fixture vocabulary: a | p h o t o | o f | a
    cocoop = P.CoCoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, rngs=nnx.Rngs(0))
    assert cocoop.meta_w1[...].shape == (16, 1) and cocoop.meta_w2[...].shape == (1, 32)
    feats = jax.ShapeDtypeStruct((5, 16), jnp.float32)
    assert nnx.eval_shape(lambda m, f: m.prompts(f), cocoop, feats).shape == (5, 3, 12, 32)
    assert _shape(cocoop, 5) == (5, 3)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_word_initialised_prompt_is_the_sentence(clip, tok, position):
    """With the context at its word initialisation, the learned prompt is that sentence."""
    coop = P.CoOp(
        clip, NAMES, tokenize=tok.encode, ctx_init="a photo of a", class_token_position=position,
        class_specific=position == "middle", rngs=nnx.Rngs(0),
    )  # fmt: skip
    ids = coop.token_ids[...]
    ours = nnx.jit(lambda m: m.text_features())(coop)
    np.testing.assert_allclose(ours, encode_text(clip, ids), atol=1e-5)
    sentences = {
        "end": [f"a photo of a {n}." for n in NAMES],
        "front": [f"{n} a photo of a." for n in NAMES],
    }
    if position in sentences:  # whole words move: compare with the tokenizer's own ids
        ref = encode_text(clip, tok(sentences[position]))
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    else:  # middle: first n_ctx // 2 = 4 context tokens, the class, then the rest
        row = list(ids[0][ids[0] > 0])
        a_photo = tok.encode("a photo of a")[1:-1]
        cat, dot = tok.encode("cat")[1:-1], tok.encode(".")[1:-1]
        assert row == [tok.sot_id, *a_photo[:4], *cat, *a_photo[4:], *dot, tok.eot_id]


def _train_step(model, x, y):
    opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=P.PromptParam)

    @nnx.jit
    def step(model, opt):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        grads = nnx.grad(loss, argnums=nnx.DiffState(0, P.PromptParam))(model)
        opt.update(model, grads)
        return grads

    return step(model, opt)


@pytest.mark.parametrize("kind", ["coop", "cocoop"])
def test_gradients_reach_only_prompt_params(clip, tok, kind):
    if kind == "coop":
        model = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, rngs=nnx.Rngs(1))
    else:
        model = P.CoCoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, meta_hidden=8,
                         chunk_size=2, rngs=nnx.Rngs(1))  # fmt: skip
    frozen_before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
    buffers_before = jax.tree.map(np.array, nnx.state(model, P.PromptBuffer))
    prompt_before = jax.tree.map(np.array, nnx.state(model, P.PromptParam))
    grads = _train_step(model, _pixels(6), jnp.array([0, 1, 2, 0, 1, 2]))
    # Gradients exist exactly for the prompt parameters, and every one of them is non-zero.
    grad_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(grads)}
    prompt_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(prompt_before)}
    assert grad_paths == prompt_paths
    assert len(prompt_paths) == (1 if kind == "coop" else 5)
    for g in jax.tree.leaves(grads):
        assert np.isfinite(g).all() and np.abs(g).max() > 0
    # CLIP and the frozen token embeddings did not move; the prompts did.
    jax.tree.map(np.testing.assert_array_equal, frozen_before, nnx.state(model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, buffers_before, nnx.state(model, P.PromptBuffer))
    moved = jax.tree.map(lambda a, b: np.abs(a - np.asarray(b)).max(), prompt_before,
                         nnx.state(model, P.PromptParam))  # fmt: skip
    assert all(m > 0 for m in jax.tree.leaves(moved))


def test_cocoop_batch_equals_single_image_calls(clip, tok):
    model = P.CoCoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, meta_hidden=8, chunk_size=3,
                     rngs=nnx.Rngs(2))  # fmt: skip
    feats = encode_image(clip, _pixels(7))  # 7 = 2 chunks of 3 + a remainder of 1
    batched = features_of(model, feats)
    singles = jnp.concatenate([features_of(model, feats[i : i + 1]) for i in range(7)])
    np.testing.assert_allclose(batched, singles, atol=1e-5)

    # ... and equals the dense computation from the materialised per-image prompts.
    @nnx.jit
    def dense_logits(model, clip, feats):
        prompts = model.prompts(feats)
        ids = jnp.tile(model.token_ids[...], (7, 1))
        txt = clip.encode_text_embeddings(prompts.reshape(21, *prompts.shape[2:]), ids)
        txt = (txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)).reshape(7, 3, -1)
        img = feats / jnp.linalg.norm(feats, axis=-1, keepdims=True)
        return jnp.exp(clip.logit_scale[...]) * jnp.einsum("bd,bcd->bc", img, txt)

    dense = dense_logits(model, clip, feats)
    np.testing.assert_allclose(batched, dense, atol=1e-5)

    # Chunked + rematerialised gradients equal the unchunked, stored-activation ones.
    def grads_of(m):
        def loss(m):
            logits = m.logits_from_features(feats)
            return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(7) % 3).mean()

        return nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, P.PromptParam)))(m)

    plain = P.CoCoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, meta_hidden=8, chunk_size=7,
                     remat=False, rngs=nnx.Rngs(2))  # fmt: skip
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 grads_of(model), grads_of(plain))  # fmt: skip


def test_transfer_to_new_classes(clip, tok):
    coop = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, rngs=nnx.Rngs(3))
    new = coop.with_classnames(["fish", "cow"], tokenize=tok.encode)
    np.testing.assert_array_equal(new.ctx[...], coop.ctx[...])
    assert _shape(new, 2) == (2, 2)
    cocoop = P.CoCoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, rngs=nnx.Rngs(3))
    moved = cocoop.with_classnames(["fish", "cow"], tokenize=tok.encode)
    np.testing.assert_array_equal(moved.meta_w2[...], cocoop.meta_w2[...])
    csc = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, class_specific=True, rngs=nnx.Rngs(3))
    with pytest.raises(ValueError, match="class count mismatch.*3 classes, 2 classes"):
        csc.with_classnames(["fish", "cow"], tokenize=tok.encode)


def test_zero_shot_classifier(clip, tok):
    templates = ["a photo of a {}.", "the {}"]
    w = P.zero_shot_classifier(clip, NAMES, templates, tokenize=tok.encode)
    assert w.shape == (3, 16)
    feats = encode_text(clip, tok([t.format("dog") for t in templates]))
    feats = feats / jnp.linalg.norm(feats, axis=-1, keepdims=True)
    mean = feats.mean(0)
    np.testing.assert_allclose(w[1], mean / jnp.linalg.norm(mean), atol=1e-5)


def test_base_new_split_k_shot_and_h():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 20))
    base, new = P.base_new_split(labels)
    np.testing.assert_array_equal(base, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(new, [5, 6, 7, 8, 9])
    base, new = P.base_new_split([7, 3, 9, 3, 1])  # ceil(4 / 2) = 2 base classes
    np.testing.assert_array_equal(base, [1, 3])
    np.testing.assert_array_equal(new, [7, 9])
    base, new = P.base_new_split([4, 2, 0])  # odd: ceil(3 / 2) = 2
    np.testing.assert_array_equal(base, [0, 2])

    idx = P.k_shot_indices(labels, [0, 1, 2], 4, seed=0)
    assert idx.size == 12 and len(set(idx.tolist())) == 12
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10)[:3], [4, 4, 4])
    assert set(labels[idx].tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(idx, P.k_shot_indices(labels, [0, 1, 2], 4, seed=0))
    assert not np.array_equal(idx, P.k_shot_indices(labels, [0, 1, 2], 4, seed=1))

    assert P.harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert P.harmonic_mean(70.0, 70.0) == pytest.approx(70.0)
    assert P.harmonic_mean(0.0, 0.0) == 0.0


def test_bad_inputs(clip, tok):
    with pytest.raises(ValueError, match="n_ctx=4 but ctx_init 'a photo of a' is 9 tokens"):
        P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, ctx_init="a photo of a",
               rngs=nnx.Rngs(0))  # fmt: skip
    with pytest.raises(ValueError, match="n_ctx=2 but ctx_init"):
        P.CoCoOp(clip, NAMES, tokenize=tok.encode, n_ctx=2, ctx_init="a photo", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="class_token_position.*'back'"):
        P.CoOp(clip, NAMES, tokenize=tok.encode, class_token_position="back", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="context length 32"):
        P.CoOp(clip, ["x" * 30], tokenize=tok.encode, n_ctx=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"tokenize\(''\)"):
        P.CoOp(clip, NAMES, tokenize=lambda s: [1, 2, 3], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="class 2 has 1 examples, fewer than k=2"):
        P.k_shot_indices([0, 0, 1, 1, 2], [0, 1, 2], 2, seed=0)
    with pytest.raises(ValueError, match="base_acc must be in"):
        P.harmonic_mean(120.0, 50.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        P.base_new_split([3, 3])
    coop = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(batch, dim\)"):
        coop.logits_from_features(np.zeros(16, np.float32))


def _with_eos(clip, eos_token_id):
    """A copy of ``clip`` (same weights) whose text tower pools by ``eos_token_id``."""
    import dataclasses

    cfg = dataclasses.replace(clip.config, eos_token_id=eos_token_id)
    out = clip_lib.CLIP(cfg, rngs=nnx.Rngs(0))
    nnx.update(out, jax.tree.map(jnp.array, nnx.state(clip)))
    return out


def test_eot_pooling_checked_at_prompt_build(clip, tok):
    """argmax pooling needs EOS to be the largest id; a configured eos_token_id pools at its
    first occurrence (Hugging Face), which is checked to be the prompt's EOS."""
    assert clip.config.eos_token_id == 515 == tok.eot_id  # read from the fixture's config.json
    argmax_clip = _with_eos(clip, None)
    a = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, rngs=nnx.Rngs(0))
    b = P.CoOp(argmax_clip, NAMES, tokenize=tok.encode, n_ctx=4, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(a.text_features(), b.text_features())

    # A tokenizer whose EOS (the id of "q") is not the largest id: with
    # eos_token_id = that id and its embedding row set to the real EOT's, every prompt must give
    # exactly the features of the original tokenization pooled at argmax.
    q = tok.encode("q")[1]
    assert q < 514
    remap = lambda s: [*tok.encode(s)[:-1], q]  # noqa: E731
    q_clip = _with_eos(clip, q)
    emb = q_clip.text_model.token_embedding.embedding
    emb[...] = emb[...].at[q].set(emb[...][tok.eot_id])
    for kw in ({"ctx_init": "a photo of a"}, {"n_ctx": 4}):
        ours = P.CoOp(q_clip, NAMES, tokenize=remap, rngs=nnx.Rngs(0), **kw)
        ref = P.CoOp(argmax_clip, NAMES, tokenize=tok.encode, rngs=nnx.Rngs(0), **kw)
        assert (ours.token_ids[...] == q).sum() == 3  # one EOS per class, none elsewhere
        np.testing.assert_allclose(ours.text_features(), ref.text_features(), atol=1e-5)
    ref = encode_text(argmax_clip, tok([f"a photo of a {n}." for n in NAMES]))
    np.testing.assert_allclose(
        P.CoOp(q_clip, NAMES, tokenize=remap, ctx_init="a photo of a", rngs=nnx.Rngs(0))
        .text_features(), ref, atol=1e-5,
    )  # fmt: skip
    w_q = P.zero_shot_classifier(q_clip, NAMES, ["a {}."], tokenize=remap)
    w_ref = P.zero_shot_classifier(argmax_clip, NAMES, ["a {}."], tokenize=tok.encode)
    np.testing.assert_allclose(w_q, w_ref, atol=1e-5)

    # The silent failures become errors naming the prompt and the ids.
    with pytest.raises(
        ValueError, match=f"'cat'.*argmax.*id 514 at position 0 is >= the EOS id {q}"
    ):
        P.CoOp(argmax_clip, NAMES, tokenize=remap, n_ctx=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=f"'a cat.'.*EOS id {q} at position 6"):
        P.zero_shot_classifier(argmax_clip, NAMES, ["a {}."], tokenize=remap)
    with pytest.raises(ValueError, match=f"EOS id {q} is not the text encoder's eos_token_id 515"):
        P.CoOp(clip, NAMES, tokenize=remap, n_ctx=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=f"'aq'.*eos_token_id {q} first occurs at position 6"):
        P.CoOp(q_clip, ["cat", "aq"], tokenize=remap, n_ctx=4, rngs=nnx.Rngs(0))


def test_save_load_prompts_round_trip(clip, tok, tmp_path):
    """Saved prompts loaded into a freshly initialised learner give identical logits."""
    feats = encode_image(clip, _pixels(4, seed=3))
    makers = {
        "cocoop": lambda seed: P.CoCoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, meta_hidden=8,
                                        chunk_size=2, rngs=nnx.Rngs(seed)),
        "csc_middle": lambda seed: P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4,
                                          class_specific=True, class_token_position="middle",
                                          rngs=nnx.Rngs(seed)),
    }  # fmt: skip
    for name, make in makers.items():
        trained = make(1)
        _train_step(trained, _pixels(6), jnp.array([0, 1, 2, 0, 1, 2]))  # values off the init
        file = tmp_path / f"{name}.safetensors"
        P.save_prompts(trained, file)
        fresh = make(7)
        before = features_of(fresh, feats)
        assert np.abs(before - features_of(trained, feats)).max() > 1e-3
        assert P.load_prompts(fresh, file) is fresh
        np.testing.assert_array_equal(features_of(fresh, feats), features_of(trained, feats))
        for (path, a), (_, b) in zip(
            jax.tree.leaves_with_path(nnx.state(trained, P.PromptParam)),
            jax.tree.leaves_with_path(nnx.state(fresh, P.PromptParam)),
        ):
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    # A unified context moves to other class names (base-to-new).
    other = P.CoCoOp(clip, ["fish", "cow"], tokenize=tok.encode, n_ctx=4, meta_hidden=8,
                     rngs=nnx.Rngs(9))  # fmt: skip
    P.load_prompts(other, tmp_path / "cocoop.safetensors")
    ref = P.CoCoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, meta_hidden=8, rngs=nnx.Rngs(9))
    P.load_prompts(ref, tmp_path / "cocoop.safetensors")
    np.testing.assert_array_equal(
        other.meta_net(feats),
        ref.with_classnames(["fish", "cow"], tokenize=tok.encode).meta_net(feats),
    )


def test_load_prompts_mismatches(clip, tok, tmp_path):
    from safetensors.numpy import save_file

    coop = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, rngs=nnx.Rngs(0))
    cocoop = P.CoCoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, meta_hidden=8, rngs=nnx.Rngs(0))
    P.save_prompts(coop, tmp_path / "coop.safetensors")
    P.save_prompts(cocoop, tmp_path / "cocoop.safetensors")
    untouched = np.array(coop.ctx[...])
    with pytest.raises(ValueError, match="learner='CoCoOp', the learner has learner='CoOp'"):
        P.load_prompts(coop, tmp_path / "cocoop.safetensors")
    long = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=6, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"tensor 'ctx' has shape \(4, 32\).*expects \(6, 32\)"):
        P.load_prompts(long, tmp_path / "coop.safetensors")
    wide = P.CoCoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, meta_hidden=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"tensor 'meta_b1' has shape \(8,\).*expects \(5,\)"):
        P.load_prompts(wide, tmp_path / "cocoop.safetensors")
    front = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, class_token_position="front",
                   rngs=nnx.Rngs(0))  # fmt: skip
    with pytest.raises(ValueError, match="class_token_position='end', the learner has.*'front'"):
        P.load_prompts(front, tmp_path / "coop.safetensors")
    csc = P.CoOp(clip, NAMES, tokenize=tok.encode, n_ctx=4, class_specific=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="class_specific='False'"):
        P.load_prompts(csc, tmp_path / "coop.safetensors")
    meta = {"format": "jaxcomp.prompts/1", "learner": "CoCoOp", "class_specific": "False",
            "class_token_position": "end", "classnames": "[]"}  # fmt: skip
    tensors = {k: np.asarray(v) for k, v in [("ctx", cocoop.ctx[...]),
               ("meta_w1", cocoop.meta_w1[...]), ("meta_b1", cocoop.meta_b1[...]),
               ("meta_w2", cocoop.meta_w2[...])]}  # fmt: skip
    save_file(tensors, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"missing tensors \['meta_b2'\]"):
        P.load_prompts(cocoop, tmp_path / "missing.safetensors")
    save_file({"ctx": np.zeros((4, 32), np.int32)}, str(tmp_path / "int.safetensors"),
              metadata=dict(meta, learner="CoOp"))  # fmt: skip
    with pytest.raises(ValueError, match="tensor 'ctx' has dtype int32"):
        P.load_prompts(coop, tmp_path / "int.safetensors")
    save_file({"ctx": np.zeros((4, 32), np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a save_prompts file"):
        P.load_prompts(coop, tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05junk")
    with pytest.raises(ValueError, match="junk.safetensors"):
        P.load_prompts(coop, tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        P.load_prompts(coop, tmp_path / "nowhere.safetensors")
    np.testing.assert_array_equal(coop.ctx[...], untouched)  # failed loads changed nothing


def test_interpret_prompt_matches_brute_force(clip, tok):
    rng = np.random.default_rng(0)
    vocab = rng.normal(size=(50, 8))
    ctx = rng.normal(size=(2, 4, 8))
    ctx[1, 2] = vocab[7]  # a context vector sitting on a word
    words = P.interpret_prompt(ctx, vocab, topk=3)
    dist = np.linalg.norm(ctx[..., None, :] - vocab, axis=-1)  # (2, 4, 50), brute force
    np.testing.assert_array_equal(words.ids, np.argsort(dist, axis=-1)[..., :3])
    np.testing.assert_allclose(words.distances, np.sort(dist, axis=-1)[..., :3], rtol=1e-12)
    assert words.ids[1, 2, 0] == 7 and words.distances[1, 2, 0] == 0.0
    assert P.interpret_prompt(ctx[0], vocab).ids.shape == (4, 1)
    # A word-initialised context reads back as its words, at distance 0.
    coop = P.CoOp(clip, NAMES, tokenize=tok.encode, ctx_init="a photo of a", rngs=nnx.Rngs(0))
    table = clip.text_model.token_embedding.embedding[...]
    words = P.interpret_prompt(coop.ctx[...], table, topk=2)
    np.testing.assert_array_equal(words.ids[:, 0], tok.encode("a photo of a")[1:-1])
    np.testing.assert_array_equal(words.distances[:, 0], 0.0)
    assert (words.distances[:, 1] > 0).all()
    with pytest.raises(ValueError, match=r"topk must be an integer in \[1, 50\], got 51"):
        P.interpret_prompt(ctx, vocab, topk=51)
    with pytest.raises(ValueError, match=r"\(4, 7\) and \(50, 8\)"):
        P.interpret_prompt(np.zeros((4, 7)), vocab)


def _blobs(n_per, seed, centers):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + 0.5 * rng.normal(size=(n_per, centers.shape[1])) for c in centers])
    return x.astype(np.float32), np.repeat(np.arange(len(centers)), n_per)


def test_fit_logistic_regression_is_the_sklearn_optimum():
    centers = np.random.default_rng(0).normal(size=(3, 6))  # overlapping classes: finite optimum
    x, y = _blobs(20, 1, centers)
    w, b = P.fit_logistic_regression(x, y, c=0.5)
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    # Stationarity of 0.5 |W|^2 + C sum CE, computed independently in float64.
    logits = x @ w + b
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    resid = prob - np.eye(3)[y]
    grad_w, grad_b = w + 0.5 * x.T @ resid, 0.5 * resid.sum(0)
    assert np.abs(grad_w).max() < 1e-4 * max(1, np.abs(w).max()) and np.abs(grad_b).max() < 1e-4
    assert np.abs(w).max() > 0.1
    # scikit-learn's lbfgs stops with a gradient of ~5e-4 here (ours ~6e-6): agree to 1e-3.
    sklearn = pytest.importorskip("sklearn.linear_model")
    ref = sklearn.LogisticRegression(C=0.5, max_iter=5000, tol=1e-10).fit(x, y)
    np.testing.assert_allclose(w, ref.coef_.T, atol=1e-3)
    np.testing.assert_allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=1e-3)


def test_linear_probe_on_separable_features():
    centers = 4.0 * np.eye(4, 8)  # 4 classes, 8-d features, far apart
    tx, ty = _blobs(4, 0, centers)  # 4 shots
    vx, vy = _blobs(4, 1, centers)
    sx, sy = _blobs(50, 2, centers)
    probe = P.linear_probe(tx, ty, vx, vy, steps=3, max_iter=200)
    assert probe.val_accuracy == 1.0
    assert float(jnp.mean(probe.predict(sx) == sy)) == 1.0
    assert probe.weights.shape == (8, 4) and probe.bias.shape == (4,)
    # History: the grid, then pairs (C_lo, C_hi) following the reference's range update.
    h = probe.history
    assert [c for c, _ in h[:7]] == list(P.LINEAR_PROBE_GRID) and len(h) == 7 + 2 * 3
    peak = P.LINEAR_PROBE_GRID[int(np.argmax([a for _, a in h[:7]]))]
    lo, hi = np.log10(peak) - 1, np.log10(peak) + 1
    for (c_lo, a_lo), (c_hi, a_hi) in zip(h[7::2], h[8::2]):
        np.testing.assert_allclose([c_lo, c_hi], [10**lo, 10**hi], rtol=1e-12)
        lo, hi = (0.5 * (lo + hi), hi) if a_lo < a_hi else (lo, 0.5 * (lo + hi))
        chosen = (c_hi, a_hi) if a_lo < a_hi else (c_lo, a_lo)
    assert (probe.c, probe.val_accuracy) == chosen
    # A tiny C (strong shrinkage) still ranks right, but a fitted W shrinks with C.
    w_small, _ = P.fit_logistic_regression(tx, ty, c=1e-4)
    w_big, _ = P.fit_logistic_regression(tx, ty, c=1.0)
    assert np.abs(w_small).max() < np.abs(w_big).max()


def test_linear_probe_bad_inputs():
    x, y = _blobs(3, 0, np.eye(3, 4))
    with pytest.raises(ValueError, match="c must be a finite number > 0, got 0"):
        P.fit_logistic_regression(x, y, c=0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got 5"):
        P.fit_logistic_regression(x, np.where(y == 2, 5, y), c=1.0, n_classes=3)
    with pytest.raises(ValueError, match=r"labels must be 9 integer labels, got shape \(8,\)"):
        P.fit_logistic_regression(x, y[:8], c=1.0)
    with pytest.raises(ValueError, match=r"val_labels must be in \[0, 3\), got 3"):
        P.linear_probe(x, y, x, np.full(9, 3), steps=1)
    with pytest.raises(ValueError, match=r"\(9, 4\) and \(9, 5\)"):
        P.linear_probe(x, y, np.zeros((9, 5)), y)
    with pytest.raises(ValueError, match="grid must be.*-1"):
        P.linear_probe(x, y, x, y, grid=(1.0, -1))
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        P.linear_probe(x, y, x, y, steps=0)


def test_coop_recipe_schedule_and_weight_decay():
    """CoOp's recipe in experiments/cocoop.py: constant warm-up lr, then cosine stepped per epoch;
    weight decay enters the gradient before momentum (PyTorch SGD's L2)."""
    import math

    import ml_collections

    from experiments.cocoop import prompt_optimizer, prompt_schedule

    cfg = ml_collections.ConfigDict(
        dict(
            lr=0.002,
            momentum=0.9,
            steps=30,
            warmup_steps=5,
            warmup_lr=1e-5,
            steps_per_epoch=5,
            weight_decay=5e-4,
        )  # fmt: skip
    )
    sched = prompt_schedule(cfg)
    for t in range(30):
        if t < 5:
            want = 1e-5
        else:
            e = ((t - 5) // 5) * 5
            want = 0.5 * 0.002 * (1 + math.cos(math.pi * e / 25))
        np.testing.assert_allclose(float(sched(t)), want, rtol=1e-6)
    plain = ml_collections.ConfigDict(dict(lr=0.02, momentum=0.9, steps=10))
    ref = optax.cosine_decay_schedule(0.02, 10)
    assert all(abs(float(prompt_schedule(plain)(t)) - float(ref(t))) < 1e-9 for t in range(10))
    # two SGD steps by hand: v = 0.9 v + (g + wd w); w -= lr_t v
    tx = prompt_optimizer(cfg)
    w = jnp.asarray([1.0, -2.0])
    g = jnp.asarray([0.5, 0.25])
    state = tx.init(w)
    w_np, v = np.array([1.0, -2.0]), np.zeros(2)
    for _ in range(2):
        u, state = tx.update(g, state, w)
        w = optax.apply_updates(w, u)
        v = 0.9 * v + (np.asarray(g) + 5e-4 * w_np)
        w_np = w_np - 1e-5 * v
    np.testing.assert_allclose(np.asarray(w), w_np, rtol=1e-6)
