"""What every test file shares: the CI switch, Hypothesis profiles, the C++ compiler, and the
``slow`` marker applied by what a test uses rather than by hand.

* ``in_ci()`` / ``IN_CI`` (the environment variable ``CI`` set and not "0"/"false", as .ci/run
  sets it) and ``skip_or_fail``: a test that would skip for want of a tool CI is meant to have
  (g++, snakemake, git) fails instead, naming what is missing.
* Hypothesis: the profile ``ci`` (derandomized: the same examples on every run, so a CI failure
  reproduces; no deadline: the shared 2-core machines stall) is loaded under CI, ``dev``
  (random examples, no deadline) elsewhere; ``HYPOTHESIS_PROFILE`` picks one by name.
* ``GXX`` / ``needs_gxx``: the C++ compiler (``$CXX`` or g++) and the skip for its absence.
* ``padded_ld``: the packed block's row stride, written out independently of the core.
* ``slow``: every test that compiles C++ or runs the pipeline, found by the fixtures it uses and
  the files it is in (``SLOW_FIXTURES``, ``SLOW_FILES``); ``pytest -m "not slow"`` is the quick
  loop.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import settings

def in_ci() -> bool:
    """Running under CI: the CI variable set to anything but empty/0/false/no (.ci/run exports
    CI=1; GitHub Actions and GitLab set CI=true). Read at each call (tests change it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """A missing prerequisite: a skip on a developer's machine, a failure with the reason under
    CI, where everything is installed and a skip would leave something untested."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, where this must not be skipped)", pytrace=False)
    pytest.skip(reason)


IN_CI = in_ci()

# Both explicit: Hypothesis loads a "ci" profile of its own when it sees a CI variable, and a
# profile registered then inherits from it.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", derandomize=False, deadline=None, print_blob=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))

GXX = shutil.which(os.environ.get("CXX") or "g++")
# Under CI the compiler is part of the machine: a test that needs it runs (and fails) without it.
needs_gxx = pytest.mark.skipif(GXX is None and not IN_CI, reason="no C++ compiler on PATH")

def padded_ld(cols: int, es: int) -> int:
    """Row stride of the packed block in elements (the core's layout contract, restated here so
    tests do not read it from the code under test): rows of >= 512 bytes are rounded up to a
    multiple of 64 bytes, shorter rows are packed tight."""
    nbytes = cols * es
    if nbytes >= 512:
        nbytes = (nbytes + 63) // 64 * 64
    return nbytes // es


#: fixtures that compile C++ (the perf driver, a per-host build) or run the pipeline
SLOW_FIXTURES = {"driver", "built_driver", "host_build", "smoke_run", "slurm_run"}
#: files whose every test compiles C++ or runs Snakemake on the smoke tree
SLOW_FILES = {"test_core_cpp.py", "test_hostbuild.py"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.path.name in SLOW_FILES or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
