"""Base-to-new tables of the captioned world (``experiments/cocoop.py``, ``source="vlworld"``),
from the ``results.json`` of one or more tasks.

Each argument is ``LABEL=PATH/results.json``. Per task: zero-shot CLIP (one deterministic value),
the linear probe's base accuracy where the run made one, then every learner's base, new and H as the mean over seeds with the 95% confidence half-width
(Student t, ddof 1), and H of the mean accuracies (as in the CoCoOp tables). Paired by seed (the
same shots): CoCoOp - CoOp on base, new and per-seed H, and each learner's new-class accuracy
minus zero-shot's. Writes ``--out`` (JSON) and prints markdown.

    python scripts/cocoop_world_table.py --out docs/cocoop_world_results.json \\
        clothing=runs/world/clothing-hflip/results.json digits=runs/world/digits-hflip/results.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
from scipy import stats


def harmonic(b, n):
    b, n = np.asarray(b, np.float64), np.asarray(n, np.float64)
    return np.where(b + n > 0, 2 * b * n / np.maximum(b + n, 1e-12), 0.0)


def mean_ci(values) -> dict:
    """Mean, std (ddof 1), 95% CI half-width (Student t) and n of ``values``."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return {"mean": float(v.mean()), "std": None, "ci95": None, "n": len(v)}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(v) - 1) * sd / np.sqrt(len(v)))
    return {"mean": float(v.mean()), "std": sd, "ci95": half, "n": len(v)}


def task_table(results: dict) -> dict:
    per = results["per_seed"]
    zs = per["zero_shot"]
    zb, zn = float(zs["base"][0]), float(zs["new"][0])
    out = {
        "classes": results.get("classes"),
        "shift": results["config"].get("downstream_shift"),
        "seeds": results["config"].get("seeds"),
        "zero_shot": {"base": zb, "new": zn, "H": float(harmonic(zb, zn))},
        "methods": {},
        "paired": {},
    }
    for m, r in per.items():
        if m == "zero_shot":
            continue
        b, n = np.asarray(r["base"]), np.asarray(r["new"])
        out["methods"][m] = {
            "base": mean_ci(b),
            "new": mean_ci(n),
            "H_of_means": float(harmonic(b.mean(), n.mean())),
            "H_per_seed": mean_ci(harmonic(b, n)),
            "new_minus_zero_shot": mean_ci(n - zn),
        }
    if "linear_probe" in results:  # base classes only: a probe has no classifier for new ones
        out["linear_probe"] = {"base": mean_ci(results["linear_probe"]["base"])}
    if "coop" in per and "cocoop" in per:
        c, k = per["coop"], per["cocoop"]
        if len(c["base"]) != len(k["base"]):
            raise ValueError("coop and cocoop ran a different number of seeds; cannot pair them")
        out["paired"]["cocoop_minus_coop"] = {
            "base": mean_ci(np.subtract(k["base"], c["base"])),
            "new": mean_ci(np.subtract(k["new"], c["new"])),
            "H": mean_ci(harmonic(k["base"], k["new"]) - harmonic(c["base"], c["new"])),
        }
    return out


def _fmt(d: dict) -> str:
    return f"{d['mean']:.2f}" + ("" if d["ci95"] is None else f" ± {d['ci95']:.2f}")


def markdown(tables: dict) -> str:
    lines = [
        "| task | method | base | new | H (of means) | H per seed |",
        "|---|---|---|---|---|---|",
    ]
    for label, t in tables.items():
        z = t["zero_shot"]
        lines.append(f"| {label} | zero-shot CLIP | {z['base']:.2f} | {z['new']:.2f} | "
                     f"{z['H']:.2f} | — |")  # fmt: skip
        for m, r in t["methods"].items():
            lines.append(f"| | {m} | {_fmt(r['base'])} | {_fmt(r['new'])} | "
                         f"{r['H_of_means']:.2f} | {_fmt(r['H_per_seed'])} |")  # fmt: skip
        if "linear_probe" in t:
            lines.append(f"| | linear probe | {_fmt(t['linear_probe']['base'])} | — | — | — |")
    lines += ["", "| task | CoCoOp - CoOp: base | new | H | CoOp new - zero-shot | "
              "CoCoOp new - zero-shot |", "|---|---|---|---|---|---|"]  # fmt: skip
    for label, t in tables.items():
        p = t["paired"].get("cocoop_minus_coop")
        if p is None:
            continue
        ms = t["methods"]
        lines.append(f"| {label} | {_fmt(p['base'])} | {_fmt(p['new'])} | {_fmt(p['H'])} | "
                     f"{_fmt(ms['coop']['new_minus_zero_shot'])} | "
                     f"{_fmt(ms['cocoop']['new_minus_zero_shot'])} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("runs", nargs="+", help="LABEL=PATH/results.json")
    args = p.parse_args(argv)
    tables = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            raise ValueError(f"expected LABEL=PATH/results.json, got {spec!r}")
        f = pathlib.Path(path)
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no results.json there")
        tables[label] = {**task_table(json.loads(f.read_text())), "source": str(f)}
    result = {
        "tasks": tables,
        "ci95": "Student t half-width over seeds, ddof 1; zero-shot is deterministic",
    }
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(tables))
    return result


if __name__ == "__main__":
    main()
