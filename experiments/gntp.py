"""Train a Greedy Neural Theorem Prover and evaluate it (Minervini et al., AAAI 2020, Sec. 5).

Ranking data (Nations / UMLS / Kinships from pykeen's bundled files, or TSV splits): filtered MRR
and Hits@1/3/10 over both sides. Countries (NTP layout): AUC-PR of ``locatedIn(country, region)``
for the test countries against all regions.

  python -m experiments.gntp --config=experiments/configs/gntp_nations.py --workdir=OUT
  python -m experiments.gntp --config=experiments/configs/gntp_countries.py \
      --config.data_dir=DIR --config.variant=S1 --workdir=OUT

Writes ``OUT/results.json`` (metrics, induced rules, example explanations) and ``OUT/loss.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxcomp.data import kg
from jaxcomp.prover.gntp import (
    ProverConfig,
    corrupt_triples,
    decode_rules,
    explain,
    make_train_step,
    score_triples,
)
from jaxcomp.prover.kb import KnowledgeBase, init_params
from jaxcomp.prover.metrics import auc_pr, evaluate_ranking
from jaxcomp.prover.templates import load_templates, parse_templates

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory")


def load_data(cfg):
    """-> (kb, train_triples, dev, test, templates, extra) from the config's data source."""
    extra = {}
    if cfg.dataset == "countries":
        d = kg.load_countries(cfg.data_dir, cfg.variant)
        train = d["train"]
        tpl_text = cfg.templates or Path(d["templates_path"]).read_text()
        templates = parse_templates(tpl_text)
        kb = KnowledgeBase.from_triples(
            train, extra_triples=[], extra_constants=d["regions"] + d["dev"] + d["test"]
        )
        extra = {k: d[k] for k in ("regions", "dev", "test", "dev_labels", "test_labels")}
        return kb, train, [], [], templates, extra
    if cfg.dataset in kg.PYKEEN_DATASETS:
        splits = kg.load_pykeen_dataset(cfg.dataset)
    elif cfg.dataset == "tsv":
        splits = {s: kg.load_triples(getattr(cfg, f"{s}_path")) for s in ("train", "valid", "test")}
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    if cfg.templates_path:
        templates = load_templates(cfg.templates_path)
    else:
        templates = parse_templates(cfg.templates)
    mentions = kg.load_mentions(cfg.mentions_path) if cfg.mentions_path else []
    kb = KnowledgeBase.from_triples(
        splits["train"], mentions=mentions, extra_triples=splits["valid"] + splits["test"]
    )
    return kb, splits["train"], splits["valid"], splits["test"], templates, extra


def train(cfg, kb, templates, log_every=20):
    prover = ProverConfig(
        depth=cfg.depth,
        k_facts=cfg.k_facts or None,
        k_rules=cfg.k_rules or None,
        unification=cfg.unification,
        train_slope=cfg.train_slope,
    )
    params = init_params(
        jax.random.key(cfg.seed), kb, templates, cfg.dim, init_scale=cfg.init_scale, slope=cfg.slope
    )
    tx = optax.adam(cfg.learning_rate)
    opt_state = tx.init(params)
    step = make_train_step(templates, prover, tx, l2=cfg.l2)
    arr = kb.arrays()
    facts = kb.facts
    known = set(map(tuple, facts.tolist()))
    rng = np.random.default_rng(cfg.seed)
    n = len(facts)
    bs = min(cfg.batch_size, n)
    losses, t0 = [], time.time()
    nb = max(n // bs, 1)
    for epoch in range(cfg.epochs):
        perm = rng.permutation(n)
        only_rules = epoch < cfg.only_rules_epochs
        for b in range(nb):
            ix = perm[b * bs : (b + 1) * bs]
            pos = facts[ix]
            neg = corrupt_triples(rng, pos, len(kb.constants), known, cfg.num_negatives)
            goals = np.concatenate([pos, neg])
            y = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(np.float32)
            mask = np.r_[ix, -np.ones(len(neg))].astype(np.int32)
            params, opt_state, loss = step(
                params, opt_state, arr, goals, y, mask, only_rules=only_rules
            )
            losses.append(float(loss))
        if epoch % max(cfg.epochs // 10, 1) == 0 or epoch == cfg.epochs - 1:
            logging.info(
                "epoch %d loss %.4f (%.1fs)", epoch, np.mean(losses[-nb:]), time.time() - t0
            )
    return params, prover, losses, time.time() - t0


def main(argv):
    del argv
    cfg = _CONFIG.value
    out = Path(_WORKDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    kb, train_t, valid_t, test_t, templates, extra = load_data(cfg)
    logging.info(
        "%s: %d facts, %d predicates, %d constants, %d templates",
        cfg.dataset,
        kb.num_facts,
        len(kb.predicates),
        len(kb.constants),
        len(templates),
    )
    params, prover, losses, train_s = train(cfg, kb, templates)
    arr = kb.arrays()
    if cfg.eval_k_facts:
        prover = ProverConfig(**{**prover.__dict__, "k_facts": cfg.eval_k_facts})

    def score_fn(goals):
        return np.asarray(score_triples(params, arr, jnp.asarray(goals), templates, prover))

    t0 = time.time()
    results = {"dataset": cfg.dataset, "config": cfg.to_dict(), "train_seconds": train_s}
    if cfg.dataset == "countries":
        loc = kb.predicates.index("locatedIn")
        regs = [kb.constants.index(r) for r in extra["regions"]]
        goals, labels = [], []
        for c in extra["test"]:
            ci = kb.constants.index(c)
            for r, ri in zip(extra["regions"], regs):
                goals.append((loc, ci, ri))
                labels.append(r in extra["test_labels"][c])
        goals = np.array(goals, np.int32)
        results["auc_pr"] = auc_pr(score_fn(goals), np.array(labels))
        ex_goals = goals[np.array(labels)][:5]
    else:
        test = kb.index(test_t)
        if cfg.max_test:
            test = test[: cfg.max_test]
        all_true = np.concatenate([kb.facts, kb.index(valid_t), kb.index(test_t)])
        results.update(
            evaluate_ranking(
                score_fn, test, all_true.tolist(), len(kb.constants), other_ties=("average",)
            )
        )
        results["num_test_triples"] = len(test)
        ex_goals = test[:5]
    results["eval_seconds"] = time.time() - t0
    results["rules"] = [
        {"confidence": c, "rule": r}
        for c, r in decode_rules(params, templates, kb.predicates, top=cfg.show_rules)
    ]
    names_f = [
        f"{kb.predicates[p]}({kb.constants[s]}, {kb.constants[o]})" for p, s, o in kb.facts
    ] + [f"mention#{i}" for i in range(len(kb.mentions))]
    rule_text = {
        tr: f"{text} [{conf:.2f}]"
        for conf, text, tr in decode_rules(params, templates, kb.predicates, with_index=True)
    }
    exps = []
    for g, pr in zip(ex_goals, explain(params, arr, ex_goals, templates, prover)):
        steps = [
            names_f[i] if kind == "fact" else f"rule t{t}.{i}: {rule_text[(t, i)]}"
            for kind, t, i in pr.steps
        ]
        goal = f"{kb.predicates[g[0]]}({kb.constants[g[1]]}, {kb.constants[g[2]]})"
        exps.append({"goal": goal, "score": pr.score, "proof": steps})
    results["explanations"] = exps
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    logging.info("results: %s", {k: v for k, v in results.items() if isinstance(v, float)})
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(losses, lw=0.8)
        ax.set_xlabel("batch")
        ax.set_ylabel("logistic loss")
        ax.set_title(f"GNTP on {cfg.dataset}")
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
