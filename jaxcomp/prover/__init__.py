"""Differentiable theorem proving: the Greedy Neural Theorem Prover (Minervini et al., AAAI 2020)
and the exhaustive Neural Theorem Prover (Rocktaschel & Riedel, NeurIPS 2017) it speeds up."""

from jaxcomp.prover.gntp import (
    GNTP,
    Proof,
    ProverConfig,
    RuleEmbedding,
    RulesSplitState,
    corrupt_triples,
    decode_rules,
    explain,
    format_proof,
    gntp_loss,
    logistic_loss,
    make_train_step,
    prove,
    rules_split,
    score_triples,
)
from jaxcomp.prover.io import load_prover, save_prover
from jaxcomp.prover.kb import (
    KBArrays,
    KnowledgeBase,
    embed_goals,
    fact_embeddings,
    init_params,
    rule_embeddings,
)
from jaxcomp.prover.metrics import (
    TIES,
    auc_pr,
    evaluate_ranking,
    filtered_rank,
    name_order,
    ranking_metrics,
)
from jaxcomp.prover.templates import (
    Atom,
    Template,
    format_template,
    load_templates,
    parse_templates,
)
from jaxcomp.prover.unify import nearest_neighbours, rbf_kernel

__all__ = [
    "TIES",
    "GNTP",
    "RuleEmbedding",
    "RulesSplitState",
    "Atom",
    "KBArrays",
    "KnowledgeBase",
    "Proof",
    "ProverConfig",
    "Template",
    "auc_pr",
    "corrupt_triples",
    "decode_rules",
    "embed_goals",
    "evaluate_ranking",
    "explain",
    "fact_embeddings",
    "rule_embeddings",
    "format_proof",
    "filtered_rank",
    "name_order",
    "format_template",
    "gntp_loss",
    "init_params",
    "load_prover",
    "load_templates",
    "logistic_loss",
    "make_train_step",
    "nearest_neighbours",
    "parse_templates",
    "prove",
    "ranking_metrics",
    "rbf_kernel",
    "rules_split",
    "save_prover",
    "score_triples",
]
