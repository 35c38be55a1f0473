"""Every public entry point fuzzed with hypothesis (issue #12): only documented exceptions that
name the offending value, properties hold on valid inputs (exact mask counts, dtypes and shapes
kept, BVP solutions match the exact ones), nothing hangs. The cases live in ``fuzz_harness.py``;
``python tests/fuzz_harness.py --out docs/reliability_fuzz.md`` runs them with more examples and
writes the table."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fuzz_harness import BAD, CASES, run_case  # noqa: E402


@pytest.mark.parametrize("case", CASES, ids=[f"{c.entry}|{c.klass[:30]}" for c in CASES])
def test_fuzz_case(case):
    counts, failures = run_case(case)
    assert sum(counts.values()) == case.examples or counts["ok"] + counts["clear"] > 0
    assert not any(counts[o] for o in BAD), (dict(counts), failures)
