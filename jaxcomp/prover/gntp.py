"""Greedy Neural Theorem Prover (Minervini et al., AAAI 2020) and the exhaustive NTP it speeds up.

Backward chaining with soft unification (Rocktaschel & Riedel 2017, Sec. 3): the OR module unifies
a goal with every fact and every rule head in the KB, the AND module proves a rule's body atoms in
sequence; a proof's score is the minimum of its unification scores (AND) and the goal's score the
maximum over its proofs (OR), for proofs up to ``depth`` rule applications.

GNTP (Sec. 3.1) keeps, at each OR step, only the ``k_facts`` facts (and ``k_rules`` rule heads per
template) nearest to the goal's ground part; exact nearest neighbours by batched distances +
``lax.top_k`` (:func:`jaxcomp.prover.unify.nearest_neighbours`). ``k_facts=None`` is the
exhaustive NTP.

The proof tree's shape is static (templates and depth are Python data), so the recursion runs at
trace time; each OR step appends one "branch" axis to the proof-score array ``(B, d1, ..., dn)``.
Template variables are renamed apart at every rule application (standard SLD resolution), so a
template can be applied recursively when ``depth > 1``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxcomp.prover import unify as U
from jaxcomp.prover.kb import (
    KBArrays,
    KnowledgeBase,
    check_goals,
    embed_goals,
    fact_embeddings,
    init_params,
    rule_embeddings,
)
from jaxcomp.prover.templates import Template

__all__ = [
    "GNTP",
    "RuleEmbedding",
    "ProverConfig",
    "prove",
    "score_triples",
    "explain",
    "format_proof",
    "Proof",
    "logistic_loss",
    "gntp_loss",
    "make_train_step",
    "rules_split",
    "RulesSplitState",
    "corrupt_triples",
    "decode_rules",
]


@dataclasses.dataclass(frozen=True)
class ProverConfig:
    """Static prover options (hashable; pass as a static argument).

    Attributes:
      depth: maximum number of nested rule applications (0 = facts only).
      k_facts: facts kept per OR step (GNTP); ``None`` = all facts (exhaustive NTP).
      k_rules: rule instantiations kept per template per OR step; ``None`` = all.
      unification: ``"classic"`` (min of one kernel per argument position, NTP Eq. 3) or
        ``"joint"`` (one kernel on the concatenated ground positions, GNTP Sec. 3.1).
      approx: use ``lax.approx_min_k`` for the neighbour search (accelerators).
      chunk_size: query chunk for the neighbour search (bounds its memory); ``None`` = chosen
        from ``search_bytes``.
      search_bytes: when ``chunk_size`` is ``None``, the largest ``(chunk, N)`` float32 distance
        matrix one search step may hold (default 64 MiB): queries go in chunks of
        ``search_bytes // (4 N)`` (one shot when they all fit). XLA's temporaries come to about
        4x this plus the proof tensors (ranking one FB15k-237 triple, a 2-hop template: 0.42 GiB
        at 64 MiB, 1.4 GiB at 256 MiB). ``None`` = always one shot (unbounded: 147 GiB there).
      train_slope: let gradients reach the kernel slope.
      rule_attention: GNTP-Attention (Sec. 3.3): ``params["rules"]`` hold attention logits over
        the KB predicates and each rule predicate is ``softmax(logits) @ predicates``
        (:func:`jaxcomp.prover.kb.rule_embeddings`); the params must come from
        ``init_params(..., rule_attention=True)``.
    """

    depth: int = 1
    k_facts: int | None = 10
    k_rules: int | None = None
    unification: str = "classic"
    approx: bool = False
    chunk_size: int | None = None
    search_bytes: int | None = 64 * 2**20
    train_slope: bool = False
    rule_attention: bool = False

    def __post_init__(self):
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if self.k_facts is not None and self.k_facts < 1:
            raise ValueError(f"k_facts must be >= 1 or None, got {self.k_facts}")
        if self.k_rules is not None and self.k_rules < 1:
            raise ValueError(f"k_rules must be >= 1 or None, got {self.k_rules}")
        if self.unification not in ("classic", "joint"):
            raise ValueError(f"unification must be 'classic' or 'joint', got {self.unification!r}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {self.chunk_size}")
        if self.search_bytes is not None and self.search_bytes < 1:
            raise ValueError(f"search_bytes must be >= 1 or None, got {self.search_bytes}")

    def search_chunk(self, num_keys: int) -> int | None:
        """Queries per neighbour-search step against ``num_keys`` keys (``None`` = one shot)."""
        if self.chunk_size is not None or self.search_bytes is None:
            return self.chunk_size
        return max(1, self.search_bytes // (4 * num_keys))


@dataclasses.dataclass
class _State:
    """A batch of partial proofs: scores ``(B, d1..dn)``, substitutions, and the proof trace.

    Every array in ``subs`` has rank ``n + 2`` (``(B, d1..dn, E)``, size-1 axes broadcast); a
    string value is an alias to another variable. ``trace`` has one entry per branch axis:
    ``(kind, template, idx)`` with ``idx`` the fact/rule ids along that axis (``None`` = arange).
    """

    scores: jax.Array
    subs: dict
    trace: tuple


def _lift(x: jax.Array) -> jax.Array:
    return x[..., None, :]


def _resolve(term, subs: dict):
    while isinstance(term, str) and term in subs:
        term = subs[term]
    return term


class _Prover:
    def __init__(self, params, kb: KBArrays, templates, cfg: ProverConfig, mask, reduce=True):
        self.cfg = cfg
        self.templates = templates
        self.rules = rule_embeddings(params, cfg.rule_attention)
        self.slope = params["slope"] if cfg.train_slope else jax.lax.stop_gradient(params["slope"])
        self.facts = fact_embeddings(params, kb)
        self.n_facts = self.facts[0].shape[0]
        self.mask = mask  # (B,) int32 fact index to hide from each goal, or None
        self._fresh = itertools.count()
        self.reduce = reduce

    def kernel_from_d2(self, d2_list):
        if self.cfg.unification == "joint":
            return U.rbf_from_sq_dist(sum(d2_list), self.slope)
        out = None
        for d2 in d2_list:
            s = U.rbf_from_sq_dist(d2, self.slope)
            out = s if out is None else jnp.minimum(out, s)
        return out

    def _lift_subs(self, subs):
        return {k: (_lift(v) if not isinstance(v, str) else v) for k, v in subs.items()}

    def _search(self, queries, keys, k, exclude):
        """queries: list of (S..., E) arrays broadcast to ``shape``; returns idx (S..., k)."""
        shape = queries[0].shape[:-1]
        q = jnp.concatenate(queries, -1).reshape(-1, queries[0].shape[-1] * len(queries))
        ex = None if exclude is None else exclude.reshape(-1)
        keys = jnp.concatenate(keys, -1)
        idx = U.nearest_neighbours(
            q,
            keys,
            k,
            exclude=ex,
            approx=self.cfg.approx,
            chunk_size=self.cfg.search_chunk(keys.shape[0]),
        )
        return idx.reshape(*shape, k)

    # OR over facts (Rocktaschel & Riedel 2017, Sec. 3.2; GNTP Sec. 3.1 when k_facts is set)
    def or_facts(self, goal, st: _State, terminal: bool = False) -> _State:
        shape = st.scores.shape
        nd = len(shape) - 1
        ground = [i for i in range(3) if not isinstance(goal[i], str)]
        if not ground:
            raise ValueError("cannot unify a goal with no ground position against facts")
        k = self.cfg.k_facts
        n = self.n_facts
        mask = None
        if self.mask is not None:
            mask = self.mask.reshape((-1,) + (1,) * nd)  # (B, 1..1)
        subs = self._lift_subs(st.subs)
        if (k is None or k >= n) and terminal and self.reduce:
            # last OR of a proof, exhaustive: find the best fact without gradients (fused
            # (B, d1..dn, N) reduction), then recompute its score differentiably; equal in value
            # and (sub)gradient to max_n min(score, k_n), in O(B d1..dn) memory
            with jax.named_scope("ntp_terminal_or"):
                fg = [jax.lax.stop_gradient(f) for f in self.facts]
                gg = [jax.lax.stop_gradient(goal[i]) for i in ground]
                d2 = [U.pairwise_sq_dist(g, fg[i]) for g, i in zip(gg, ground)]
                sim = self.kernel_from_d2(d2)
                if mask is not None:
                    sim = jnp.where(jnp.arange(n) == mask[..., None], 0.0, sim)
                best = jnp.argmax(jnp.minimum(jax.lax.stop_gradient(st.scores)[..., None], sim), -1)
                best = jnp.broadcast_to(best, shape)
            d2 = [U.sq_dist(goal[i], self.facts[i][best]) for i in ground]
            sim = self.kernel_from_d2(d2)
            if mask is not None:
                sim = jnp.where(best == mask, 0.0, sim)
            return _State(jnp.minimum(st.scores, sim), {}, st.trace)
        if k is None or k >= n:
            d2 = [U.pairwise_sq_dist(goal[i], self.facts[i]) for i in ground]
            sim = self.kernel_from_d2(d2)
            if mask is not None:
                sim = jnp.where(jnp.arange(n) == mask[..., None], 0.0, sim)
            for i in range(3):
                if i not in ground:
                    subs[goal[i]] = self.facts[i].reshape((1,) * (nd + 1) + self.facts[i].shape)
            idx = None
        else:
            qs = [jnp.broadcast_to(goal[i], shape + goal[i].shape[-1:]) for i in ground]
            ex = None if mask is None else jnp.broadcast_to(mask, shape)
            idx = self._search(qs, [self.facts[i] for i in ground], k, ex)
            d2 = [U.sq_dist(_lift(goal[i]), self.facts[i][idx]) for i in ground]
            sim = self.kernel_from_d2(d2)
            if mask is not None:
                sim = jnp.where(idx == mask[..., None], 0.0, sim)
            for i in range(3):
                if i not in ground:
                    subs[goal[i]] = self.facts[i][idx]
        if terminal and self.reduce:
            # the last OR of a proof: max over its facts now (same result as the final max
            # in `prove`), so the (B, d1..dn, N) array is reduced in a fused loop
            return _State(jnp.max(jnp.minimum(st.scores[..., None], sim), -1), {}, st.trace)
        scores = jnp.minimum(st.scores[..., None], sim)
        return _State(scores, subs, st.trace + (("fact", -1, idx),))

    # OR over the rules of template t, then AND over its body (NTP Sec. 3.2-3.3)
    def or_rule(self, t: int, goal, st: _State, depth: int, terminal: bool = False) -> list[_State]:
        tpl: Template = self.templates[t]
        theta = self.rules[t]  # (R, slots, E)
        r = theta.shape[0]
        shape = st.scores.shape
        nd = len(shape) - 1
        if isinstance(goal[0], str):
            raise ValueError("goal predicate must be ground to unify with a rule head")
        tag = next(self._fresh)
        ren = {v: f"{v}#{tag}" for v in tpl.variables}
        pred_key = [f"%{t}.{j}#{tag}" for j in range(len(tpl.predicates))]
        subs = self._lift_subs(st.subs)
        h = tpl.slot(tpl.head)
        k = self.cfg.k_rules
        if k is None or k >= r:
            sim = U.rbf_from_sq_dist(U.pairwise_sq_dist(goal[0], theta[:, h]), self.slope)
            for j in range(theta.shape[1]):
                subs[pred_key[j]] = theta[:, j].reshape((1,) * (nd + 1) + theta[:, j].shape)
            idx = None
        else:
            q = jnp.broadcast_to(goal[0], shape + goal[0].shape[-1:])
            idx = self._search([q], [theta[:, h]], k, None)
            sel = theta[idx]  # (B, d.., k, slots, E)
            sim = U.rbf_from_sq_dist(U.sq_dist(_lift(goal[0]), sel[..., h, :]), self.slope)
            for j in range(theta.shape[1]):
                subs[pred_key[j]] = sel[..., j, :]
        for hv, g in zip(tpl.head.args, goal[1:]):
            subs[ren[hv]] = g if isinstance(g, str) else _lift(g)
        scores = jnp.minimum(st.scores[..., None], sim)
        states = [_State(scores, subs, st.trace + (("rule", t, idx),))]
        for a, atom in enumerate(tpl.body):
            last = terminal and a == len(tpl.body) - 1
            nxt = []
            for s in states:
                sub_goal = [
                    _resolve(pred_key[tpl.slot(atom)], s.subs),
                    _resolve(ren[atom.args[0]], s.subs),
                    _resolve(ren[atom.args[1]], s.subs),
                ]
                nxt += self.or_(sub_goal, s, depth - 1, last)
            states = nxt
        return states

    def or_(self, goal, st: _State, depth: int, terminal: bool = False) -> list[_State]:
        out = [self.or_facts(goal, st, terminal)]
        if depth > 0:
            for t in range(len(self.templates)):
                out += self.or_rule(t, goal, st, depth, terminal)
        return out

    def run(self, goal_emb) -> list[_State]:
        b = goal_emb[0].shape[0]
        st = _State(jnp.ones((b,), goal_emb[0].dtype), {}, ())
        return self.or_(list(goal_emb), st, self.cfg.depth, terminal=True)


def prove(
    params: dict,
    kb: KBArrays,
    goal_emb: tuple[jax.Array, jax.Array, jax.Array],
    templates: Sequence[Template],
    cfg: ProverConfig,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Proof scores ``(B,)`` for goals given as embeddings ``(p, s, o)``, each ``(B, E)``.

    ``score = max over proofs of min over the proof's unification scores`` (NTP Eq. 4-6), with
    the greedy OR of GNTP Sec. 3.1 when ``cfg.k_facts``/``cfg.k_rules`` are set.
    ``mask[b]`` is a KB fact index hidden from goal ``b`` (its own fact during training, so it
    must be proven by rules: GNTP Sec. 3.2 / NTP Sec. 5.1); ``-1`` hides nothing.
    """
    states = _Prover(params, kb, tuple(templates), cfg, mask).run(goal_emb)
    best = [s.scores.reshape(s.scores.shape[0], -1).max(-1) for s in states]
    return jnp.max(jnp.stack(best), axis=0)


