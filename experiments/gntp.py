"""Train a Greedy Neural Theorem Prover and evaluate it (Minervini et al., AAAI 2020, Sec. 5).

Ranking data (Nations / UMLS / Kinships from pykeen's bundled files, or TSV splits): filtered MRR
and Hits@1/3/10 over both sides of the full test set (``max_test`` caps it for smoke runs). The
plain keys (``mrr``, ``hits@k``) use the reference code's tie rule (ties broken by entity-name
order, the rule behind the paper's numbers); ``mrr[pessimistic]``, ``mrr[average]`` and
``mrr[optimistic]`` (and their Hits@k) sit beside them, from the same scores. Countries (NTP
layout): AUC-PR of ``locatedIn(country, region)`` for the test countries against all regions.

  python -m experiments.gntp --config=experiments/configs/gntp_nations.py --workdir=OUT
  python -m experiments.gntp --config=experiments/configs/gntp_countries.py \
      --config.data_dir=DIR --config.variant=S1 --workdir=OUT \
      [--config.mentions_path=countries_S1_mentions.tsv]   # joint KB + text (GNTP Sec. 4)
      [--config.train_path=countries_S1_kept.tsv]  # training facts replacing countries_S1.nl

Writes ``OUT/results.json`` (metrics, induced rules, example explanations), ``OUT/loss.png`` and
the trained prover ``OUT/prover`` (``jaxcomp.prover.load_prover``: safetensors + JSON);
training is one stage, ``OUT/train``, run by ``jaxcomp.train.fit`` (checkpoints, ``metrics.jsonl``).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from experiments._harness import (
    TableStream,
    announce,
    check_config,
    cli,
    fit_stage,
    progress,
    workdir_path,
    write_figure,
    write_json_atomic,
)
from jaxcomp.data import kg
from jaxcomp.prover.gntp import (
    ProverConfig,
    corrupt_triples,
    decode_rules,
    explain,
    format_proof,
    gntp_loss,
    rules_split,
    score_triples,
)
from jaxcomp.prover.io import save_prover
from jaxcomp.prover.kb import KBArrays, KnowledgeBase, init_params
from jaxcomp.prover.metrics import auc_pr, evaluate_ranking
from jaxcomp.prover.templates import load_templates, parse_templates
from jaxcomp.train import make_train_step

DEFAULT_CONFIG = "experiments/configs/gntp_nations.py"
DEFAULT_WORKDIR = "runs/gntp"

# Every value a run needs, checked before any work (``check_config``, named by its field).
CONFIG_RULES = {
    "dataset": (*kg.PYKEEN_DATASETS, "countries", "tsv"),
    "variant": ("S1", "S2", "S3"),
    "dim": "int>=1",
    "init_scale": ">0",
    "slope": ">0",
    "depth": "int>=0",
    "k_facts": "int>=0",  # 0 = all facts
    "k_rules": "int>=0",  # 0 = all rules
    "unification": ("classic", "joint"),
    "rule_attention": (True, False),  # GNTP-Attention (Sec. 3.3)
    "epochs": "int>=1",
    "only_rules_epochs": "int>=0",
    "batch_size": "int>=1",
    "num_negatives": "int>=0",
    "corrupt_both": (True, False),  # also corrupt subject and object together (reference --all)
    "loss_reduction": ("mean", "sum"),  # the reference sums over the batch
    "clip": ">=0",  # clip gradient values to [-clip, clip] before Adam (reference --clip); 0 = off
    "learning_rate": ">0",
    "l2": ">=0",
    "ckpt_every": "int>=0",
    "log_every": "int>=1",
    "seed": "int>=0",
    "eval_k_facts": "int>=0",  # 0 = same k as training
    "max_test": "int>=0",  # 0 = all
    "show_rules": "int>=0",
    "search_mb": "int>=0",  # neighbour-search chunk budget in MiB (0 = one shot, unbounded)
    "mentions_min": "int>=0",  # keep mentions seen at least this often (reference --mentions-min)
}


def load_mentions(cfg) -> list[tuple[str, str, str]]:
    """The text mentions of ``cfg.mentions_path`` (GNTP code layout or 3 columns), seen at least
    ``cfg.mentions_min`` times; none without a path."""
    if not cfg.mentions_path:
        return []
    return kg.load_mentions(cfg.mentions_path, min_count=cfg.mentions_min)


def load_data(cfg):
    """-> (kb, train_triples, dev, test, templates, extra) from the config's data source."""
    extra = {}
    if cfg.dataset == "countries":
        d = kg.load_countries(cfg.data_dir, cfg.variant, train_path=cfg.train_path or None)
        train = d["train"]
        tpl_text = cfg.templates or epath.Path(d["templates_path"]).read_text()
        templates = parse_templates(tpl_text)
        kb = KnowledgeBase.from_triples(
            train,
            mentions=load_mentions(cfg),
            extra_triples=[],
            extra_constants=d["regions"] + d["dev"] + d["test"],
        )
        extra = {k: d[k] for k in ("regions", "dev", "test", "dev_labels", "test_labels")}
        return kb, train, [], [], templates, extra
    if cfg.dataset in kg.PYKEEN_DATASETS:
        splits = kg.load_pykeen_dataset(cfg.dataset)
    elif cfg.dataset == "tsv":
        # a user's own triples: dev and test are optional (no test set = no ranking evaluation)
        splits = {
            s: kg.load_triples(cfg[f"{s}_path"]) if cfg[f"{s}_path"] else []
            for s in ("train", "valid", "test")
        }
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    if cfg.templates_path:
        templates = load_templates(cfg.templates_path)
    else:
        templates = parse_templates(cfg.templates)
    kb = KnowledgeBase.from_triples(
        splits["train"], mentions=load_mentions(cfg), extra_triples=splits["valid"] + splits["test"]
    )
    return kb, splits["train"], splits["valid"], splits["test"], templates, extra


