"""docs/api/ is generated from the docstrings and must match them (it cannot rot)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_api_docs_up_to_date():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_version_list_results(tmp_path, capsys, monkeypatch):
    import json

    from jaxcomp import cli

    monkeypatch.chdir(ROOT)
    assert "cram" in cli.list_experiments()
    for i, acc in enumerate((0.5, 0.75)):
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"summary": {"method": f"m{i}", "acc": acc}}))
    assert cli.main(["results", str(tmp_path / "run0"), str(tmp_path / "run1")]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == "| run | method | acc |"
    assert table[2].endswith("| m0 | 0.5 |") and table[3].endswith("| m1 | 0.75 |")
