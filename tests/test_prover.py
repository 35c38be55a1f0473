"""GNTP/NTP prover: scores vs a brute-force recursive reference, greedy vs exhaustive, training."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcomp.prover import unify as U
from jaxcomp.prover.gntp import (
    ProverConfig,
    corrupt_triples,
    decode_rules,
    explain,
    gntp_loss,
    make_train_step,
    score_triples,
)
from jaxcomp.prover.kb import KnowledgeBase, fact_embeddings, init_params
from jaxcomp.prover.templates import parse_templates

TEMPLATES = parse_templates(
    "2  #1(X, Y) :- #1(Y, X).\n2  #1(X, Y) :- #2(X, Z), #3(Z, Y).\n", fmt="nlt"
)


def _tiny_kb():
    triples = [
        ("a", "r", "b"),
        ("b", "r", "c"),
        ("c", "q", "d"),
        ("a", "q", "c"),
        ("d", "s", "a"),
        ("b", "s", "d"),
    ]
    return KnowledgeBase.from_triples(triples, mentions=[("a", "lives near", "d")])


# ---------------------------------------------------------------- brute-force reference (numpy)
def _k(d2, slope):
    return float(np.exp(-slope * np.sqrt(np.clip(d2, 1e-6, 1e3))))


def _ref_and_or(goal, subs, depth, score, P, joint, mask):
    """Like :func:`_ref_or` but returns (substitution, score) pairs so AND can continue."""
    fp, fs, fo, rules, slope = P
    facts = (fp, fs, fo)

    def res(t, s):
        while isinstance(t, str) and t in s:
            t = s[t]
        return t

    goal = [res(g, subs) for g in goal]
    out = []
    for f in range(fp.shape[0]):
        s2 = dict(subs)
        d2s = []
        for i in range(3):
            if isinstance(goal[i], str):
                s2[goal[i]] = facts[i][f]
            else:
                d2s.append(float(np.sum((goal[i] - facts[i][f]) ** 2)))
        sims = [_k(sum(d2s), slope)] if joint else [_k(d, slope) for d in d2s]
        sc = 0.0 if f == mask else min([score, *sims])
        out.append((s2, sc))
    if depth > 0:
        for t, tpl in enumerate(TEMPLATES):
            theta = rules[t]
            for r in range(theta.shape[0]):
                ren = {v: f"{v}@{next(_COUNTER)}" for v in tpl.variables}
                s2 = dict(subs)
                sc = min(score, _k(np.sum((goal[0] - theta[r, tpl.slot(tpl.head)]) ** 2), slope))
                for hv, g in zip(tpl.head.args, goal[1:]):
                    s2[ren[hv]] = g
                states = [(s2, sc)]
                for atom in tpl.body:
                    nxt = []
                    for st, sc_ in states:
                        sub_goal = [theta[r, tpl.slot(atom)], ren[atom.args[0]], ren[atom.args[1]]]
                        nxt += _ref_and_or(sub_goal, st, depth - 1, sc_, P, joint, mask)
                    states = nxt
                out += states
    return out


_COUNTER = itertools.count()


def _reference_scores(params, kb, goals, depth, joint, mask):
    fp, fs, fo = (np.asarray(x, np.float64) for x in fact_embeddings(params, kb.arrays()))
    P = (fp, fs, fo, [np.asarray(r, np.float64) for r in params["rules"]], float(params["slope"]))
    pe = np.asarray(params["predicates"], np.float64)
    ce = np.asarray(params["constants"], np.float64)
    out = []
    for b, (p, s, o) in enumerate(goals):
        proofs = _ref_and_or([pe[p], ce[s], ce[o]], {}, depth, 1.0, P, joint, int(mask[b]))
        out.append(max(sc for _, sc in proofs))
    return np.array(out)


def _params(kb, dim=4, seed=0, scale=0.6):
    # small embeddings so unification scores are spread out (no clipping at 1e3)
    return init_params(jax.random.key(seed), kb, TEMPLATES, dim, init_scale=scale, slope=1.3)


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize(
    "depth,unification", [(0, "classic"), (1, "classic"), (1, "joint"), (2, "classic")]
)
def test_exhaustive_matches_bruteforce_reference(depth, unification):
    kb = _tiny_kb()
    params = _params(kb)
    goals = np.array(list(kb.facts[:3]) + [(0, 3, 0), (2, 1, 2)], np.int32)
    mask = np.array([0, 1, -1, -1, -1], np.int32)
    if depth == 2:  # the recursive reference is slow: fewer goals
        goals, mask = goals[[0, 3]], mask[[0, 3]]
    cfg = ProverConfig(depth=depth, k_facts=None, k_rules=None, unification=unification)
    got = np.asarray(score_triples(params, kb.arrays(), goals, TEMPLATES, cfg, mask=mask))
    want = _reference_scores(params, kb, goals, depth, unification == "joint", mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # scores are not trivially equal (the test can fail)
    assert np.ptp(want) > 1e-3


@pytest.mark.parametrize("unification,depth", [("classic", 1), ("joint", 2)])
def test_greedy_with_k_equal_kb_size_is_exhaustive(unification, depth):
    kb = _tiny_kb()
    params = _params(kb, seed=1)
    goals = np.array(kb.facts, np.int32)
    mask = np.arange(len(goals), dtype=np.int32)
    n = kb.num_facts
    ex = ProverConfig(depth=depth, k_facts=None, k_rules=None, unification=unification)
    gr = ProverConfig(depth=depth, k_facts=n, k_rules=2, unification=unification, chunk_size=7)
    # k_facts == n goes through the exhaustive path; n - 0 via top_k: force the search with n
    a = score_triples(params, kb.arrays(), goals, TEMPLATES, ex, mask=mask)
    b = score_triples(params, kb.arrays(), goals, TEMPLATES, gr, mask=mask)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # the top-k code path itself, with k = N (bypassing the "k >= N -> exhaustive" shortcut)
    fp, fs, fo = fact_embeddings(params, kb.arrays())
    q = jnp.concatenate([fp[:3], fs[:3]], -1)
    idx = U.nearest_neighbours(q, jnp.concatenate([fp, fs], -1), n)
    assert sorted(np.asarray(idx[0]).tolist()) == list(range(n))


def test_greedy_topk_path_equals_exhaustive_when_k_is_n(monkeypatch):
    """Disable the k >= N shortcut so the gather/top_k code computes all proofs."""
    kb = _tiny_kb()
    params = _params(kb, seed=2)
    goals = np.array(kb.facts, np.int32)
    mask = np.arange(len(goals), dtype=np.int32)
    n = kb.num_facts
    ex = ProverConfig(depth=1, k_facts=None, k_rules=None)
    a = score_triples(params, kb.arrays(), goals, TEMPLATES, ex, mask=mask)

    from jaxcomp.prover import gntp as G

    orig = G._Prover.__init__

    def init(self, *args, **kw):
        orig(self, *args, **kw)
        self.n_facts = n + 1  # k == n < n_facts: take the greedy path with k = N

    monkeypatch.setattr(G._Prover, "__init__", init)
    gr = ProverConfig(depth=1, k_facts=n, k_rules=1)
    gr_all = ProverConfig(depth=1, k_facts=n, k_rules=None)
    b = score_triples(params, kb.arrays(), goals, TEMPLATES, gr_all, mask=mask)
    c = score_triples(params, kb.arrays(), goals, TEMPLATES, gr, mask=mask)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.all(np.asarray(c) <= np.asarray(a) + 1e-7)  # fewer rules: never more proofs


def test_greedy_small_k_lower_bounds_exhaustive_and_keeps_best_fact():
    kb = _tiny_kb()
    params = _params(kb, seed=3)
    goals = np.array(kb.facts, np.int32)
    ex = score_triples(params, kb.arrays(), goals, TEMPLATES, ProverConfig(depth=0, k_facts=None))
    gr = score_triples(params, kb.arrays(), goals, TEMPLATES, ProverConfig(depth=0, k_facts=1))
    # depth 0, joint-free classic kernel: a goal equal to a fact has that fact as 1-NN
    np.testing.assert_allclose(ex, gr, rtol=1e-6)
    ex1 = score_triples(params, kb.arrays(), goals, TEMPLATES, ProverConfig(k_facts=None))
    gr1 = score_triples(params, kb.arrays(), goals, TEMPLATES, ProverConfig(k_facts=2))
    assert np.all(np.asarray(gr1) <= np.asarray(ex1) + 1e-7)


def test_explain_returns_the_best_proof():
    kb = _tiny_kb()
    params = _params(kb, seed=4)
    goals = np.array(kb.facts[:3], np.int32)
    mask = np.arange(3, dtype=np.int32)
    for cfg in (ProverConfig(depth=1, k_facts=None), ProverConfig(depth=1, k_facts=3, k_rules=1)):
        proofs = explain(params, kb.arrays(), goals, TEMPLATES, cfg, mask=mask)
        scores = np.asarray(score_triples(params, kb.arrays(), goals, TEMPLATES, cfg, mask=mask))
        fp, fs, fo = (np.asarray(x) for x in fact_embeddings(params, kb.arrays()))
        slope = float(params["slope"])
        for b, pr in enumerate(proofs):
            assert pr.score == pytest.approx(float(scores[b]), rel=1e-6)
            assert mask[b] not in pr.facts
            # recompute the proof's score from its steps (single-fact / symmetric-rule proofs)
            if len(pr.steps) == 1:
                (f,) = pr.facts
                p, s, o = goals[b]
                ks = [
                    np.exp(-slope * np.linalg.norm(np.asarray(params[n])[i] - e[f]))
                    for n, i, e in (
                        ("predicates", p, fp),
                        ("constants", s, fs),
                        ("constants", o, fo),
                    )
                ]
                assert pr.score == pytest.approx(min(ks), rel=1e-4)


def _sym_trans_kb():
    """Symmetric ``near`` + transitive ``in`` over a small world; held-out facts are implied."""
    rng = np.random.default_rng(0)
    people = [f"p{i}" for i in range(8)]
    near = [(people[i], "near", people[i + 1]) for i in range(0, 8, 2)]
    near += [(b, "near", a) for a, _, b in near]
    chain = [f"c{i}" for i in range(5)]
    inn = [(chain[i], "in", chain[j]) for i in range(5) for j in range(i + 1, 5)]  # closed
    facts = near + inn
    rng.shuffle(facts)
    held = [("p1", "near", "p0"), ("p5", "near", "p4"), ("c0", "in", "c2"), ("c1", "in", "c4")]
    train = [f for f in facts if f not in held]
    return train, held


def test_symmetric_transitive_rules_prove_held_out_facts():
    train, held = _sym_trans_kb()
    tpl = parse_templates("p(X, Y) :- p(Y, X) <2>\np(X, Y) :- p(X, Z), p(Z, Y) <2>\n")
    kb = KnowledgeBase.from_triples(train, extra_triples=held)
    params = init_params(jax.random.key(0), kb, tpl, 8, init_scale=0.5)
    cfg = ProverConfig(depth=1, k_facts=4, k_rules=None)
    tx = optax.adam(0.05)
    opt = tx.init(params)
    step = make_train_step(tpl, cfg, tx)
    arr = kb.arrays()
    facts = kb.facts
    known = set(map(tuple, facts.tolist())) | set(map(tuple, kb.index(held).tolist()))
    rng = np.random.default_rng(0)
    for _ in range(80):
        neg = corrupt_triples(rng, facts, len(kb.constants), known, 1)
        goals = np.concatenate([facts, neg])
        y = np.r_[np.ones(len(facts)), np.zeros(len(neg))].astype(np.float32)
        mask = np.r_[np.arange(len(facts)), -np.ones(len(neg))].astype(np.int32)
        params, opt, loss = step(params, opt, arr, goals, y, mask)
    held_ix = kb.index(held)
    pos = np.asarray(score_triples(params, arr, held_ix, tpl, cfg))
    neg = corrupt_triples(np.random.default_rng(1), held_ix, len(kb.constants), known, 3)
    negs = np.asarray(score_triples(params, arr, neg, tpl, cfg)).reshape(len(held), -1)
    assert float(loss) < 0.3
    assert pos.min() > 0.5, pos
    assert np.all(pos[:, None] > negs), (pos, negs)
    rules = decode_rules(params, tpl, kb.predicates)
    assert any(r == "near(X, Y) :- near(Y, X)" for _, r in rules[:4]), rules
    proofs = explain(params, arr, held_ix[:1], tpl, cfg)
    assert proofs[0].rules and proofs[0].rules[0][0] == 0  # proven by the symmetry template


def test_corrupt_triples_avoids_known():
    kb = _tiny_kb()
    known = set(map(tuple, kb.facts.tolist()))
    neg = corrupt_triples(np.random.default_rng(0), kb.facts, len(kb.constants), known, 3)
    assert neg.shape == (len(kb.facts) * 6, 3)
    assert not (set(map(tuple, neg.tolist())) & known)
    n = neg.reshape(len(kb.facts), 2, 3, 3)
    np.testing.assert_array_equal(n[:, 0, :, 2], np.repeat(kb.facts[:, 2:], 3, 1))  # subj side
    np.testing.assert_array_equal(n[:, 1, :, 1], np.repeat(kb.facts[:, 1:2], 3, 1))


def test_corrupt_triples_both_sides():
    """``both=True`` (the reference's --all): per triple m subject, m object and 2m
    subject-and-object corruptions, none of them known; ``both=False`` draws the same stream."""
    kb = _tiny_kb()
    known = set(map(tuple, kb.facts.tolist()))
    c = len(kb.constants)
    plain = corrupt_triples(np.random.default_rng(3), kb.facts, c, known, 2)
    again = corrupt_triples(np.random.default_rng(3), kb.facts, c, known, 2, both=False)
    np.testing.assert_array_equal(plain, again)
    neg = corrupt_triples(np.random.default_rng(3), kb.facts, c, known, 2, both=True)
    assert neg.shape == (len(kb.facts) * 8, 3)
    assert not (set(map(tuple, neg.tolist())) & known)
    n = neg.reshape(len(kb.facts), 8, 3)
    f = kb.facts[:, None, :]
    assert np.all(n[..., 0] == f[..., 0])  # the predicate is never corrupted
    assert np.all(n[:, :2, 2] == f[:, :, 2]) and np.all(n[:, 2:4, 1] == f[:, :, 1])
    both = n[:, 4:]
    assert both.shape[1] == 4
    # both entities are redrawn: over 24 draws from 4 constants each side changes ~3/4 of the time
    assert (both[..., 1] != f[..., 1]).mean() > 0.4 and (both[..., 2] != f[..., 2]).mean() > 0.4
    assert ((both[..., 1] != f[..., 1]) & (both[..., 2] != f[..., 2])).any()
    with pytest.raises(ValueError, match="num_negatives"):
        corrupt_triples(np.random.default_rng(0), kb.facts, c, known, -1)


def test_gntp_loss_sum_is_mean_times_goals():
    kb = _tiny_kb()
    params = _params(kb)
    cfg = ProverConfig(depth=1, k_facts=3)
    goals = np.concatenate([kb.facts, kb.facts[:, [0, 2, 1]]]).astype(np.int32)
    y = np.r_[np.ones(len(kb.facts)), np.zeros(len(kb.facts))].astype(np.float32)
    mask = np.r_[np.arange(len(kb.facts)), -np.ones(len(kb.facts))].astype(np.int32)
    args = (params, kb.arrays(), goals, y, mask, TEMPLATES, cfg)
    mean = float(gntp_loss(*args))
    total = float(gntp_loss(*args, reduction="sum"))
    np.testing.assert_allclose(total, mean * len(goals), rtol=1e-5)
    emb = [params["predicates"], params["constants"], params["tokens"], *params["rules"]]
    sq = sum(float(np.sum(np.asarray(x) ** 2)) for x in emb)
    np.testing.assert_allclose(
        float(gntp_loss(*args, l2=0.01, reduction="sum")), total + 0.01 * sq, rtol=1e-5
    )
    with pytest.raises(ValueError, match="reduction"):
        gntp_loss(*args, reduction="max")


def test_mentions_use_mean_token_embedding():
    kb = _tiny_kb()
    params = _params(kb)
    fp, _, _ = fact_embeddings(params, kb.arrays())
    tok = np.asarray(params["tokens"])
    np.testing.assert_allclose(fp[len(kb.facts)], tok[[0, 1]].mean(0), rtol=1e-6)


def test_nearest_neighbours_exact_and_exclude():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(9, 5)).astype(np.float32)
    keys = rng.normal(size=(30, 5)).astype(np.float32)
    d = ((q[:, None] - keys[None]) ** 2).sum(-1)
    want = np.argsort(d, 1)[:, :4]
    np.testing.assert_array_equal(U.nearest_neighbours(q, keys, 4), want)
    np.testing.assert_array_equal(U.nearest_neighbours(q, keys, 4, chunk_size=4), want)
    ex = want[:, 0]
    got = np.asarray(U.nearest_neighbours(q, keys, 3, exclude=ex))
    np.testing.assert_array_equal(got, np.argsort(d, 1)[:, 1:4])
    with pytest.raises(ValueError, match="k must be"):
        U.nearest_neighbours(q, keys, 31)


def test_config_validation():
    with pytest.raises(ValueError, match="unification"):
        ProverConfig(unification="soft")
    with pytest.raises(ValueError, match="k_facts"):
        ProverConfig(k_facts=0)


def test_nnx_module_matches_pure_functions():
    from flax import nnx

    from jaxcomp.prover import GNTP, RuleEmbedding

    kb = _tiny_kb()
    cfg = ProverConfig(depth=1, k_facts=3)
    model = GNTP(kb, TEMPLATES, 4, config=cfg, rngs=nnx.Rngs(0))
    goals = jnp.asarray(kb.facts)
    mask = jnp.arange(len(goals), dtype=jnp.int32)  # own fact hidden: non-trivial gradients
    want = score_triples(model.params(), kb.arrays(), goals, TEMPLATES, cfg)
    np.testing.assert_allclose(nnx.jit(lambda m, g: m(g))(model, goals), want, rtol=1e-6)
    rules = nnx.state(model, RuleEmbedding)
    assert len(jax.tree.leaves(rules)) == len(TEMPLATES)
    only_rules = nnx.DiffState(0, RuleEmbedding)
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(goals, mask=mask)), argnums=only_rules))(model)
    assert len(jax.tree.leaves(grads)) == len(TEMPLATES)
    arr = kb.arrays()
    want_g = jax.grad(lambda p: jnp.sum(score_triples(p, arr, goals, TEMPLATES, cfg, mask=mask)))(
        model.params()
    )
    for got, want in zip(jax.tree.leaves(grads), want_g["rules"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert any(float(jnp.abs(w).sum()) > 0 for w in want_g["rules"])


def test_text_mention_proves_a_kb_goal_when_pattern_matches_predicate():
    kb = _tiny_kb()  # mention: a "lives near" d; the KB has no r(a, d)
    params = _params(kb)
    r, a, d = kb.predicates.index("r"), kb.constants.index("a"), kb.constants.index("d")
    goal = np.array([[r, a, d]], np.int32)
    cfg = ProverConfig(depth=0, k_facts=2)
    before = float(score_triples(params, kb.arrays(), goal, TEMPLATES, cfg)[0])
    tok = np.asarray(params["tokens"]).copy()
    tok[1] = 2 * np.asarray(params["predicates"])[r] - tok[0]  # mean of the 2 tokens = r
    params = {**params, "tokens": jnp.asarray(tok)}
    after = float(score_triples(params, kb.arrays(), goal, TEMPLATES, cfg)[0])
    assert after == pytest.approx(np.exp(-1.3 * 1e-3), rel=1e-4) and before < 0.9
    (proof,) = explain(params, kb.arrays(), goal, TEMPLATES, cfg)
    assert proof.facts == (len(kb.facts),)  # the mention


def _batch(kb):
    rng = np.random.default_rng(0)
    known = set(map(tuple, kb.facts.tolist()))
    neg = corrupt_triples(rng, kb.facts, len(kb.constants), known, 1)
    goals = np.concatenate([kb.facts, neg]).astype(np.int32)
    y = np.r_[np.ones(len(kb.facts)), np.zeros(len(neg))].astype(np.float32)
    mask = np.r_[np.arange(len(kb.facts)), -np.ones(len(neg))].astype(np.int32)
    return goals, y, mask


def test_rules_split_freezes_the_other_parameters_and_their_adam_moments():
    from jaxcomp.prover.gntp import RulesSplitState, rules_split

    kb = _tiny_kb()
    params = _params(kb)
    goals, y, mask = _batch(kb)
    cfg = ProverConfig(depth=1, k_facts=3)
    tx = rules_split(optax.adam(0.05), only_rules_steps=2)
    step = make_train_step(TEMPLATES, cfg, tx)
    p, s = params, tx.init(params)
    assert isinstance(s, RulesSplitState)
    rest0 = jax.tree.map(np.asarray, s.rest)
    for _ in range(2):  # warm-up: only the rules move, the rest's Adam state stays put
        p, s, _ = step(p, s, kb.arrays(), goals, y, mask)
    for k in ("predicates", "constants", "tokens"):
        np.testing.assert_array_equal(p[k], params[k])
    jax.tree.map(np.testing.assert_array_equal, s.rest, rest0)
    assert int(s.rules[0].count) == 2 and int(s.count) == 2
    assert any(not np.array_equal(a, b) for a, b in zip(p["rules"], params["rules"]))
    p2, s2, _ = step(p, s, kb.arrays(), goals, y, mask)  # after the warm-up: everything moves
    assert not np.array_equal(p2["constants"], p["constants"])
    assert int(s2.rest[0].count) == 1 and int(s2.rules[0].count) == 3
    # the static flag does the same on demand; a plain optimizer state is refused
    p3, s3, _ = step(p2, s2, kb.arrays(), goals, y, mask, only_rules=True)
    np.testing.assert_array_equal(p3["constants"], p2["constants"])
    jax.tree.map(np.testing.assert_array_equal, s3.rest, s2.rest)
    plain = make_train_step(TEMPLATES, cfg, optax.adam(0.05))
    with pytest.raises(ValueError, match="rules_split"):
        plain(params, optax.adam(0.05).init(params), kb.arrays(), goals, y, mask, only_rules=True)
    # without a warm-up it is Adam on every parameter (Adam is element-wise); extra args ignored
    a = make_train_step(TEMPLATES, cfg, rules_split(optax.adam(0.05)))
    b = make_train_step(TEMPLATES, cfg, optax.adam(0.05))
    pa, _, _ = a(params, rules_split(optax.adam(0.05)).init(params), kb.arrays(), goals, y, mask)
    pb, _, _ = b(params, optax.adam(0.05).init(params), kb.arrays(), goals, y, mask)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7), pa, pb)
    g = jax.tree.map(jnp.ones_like, params)
    rules_split(optax.adam(0.05)).update(g, tx.init(params), params, grad_fn=None)


def test_explain_compiles_once_per_shape(monkeypatch):
    from jaxcomp.prover import gntp as G

    traces = []
    run = G._Prover.run
    monkeypatch.setattr(G._Prover, "run", lambda self, g: traces.append(1) or run(self, g))
    G._explain_fn.cache_clear()
    kb = _tiny_kb()
    params = _params(kb)
    cfg = ProverConfig(depth=1, k_facts=3)
    first = explain(params, kb.arrays(), kb.facts[:2], TEMPLATES, cfg)
    again = explain(params, kb.arrays(), kb.facts[2:4], TEMPLATES, cfg)  # same shapes: no retrace
    assert len(traces) == 1 and len(first) == len(again) == 2
    assert explain(params, kb.arrays(), kb.facts[:2], TEMPLATES, cfg) == first


def test_format_proof_reads_as_text():
    from jaxcomp.prover.gntp import Proof, format_proof

    kb = _tiny_kb()  # mention: a "lives near" d
    params = _params(kb, seed=4)
    goals = np.array(kb.facts[:3], np.int32)
    cfg = ProverConfig(depth=1, k_facts=None)
    for g, pr in zip(goals, explain(params, kb.arrays(), goals, TEMPLATES, cfg, mask=np.arange(3))):
        lines = format_proof(pr, kb, params, TEMPLATES, goal=g).splitlines()
        assert lines[0] == f"{kb.goal_text(*g)}   score {pr.score:.3f}"
        assert len(lines) == 1 + len(pr.steps)
        for line, (kind, t, i) in zip(lines[1:], pr.steps):
            if kind == "rule":
                assert line.startswith(f"  rule t{t}.{i} [") and "(X, Y) :- " in line
            else:
                assert kb.fact_text(i) in line and "mention#" not in line
    # a proof through the text mention shows its text; [XXX]/[YYY] become the arguments
    proof = Proof(0.5, (("fact", -1, len(kb.facts)),))
    assert format_proof(proof, kb, params, TEMPLATES).splitlines() == [
        "proof   score 0.500",
        '  text "a "lives near" d"',
    ]
    kb2 = KnowledgeBase.from_triples(
        [("a", "r", "b")], mentions=[("a", "[XXX] is near [YYY]", "b")]
    )
    assert kb2.fact_text(1) == "a is near b" and kb2.fact_text(0) == "r(a, b)"
    with pytest.raises(ValueError, match="fact index 2"):
        kb2.fact_text(2)


def test_save_load_prover_round_trip_scores_identical(tmp_path):
    from jaxcomp.prover import load_prover, save_prover

    kb = _tiny_kb()  # with a text mention
    params = _params(kb)
    cfg = ProverConfig(depth=1, k_facts=3, unification="joint")
    save_prover(tmp_path / "m", params, kb, TEMPLATES, cfg)
    p2, kb2, tpl2, cfg2 = load_prover(tmp_path / "m")
    assert (kb2.predicates, kb2.constants, kb2.tokens) == (kb.predicates, kb.constants, kb.tokens)
    assert tpl2 == tuple(TEMPLATES) and cfg2 == cfg
    np.testing.assert_array_equal(kb2.facts, kb.facts)
    goals = np.array([[p, s, o] for p in range(2) for s in range(4) for o in range(4)], np.int32)
    a = score_triples(params, kb.arrays(), goals, TEMPLATES, cfg)
    b = score_triples(p2, kb2.arrays(), goals, tpl2, cfg2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    import json

    meta = json.loads((tmp_path / "m" / "prover.json").read_text())
    meta["constants"] = meta["constants"][:-1]  # vocabulary and tensor disagree
    (tmp_path / "m" / "prover.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'constants' has shape"):
        load_prover(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="prover.json"):
        load_prover(tmp_path / "nothing")


# ---------------------------------------------------------------- GNTP-Attention (Sec. 3.3)
def test_rule_attention_is_softmax_mixture_of_predicates_and_feeds_the_same_prover(tmp_path):
    from jaxcomp.prover import load_prover, rule_embeddings, save_prover

    kb = _tiny_kb()
    P = len(kb.predicates)
    att = init_params(jax.random.key(3), kb, TEMPLATES, 4, init_scale=0.6, rule_attention=True)
    assert [r.shape for r in att["rules"]] == [(t.count, len(t.predicates), P) for t in TEMPLATES]
    emb = rule_embeddings(att, attention=True)
    pred = np.asarray(att["predicates"], np.float64)
    for a, e in zip(att["rules"], emb):
        a = np.asarray(a, np.float64)
        w = np.exp(a - a.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.asarray(e), w @ pred, rtol=1e-5, atol=1e-6)
    # the attention prover scores exactly as a standard prover holding those embeddings
    goals = np.array([[p, s, o] for p in range(P) for s in range(3) for o in range(3)], np.int32)
    for depth in (1, 2):
        c_att = ProverConfig(depth=depth, k_facts=None, unification="joint", rule_attention=True)
        c_std = ProverConfig(depth=depth, k_facts=None, unification="joint")
        a = score_triples(att, kb.arrays(), goals, TEMPLATES, c_att)
        b = score_triples({**att, "rules": emb}, kb.arrays(), goals, TEMPLATES, c_std)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # gradients reach the attention logits and, through the mixture, the predicates
    mask = -np.ones(len(goals), np.int32)
    g = jax.grad(
        lambda p: jnp.mean(score_triples(p, kb.arrays(), goals, TEMPLATES, c_att, mask=mask))
    )(att)
    assert all(float(jnp.max(jnp.abs(r))) > 0 for r in g["rules"])
    # a peaked attention decodes to its predicate with confidence ~1
    peaked = {**att, "rules": [jnp.full_like(r, -30.0) for r in att["rules"]]}
    peaked["rules"][0] = peaked["rules"][0].at[:, :, 1].set(30.0)  # every slot -> predicate 1
    conf, text, (t, r) = decode_rules(
        peaked, TEMPLATES, kb.predicates, with_index=True, attention=True
    )[0]
    name = kb.predicates[1]
    assert t == 0 and text == f"{name}(X, Y) :- {name}(Y, X)" and conf == pytest.approx(1, abs=1e-5)
    # save / load round trip keeps the logits (and their shape check)
    save_prover(tmp_path / "att", att, kb, TEMPLATES, c_att)
    p2, kb2, tpl2, cfg2 = load_prover(tmp_path / "att")
    assert cfg2.rule_attention
    np.testing.assert_array_equal(
        np.asarray(score_triples(p2, kb2.arrays(), goals, tpl2, cfg2)), np.asarray(a)
    )
    # standard params under an attention config: a clear error naming the shape
    std = _params(kb)
    with pytest.raises(ValueError, match=rf"logits over the {P} predicates; template 0 has shape"):
        score_triples(std, kb.arrays(), goals, TEMPLATES, c_att)


def test_ranking_at_fb15k237_size_fits_a_memory_budget():
    """Ranking one FB15k-237 test triple scores every entity as a candidate (14,505 goals per
    side) against 272,115 facts. By default the neighbour search is chunked to a 64 MiB
    distance matrix, so XLA's temporaries stay under 1 GiB; one shot they need > 100 GiB.
    The chunked program also runs on generated data of that size."""
    n_ent, n_rel, n_facts, dim = 14_505, 237, 272_115, 20
    rng = np.random.default_rng(0)
    facts = np.stack(
        [rng.integers(n_rel, size=n_facts), *rng.integers(n_ent, size=(2, n_facts))], 1
    ).astype(np.int32)
    kb = KnowledgeBase(
        tuple(f"r{i}" for i in range(n_rel)), tuple(f"e{i}" for i in range(n_ent)), facts
    )
    tpl = parse_templates("1  #1(X, Y) :- #2(X, Z), #3(Z, Y).\n", fmt="nlt")
    params = init_params(jax.random.key(0), kb, tpl, dim)
    arr = kb.arrays()
    goals = jax.ShapeDtypeStruct((n_ent, 3), jnp.int32)  # one side of one test triple
    gib = 2**30
    bounded = ProverConfig(depth=1, k_facts=10, k_rules=1, unification="joint")
    one_shot = dataclasses.replace(bounded, search_bytes=None)
    temp = {}
    for name, cfg in (("bounded", bounded), ("one_shot", one_shot)):
        fn = jax.jit(lambda p, a, g, c=cfg: score_triples(p, a, g, tpl, c))
        temp[name] = fn.lower(params, arr, goals).compile().memory_analysis().temp_size_in_bytes
    assert temp["bounded"] < 1 * gib, temp
    assert temp["one_shot"] > 100 * gib, temp
    # run it (64 candidates): the default chunking gives the scores of a 4x smaller chunk
    g = np.stack([np.full(64, 3), np.full(64, 7), np.arange(64)], 1).astype(np.int32)
    got = np.asarray(score_triples(params, arr, g, tpl, bounded))
    small = dataclasses.replace(bounded, search_bytes=16 * 2**20)
    np.testing.assert_allclose(
        got, np.asarray(score_triples(params, arr, g, tpl, small)), rtol=1e-6
    )
    assert np.all((got > 0) & (got <= 1))
    with pytest.raises(ValueError, match="search_bytes"):
        ProverConfig(search_bytes=0)


def test_make_train_step_sum_reduction_matches_gntp_loss():
    kb = _tiny_kb()
    params = _params(kb)
    cfg = ProverConfig(depth=1, k_facts=3)
    goals = kb.facts.astype(np.int32)
    y = np.ones(len(goals), np.float32)
    mask = np.arange(len(goals), dtype=np.int32)
    tx = optax.sgd(0.1)
    step = make_train_step(TEMPLATES, cfg, tx, l2=0.01, reduction="sum")
    _, _, loss = step(params, tx.init(params), kb.arrays(), goals, y, mask)
    want = gntp_loss(params, kb.arrays(), goals, y, mask, TEMPLATES, cfg, l2=0.01, reduction="sum")
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        make_train_step(TEMPLATES, cfg, tx, reduction="avg")
