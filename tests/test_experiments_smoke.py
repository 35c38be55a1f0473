"""Every experiment's smoke config runs end to end through the one trainer and writes only into its
workdir: results.json, metrics.jsonl and (for the ones that train) checkpoints/ under it, and
nothing anywhere in the repository (``git status`` including ignored files, before and after)."""

from __future__ import annotations

import importlib
import json
import math
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# (experiment module, smoke config module, trains something)
EXPERIMENTS = [
    ("bvp", "bvp_smoke", False),
    ("cram", "cram_smoke", True),
    ("efcp", "efcp_smoke", True),
    ("gntp", "gntp_smoke", True),
    ("cocoop", "cocoop_smoke", True),
    ("losparse", "losparse_smoke", True),
]
_CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache")


def _repo_status() -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line for line in out.splitlines() if not any(c in line for c in _CACHES)}


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_every_experiment_module_exposes_run_and_default_config():
    for name, smoke, _ in EXPERIMENTS:
        module = importlib.import_module(f"experiments.{name}")
        assert callable(module.run), name
        assert (REPO / module.DEFAULT_CONFIG).is_file(), module.DEFAULT_CONFIG
        assert module.DEFAULT_WORKDIR == f"runs/{name}"
        assert (REPO / "experiments" / "configs" / f"{smoke}.py").is_file()


def test_configs_have_no_lists():
    """ml_collections cannot override a list field from the command line: tuples only."""
    import ml_collections

    def lists(cfg, prefix=""):
        for k, v in cfg.items():
            if isinstance(v, ml_collections.ConfigDict):
                yield from lists(v, f"{prefix}{k}.")
            elif isinstance(v, list):
                yield prefix + k

    for path in sorted((REPO / "experiments" / "configs").glob("*.py")):
        if path.stem in ("__init__", "gntp_base"):
            continue
        cfg = importlib.import_module(f"experiments.configs.{path.stem}").get_config()
        assert not list(lists(cfg)), (path.name, list(lists(cfg)))


@pytest.mark.parametrize("name,smoke,trains", EXPERIMENTS, ids=[e[0] for e in EXPERIMENTS])
def test_smoke_config_writes_only_into_its_workdir(tmp_path, name, smoke, trains):
    module = importlib.import_module(f"experiments.{name}")
    cfg = importlib.import_module(f"experiments.configs.{smoke}").get_config()
    before = _repo_status()
    workdir = tmp_path / "run"
    results = module.run(cfg, str(workdir))
    assert _repo_status() == before, "the experiment wrote into the repository"

    written = json.loads((workdir / "results.json").read_text())
    assert written.keys() == results.keys()
    numbers = _numbers(written)
    assert numbers and all(math.isfinite(x) for x in numbers if x is not None)
    assert not list(workdir.rglob("*.tmp")), "a temporary file was left behind"
    metrics = list(workdir.rglob("metrics.jsonl"))
    assert metrics, "no metrics.jsonl"
    rows = [json.loads(line) for line in metrics[0].read_text().splitlines()]
    assert rows and all("step" in r for r in rows)
    checkpoints = [p for p in workdir.rglob("checkpoints") if p.is_dir()]
    if trains:
        assert checkpoints and all(any(p.iterdir()) for p in checkpoints)
        assert all("loss" in r for r in rows)
    assert list(workdir.glob("*.png")), "no figure in the workdir"
