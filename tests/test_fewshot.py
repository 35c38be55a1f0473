"""FewSAR few-shot benchmark: episodes, protocol statistics, method heads vs numpy."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from jaxcomp.fewshot import (
    EpisodeSampler,
    EpisodeStream,
    FewShotModel,
    build_method,
    check_disjoint,
    mean_confidence_interval,
    method_names,
    protocol,
    student_t_ppf,
)
from jaxcomp.fewshot.finetune.baseline import (
    cosine_scale,
    dist_linear_apply,
    dist_linear_init,
    finetune_head,
    linear_apply,
    linear_init,
)
from jaxcomp.fewshot.metric import (
    class_covariance,
    covariance_similarity,
    dn4_scores,
    protonet_logits,
    relation_pairs,
)


# ------------------------------------------------------------------ episodes
def _pool(num_classes=8, per_class=12, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes) * 3 + 1, per_class)  # non-contiguous ids
    return labels[rng.permutation(len(labels))]


def test_episodes_are_deterministic_and_well_formed():
    labels = _pool()
    a = EpisodeSampler(labels, way=5, shot=2, query=3, seed=7)
    b = EpisodeSampler(labels.copy(), way=5, shot=2, query=3, seed=7)
    for i in (0, 1, 17, 999):
        ia, ib = a.indices(i), b.indices(i)
        np.testing.assert_array_equal(ia, ib)
        assert ia.shape == (5, 5)
        assert len(np.unique(ia)) == ia.size  # no image twice
        cls = labels[ia]
        assert (cls == cls[:, :1]).all()  # each row one class
        assert len(np.unique(cls[:, 0])) == 5  # distinct classes
        np.testing.assert_array_equal(cls[:, 0], a.episode_classes(i))
    assert not np.array_equal(a.indices(0), a.indices(1))
    c = EpisodeSampler(labels, way=5, shot=2, query=3, seed=8)
    assert not np.array_equal(a.indices(0), c.indices(0))
    np.testing.assert_array_equal(a.batch_indices(3, 4)[2], a.indices(5))


def test_episode_stream_layout():
    labels = _pool()
    images = (labels[:, None, None, None] * np.ones((1, 4, 4, 1))).astype(np.uint8)
    s = EpisodeStream(images, EpisodeSampler(labels, 3, 2, 4, seed=1))
    b = s.batch(5)
    assert b["support"].shape == (3, 2, 4, 4, 1) and b["query"].shape == (3, 4, 4, 4, 1)
    assert b["support"].dtype == np.float32
    # every image of row c carries class c's label value
    sup = np.round(b["support"][..., 0, 0, 0] * 255)
    qry = np.round(b["query"][..., 0, 0, 0] * 255)
    assert (sup == sup[:, :1]).all() and (qry == sup[:, :1]).all()
    assert s.batch_size == 18 and s.seed == 1
    np.testing.assert_array_equal(s.batch(5)["query"], b["query"])


def test_bad_episode_arguments_raise():
    labels = _pool(num_classes=4, per_class=6)
    with pytest.raises(ValueError, match="way=5"):
        EpisodeSampler(labels, way=5, shot=1, query=1)
    with pytest.raises(ValueError, match="6 images"):
        EpisodeSampler(labels, way=2, shot=3, query=4)
    with pytest.raises(ValueError, match="shot must be >= 1"):
        EpisodeSampler(labels, way=2, shot=0, query=4)
    with pytest.raises(ValueError, match=r"'base' and 'novel'.*\[4\]"):
        check_disjoint(base=np.array([1, 2, 4]), novel=np.array([4, 5]))
    check_disjoint(base=np.array([1, 2]), val=np.array([3]), novel=np.array([4, 5]))


# ------------------------------------------------------------------ statistics
def test_confidence_interval_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 5, 30, 600):
        x = rng.uniform(0.3, 0.9, n)
        m, h = mean_confidence_interval(x)
        lo, hi = scipy.stats.t.interval(0.95, n - 1, loc=x.mean(), scale=scipy.stats.sem(x))
        assert m == pytest.approx(x.mean())
        assert h == pytest.approx((hi - lo) / 2, rel=1e-9)
    for df in (1, 3, 10, 2999):
        for p in (0.9, 0.975, 0.995):
            assert student_t_ppf(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        mean_confidence_interval([0.5])


# ------------------------------------------------------------------ method heads vs numpy
def test_protonet_logits_equal_explicit_distances():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(5, 3, 16)).astype(np.float32)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    want = np.array([[-np.sum((qi - s[c].mean(0)) ** 2) for c in range(5)] for qi in q])
    np.testing.assert_allclose(protonet_logits(jnp.asarray(s), jnp.asarray(q)), want, rtol=1e-4)


def test_dn4_topk_equals_brute_force():
    rng = np.random.default_rng(2)
    way, shot, h, w, c, k = 3, 2, 3, 2, 8, 3
    s = rng.normal(size=(way, shot, h, w, c)).astype(np.float32)
    q = rng.normal(size=(4, h, w, c)).astype(np.float32)
    got = np.asarray(dn4_scores(jnp.asarray(s), jnp.asarray(q), k))
    want = np.zeros((4, way))
    for m in range(4):
        for cls in range(way):
            desc = s[cls].reshape(-1, c)
            desc = desc / np.linalg.norm(desc, axis=1, keepdims=True)
            for qd in q[m].reshape(-1, c):
                cos = desc @ (qd / np.linalg.norm(qd))
                want[m, cls] += np.sort(cos)[-k:].sum()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="k=13"):
        dn4_scores(jnp.asarray(s), jnp.asarray(q), 13)


def test_covariance_metric_matches_numpy():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(2, 3, 2, 2, 4)).astype(np.float32)
    q = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    cov = np.asarray(class_covariance(jnp.asarray(s)))
    for cls in range(2):
        x = s[cls].reshape(-1, 4)
        x = x - x.mean(0)
        np.testing.assert_allclose(cov[cls], x.T @ x / (2 * 2 - 1), rtol=1e-4, atol=1e-5)
    sim = np.asarray(covariance_similarity(jnp.asarray(s), jnp.asarray(q)))
    qd = q.reshape(3, 4, 4) - q.reshape(3, 4, 4).mean(1, keepdims=True)
    want = np.einsum("mlc,wcd,mld->mwl", qd, cov, qd)
    np.testing.assert_allclose(sim, want, rtol=1e-4, atol=1e-4)


def test_relation_pairs_concatenate_query_and_class_sum():
    rng = np.random.default_rng(4)
    s = rng.normal(size=(3, 2, 2, 2, 5)).astype(np.float32)
    q = rng.normal(size=(4, 2, 2, 5)).astype(np.float32)
    p = np.asarray(relation_pairs(jnp.asarray(s), jnp.asarray(q)))
    assert p.shape == (4, 3, 2, 2, 10)
    np.testing.assert_allclose(p[2, 1, ..., :5], q[2])
    np.testing.assert_allclose(p[2, 1, ..., 5:], s[1].sum(0), rtol=1e-6)


@pytest.mark.parametrize("name", ["protonet", "dn4", "covamnet", "relationnet", "atlnet", "feat"])
def test_metric_heads_are_class_permutation_equivariant(name):
    """Relabelling the support classes permutes the score columns (eval mode)."""
    model = build_method(
        name, in_channels=1, image_hw=(16, 16), num_base_classes=5, rngs=nnx.Rngs(0)
    )
    model.eval()
    rng = np.random.default_rng(5)
    flat = name in ("protonet", "feat")
    fshape = (64,) if flat else (4, 4, 64)
    s = jnp.asarray(rng.normal(size=(4, 2, *fshape)).astype(np.float32))
    q = jnp.asarray(rng.normal(size=(6, *fshape)).astype(np.float32))
    perm = np.array([2, 0, 3, 1])
    logits = nnx.jit(lambda m, s, q: m.logits(s, q))  # one compile for both calls
    a = np.asarray(logits(model, s, q))
    b = np.asarray(logits(model, s[perm], q))
    assert a.shape == (6, 4) and np.isfinite(a).all()
    np.testing.assert_allclose(b, a[:, perm], rtol=1e-4, atol=1e-4)


def test_baseline_heads_match_numpy_and_finetune_separates():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    p = dist_linear_init(jax.random.key(0), 8, 3)
    v, g = np.asarray(p["v"]), np.asarray(p["g"])
    np.testing.assert_allclose(g, np.linalg.norm(v, axis=1), rtol=1e-6)
    want = (
        2.0
        * (x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5))
        @ ((g[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True)).T)
    )
    np.testing.assert_allclose(dist_linear_apply(p, jnp.asarray(x), 2.0), want, rtol=1e-5)
    assert cosine_scale(5) == 2.0 and cosine_scale(351) == 10.0
    # fine-tuning a fresh head on well separated support features classifies the queries
    centres = rng.normal(size=(5, 16)).astype(np.float32) * 3
    sup = centres[:, None] + 0.3 * rng.normal(size=(5, 5, 16)).astype(np.float32)
    qry = (centres[:, None] + 0.3 * rng.normal(size=(5, 4, 16))).reshape(20, 16)
    fit_head = jax.jit(
        lambda f, y, k: finetune_head(
            lambda k: linear_init(k, 16, 5), linear_apply, f, y, k, lr=1e-2, iters=20, batch_size=4
        )
    )
    params = fit_head(
        jnp.asarray(sup.reshape(25, 16)), jnp.repeat(jnp.arange(5), 5), jax.random.key(1)
    )
    pred = np.argmax(np.asarray(linear_apply(params, jnp.asarray(qry, jnp.float32))), -1)
    np.testing.assert_array_equal(pred, np.repeat(np.arange(5), 4))


def test_registry_knows_every_method_and_rejects_unknown():
    assert set(method_names()) >= {
        "protonet",
        "relationnet",
        "covamnet",
        "dn4",
        "atlnet",
        "feat",
        "baseline",
        "baseline_pp",
    }
    assert set(method_names("finetune")) >= {"baseline", "baseline_pp"}
    with pytest.raises(ValueError, match="'maml2'"):
        build_method(
            "maml2", in_channels=1, image_hw=(28, 28), num_base_classes=5, rngs=nnx.Rngs(0)
        )


# ------------------------------------------------------------------ protocol end to end
class TinyProto(FewShotModel):
    """ProtoNet on a linear embedding (fast to compile) for protocol tests."""

    def __init__(self, dim, *, rngs):
        self.backbone = nnx.Linear(dim, 8, rngs=rngs)

    def embed(self, x):
        return self.backbone(x.reshape(x.shape[0], -1))

    def logits(self, support, query):
        return protonet_logits(support, query)


def _clusters(num_classes, per_class, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 2
    x = centres[:, None] + 0.7 * rng.normal(size=(num_classes, per_class, dim))
    return x.reshape(-1, 1, dim, 1).astype(np.float32), np.repeat(np.arange(num_classes), per_class)


def test_features_evaluation_equals_explicit_episodes(tmp_path):
    x, y = _clusters(7, 10)
    model = TinyProto(12, rngs=nnx.Rngs(0))
    from jaxcomp.train.step import split_model

    _, eval_gd, params, state = split_model(model)
    sampler = EpisodeSampler(y, 5, 2, 3, seed=3)
    got = protocol.evaluate_episodes(eval_gd, params, state, x, sampler, 7, chunk=3)
    w = np.asarray(params["backbone"]["kernel"])
    b = np.asarray(params["backbone"]["bias"])
    f = x.reshape(len(x), -1) @ w + b
    for e in range(7):
        idx = sampler.indices(e)
        protos = f[idx[:, :2]].mean(1)
        qf = f[idx[:, 2:]].reshape(-1, 8)
        pred = np.argmin(((qf[:, None] - protos[None]) ** 2).sum(-1), -1)
        assert got[e] == pytest.approx(np.mean(pred == np.repeat(np.arange(5), 3)))


def test_train_selects_best_validation_epoch_and_resumes(tmp_path):
    x, y = _clusters(12, 10)
    base, val, novel = (y < 6), (y >= 6) & (y < 9), (y >= 9)
    kw = dict(
        workdir=str(tmp_path / "run"),
        way=3,
        shot=2,
        query=3,
        episodes_per_epoch=5,
        epochs=2,
        lr=1e-2,
        val=(x[val], y[val]),
        val_episodes=6,
        val_query=3,
        log=lambda *a: None,
    )
    out = protocol.train(TinyProto(12, rngs=nnx.Rngs(0)), x[base], y[base], **kw)
    hist = out["history"]
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2]
    accs = [e["val_accuracy"] for e in hist["epochs"]]
    assert hist["best_epoch"] == 1 + int(np.argmax(accs))
    res = protocol.test(out, x[novel], y[novel], way=3, shot=2, query=3, num_episodes=10, seed=1)
    assert 0.0 <= res["accuracy"] <= 1.0 and len(res["episode_accuracies"]) == 10
    # a second call finds both epochs done and returns the same selected model
    again = protocol.train(TinyProto(12, rngs=nnx.Rngs(0)), x[base], y[base], **kw)
    assert again["history"]["epochs"] == hist["epochs"]
    jax.tree.map(np.testing.assert_allclose, again["params"], out["params"])
    with open(os.path.join(str(tmp_path / "run"), "history.json")) as f:
        assert len(json.load(f)["epochs"]) == 2


@pytest.mark.slow
def test_resnet12_option_shapes():
    from jaxcomp.fewshot import ResNet12

    net = ResNet12(1, widths=(4, 4, 8, 8), rngs=nnx.Rngs(0))
    assert nnx.jit(lambda m, x: m(x))(net, jnp.ones((2, 16, 16, 1))).shape == (2, 8)
    assert net.output_shape((16, 16)) == (1, 1, 8)
    with pytest.raises(ValueError, match=r"\(8, 8\) is too small"):
        net.output_shape((8, 8))


class TinyProtoImages(TinyProto):
    """The same model tested on images (the path of per-episode adapting methods)."""

    test_on = "images"

    def predict_images(self, support_x, query_x, key):
        del key
        s, q = self.embed_episode(support_x, query_x)
        return protonet_logits(s, q)


def test_image_episodes_one_per_call_on_cpu_equal_vmapped_chunks():
    from jaxcomp.train.step import split_model

    x, y = _clusters(7, 10)
    _, eval_gd, params, state = split_model(TinyProtoImages(12, rngs=nnx.Rngs(0)))
    sampler = EpisodeSampler(y, 5, 2, 3, seed=3)
    auto = protocol.evaluate_episodes(eval_gd, params, state, x, sampler, 7)  # chunk 1 on CPU
    chunked = protocol.evaluate_episodes(eval_gd, params, state, x, sampler, 7, chunk=3)
    np.testing.assert_allclose(auto, chunked)
    _, eval_gd2, params2, state2 = split_model(TinyProto(12, rngs=nnx.Rngs(0)))
    feats = protocol.evaluate_episodes(eval_gd2, params2, state2, x, sampler, 7)
    np.testing.assert_allclose(auto, feats)  # the same model on features: same accuracies
