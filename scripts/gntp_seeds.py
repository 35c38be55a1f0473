"""Aggregate GNTP runs over training seeds, for one or more variants.

Each argument is ``NAME=WORKDIR[,WORKDIR...]``: a variant (e.g. ``standard``, ``attention``)
and its runs of ``experiments/gntp.py`` that differ only in ``--config.seed``, in the same seed
order for every variant. For every metric of ``results.json`` (ranking runs: MRR and Hits@k
under the reference tie rule and under the pessimistic / average / optimistic rules; Countries
runs: AUC-PR) it writes the value of each seed, their mean and standard deviation (ddof=1), and
for every variant but the first the difference to the first, paired by seed (mean +- std), and
prints a markdown table.

    python scripts/gntp_seeds.py --out docs/gntp_nations_seeds.json \
        standard=runs/g/std0,runs/g/std1,runs/g/std2 attention=runs/g/att0,runs/g/att1,runs/g/att2
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

METRICS = ("mrr", "hits@1", "hits@3", "hits@10", "auc_pr")
RULES = ("", "[pessimistic]", "[average]", "[optimistic]")


def load(spec: list[str]) -> dict:
    """``{variant: [results.json of each seed]}``, checked to have the same number of seeds."""
    runs: dict = {}
    for s in spec:
        name, sep, dirs = s.partition("=")
        if not sep or not name or not dirs:
            raise SystemExit(f"expected NAME=WORKDIR[,WORKDIR...], got {s!r}")
        runs[name] = []
        for d in dirs.split(","):
            f = pathlib.Path(d) / "results.json"
            if not f.exists():
                raise SystemExit(f"{f} does not exist")
            runs[name].append(json.loads(f.read_text()))
    sizes = {len(v) for v in runs.values()}
    if len(sizes) != 1:
        raise SystemExit(f"every variant needs the same number of seeds, got {sizes}")
    return runs


def summarise(runs: dict) -> dict:
    first = next(iter(runs))
    out = {}
    for name, results in runs.items():
        rec = {"seeds": [r["config"]["seed"] for r in results]}
        for m in METRICS:
            for rule in RULES:
                key = m + rule
                if key not in results[0]:
                    continue
                v = np.array([r[key] for r in results], float)
                cell = {"values": v.round(4).tolist(), "mean": float(v.mean())}
                cell["std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
                if name != first:
                    d = v - np.array([r[key] for r in runs[first]], float)
                    cell[f"minus_{first}"] = {
                        "mean": float(d.mean()),
                        "std": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                    }
                rec[key] = cell
        rec["train_seconds"] = float(np.median([r["train_seconds"] for r in results]))
        rec["num_test_triples"] = results[0].get("num_test_triples")
        out[name] = rec
    return out


def table(summary: dict) -> str:
    cols = ["mrr", "mrr[pessimistic]", "mrr[average]", "hits@1", "hits@3", "hits@10", "auc_pr"]
    cols = [c for c in cols if all(c in rec for rec in summary.values())]
    lines = ["| variant | " + " | ".join(cols) + " |", "|---" * (1 + len(cols)) + "|"]
    for name, rec in summary.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{rec[c]['mean']:.3f} ± {rec[c]['std']:.3f}" for c in cols)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="NAME=WORKDIR[,WORKDIR...]")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    summary = summarise(load(args.variants))
    md = table(summary)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps({"summary": summary, "table": md}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
