"""scripts/mixed_vocab_table.py: rows from workdirs and single files, ddof=1 std, final loss."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "mixed_vocab_table",
    pathlib.Path(__file__).resolve().parents[1] / "scripts/mixed_vocab_table.py",
)
T = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(T)


def _row(name, params, runs):
    return {"name": name, "params": params, "bytes": 4 * params, "mlm_acc": 0.1, "fidelity": 0.5,
            "wordsim353": 0.2, "simlex999": 0.1, "polarity_runs": runs}  # fmt: skip


def test_table_from_workdir_and_file(tmp_path):
    wd = tmp_path / "mv"
    (wd / "rows").mkdir(parents=True)
    (wd / "scratch").mkdir()
    (wd / "rows" / "scratch.json").write_text(
        json.dumps(_row("scratch", 1_000_000, [0.6, 0.7, 0.8]))
    )
    (wd / "rows" / "teacher.json").write_text(json.dumps(_row("teacher", 22_713_216, [0.79])))
    losses = [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    (wd / "scratch" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": i, "mlm": x}) for i, x in enumerate(losses))
    )
    other = tmp_path / "a1" / "rows"
    other.mkdir(parents=True)
    (other / "full.json").write_text(json.dumps(_row("full", 500_000, [0.5, 0.52])))
    out = tmp_path / "t.json"
    res = T.main(["--out", str(out), str(wd), f"full, alpha=1={other / 'full.json'}"])
    rows = res["rows"]
    assert [r["label"] for r in rows] == [
        "teacher",
        "scratch",
        "full, alpha=1",
    ]  # ORDER, then files
    s = rows[1]
    assert s["polarity_mean"] == pytest.approx(0.7)
    assert s["polarity_std"] == pytest.approx(np.std([0.6, 0.7, 0.8], ddof=1))
    assert s["train_mlm_loss"] == pytest.approx(3.0)  # mean of the last 5 logged values
    assert s["compression"] == pytest.approx(22.713216)
    assert rows[0]["polarity_std"] == 0.0 and rows[2]["train_mlm_loss"] is None
    assert json.loads(out.read_text())["rows"][2]["polarity_runs"] == [0.5, 0.52]
    with pytest.raises(ValueError, match="no teacher row"):
        T.main(["--out", str(out), f"full={other / 'full.json'}"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        T.main(["--out", str(out), str(tmp_path / "nowhere")])


def test_pretraining_seeds_merge_and_pair(tmp_path):
    """The same row from several workdirs: metric mean +- std (ddof=1) over workdirs, polarity
    pooled over all runs, paired MLM differences against `full` per workdir."""
    accs = {"a": (0.12, 0.10), "b": (0.14, 0.09), "c": (0.13, None)}  # (full, scratch)
    dirs = []
    for wd_name, (full_acc, scratch_acc) in accs.items():
        rows = tmp_path / wd_name / "rows"
        rows.mkdir(parents=True)
        full = _row("full", 1_000_000, [0.5, 0.6])
        full["mlm_acc"] = full_acc
        (rows / "full.json").write_text(json.dumps(full))
        if scratch_acc is not None:
            scratch = _row("scratch", 1_000_000, [0.55])
            scratch["mlm_acc"] = scratch_acc
            (rows / "scratch.json").write_text(json.dumps(scratch))
        dirs.append(str(tmp_path / wd_name))
    (tmp_path / "a" / "rows" / "teacher.json").write_text(json.dumps(_row("teacher", 22_713_216, [0.79])))  # fmt: skip
    res = T.main(["--out", str(tmp_path / "t.json"), *dirs])
    rows = {r["label"]: r for r in res["rows"]}
    assert rows["teacher"]["n_pretrain"] == 1 and rows["teacher"]["mlm_acc_std"] is None
    f = rows["full"]
    assert f["n_pretrain"] == 3
    assert f["mlm_acc"] == pytest.approx(0.13)
    assert f["mlm_acc_std"] == pytest.approx(np.std([0.12, 0.14, 0.13], ddof=1))
    assert f["polarity_runs"] == [0.5, 0.6] * 3
    assert f["polarity_std"] == pytest.approx(np.std([0.5, 0.6] * 3, ddof=1))
    d = res["paired_vs_full"]["mlm_acc"]["scratch"]
    assert d["n"] == 2  # workdir c has no scratch row
    assert d["diffs"] == pytest.approx([-0.02, -0.05])
    assert d["std"] == pytest.approx(np.std([-0.02, -0.05], ddof=1))
    pol = res["paired_vs_full"]["polarity_mean"]["scratch"]
    assert pol["diffs"] == pytest.approx([0.55 - 0.55, 0.55 - 0.55])
    bad = _row("full", 999, [0.5])
    (tmp_path / "c" / "rows" / "full.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="differ in model"):
        T.main(["--out", str(tmp_path / "t.json"), *dirs])
