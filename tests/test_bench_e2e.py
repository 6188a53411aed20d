"""The e2e / sweep benchmark: CLI output, sweep expansion, correctness gate, mask generator,
argument checks. Tiny shapes; no timing is asserted."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from paired_replacement.bench import common, e2e, timing

TINY = ["--fast", "--rows", "128", "--hidden", "32", "--steps", "6", "--threads", "1"]
ALL_METHODS = list(e2e.METHODS)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny_config(**kw) -> e2e.Config:
    base = dict(N=128, m=16, batch=2, hidden=32, gate=True, dtype="float32", rho=0.9, beta=0.0,
                steps=6, seed=0, threads=1)
    return e2e.Config(**{**base, **kw})


def _fake_run_groups(calls: list):
    """run_groups stand-in: what one worker does, in this process (gate, then interleaved
    rounds), through the real make_group and timing.measure."""

    def fake(module, groups, *, pyperf_json, options, build_dir=None, quiet=False, label="bench"):
        calls.append(groups)
        assert module == e2e.MODULE
        out = {}
        for index, group in enumerate(groups):
            torch.set_num_threads(group["threads"])
            built = e2e.make_group(group)
            built.check()
            got = timing.measure(built.operations, values=3, warmups=1, min_time=0.0,
                                 fixed_loops=2, rng=np.random.default_rng(index))
            result = timing.GroupResult(group["name"])
            for name, g in got.items():
                result.methods[name] = timing.MethodValues([g["loops"]], [g["values"]],
                                                           [g["warmups"]])
            result.load.append({"load_before": 0.0, "load_after": 0.0, "others_busy_cores": 0.0,
                                "steal_percent": 0.0, "busy": False})
            out[group["name"]] = result
        return out

    return fake


# ---------------------------------------------------------------------------------------------
# CLI end to end (real worker processes)
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
    # the pyperf JSON next to the CSV holds the raw values, seconds per step; every ratio column
    # is the median of the round-by-round ratios of those values
    pyperf_json = out.parent / frame["pyperf_json"].iloc[0]
    assert pyperf_json == out.with_name("e2e.pyperf.json") and pyperf_json.is_file()
    import pyperf

    suite = pyperf.BenchmarkSuite.load(str(pyperf_json))
    raw = {b.get_name().split("/")[0]: np.concatenate([r.values for r in b.get_runs()])
           for b in suite.get_benchmarks()}
    assert set(raw) == set(ALL_METHODS)
    for _, row in frame.iterrows():
        mine = raw[row["method"]]
        assert math.isclose(row["median_s"], float(np.median(mine)), rel_tol=1e-12)
        for base in e2e.SPEEDUP_BASELINES:
            assert math.isclose(row[f"speedup_vs_{base}"], float(np.median(raw[base] / mine)),
                                rel_tol=1e-12)
        assert row["active_mean"] >= 16 and row["k_mean"] > 0
        if row["method"] in e2e.PACKED_TORCH_FFN:
            assert row["floor_method"] == "ffn_floor"
            assert math.isclose(row["efficiency_vs_floor"],
                                float(np.median(raw["ffn_floor"] / mine)), rel_tol=1e-12)
            assert row["plausible"] == (row["efficiency_vs_floor"] <= e2e.PLAUSIBLE_EFFICIENCY)
        else:
            assert math.isnan(row["efficiency_vs_floor"]) and row["plausible"]
    roles = dict(zip(frame["method"], frame["role"]))
    assert roles["paired"] == "headline" and roles["ffn_floor"] == "floor"


def test_help_documents_the_options(capsys):
    for entry in (e2e.main, e2e.main_sweep):
        with pytest.raises(SystemExit) as exc:
            entry(["--help"])
        assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--rows", "--m ", "--batch", "--gate", "--dtype", "--rho", "--beta", "--steps",
                   "--threads", "--methods", "--m-list", "--batch-list", "--hidden-list", "--fast"):
        assert option in text
    for method in ALL_METHODS:
        assert method in text


# ---------------------------------------------------------------------------------------------
# sweep (in process: the real make_group, no worker subprocesses)
# ---------------------------------------------------------------------------------------------
def test_sweep_expands_m_by_batch_by_threads(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(e2e.timing, "run_groups", _fake_run_groups(calls))
    out = tmp_path / "sweep.csv"
    argv = ["--out", str(out), *TINY, "--m-list", "8", "16", "--batch-list", "1", "3",
            "--hidden-list", "32", "--methods", "paired", "torch_delta", "dense"]
    argv[argv.index("--threads") + 1:argv.index("--threads") + 2] = ["1", "2"]
    assert e2e.main_sweep(argv) == 0
    frame = common.validate_csv(out, "e2e")
    assert len(calls) == 1 and len(calls[0]) == 8  # one run: 4 (m, batch) x 2 thread counts
    assert len(frame) == 8 * 3
    assert (frame["benchmark"] == "sweep").all()
    assert frame["config_hash"].nunique() == 8
    assert sorted(set(zip(frame["m"], frame["batch"], frame["threads"]))) == [
        (m, b, t) for m in (8, 16) for b in (1, 3) for t in (1, 2)]
    for _, group in frame.groupby("config_hash"):
        assert sorted(group["method"]) == ["dense", "paired", "torch_delta"]
        assert (group.set_index("method").loc["dense", "speedup_vs_dense"] == 1.0)
    single = frame[frame["batch"] == 1]
    assert (single["active_mean"] == single["m"]).all()  # one token: exactly its top-m
    assert "vs torch_delta" in capsys.readouterr().out  # the summary table


def test_speedup_is_empty_when_the_baseline_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(e2e.timing, "run_groups", _fake_run_groups([]))
    out = tmp_path / "e2e.csv"
    e2e.main(["--out", str(out), *TINY, "--m", "16", "--methods", "paired", "hybrid", "--quiet"])
    frame = common.validate_csv(out, "e2e")
    assert sorted(frame["method"]) == ["hybrid", "paired"]
    for base in e2e.SPEEDUP_BASELINES:
        assert frame[f"speedup_vs_{base}"].isna().all()
    assert frame["efficiency_vs_floor"].isna().all() and frame["plausible"].all()


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


class _NoPackStaleRows(e2e.NoPackMethod):
    """Wrong on purpose: reads the rows of mask 0 at every step."""

    def step(self, t):
        return torch.ops.paired.row_ffn(self.x[t], self.pool_c, self.pool_d, self.idx[0],
                                        self.has_gate)


@pytest.mark.parametrize("name, wrong", [("paired", _StalePaired), ("dense", _ReluDense),
                                         ("no_pack", _NoPackStaleRows)])
def test_gate_trips_on_a_wrong_method_and_nothing_is_timed(tmp_path, monkeypatch, name, wrong):
    monkeypatch.setitem(e2e.METHODS, name, wrong)

    def gate_then_no_timing(module, groups, **kwargs):
        for group in groups:  # what the first worker does before timing anything
            e2e.make_group(group).check()
        raise AssertionError("a wrong method passed the gate")

    monkeypatch.setattr(e2e.timing, "run_groups", gate_then_no_timing)
    out = tmp_path / "e2e.csv"
    with pytest.raises(common.CorrectnessError, match=name):
        e2e.main(["--out", str(out), *TINY, "--m", "16", "--batch", "2", "--quiet"])
    assert list(tmp_path.iterdir()) == []


def test_gate_accepts_every_method_in_every_dtype_with_and_without_gate():
    for dtype in e2e.DTYPES:
        for gate in (True, False):
            problem = e2e.make_problem(_tiny_config(dtype=dtype, gate=gate, batch=3))
            e2e.check_methods(problem, list(e2e.METHODS), common.Tuning())


def test_group_walks_ping_pong_and_refuses_other_masks():
    config = _tiny_config()
    problem = e2e.make_problem(config)
    group = {"name": "t", "threads": 1, "methods": ["paired", "no_pack"], "config": config.as_dict(),
             "tuning": {"grain": 64, "par_threshold": 64, "hybrid_tau_frac": 0.5, "source": "default"},
             "mask_sha256": e2e.mask_digest(problem.masks)}
    built = e2e.make_group(group)
    references = e2e.reference_outputs(problem)["masked"]
    paired = built.methods["paired"]
    seen = []
    original = paired.step
    paired.step = lambda t: seen.append(t) or original(t)
    op = built._operation(paired)  # the operation timing.measure calls, loop after loop
    for _ in range(3 * 2 * config.steps):
        op()
    cycle = e2e.walk(problem)
    assert seen == cycle * 3  # whole ping-pong cycles, never a repeated mask
    y = paired.step(1)
    torch.testing.assert_close(y.double(), references[1], rtol=2e-4, atol=2e-4)
    with pytest.raises(RuntimeError, match="masks differ"):
        e2e.make_group({**group, "mask_sha256": "0" * 64})


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
