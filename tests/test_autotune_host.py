"""An autotune JSON is used only on the host it was tuned on: each fingerprint field alone that
differs gets it refused, naming that field. The JSON comes from a real (tiny) autotune run, and
it is read by common.load_autotune, the loader every benchmark's --autotune-json goes through."""

import json
import subprocess
import sys
import warnings

import pytest

from paired_replacement.bench import common, hostinfo

#: the fields load_autotune compares with this host's fingerprint
COMPARED = ("host_id", "cpu_model", "logical_cpus", "machine")


def _elsewhere(value):
    """A value of the same type that differs from ``value``."""
    return value + 1 if isinstance(value, int) else f"{value} (elsewhere)"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The JSON autotune writes on this host (tiny shape, one thread, one tau: seconds)."""
    out = tmp_path_factory.mktemp("autotune") / "autotune.json"
    proc = subprocess.run(
        [sys.executable, "-m", "paired_replacement.bench", "autotune", "--rows", "64", "--m", "16",
         "--hidden", "8", "--k-list", "4", "--steps", "1", "--taus", "0.5", "--threads", "1",
         "--fast", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture
def json_dir(tmp_path_factory):
    # A folder whose name holds no field name, so a field named in a message comes from the check.
    return tmp_path_factory.mktemp("json")


def _write(folder, data: dict):
    path = folder / "autotune.json"
    path.write_text(json.dumps(data))
    return path


def test_the_writer_records_every_compared_field(written):
    here = hostinfo.fingerprint()
    for field in COMPARED:
        assert written["host"][field] == here[field]


def test_a_json_of_this_host_is_accepted(written, json_dir):
    path = _write(json_dir, written)
    winner = written["winners"]["1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same host, same shape: not even a warning
        tuning = common.load_autotune(path, written["shape"], threads=1)
    assert (tuning.grain, tuning.par_threshold, tuning.hybrid_tau_frac) == \
        (winner["grain"], winner["par_threshold"], winner["hybrid_tau_frac"])
    assert tuning.source == f"autotune:{path}"


@pytest.mark.parametrize("field", COMPARED)
def test_one_field_from_another_host_is_refused(written, json_dir, field):
    data = json.loads(json.dumps(written))
    theirs = _elsewhere(data["host"][field])
    data["host"][field] = theirs  # every other field still this host's
    path = _write(json_dir, data)
    with pytest.raises(common.AutotuneError, match="another host") as info:
        common.load_autotune(path, written["shape"], threads=1)
    message = str(info.value)
    assert field in message and repr(theirs) in message, message
    assert repr(hostinfo.fingerprint()[field]) in message, message
    for other in COMPARED:
        if other != field:  # only the field that differs is blamed
            assert other not in message, message


def test_micro_refuses_a_json_with_one_field_from_another_host(written, json_dir):
    data = json.loads(json.dumps(written))
    data["host"]["logical_cpus"] = _elsewhere(data["host"]["logical_cpus"])
    path = _write(json_dir, data)
    proc = subprocess.run(
        [sys.executable, "-m", "paired_replacement.bench", "micro", "--rows", "64", "--m", "16",
         "--hidden", "8", "--steps", "1", "--k", "4", "--methods", "paired", "--fast", "--quiet",
         "--autotune-json", str(path), "--out", str(json_dir / "micro.csv")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "another host" in proc.stderr and "logical_cpus" in proc.stderr, proc.stderr[-3000:]
    assert not (json_dir / "micro.csv").exists()