def score_triples(
    params: dict,
    kb: KBArrays,
    goals: jax.Array,
    templates: Sequence[Template],
    cfg: ProverConfig,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """:func:`prove` for int ``(B, 3)`` goals ``(p, s, o)`` (jitted; templates/cfg static).

    Concrete goals are checked (shape, dtype, index ranges) before jitting: ``ValueError``."""
    check_goals(goals, params["predicates"].shape[0], params["constants"].shape[0])
    return _score_jit(params, kb, jnp.asarray(goals), tuple(templates), cfg, mask)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _score_jit(params, kb, goals, templates, cfg, mask):
    return prove(params, kb, embed_goals(params, goals), templates, cfg, mask=mask)


@dataclasses.dataclass(frozen=True)
class Proof:
    """The highest-scoring proof of one goal: its score and its steps in proof order.

    ``steps`` holds ``("rule", template_index, rule_index)`` and ``("fact", -1, fact_index)``
    (fact indices >= number of KB facts are text mentions).
    """

    score: float
    steps: tuple[tuple[str, int, int], ...]

    @property
    def facts(self) -> tuple[int, ...]:
        return tuple(i for kind, _, i in self.steps if kind == "fact")

    @property
    def rules(self) -> tuple[tuple[int, int], ...]:
        return tuple((t, i) for kind, t, i in self.steps if kind == "rule")


@functools.lru_cache(maxsize=64)
def _explain_fn(templates: tuple, cfg: ProverConfig):
    """-> (jitted ``run(params, kb, goals, mask)``, the proof-tree axis kinds it records).

    Cached per static ``(templates, cfg)``, so ``jax.jit``'s own cache keeps one executable per
    argument shape. The axis kinds depend only on ``(templates, cfg)``; they are written at
    trace time (the first call) and read by every call."""
    kinds: list = []

    def run(params, kb, goals, mask):
        prover = _Prover(params, kb, templates, cfg, mask, reduce=False)
        states = prover.run(embed_goals(params, goals))
        kinds[:] = [[(kind, t) for kind, t, _ in s.trace] for s in states]
        return [s.scores for s in states], [[idx for _, _, idx in s.trace] for s in states]

    return jax.jit(run), kinds


def explain(
    params: dict,
    kb: KBArrays,
    goals: jax.Array,
    templates: Sequence[Template],
    cfg: ProverConfig,
    *,
    mask: jax.Array | None = None,
) -> list[Proof]:
    """For each int goal ``(p, s, o)``, the best proof (rules and facts used, score).

    Runs the same prover as :func:`prove` and reads back the argmax branch of the proof tree.
    The prover is compiled once per ``(templates, cfg)`` and argument shapes (a later call with
    the same shapes reuses it); :func:`format_proof` renders a proof as text.
    """
    check_goals(goals, params["predicates"].shape[0], params["constants"].shape[0])
    goals = jnp.asarray(goals)
    run, kinds = _explain_fn(tuple(templates), cfg)
    all_scores, all_idx = run(params, kb, goals, mask)
    b = goals.shape[0]
    out = []
    for i in range(b):
        best_score, best = -1.0, None
        for n, sc in enumerate(all_scores):
            sc = np.asarray(sc[i])
            flat = int(np.argmax(sc))
            top = float(sc.reshape(-1)[flat])
            if top > best_score:
                best_score, best = top, (n, np.unravel_index(flat, sc.shape))
        n, pos = best
        steps = []
        for axis, ((kind, t), idx) in enumerate(zip(kinds[n], all_idx[n])):
            if idx is None:
                j = int(pos[axis])
            else:
                sel = (min(i, idx.shape[0] - 1),) + tuple(
                    min(int(p), d - 1) for p, d in zip(pos[: axis + 1], idx.shape[1:])
                )
                j = int(np.asarray(idx)[sel])
            steps.append((kind, int(t), j))
        out.append(Proof(best_score, tuple(steps)))
    return out


def format_proof(
    proof: Proof,
    kb: KnowledgeBase,
    params: dict,
    templates: Sequence[Template],
    goal: Sequence[int] | None = None,
    *,
    attention: bool = False,
) -> str:
    """A proof from :func:`explain` as readable text, one step per line::

        locatedIn(asia0_c0, asia)   score 0.912
          rule t1.0 [0.95]: locatedIn(X, Y) :- neighborOf(X, Z), locatedIn(Z, Y)
          fact neighborOf(asia0_c0, asia0_c1)
          text "asia0_c1 is located in asia"

    Rules are shown with their variables and the nearest KB predicate of each slot (confidence
    in brackets, :func:`decode_rules`); text mentions by their text
    (:meth:`KnowledgeBase.mention_text`), KB facts as ``p(s, o)``. ``goal`` (int ``(p, s, o)``) titles the proof.
    ``attention``: the params of a ``ProverConfig(rule_attention=True)`` prover.
    """
    rule_text = {
        tr: (conf, text)
        for conf, text, tr in decode_rules(
            params, templates, kb.predicates, with_index=True, attention=attention
        )
    }
    head = kb.goal_text(*(int(x) for x in goal)) if goal is not None else "proof"
    lines = [f"{head}   score {proof.score:.3f}"]
    n = int(kb.facts.shape[0])
    for kind, t, i in proof.steps:
        if kind == "rule":
            conf, text = rule_text[(t, i)]
            lines.append(f"  rule t{t}.{i} [{conf:.2f}]: {text}")
        elif i < n:
            lines.append(f"  fact {kb.fact_text(i)}")
        else:
            lines.append(f'  text "{kb.fact_text(i)}"')
    return "\n".join(lines)


def logistic_loss(scores: jax.Array, targets: jax.Array, eps: float = 1e-10) -> jax.Array:
    """Binary cross-entropy on proof scores in (0, 1] (NTP Sec. 4, GNTP Sec. 3.2), per example."""
    s = jnp.clip(scores, eps, 1.0)
    s1 = jnp.clip(1.0 - scores, eps, 1.0)
    return -(targets * jnp.log(s) + (1.0 - targets) * jnp.log(s1))


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def gntp_loss(
    params: dict,
    kb: KBArrays,
    goals: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    templates: Sequence[Template],
    cfg: ProverConfig,
    *,
    l2: float = 0.0,
    reduction: str = "mean",
) -> jax.Array:
    """Logistic loss of the proof scores of ``goals`` (positives and corruptions).

    ``reduction`` is ``"mean"`` over goals or ``"sum"`` (the reference code's summed loss).
    ``mask`` hides each positive's own fact (``-1`` for negatives); ``l2`` adds
    ``l2 * sum ||theta||^2`` over embeddings (the reference's ``--l2 w`` uses TensorFlow's
    ``l2_loss = sum x^2 / 2``, i.e. ``l2 = w / 2`` here).
    """
    _check_reduction(reduction)
    scores = score_triples(params, kb, goals, templates, cfg, mask=mask)
    per_goal = logistic_loss(scores, targets)
    loss = jnp.mean(per_goal) if reduction == "mean" else jnp.sum(per_goal)
    if l2:
        emb = [params["predicates"], params["constants"], params["tokens"], *params["rules"]]
        loss = loss + l2 * sum(jnp.sum(x * x) for x in emb)
    return loss


class RulesSplitState(NamedTuple):
    """State of :func:`rules_split`: step ``count`` and the inner optimizer's state of the rule
    embeddings (``rules``) and of every other parameter (``rest``)."""

    count: jax.Array
    rules: optax.OptState
    rest: optax.OptState


def _split_rules(tree):
    return tree["rules"], {k: v for k, v in tree.items() if k != "rules"}


def rules_split(
    tx: optax.GradientTransformation, only_rules_steps: int = 0
) -> optax.GradientTransformationExtraArgs:
    """``tx`` applied separately to the rule embeddings (``params["rules"]``) and to the other
    parameters, so the reference's only-rules warm-up (``--only-rules-epochs``: the optimizer is
    handed the rule variables only) can freeze the rest *including its optimizer state*.

    During the first ``only_rules_steps`` steps, or a step called with the extra argument
    ``only_rules=True``, the other parameters get zero updates and their inner state (Adam's
    moments and count) is left as it was; the rules' state always advances. Otherwise it equals
    ``tx`` on the rules and ``tx`` on the rest (for element-wise ``tx`` such as Adam, the same as
    ``tx`` on everything). Unknown extra args are accepted and ignored.
    """
    if only_rules_steps < 0:
        raise ValueError(f"only_rules_steps must be >= 0, got {only_rules_steps}")

    def init_fn(params):
        rules, rest = _split_rules(params)
        return RulesSplitState(jnp.zeros([], jnp.int32), tx.init(rules), tx.init(rest))

    def update_fn(updates, state, params=None, *, only_rules=False, **extra_args):
        del extra_args
        u_rules, u_rest = _split_rules(updates)
        p_rules, p_rest = _split_rules(params) if params is not None else (None, None)
        u_rules, s_rules = tx.update(u_rules, state.rules, p_rules)
        frozen = jnp.logical_or(state.count < only_rules_steps, only_rules)

        def skip():
            return jax.tree.map(jnp.zeros_like, u_rest), state.rest

        def move():
            return tx.update(u_rest, state.rest, p_rest)

        u_rest, s_rest = jax.lax.cond(frozen, skip, move)
        count = optax.safe_increment(state.count)
        return {**u_rest, "rules": u_rules}, RulesSplitState(count, s_rules, s_rest)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_train_step(
    templates: Sequence[Template],
    cfg: ProverConfig,
    tx: optax.GradientTransformation,
    *,
    l2: float = 0.0,
    reduction: str = "mean",
):
    """Jitted ``step(params, opt_state, kb, goals, targets, mask, only_rules) -> (p, s, loss)``
    on :func:`gntp_loss` (``l2``, ``reduction``: ``"sum"`` for the reference's summed loss).

    ``only_rules=True`` (static) trains only the rule-template embeddings (the reference's
    ``--only-rules-epochs`` warm-up): ``tx`` must be a :func:`rules_split` transform, so the
    frozen parameters' optimizer state does not move either (``ValueError`` otherwise).
    """
    templates = tuple(templates)
    _check_reduction(reduction)

    def step(params, opt_state, kb, goals, targets, mask, only_rules=False):
        loss, grads = jax.value_and_grad(gntp_loss)(
            params, kb, goals, targets, mask, templates, cfg, l2=l2, reduction=reduction
        )
        if only_rules:
            if not isinstance(opt_state, RulesSplitState):
                raise ValueError(
                    "only_rules=True needs tx = rules_split(...) (so the frozen parameters' "
                    f"optimizer state stays put), got a {type(opt_state).__name__} state"
                )
            updates, opt_state = tx.update(grads, opt_state, params, only_rules=True)
        else:
            updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, static_argnames=("only_rules",))


