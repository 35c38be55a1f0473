"""Neural knowledge base: symbols, facts, text mentions and their embeddings.

Facts are integer triples ``(p, s, o)`` (predicate, subject, object). A text mention
``s <pattern> o`` is a fact whose predicate is the mean of the pattern's token embeddings, in the
same space as predicate embeddings, so the prover unifies goals with KB facts and text jointly
(Minervini et al. 2020, Sec. 4 "Jointly reasoning on knowledge bases and natural language").

Parameters are a plain pytree (dict of arrays) so ``jax.grad``/optax apply directly::

    {"predicates": (P, E), "constants": (C, E), "tokens": (V, E),
     "rules": [(count_t, slots_t, E) for each template t], "slope": ()}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.prover.templates import Template

__all__ = ["KnowledgeBase", "KBArrays", "init_params", "fact_embeddings", "embed_goals"]


class KBArrays(NamedTuple):
    """Device arrays of a :class:`KnowledgeBase` (a pytree, passed into jitted code).

    ``facts``: int32 ``(N, 3)`` as ``(p, s, o)``; ``mention_args``: int32 ``(M, 2)``;
    ``mention_tokens``: int32 ``(M, L)`` padded with 0; ``mention_mask``: float32 ``(M, L)``.
    """

    facts: jax.Array
    mention_args: jax.Array
    mention_tokens: jax.Array
    mention_mask: jax.Array


@dataclasses.dataclass(frozen=True)
class KnowledgeBase:
    """Symbol tables and integer facts.

    Attributes:
      predicates, constants, tokens: vocabularies (index = position).
      facts: int32 ``(N, 3)`` triples ``(p, s, o)``.
      mentions: int32 ``(M, 2)`` ``(s, o)`` of text mentions; ``mention_tokens`` ``(M, L)``,
        ``mention_mask`` ``(M, L)``.
    """

    predicates: tuple[str, ...]
    constants: tuple[str, ...]
    facts: np.ndarray
    tokens: tuple[str, ...] = ()
    mentions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.int32))
    mention_tokens: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 1), np.int32)
    )
    mention_mask: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 1), np.float32)
    )

    @classmethod
    def from_triples(
        cls,
        triples: Iterable[tuple[str, str, str]],
        *,
        mentions: Iterable[tuple[str, str, str]] = (),
        extra_triples: Iterable[tuple[str, str, str]] = (),
        extra_constants: Iterable[str] = (),
    ) -> KnowledgeBase:
        """Builds a KB from ``(s, p, o)`` string triples (TSV order).

        ``triples`` become facts; ``extra_triples`` (e.g. dev/test) only contribute symbols to
        the vocabularies; ``mentions`` are ``(s, pattern, o)`` with a whitespace-tokenised pattern.
        """
        triples = list(triples)
        extra_triples = list(extra_triples)
        mentions = list(mentions)
        preds: dict[str, int] = {}
        consts: dict[str, int] = {}
        for s, p, o in triples + extra_triples:
            preds.setdefault(p, len(preds))
            consts.setdefault(s, len(consts))
            consts.setdefault(o, len(consts))
        for c in extra_constants:
            consts.setdefault(c, len(consts))
        toks: dict[str, int] = {}
        m_args, m_toks = [], []
        for s, pattern, o in mentions:
            consts.setdefault(s, len(consts))
            consts.setdefault(o, len(consts))
            words = pattern.split()
            if not words:
                raise ValueError(f"empty text pattern in mention {(s, pattern, o)!r}")
            m_args.append((consts[s], consts[o]))
            m_toks.append([toks.setdefault(w, len(toks)) for w in words])
        if not triples and not mentions:
            raise ValueError("a knowledge base needs at least one fact or mention, got none")
        facts = np.array([(preds[p], consts[s], consts[o]) for s, p, o in triples], np.int32)
        facts = facts.reshape(-1, 3)
        length = max((len(t) for t in m_toks), default=1)
        mt = np.zeros((len(m_toks), length), np.int32)
        mm = np.zeros((len(m_toks), length), np.float32)
        for i, t in enumerate(m_toks):
            mt[i, : len(t)] = t
            mm[i, : len(t)] = 1.0
        return cls(
            predicates=tuple(preds),
            constants=tuple(consts),
            facts=facts,
            tokens=tuple(toks),
            mentions=np.array(m_args, np.int32).reshape(-1, 2),
            mention_tokens=mt,
            mention_mask=mm,
        )

    @property
    def num_facts(self) -> int:
        """Number of KB facts plus text mentions (the size of the unification search space)."""
        return int(self.facts.shape[0] + self.mentions.shape[0])

    def index(self, triples: Iterable[tuple[str, str, str]]) -> np.ndarray:
        """``(s, p, o)`` strings -> int32 ``(n, 3)`` ``(p, s, o)``; unknown symbols raise."""
        p_ix = {p: i for i, p in enumerate(self.predicates)}
        c_ix = {c: i for i, c in enumerate(self.constants)}
        out = []
        for s, p, o in triples:
            for sym, table in ((p, p_ix), (s, c_ix), (o, c_ix)):
                if sym not in table:
                    raise ValueError(f"unknown symbol {sym!r} in triple {(s, p, o)!r}")
            out.append((p_ix[p], c_ix[s], c_ix[o]))
        return np.array(out, np.int32).reshape(-1, 3)

    def goal_text(self, p: int, s: int, o: int) -> str:
        """``"p(s, o)"`` with the symbols' names."""
        return f"{self.predicates[p]}({self.constants[s]}, {self.constants[o]})"

    def mention_text(self, i: int) -> str:
        """Text of mention ``i``: its pattern with ``[XXX]``/``[YYY]`` (the GNTP code's slot
        markers) replaced by the subject/object names, else ``'s "pattern" o'``."""
        s, o = (self.constants[int(c)] for c in self.mentions[i])
        words = [self.tokens[t] for t, m in zip(self.mention_tokens[i], self.mention_mask[i]) if m]
        if "[XXX]" in words or "[YYY]" in words:
            return " ".join({"[XXX]": s, "[YYY]": o}.get(w, w) for w in words)
        return f'{s} "{" ".join(words)}" {o}'

    def fact_text(self, i: int) -> str:
        """Fact ``i`` as ``"p(s, o)"``; indices ``>= len(facts)`` are text mentions
        (:meth:`mention_text`), in the order of :func:`fact_embeddings`."""
        n = int(self.facts.shape[0])
        if not 0 <= i < self.num_facts:
            raise ValueError(f"fact index {i} outside [0, {self.num_facts})")
        if i < n:
            return self.goal_text(*(int(x) for x in self.facts[i]))
        return self.mention_text(i - n)

    def arrays(self) -> KBArrays:
        return KBArrays(
            jnp.asarray(self.facts),
            jnp.asarray(self.mentions),
            jnp.asarray(self.mention_tokens),
            jnp.asarray(self.mention_mask),
        )


