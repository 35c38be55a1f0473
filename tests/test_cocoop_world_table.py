"""scripts/cocoop_world_table.py: mean and Student-t CI over seeds, H of the means, paired
CoCoOp - CoOp differences by seed, new - zero-shot, and clear errors."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "cocoop_world_table",
    pathlib.Path(__file__).resolve().parents[1] / "scripts/cocoop_world_table.py",
)
T = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(T)

T_975 = {2: 12.706204736, 3: 4.302652730}  # Student t quantiles, df = n - 1 = 1, 2


def _results(coop, cocoop, zs=(50.0, 40.0)):
    h = lambda b, n: [2 * x * y / (x + y) for x, y in zip(b, n)]  # noqa: E731
    return {
        "config": {"downstream_shift": "hflip", "seeds": [1, 2, 3]},
        "classes": {"base": ["a"], "new": ["b"]},
        "per_seed": {
            "zero_shot": {"base": [zs[0]], "new": [zs[1]]},
            "coop": {"base": coop[0], "new": coop[1], "H": h(*coop)},
            "cocoop": {"base": cocoop[0], "new": cocoop[1], "H": h(*cocoop)},
        },
    }


def test_task_table_statistics(tmp_path):
    coop = ([70.0, 72.0, 74.0], [30.0, 36.0, 33.0])
    cocoop = ([68.0, 69.0, 73.0], [41.0, 40.0, 45.0])
    f = tmp_path / "results.json"
    r = _results(coop, cocoop)
    r["linear_probe"] = {"base": [80.0, 84.0, 82.0], "c": [1.0, 1.0, 1.0]}
    f.write_text(json.dumps(r))
    res = T.main(["--out", str(tmp_path / "o.json"), f"digits={f}"])
    t = res["tasks"]["digits"]
    assert t["zero_shot"] == {"base": 50.0, "new": 40.0, "H": pytest.approx(2 * 50 * 40 / 90)}
    c = t["methods"]["coop"]
    assert c["base"]["mean"] == pytest.approx(72.0)
    assert c["base"]["ci95"] == pytest.approx(T_975[3] * 2.0 / np.sqrt(3))  # std of 70,72,74 = 2
    assert t["linear_probe"]["base"]["mean"] == pytest.approx(82.0)
    assert t["linear_probe"]["base"]["ci95"] == pytest.approx(T_975[3] * 2.0 / np.sqrt(3))
    assert "linear_probe" not in T.task_table(_results(coop, cocoop))
    assert c["H_of_means"] == pytest.approx(2 * 72 * 33 / 105)
    assert c["new_minus_zero_shot"]["mean"] == pytest.approx(-7.0)
    d = t["paired"]["cocoop_minus_coop"]
    diffs = np.subtract(cocoop[1], coop[1])  # 11, 4, 12
    assert d["new"]["mean"] == pytest.approx(diffs.mean())
    assert d["new"]["ci95"] == pytest.approx(T_975[3] * diffs.std(ddof=1) / np.sqrt(3))
    assert json.loads((tmp_path / "o.json").read_text())["tasks"]["digits"]["source"] == str(f)


def test_two_seeds_and_errors(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps(_results(([60.0, 64.0], [30.0, 30.0]), ([60.0, 62.0], [31.0, 35.0]))))
    t = T.main(["--out", str(tmp_path / "o.json"), f"x={f}"])["tasks"]["x"]
    assert t["methods"]["coop"]["base"]["ci95"] == pytest.approx(T_975[2] * np.std([60, 64], ddof=1) / np.sqrt(2))  # fmt: skip
    assert t["methods"]["coop"]["new"]["ci95"] == 0.0
    bad = _results(([60.0, 64.0], [30.0, 30.0]), ([60.0], [31.0]))
    f.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="different number of seeds"):
        T.main(["--out", str(tmp_path / "o.json"), f"x={f}"])
    with pytest.raises(ValueError, match="LABEL=PATH"):
        T.main(["--out", str(tmp_path / "o.json"), str(f)])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        T.main(["--out", str(tmp_path / "o.json"), f"x={tmp_path / 'nowhere.json'}"])