def corrupt_triples(
    rng: np.random.Generator,
    triples: np.ndarray,
    num_constants: int,
    known: set,
    num_negatives: int = 1,
    *,
    both: bool = False,
    max_tries: int = 100,
) -> np.ndarray:
    """Negatives by corrupting subject and object (GNTP Sec. 3.2), host side.

    For each ``(p, s, o)`` returns ``num_negatives`` subject- and ``num_negatives``
    object-corruptions, each resampled until it is not in ``known`` (a set of ``(p, s, o)``
    tuples); shape ``(n * 2 * num_negatives, 3)``, ordered per triple
    ``[subj_1..subj_m, obj_1..obj_m]``. With ``both=True`` (the reference's ``--all``) each
    triple also gets ``2 * num_negatives`` corruptions of subject *and* object, appended after
    its own: shape ``(n * 4 * num_negatives, 3)``, ordered
    ``[subj_1..subj_m, obj_1..obj_m, both_1..both_2m]``.
    """
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    triples = np.asarray(triples)
    sides = (0, 1, 2) if both else (0, 1)
    counts = {0: num_negatives, 1: num_negatives, 2: 2 * num_negatives}
    per = sum(counts[side] for side in sides)
    out = np.zeros((len(triples), per, 3), dtype=triples.dtype if triples.size else np.int64)
    for i, (p, s, o) in enumerate(triples):
        j = 0
        for side in sides:
            for _ in range(counts[side]):
                cand = (int(p), int(s), int(o))
                for _ in range(max_tries):
                    cs = int(rng.integers(num_constants)) if side in (0, 2) else int(s)
                    co = int(rng.integers(num_constants)) if side in (1, 2) else int(o)
                    cand = (int(p), cs, co)
                    if cand not in known:
                        break
                out[i, j] = cand
                j += 1
    return out.reshape(-1, 3)


