"""The suite's own rules (tests/conftest.py): under CI, Hypothesis replays the same examples and
a missing compiler fails the tests that need it instead of skipping them; outside CI, neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import conftest
from hypothesis import settings
print(json.dumps({"ci": conftest.IN_CI, "derandomize": settings.default.derandomize,
                  "deadline": settings.default.deadline,
                  "gxx_skips": bool(conftest.needs_gxx.args[0])}))
"""


def _probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE", "CXX")}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(TESTS)], capture_output=True,
                          text=True, timeout=120, env={**clean, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("ci, expect", [("1", True), ("true", True), ("0", False),
                                        ("", False)])
def test_ci_replays_the_same_examples_and_never_skips_for_a_missing_compiler(ci, expect):
    got = _probe(CI=ci, CXX="no-such-compiler-anywhere")
    assert got["ci"] is expect
    assert got["derandomize"] is expect
    assert got["deadline"] is None  # shared machines stall: no per-example deadline anywhere
    assert got["gxx_skips"] is (not expect)


def test_a_profile_can_be_chosen_by_name():
    assert _probe(HYPOTHESIS_PROFILE="ci")["derandomize"] is True
    assert _probe(CI="1", HYPOTHESIS_PROFILE="dev")["derandomize"] is False


def test_tests_that_compile_or_run_the_pipeline_are_marked_slow(request):
    """The marker follows the fixtures: collect the perf tests and check the driver's users."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow",
                           "-p", "no:cacheprovider", str(TESTS / "test_bench_perf.py"),
                           str(TESTS / "test_copy_rows.py")],
                          capture_output=True, text=True, timeout=300, cwd=TESTS.parent)
    slow = {line.split("::")[1].split("[")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert "test_driver_rows_written" in slow  # uses the compiled driver
    assert "test_parse_perf_csv" not in slow  # parses text only
    assert not any("copy_rows" in line for line in proc.stdout.splitlines() if "::" in line)