def training_batches(cfg, kb) -> TableStream:
    """Every step's goals (positives then corruptions), targets and masks, drawn up front from one
    ``default_rng(cfg.seed)`` in the order of the reference loop (an epoch's permutation, then
    each batch's corruptions), so ``batch(step)`` is a pure function of the step."""
    facts = kb.facts
    known = set(map(tuple, facts.tolist()))
    rng = np.random.default_rng(cfg.seed)
    n = len(facts)
    bs = min(cfg.batch_size, n)
    nb = max(n // bs, 1)
    goals, targets, masks = [], [], []
    for _ in range(cfg.epochs):
        perm = rng.permutation(n)
        for b in range(nb):
            ix = perm[b * bs : (b + 1) * bs]
            pos = facts[ix]
            neg = corrupt_triples(
                rng, pos, len(kb.constants), known, cfg.num_negatives, both=cfg.corrupt_both
            )
            goals.append(np.concatenate([pos, neg]).astype(np.int32))
            targets.append(np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(np.float32))
            masks.append(np.r_[ix, -np.ones(len(neg))].astype(np.int32))
    per_step = {"goals": np.stack(goals), "targets": np.stack(targets), "mask": np.stack(masks)}
    return TableStream({}, None, seed=cfg.seed, batch_size=bs, per_step=per_step)


def train(cfg, kb, templates, workdir: epath.Path):
    """Adam on the GNTP loss (GNTP Sec. 3.2) through ``fit`` in ``workdir/train``."""
    prover = ProverConfig(
        depth=cfg.depth,
        k_facts=cfg.k_facts or None,
        k_rules=cfg.k_rules or None,
        unification=cfg.unification,
        train_slope=cfg.train_slope,
        rule_attention=cfg.rule_attention,
        search_bytes=cfg.search_mb * 2**20 or None,
    )
    announce(f"initialising embeddings (dim {cfg.dim}) and rule templates")
    params = init_params(
        jax.random.key(cfg.seed),
        kb,
        templates,
        cfg.dim,
        init_scale=cfg.init_scale,
        slope=cfg.slope,
        rule_attention=cfg.rule_attention,
    )
    announce(f"drawing {cfg.epochs} epochs of training batches and corruptions")
    stream = training_batches(cfg, kb)
    steps_per_epoch = stream.num_steps // max(cfg.epochs, 1)
    tx = optax.adam(cfg.learning_rate)
    if cfg.clip:  # the reference clips each gradient value, then Adam
        tx = optax.chain(optax.clip(cfg.clip), tx)
    if cfg.only_rules_epochs:
        # the optimizer sees only the rule embeddings during the warm-up (frozen Adam moments)
        tx = rules_split(tx, only_rules_steps=cfg.only_rules_epochs * steps_per_epoch)
    templates = tuple(templates)

    def loss_fn(params, kb_arrays, batch):
        """The KB arrays are the model state (constant, passed through)."""
        loss = gntp_loss(
            params,
            KBArrays(**kb_arrays),
            batch["goals"],
            batch["targets"],
            batch["mask"],
            templates,
            prover,
            l2=cfg.l2,
            reduction=cfg.loss_reduction,
        )
        return loss, (kb_arrays, {})

    t0 = time.time()
    params, _, _, history = fit_stage(
        make_train_step(loss_fn, tx),
        params,
        kb.arrays()._asdict(),
        tx.init(params),
        stream,
        stream.num_steps,
        workdir=workdir,
        stage="train",
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        config=cfg,
    )
    return params, prover, [h["loss"] for h in history], time.time() - t0


def run(cfg, workdir: str) -> dict:
    """Train, then evaluate (ranking or AUC-PR), decode rules and explain a few goals."""
    check_config(cfg, CONFIG_RULES)
    if cfg.dataset == "countries" and not cfg.data_dir:
        raise ValueError("dataset 'countries' needs config.data_dir (the NTP layout), got ''")
    if cfg.dataset == "tsv" and not cfg.train_path:
        raise ValueError("dataset 'tsv' needs config.train_path (valid/test are optional), got ''")
    out = workdir_path(workdir)
    announce(f"loading {cfg.dataset}")
    kb, train_t, valid_t, test_t, templates, extra = load_data(cfg)
    announce(
        f"{cfg.dataset}: {kb.num_facts} facts, {len(kb.predicates)} predicates, "
        f"{len(kb.constants)} constants, {len(templates)} templates"
    )
    params, prover, losses, train_s = train(cfg, kb, templates, out)
    save_prover(out / "prover", params, kb, templates, prover)  # load_prover(OUT/prover)
    arr = kb.arrays()
    if cfg.eval_k_facts:
        prover = ProverConfig(**{**prover.__dict__, "k_facts": cfg.eval_k_facts})

    def score_fn(goals):
        return np.asarray(score_triples(params, arr, jnp.asarray(goals), templates, prover))

    t0 = time.time()
    results = {"dataset": cfg.dataset, "config": cfg.to_dict(), "train_seconds": train_s}
    if cfg.dataset == "countries":
        announce(f"scoring {len(extra['test'])} test countries against every region (AUC-PR)")
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
    elif not test_t:
        announce("no test triples (config.test_path is empty): no ranking evaluation")
        ex_goals = kb.facts[:5]
    else:
        test = kb.index(test_t)
        if cfg.max_test:
            test = test[: cfg.max_test]
        all_true = np.concatenate([kb.facts, kb.index(valid_t), kb.index(test_t)])
        announce(f"ranking {len(test)} test triples against every corruption (filtered)")
        bar = progress(None, desc="ranking", total=len(test))

        def scored_with_progress(goals):
            scores = score_fn(goals)
            bar.update(1)
            return scores

        results.update(
            evaluate_ranking(
                scored_with_progress,
                test,
                all_true.tolist(),
                len(kb.constants),
                tie="reference",
                other_ties=("pessimistic", "average", "optimistic"),
                names=kb.constants,
            )
        )
        bar.close()
        results["num_test_triples"] = len(test)
        ex_goals = test[:5]
    results["eval_seconds"] = time.time() - t0
    announce("decoding rules and explaining example goals")
    results["rules"] = [
        {"confidence": c, "rule": r}
        for c, r in decode_rules(
            params, templates, kb.predicates, top=cfg.show_rules, attention=cfg.rule_attention
        )
    ]
    rule_text = {
        tr: f"{text} [{conf:.2f}]"
        for conf, text, tr in decode_rules(
            params, templates, kb.predicates, with_index=True, attention=cfg.rule_attention
        )
    }
    exps = []
    for g, pr in zip(ex_goals, explain(params, arr, ex_goals, templates, prover)):
        steps = [
            kb.fact_text(i) if kind == "fact" else f"rule t{t}.{i}: {rule_text[(t, i)]}"
            for kind, t, i in pr.steps
        ]
        exps.append(
            {
                "goal": kb.goal_text(*(int(x) for x in g)),
                "score": pr.score,
                "proof": steps,
                "text": format_proof(
                    pr, kb, params, templates, goal=g, attention=cfg.rule_attention
                ),
            }
        )
    results["explanations"] = exps
    write_json_atomic(out / "results.json", results)
    print({k: v for k, v in results.items() if isinstance(v, float)}, flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses, lw=0.8)
    ax.set_xlabel("batch")
    ax.set_ylabel("logistic loss")
    ax.set_title(f"GNTP on {cfg.dataset}")
    fig.tight_layout()
    write_figure(out / "loss.png", fig, dpi=120)
    return results


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