def init_params(
    key: jax.Array,
    kb: KnowledgeBase,
    templates: Sequence[Template],
    dim: int,
    *,
    init_scale: float = 1.0,
    slope: float = 1.0,
    rule_attention: bool = False,
) -> dict:
    """Uniform(-scale, scale) embeddings for predicates, constants, tokens and rule templates.

    Each template ``t`` gets ``(t.count, len(t.predicates), dim)`` learnable predicate embeddings
    (one rule per instantiation; Rocktaschel & Riedel 2017, Sec. 4); with ``rule_attention``
    (GNTP-Attention, Minervini et al. 2020, Sec. 3.3) it gets ``(t.count, len(t.predicates),
    P)`` attention logits over the ``P`` KB predicates instead (:func:`rule_embeddings`).
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    keys = jax.random.split(key, 3 + len(templates))

    def u(k, shape):
        return jax.random.uniform(k, shape, jnp.float32, -init_scale, init_scale)

    return {
        "predicates": u(keys[0], (len(kb.predicates), dim)),
        "constants": u(keys[1], (len(kb.constants), dim)),
        "tokens": u(keys[2], (max(len(kb.tokens), 1), dim)),
        "rules": [
            u(k, (t.count, len(t.predicates), len(kb.predicates) if rule_attention else dim))
            for k, t in zip(keys[3:], templates, strict=True)
        ],
        "slope": jnp.asarray(slope, jnp.float32),
    }


def rule_embeddings(params: dict, attention: bool = False) -> list[jax.Array]:
    """The rule templates' predicate embeddings, one ``(R, slots, E)`` array per template:
    ``params["rules"]`` itself, or with ``attention`` (GNTP-Attention) each slot's
    ``softmax(a) @ predicates`` from its attention logits ``a`` over the ``P`` KB predicates,
    so a rule predicate stays in the span of the known ones."""
    if not attention:
        return list(params["rules"])
    pred = params["predicates"]
    out = []
    for t, a in enumerate(params["rules"]):
        if a.shape[-1] != pred.shape[0]:
            raise ValueError(
                f"rule attention needs logits over the {pred.shape[0]} predicates; template {t} "
                f"has shape {tuple(a.shape)}"
            )
        out.append(jax.nn.softmax(a, axis=-1) @ pred)
    return out


def fact_embeddings(params: dict, kb: KBArrays) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Embeddings ``(fp, fs, fo)``, each ``(N + M, E)``: KB facts first, then text mentions.

    A mention's predicate embedding is the masked mean of its pattern's token embeddings.
    """
    fp = params["predicates"][kb.facts[:, 0]]
    fs = params["constants"][kb.facts[:, 1]]
    fo = params["constants"][kb.facts[:, 2]]
    if kb.mention_args.shape[0] == 0:
        return fp, fs, fo
    tok = params["tokens"][kb.mention_tokens] * kb.mention_mask[..., None]
    mp = tok.sum(1) / jnp.maximum(kb.mention_mask.sum(1, keepdims=True), 1.0)
    ms = params["constants"][kb.mention_args[:, 0]]
    mo = params["constants"][kb.mention_args[:, 1]]
    return (
        jnp.concatenate([fp, mp]),
        jnp.concatenate([fs, ms]),
        jnp.concatenate([fo, mo]),
    )