def decode_rules(
    params: dict,
    templates: Sequence[Template],
    predicate_names: Sequence[str],
    *,
    top: int | None = None,
    with_index: bool = False,
    attention: bool = False,
) -> list[tuple]:
    """Induced rules in readable form: each template slot -> its nearest KB predicate.

    Returns ``(confidence, "p(X, Y) :- q(Y, X)")`` sorted by confidence (the minimum, over the
    rule's slots, of the kernel between the slot and its nearest predicate; NTP Sec. 4.2);
    ``with_index=True`` appends ``(template, rule)`` to each tuple. ``attention``: the params of
    a ``ProverConfig(rule_attention=True)`` prover (slots are attention mixtures).
    """
    pred = np.asarray(params["predicates"])
    slope = float(params["slope"])
    rules = rule_embeddings(params, attention)
    out = []
    for t, tpl in enumerate(templates):
        theta = np.asarray(rules[t])
        for r in range(theta.shape[0]):
            d = np.sqrt(((theta[r][:, None, :] - pred[None]) ** 2).sum(-1))  # (slots, P)
            near = d.argmin(1)
            conf = float(np.exp(-slope * d[np.arange(len(near)), near]).min())
            name = [predicate_names[j] for j in near]

            def fmt(a, name=name, tpl=tpl):
                return f"{name[tpl.slot(a)]}({a.args[0]}, {a.args[1]})"

            text = f"{fmt(tpl.head)} :- " + ", ".join(fmt(a) for a in tpl.body)
            out.append((conf, text, (t, r)) if with_index else (conf, text))
    out.sort(key=lambda x: -x[0])
    return out[:top] if top else out


