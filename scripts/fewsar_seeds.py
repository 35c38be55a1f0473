"""Aggregate FewSAR runs that differ only in the training seed (`--config.seed`).

Each workdir holds `<dataset>/<method>/<K>shot.json` rows from `experiments/fewshot.py`; every
run tests on the same episodes (the test seed is fixed), so methods can be compared per seed.
Writes a JSON with, per (method, shot), the accuracy of every seed, their mean and standard
deviation (ddof=1), and the difference to a reference method (mean +- std over seeds, paired by
seed), and prints the markdown table.

    python scripts/fewsar_seeds.py --dataset fashion_mnist --reference protonet \
        --out docs/fewsar_seeds.json runs/fewshot runs/fewshot_s1 runs/fewshot_s2
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np


def load(workdirs: list[str], dataset: str) -> dict:
    """`{(method, shot): [accuracy of each workdir]}` for the cells present in every workdir."""
    cells: dict = {}
    for i, w in enumerate(workdirs):
        for f in sorted(pathlib.Path(w, dataset).glob("*/*shot.json")):
            row = json.loads(f.read_text())
            cells.setdefault((row["method"], int(row["shot"])), {})[i] = float(row["accuracy"])
    return {
        k: [v[i] for i in range(len(workdirs))] for k, v in cells.items() if len(v) == len(workdirs)
    }


def summarise(cells: dict, reference: str) -> dict:
    out = {}
    for (method, shot), accs in sorted(cells.items()):
        a = 100 * np.asarray(accs)
        rec = {"seeds": a.round(2).tolist(), "mean": float(a.mean()), "std": float(a.std(ddof=1))}
        ref = cells.get((reference, shot))
        if ref is not None and method != reference:
            diff = a - 100 * np.asarray(ref)
            rec[f"minus_{reference}"] = {"mean": float(diff.mean()), "std": float(diff.std(ddof=1))}
        out[f"{method}/{shot}shot"] = rec
    return out


def table(summary: dict, reference: str) -> str:
    methods = sorted({k.split("/")[0] for k in summary})
    shots = sorted({int(k.split("/")[1][:-4]) for k in summary})
    head = "| method | " + " | ".join(
        f"{s}-shot (mean +- std) | {s}-shot minus {reference}" for s in shots
    )
    lines = [head + " |", "|---" * (1 + 2 * len(shots)) + "|"]
    for m in methods:
        cells = []
        for s in shots:
            r = summary.get(f"{m}/{s}shot")
            if r is None:
                cells += ["-", "-"]
                continue
            cells.append(f"{r['mean']:.2f} +- {r['std']:.2f}")
            d = r.get(f"minus_{reference}")
            cells.append(f"{d['mean']:+.2f} +- {d['std']:.2f}" if d else "0")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--reference", default="protonet")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if len(args.workdirs) < 2:
        raise SystemExit("give at least two workdirs (one per training seed)")
    cells = load(args.workdirs, args.dataset)
    if not cells:
        raise SystemExit(f"no {args.dataset} cell is present in every workdir: {args.workdirs}")
    summary = summarise(cells, args.reference)
    md = table(summary, args.reference)
    if args.out:
        doc = {"dataset": args.dataset, "workdirs": args.workdirs, "cells": summary, "table": md}
        pathlib.Path(args.out).write_text(json.dumps(doc, indent=1))
    print(md)


if __name__ == "__main__":
    main()