def check_goals(goals: Any, num_predicates: int, num_constants: int) -> None:
    """ValueError unless ``goals`` is a non-empty int ``(B, 3)`` array of ``(p, s, o)`` indices.

    Shape and dtype are checked always; the index ranges (``0 <= p < num_predicates``,
    ``0 <= s, o < num_constants``) when ``goals`` is concrete (NumPy or a non-traced JAX array).
    Under ``jax.jit`` an out-of-range index is not detected (JAX clamps gathers), so the public
    entry points (``score_triples``, ``GNTP.__call__``, ``explain``) check before jitting.
    """
    shape, dtype = np.shape(goals), jnp.result_type(goals)
    if len(shape) != 2 or shape[1] != 3:
        raise ValueError(f"goals must have shape (B, 3) as (p, s, o), got shape {shape}")
    if shape[0] == 0:
        raise ValueError("goals is empty (shape (0, 3)); need at least one goal")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"goals must be integer indices, got dtype {dtype}")
    if isinstance(goals, jax.core.Tracer):
        return
    g = np.asarray(goals)
    for col, name, size in (
        (0, "predicate", num_predicates),
        (1, "subject", num_constants),
        (2, "object", num_constants),
    ):
        bad = np.flatnonzero((g[:, col] < 0) | (g[:, col] >= size))
        if bad.size:
            raise ValueError(
                f"goals[{bad[0]}] = {g[bad[0]].tolist()} has {name} index {g[bad[0], col]} "
                f"outside [0, {size})"
            )


def embed_goals(params: dict, goals: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """int ``(B, 3)`` goals ``(p, s, o)`` -> three ``(B, E)`` embedding arrays (checked by
    :func:`check_goals`)."""
    check_goals(goals, params["predicates"].shape[0], params["constants"].shape[0])
    goals = jnp.asarray(goals)
    return (
        params["predicates"][goals[:, 0]],
        params["constants"][goals[:, 1]],
        params["constants"][goals[:, 2]],
    )
