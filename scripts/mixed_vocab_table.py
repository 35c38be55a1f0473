"""The mixed-vocabulary results table, from the ``rows/*.json`` of one or more workdirs.

Each argument is ``WORKDIR`` or ``LABEL=WORKDIR/rows/NAME.json``: a whole workdir contributes
every row it finished (``rows/<name>.json`` of ``experiments/mixed_vocab.py``), a single file
contributes one row under ``LABEL`` (for variants run in their own workdir, e.g. another
projection weight). Stage II training curves (``<name>/metrics.jsonl``) give the final training
MLM loss (mean of the last 5 logged values). Polarity accuracy: mean and std (ddof=1) over the
fine-tuning seeds. Writes ``--out`` (JSON) and prints a markdown table.

    python scripts/mixed_vocab_table.py --out docs/mixed_vocab_results.json runs/mv \
        "full, alpha=1=runs/mv_a1/rows/full.json"
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
    }


ORDER = ("teacher", "full", "no_stage1", "no_proj", "scratch", "teacher_vocab")


def collect(specs: list[str]) -> list[dict]:
    """Rows in order; ``compression`` is the teacher row's parameter count over each row's."""
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
    teacher = [r for r in out if r["name"] == "teacher"]
    if not teacher:
        raise ValueError("no teacher row among the inputs (rows/teacher.json of a workdir)")
    for r in out:
        r["compression"] = teacher[0]["params"] / r["params"]
    return out


def table(rows: list[dict]) -> str:
    fmt = lambda x, p=3: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
    lines = [
        "| model | params | vs MiniLM | MB | train MLM loss | held-out MLM acc | fidelity | "
        "WS353 | SimLex | polarity acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['params'] / 1e6:.2f}M | {r['compression']:.1f}x | "
            f"{r['bytes'] / 1e6:.1f} | {fmt(r['train_mlm_loss'], 2)} | {fmt(r['mlm_acc'])} | "
            f"{fmt(r['fidelity'])} | {fmt(r['wordsim353'])} | {fmt(r['simlex999'])} | "
            f"{r['polarity_mean']:.3f} +- {r['polarity_std']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("runs", nargs="+")
    args = p.parse_args(argv)
    rows = collect(args.runs)
    result = {"rows": rows, "polarity_std": "ddof=1 over fine-tuning seeds"}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))
    return result


if __name__ == "__main__":
    main()
