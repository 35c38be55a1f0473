"""The mixed-vocabulary results table, from the ``rows/*.json`` of one or more workdirs.

Each argument is ``WORKDIR`` or ``LABEL=WORKDIR/rows/NAME.json``: a whole workdir contributes
every row it finished (``rows/<name>.json`` of ``experiments/mixed_vocab.py``), a single file
contributes one row under ``LABEL`` (for variants run in their own workdir, e.g. another
projection weight). Stage II training curves (``<name>/metrics.jsonl``) give the final training
MLM loss (mean of the last 5 logged values). Polarity accuracy: mean and std (ddof=1) over the
fine-tuning seeds. Writes ``--out`` (JSON) and prints a markdown table.

Rows that share a label (the same row from workdirs run with different ``--config.seed``, i.e.
pretraining seeds) are merged: each metric becomes the mean over pretraining seeds with its std
(ddof=1) beside it, polarity pools every fine-tuning run of every pretraining seed, and
``paired_vs_full`` gives, for every row that shares workdirs with ``full``, the per-workdir
differences against ``full`` (mean, std, n) of held-out MLM accuracy and of the polarity accuracy
averaged over that workdir's fine-tuning seeds.

    python scripts/mixed_vocab_table.py --out docs/mixed_vocab_results.json runs/mv \
        runs/mv_seed1 runs/mv_seed2 "full, alpha=1=runs/mv_a1/rows/full.json"
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np


def final_train_loss(row_file: pathlib.Path, name: str) -> float | None:
    metrics = row_file.parent.parent / name / "metrics.jsonl"
    if not metrics.exists():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    mlm = [r["mlm"] for r in rows if "mlm" in r]
    return float(np.mean(mlm[-5:])) if mlm else None


def row_entry(label: str, path: pathlib.Path) -> dict:
    r = json.loads(path.read_text())
    runs = np.asarray(r["polarity_runs"], np.float64)
    return {
        "label": label,
        "name": r["name"],
        "params": r["params"],
        "bytes": r["bytes"],
        "mlm_acc": r["mlm_acc"],
        "train_mlm_loss": final_train_loss(path, r["name"]),
        "fidelity": r["fidelity"],
        "wordsim353": r["wordsim353"],
        "simlex999": r["simlex999"],
        "polarity_runs": runs.tolist(),
        "polarity_mean": float(runs.mean()),
        "polarity_std": float(runs.std(ddof=1)) if len(runs) > 1 else 0.0,
        "source": str(path),
        "workdir": str(path.parent.parent),
    }


METRICS = ("mlm_acc", "train_mlm_loss", "fidelity", "wordsim353", "simlex999")


def _mean_std(values: list) -> tuple:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def merge_seeds(entries: list[dict]) -> dict:
    """One row from the same row of several pretraining seeds (workdirs)."""
    if len(entries) == 1:
        stds = {k + "_std": None for k in METRICS}
        return {**entries[0], **stds, "n_pretrain": 1, "per_seed": None}
    first = entries[0]
    for e in entries[1:]:
        if (e["name"], e["params"], e["bytes"]) != (first["name"], first["params"], first["bytes"]):
            raise ValueError(
                f"rows labelled {first['label']!r} differ in model: {e['source']} vs {first['source']}"
            )
    out = {k: first[k] for k in ("label", "name", "params", "bytes")}
    for k in METRICS:
        out[k], out[k + "_std"] = _mean_std([e[k] for e in entries])
    runs = np.concatenate([np.asarray(e["polarity_runs"], np.float64) for e in entries])
    out.update(
        polarity_runs=runs.tolist(),
        polarity_mean=float(runs.mean()),
        polarity_std=float(runs.std(ddof=1)),
        n_pretrain=len(entries),
        per_seed=[{k: e[k] for k in (*METRICS, "polarity_mean", "workdir")} for e in entries],
        source=[e["source"] for e in entries],
        workdir=[e["workdir"] for e in entries],
    )
    return out


def paired(entries: list[dict], ref: str = "full", key: str = "mlm_acc") -> dict:
    """Per-workdir differences ``row - ref`` of ``key`` for every other row sharing workdirs."""
    by_label: dict[str, dict[str, float]] = {}
    for e in entries:
        if e[key] is not None:
            by_label.setdefault(e["label"], {})[e["workdir"]] = e[key]
    base = by_label.get(ref, {})
    out = {}
    for label, vals in by_label.items():
        common = sorted(set(vals) & set(base))
        if label == ref or not common:
            continue
        d = np.asarray([vals[w] - base[w] for w in common], np.float64)
        out[label] = {
            "mean": float(d.mean()),
            "std": float(d.std(ddof=1)) if len(d) > 1 else None,
            "n": len(d),
            "diffs": d.tolist(),
        }
    return out


ORDER = ("teacher", "full", "no_stage1", "no_proj", "scratch", "teacher_vocab")


def collect(specs: list[str]) -> list[dict]:
    """Rows in order, one per label (pretraining seeds merged), and the per-workdir entries;
    ``compression`` is the teacher row's parameter count over each row's."""
    out = []
    for spec in specs:
        label, sep, where = spec.rpartition("=")
        path = pathlib.Path(where if sep else spec)
        if path.is_dir():
            files = sorted((path / "rows").glob("*.json"))
            files.sort(key=lambda f: ORDER.index(f.stem) if f.stem in ORDER else len(ORDER))
            out += [row_entry(f.stem, f) for f in files]
        elif path.is_file():
            out.append(row_entry(label or path.stem, path))
        else:
            raise FileNotFoundError(f"{path}: neither a workdir nor a row file")
    entries = out
    labels = list(dict.fromkeys(e["label"] for e in entries))
    out = [merge_seeds([e for e in entries if e["label"] == lab]) for lab in labels]
    teacher = [r for r in out if r["name"] == "teacher"]
    if not teacher:
        raise ValueError("no teacher row among the inputs (rows/teacher.json of a workdir)")
    for r in out:
        r["compression"] = teacher[0]["params"] / r["params"]
    return out, entries


def table(rows: list[dict]) -> str:
    def fmt(r, k, p=3):
        x, sd = r[k], r.get(k + "_std")
        if x is None:
            return "-"
        return f"{x:.{p}f}" + ("" if sd is None else f" +- {sd:.{p}f}")

    lines = [
        "| model | seeds | params | vs MiniLM | MB | train MLM loss | held-out MLM acc | "
        "fidelity | WS353 | SimLex | polarity acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['n_pretrain']} | {r['params'] / 1e6:.2f}M | "
            f"{r['compression']:.1f}x | {r['bytes'] / 1e6:.1f} | {fmt(r, 'train_mlm_loss', 2)} | "
            f"{fmt(r, 'mlm_acc')} | {fmt(r, 'fidelity')} | {fmt(r, 'wordsim353')} | "
            f"{fmt(r, 'simlex999')} | "
            f"{r['polarity_mean']:.3f} +- {r['polarity_std']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("runs", nargs="+")
    args = p.parse_args(argv)
    rows, entries = collect(args.runs)
    result = {
        "rows": rows,
        # per pretraining seed (workdir): row - full, for held-out MLM accuracy and for the
        # polarity accuracy averaged over that seed's fine-tuning runs
        "paired_vs_full": {k: paired(entries, key=k) for k in ("mlm_acc", "polarity_mean")},
        "std": "ddof=1; metrics over pretraining seeds (n_pretrain), polarity over every "
        "fine-tuning run of every pretraining seed",
    }
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))
    for key, rows in result["paired_vs_full"].items():
        for label, d in rows.items():
            sd = "" if d["std"] is None else f" +- {d['std']:.4f}"
            print(f"{key}, {label} - full: {d['mean']:+.4f}{sd} (n={d['n']})")
    return result


if __name__ == "__main__":
    main()
