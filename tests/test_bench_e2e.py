"""The e2e / sweep benchmark: CLI output, sweep expansion, correctness gate, mask generator,
argument checks. Tiny shapes; no timing is asserted."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import pytest
import torch

from paired_replacement.bench import common, e2e

TINY = ["--fast", "--rows", "128", "--hidden", "32", "--steps", "6", "--threads", "1"]
ALL_METHODS = ["paired", "hybrid", "index_select", "dense"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny_config(**kw) -> e2e.Config:
    base = dict(N=128, m=16, batch=2, hidden=32, gate=True, dtype="float32", rho=0.9, beta=0.0,
                steps=6, seed=0, threads=1)
    return e2e.Config(**{**base, **kw})


def _fake_run_tasks(calls: list):
    """run_tasks stand-in: times each task in this process through the real make_timer."""

    def fake(module, tasks, *, pyperf_json, options, build_dir=None, quiet=False, label="bench"):
        calls.append(tasks)
        assert module == e2e.MODULE
        out = {}
        for task in tasks:
            timer = e2e.make_timer(task, {"module": module, "tasks": tasks})
            # pyperf divides by loops * inner_loops (the steps of one pass)
            out[task["name"]] = [timer(loops) / (loops * task["inner_loops"]) for loops in (1, 2, 3)]
        return out

    return fake


# ---------------------------------------------------------------------------------------------
# CLI end to end (real pyperf workers)
# ---------------------------------------------------------------------------------------------
def test_e2e_cli_writes_valid_csv_with_every_method(tmp_path):
    out = tmp_path / "res" / "e2e.csv"
    proc = subprocess.run([sys.executable, "-m", "paired_replacement.bench", "e2e", "--out", str(out),
                           *TINY, "--m", "16", "--batch", "2", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = common.validate_csv(out, "e2e")
    assert sorted(frame["method"]) == sorted(ALL_METHODS)
    assert (frame["benchmark"] == "e2e").all()
    assert frame["config_hash"].nunique() == 1
    assert (frame[["N", "m", "batch", "hidden", "steps"]].iloc[0].tolist() == [128, 16, 2, 32, 6])
    assert (frame["threads"] == 1).all()
    med = dict(zip(frame["method"], frame["median_s"]))
    for _, row in frame.iterrows():
        assert row["median_s"] > 0 and row["n_values"] >= 1
        assert math.isclose(row["speedup_vs_index_select"], med["index_select"] / row["median_s"],
                            rel_tol=1e-9)
        assert math.isclose(row["speedup_vs_dense"], med["dense"] / row["median_s"], rel_tol=1e-9)
        assert row["active_mean"] >= 16 and row["k_mean"] > 0
    # pyperf JSON next to the CSV, named relative to it; inner_loops = steps, so its values are
    # seconds per step, the same numbers the CSV summarizes.
    pyperf_json = out.parent / frame["pyperf_json"].iloc[0]
    assert pyperf_json == out.with_name("e2e.pyperf.json") and pyperf_json.is_file()
    import pyperf

    suite = pyperf.BenchmarkSuite.load(str(pyperf_json))
    assert len(suite.get_benchmarks()) == 4
    for bench in suite.get_benchmarks():
        method = bench.get_name().split()[1]
        assert bench.get_metadata()["inner_loops"] == 6
        assert math.isclose(statistics.median(bench.get_values()), med[method], rel_tol=1e-9)


def test_help_documents_the_options(capsys):
    for entry in (e2e.main, e2e.main_sweep):
        with pytest.raises(SystemExit) as exc:
            entry(["--help"])
        assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--rows", "--m ", "--batch", "--gate", "--dtype", "--rho", "--beta", "--steps",
                   "--threads", "--methods", "--m-list", "--batch-list", "--hidden-list", "--fast"):
        assert option in text


# ---------------------------------------------------------------------------------------------
# sweep (in process: the real make_timer, no pyperf subprocesses)
# ---------------------------------------------------------------------------------------------
def test_sweep_expands_m_by_batch(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(e2e.timing, "run_tasks", _fake_run_tasks(calls))
    out = tmp_path / "sweep.csv"
    assert e2e.main_sweep(["--out", str(out), *TINY, "--m-list", "8", "16", "--batch-list", "1", "3",
                           "--hidden-list", "32"]) == 0
    frame = common.validate_csv(out, "e2e")
    assert len(calls) == 1 and len(calls[0]) == 4 * len(ALL_METHODS)  # one pyperf run for all
    assert len(frame) == 4 * len(ALL_METHODS)
    assert (frame["benchmark"] == "sweep").all()
    assert frame["config_hash"].nunique() == 4
    assert sorted(set(zip(frame["m"], frame["batch"]))) == [(8, 1), (8, 3), (16, 1), (16, 3)]
    for _, group in frame.groupby("config_hash"):
        assert sorted(group["method"]) == sorted(ALL_METHODS)
        med = dict(zip(group["method"], group["median_s"]))
        for _, row in group.iterrows():
            assert math.isclose(row["speedup_vs_dense"], med["dense"] / row["median_s"], rel_tol=1e-9)
    single = frame[frame["batch"] == 1]
    assert (single["active_mean"] == single["m"]).all()  # one token: exactly its top-m
    assert "vs index_select" in capsys.readouterr().out  # the summary table


def test_speedup_is_empty_when_the_baseline_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(e2e.timing, "run_tasks", _fake_run_tasks([]))
    out = tmp_path / "e2e.csv"
    e2e.main(["--out", str(out), *TINY, "--m", "16", "--methods", "paired", "hybrid", "--quiet"])
    frame = common.validate_csv(out, "e2e")
    assert sorted(frame["method"]) == ["hybrid", "paired"]
    assert frame["speedup_vs_index_select"].isna().all() and frame["speedup_vs_dense"].isna().all()


# ---------------------------------------------------------------------------------------------
# correctness gate
# ---------------------------------------------------------------------------------------------
class _StalePaired(e2e.PairedMethod):
    """Wrong on purpose: never updates the cache (computes with the initial mask)."""

    def step(self, t):
        cache = self.cache
        return e2e.ffn(self.x[t], cache.get_concat_weight(), cache.get_active_down_weight(),
                       self.hidden, self.has_gate)


class _ReluDense(e2e.DenseMethod):
    """Wrong on purpose: relu instead of silu on the gate."""

    def step(self, t):
        x, h = self.x[t], self.hidden
        act = torch.relu(x @ self.w[:, :h].t()) * (x @ self.w[:, h:].t())
        return act @ self.d.t()


@pytest.mark.parametrize("name, wrong", [("paired", _StalePaired), ("dense", _ReluDense)])
def test_gate_trips_on_a_wrong_method_and_nothing_is_timed(tmp_path, monkeypatch, name, wrong):
    monkeypatch.setitem(e2e.METHODS, name, wrong)

    def no_timing(*args, **kwargs):
        raise AssertionError("a wrong method reached the timer")

    monkeypatch.setattr(e2e.timing, "run_tasks", no_timing)
    out = tmp_path / "e2e.csv"
    with pytest.raises(common.CorrectnessError, match=name):
        e2e.main(["--out", str(out), *TINY, "--m", "16", "--batch", "2", "--quiet"])
    assert list(tmp_path.iterdir()) == []


def test_gate_accepts_every_method_in_every_dtype_with_and_without_gate():
    for dtype in e2e.DTYPES:
        for gate in (True, False):
            problem = e2e.make_problem(_tiny_config(dtype=dtype, gate=gate, batch=3))
            e2e.check_methods(problem, list(e2e.METHODS), common.Tuning())


def test_make_timer_walks_ping_pong_and_refuses_other_masks():
    config = _tiny_config()
    problem = e2e.make_problem(config)
    task = {"name": "t", "method": "paired", "config": config.as_dict(),
            "tuning": {"grain": 64, "par_threshold": 64, "hybrid_tau_frac": 0.5, "source": "default"},
            "mask_sha256": e2e.mask_digest(problem.masks)}
    timer = e2e.make_timer(task, {})
    assert all(timer(loops) > 0 for loops in (1, 2, 3))  # odd + even passes: state stays valid
    bad = e2e.make_timer({**task, "mask_sha256": "0" * 64}, {})
    with pytest.raises(RuntimeError, match="masks differ"):
        bad(1)


# ---------------------------------------------------------------------------------------------
# mask generator
# ---------------------------------------------------------------------------------------------
def test_union_mask_of_a_batch_has_at_least_m_active():
    problem = e2e.make_problem(_tiny_config(batch=4, steps=12))
    counts = problem.masks.sum(dim=1)
    assert problem.masks.shape == (13, 128)
    assert (counts >= 16).all() and counts.double().mean() > 16
    # each token's own top-m is inside the union
    scores = (problem.x.double() @ problem.gate.double().t()).abs()
    for t in range(13):
        for b in range(4):
            assert problem.masks[t, scores[t, b].topk(16).indices].all()
    single = e2e.make_problem(_tiny_config(batch=1))
    assert (single.masks.sum(dim=1) == 16).all()


def test_beta_reduces_churn_on_the_same_seed():
    plain = e2e.make_problem(_tiny_config(batch=2, steps=40, rho=0.5, beta=0.0))
    sticky = e2e.make_problem(_tiny_config(batch=2, steps=40, rho=0.5, beta=0.8))
    assert torch.equal(plain.x, sticky.x)  # same inputs and weights: only the smoothing differs
    assert torch.equal(plain.masks[0], sticky.masks[0])
    assert e2e.churn(sticky.masks).double().mean() < e2e.churn(plain.masks).double().mean()


def test_inputs_are_ar1_and_seeded():
    x = e2e.make_inputs(steps=4000, batch=1, hidden=8, rho=0.9, seed=3)
    assert torch.equal(x, e2e.make_inputs(steps=4000, batch=1, hidden=8, rho=0.9, seed=3))
    a, b = x[:-1].flatten().double(), x[1:].flatten().double()
    corr = float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))
    assert abs(corr - 0.9) < 0.03 and abs(float(x.std()) - 1.0) < 0.1


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry, argv, option", [
    (e2e.main, ["--rows", "128", "--m", "200"], "--m"),
    (e2e.main, ["--beta", "1"], "--beta"),
    (e2e.main, ["--rho", "1.0"], "--rho"),
    (e2e.main, ["--batch", "0"], "--batch"),
    (e2e.main, ["--dtype", "float64"], "--dtype"),
    (e2e.main, ["--methods", "nope"], "--methods"),
    (e2e.main_sweep, ["--rows", "128", "--m-list", "16", "256"], "--m-list"),
])
def test_bad_arguments_exit_2_naming_the_option(tmp_path, capsys, entry, argv, option):
    with pytest.raises(SystemExit) as exc:
        entry(["--out", str(tmp_path / "x.csv"), "--fast", *argv])
    assert exc.value.code == 2
    assert option in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_argument_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "paired_replacement.bench", "e2e", "--out",
                           str(tmp_path / "x.csv"), "--rows", "128", "--m", "129"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--m" in proc.stderr and "rows" in proc.stderr