class RuleEmbedding(nnx.Param):
    """Predicate embeddings of instantiated rule templates (so ``wrt=RuleEmbedding`` trains
    only the rules, as in the only-rules warm-up)."""


class GNTP(nnx.Module):
    """Thin Flax NNX wrapper: embeddings as ``nnx.Param``, scoring by :func:`prove`.

    ``GNTP(kb, templates, dim, config=ProverConfig(...), rngs=nnx.Rngs(0))(goals, mask=None)``
    returns proof scores ``(B,)`` for int goals ``(p, s, o)``; :meth:`params` gives the pytree
    used by the pure functions (:func:`gntp_loss`, :func:`explain`, :func:`decode_rules`).
    """

    def __init__(
        self,
        kb: KnowledgeBase,
        templates: Sequence[Template],
        dim: int,
        *,
        config: ProverConfig = ProverConfig(),
        init_scale: float = 1.0,
        slope: float = 1.0,
        rngs: nnx.Rngs,
    ):
        p = init_params(
            rngs.params(),
            kb,
            templates,
            dim,
            init_scale=init_scale,
            slope=slope,
            rule_attention=config.rule_attention,
        )
        self.templates = tuple(templates)
        self.config = config
        self.kb = nnx.data(kb.arrays())
        self.predicates = nnx.Param(p["predicates"])
        self.constants = nnx.Param(p["constants"])
        self.tokens = nnx.Param(p["tokens"])
        self.rules = nnx.List([RuleEmbedding(r) for r in p["rules"]])
        self.slope = nnx.Param(p["slope"])

    def params(self) -> dict:
        return {
            "predicates": self.predicates[...],
            "constants": self.constants[...],
            "tokens": self.tokens[...],
            "rules": [r[...] for r in self.rules],
            "slope": self.slope[...],
        }

    def __call__(self, goals: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        p = self.params()
        return prove(p, self.kb, embed_goals(p, goals), self.templates, self.config, mask=mask)
