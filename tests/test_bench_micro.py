"""micro and autotune CLIs on tiny configurations: outputs, schema, correctness gate, baselines,
statistics recomputed from the raw values, tuning on held-out masks. No timing is asserted."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from paired_replacement.bench import autotune, common, hostinfo, masks, micro, timing

TINY = ["--rows", "256", "--m", "64", "--hidden", "32", "--steps", "4", "--warm", "--fast",
        "--quiet"]


def bench(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "paired_replacement.bench", *args],
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def micro_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro") / "micro.csv"
    bench("micro", *TINY, "--k", "0", "8", "--threads", "1", "2", "--out", str(out))
    return out


def raw_values(csv_path: Path) -> dict[str, list[list[float]]]:
    """{'<method>/<config_hash>': values per process} read back from the pyperf JSON."""
    import pyperf

    suite = pyperf.BenchmarkSuite.load(str(csv_path.parent / "micro.pyperf.json"))
    return {b.get_name(): [list(run.values) for run in b.get_runs()] for b in suite.get_benchmarks()}


def test_micro_csv_validates_and_has_every_method(micro_csv):
    frame = common.validate_csv(micro_csv, "micro")
    assert set(frame["method"]) == set(micro.ALL_METHODS)
    assert sorted(set(frame["k_target"])) == [0, 8]
    assert sorted(set(frame["threads"])) == [1, 2]
    assert frame["config_hash"].nunique() == 4  # k x threads, every method in each
    assert (frame["n_processes"] == 1).all() and (frame["n_values"] == 3).all()
    assert (frame["ci95_low_s"] <= frame["median_s"]).all()
    assert (frame["median_s"] <= frame["ci95_high_s"]).all()
    assert set(frame["role"]) == set(micro.ROLES.values())
    assert (frame["cache_state"].isin(["warm", "none"])).all()  # --warm: kept short


def test_micro_rows_written_follow_the_minimum_write_rule(micro_csv):
    frame = pd.read_csv(micro_csv)
    k8 = frame[(frame["k_target"] == 8) & (frame["threads"] == 1)].set_index("method")
    # k swaps keep m fixed: every removal slot is inside the prefix, so the paired update writes k.
    for method in ("paired", "paired_indices", "paired_control", "torch_delta",
                   "torch_delta_indices", "numpy_reference", "memcpy_floor", "memcpy_floor_nt"):
        assert k8.loc[method, "rows_written_mean"] == 8, method
    for method in ("index_select", "rebuild_floor", "bool_mask"):
        assert k8.loc[method, "rows_written_mean"] == 64
    assert (frame[frame["k_target"] == 0]["k_mean"] == 0).all()
    row_bytes = 4 * 32 * 3
    assert k8.loc["paired", "bytes_moved_mean"] == 8 * row_bytes


def test_ratios_are_medians_of_round_by_round_ratios_of_the_raw_values(micro_csv):
    """Recomputed independently from the pyperf JSON: every speedup column is the median of the
    per-round ratios baseline/method, and its interval brackets it."""
    frame = pd.read_csv(micro_csv)
    raw = raw_values(micro_csv)
    for _, row in frame.iterrows():
        mine = np.concatenate(raw[f"{row['method']}/{row['config_hash']}"])
        assert math.isclose(row["median_s"], float(np.median(mine)), rel_tol=1e-12)
        for base in micro.SPEEDUP_BASELINES:
            if f"{base}/{row['config_hash']}" not in raw:  # another tier's baseline: no ratio
                assert math.isnan(row[f"speedup_vs_{base}"]), base
                continue
            theirs = np.concatenate(raw[f"{base}/{row['config_hash']}"])
            want = float(np.median(theirs / mine))
            col = f"speedup_vs_{base}"
            assert math.isclose(row[col], want, rel_tol=1e-12), (row["method"], base)
            assert row[f"{col}_ci95_low"] <= row[col] <= row[f"{col}_ci95_high"]
        assert math.isclose(row["speedup_vs_" + row["method"]], 1.0) \
            if row["method"] in micro.SPEEDUP_BASELINES else True


def test_floors_efficiency_and_plausibility(micro_csv):
    frame = pd.read_csv(micro_csv)
    raw = raw_values(micro_csv)
    for chash, group in frame.groupby("config_hash"):
        g = group.set_index("method")
        medians = {m: g.loc[m, "median_s"] for m in micro.FLOOR_METHODS}
        best_floor = min(medians, key=medians.get)
        for method, row in g.iterrows():
            if method in ("index_select", "rebuild_floor", "bool_mask"):
                assert row["floor_method"] == "rebuild_floor"
            else:
                assert row["floor_method"] == best_floor
            if row["rows_written_mean"] == 0:  # k = 0: nothing written, no efficiency
                assert math.isnan(row["efficiency_vs_floor"]) and row["plausible"]
                continue
            floor = np.concatenate(raw[f"{row['floor_method']}/{chash}"])
            mine = np.concatenate(raw[f"{method}/{chash}"])
            assert math.isclose(row["efficiency_vs_floor"], float(np.median(floor / mine)),
                                rel_tol=1e-12)
            assert row["plausible"] == (row["efficiency_vs_floor"] <= micro.PLAUSIBLE_EFFICIENCY)


def test_control_ratio_sits_on_the_paired_row_only(micro_csv):
    frame = pd.read_csv(micro_csv)
    paired = frame[frame["method"] == "paired"]
    assert paired["control_ratio"].notna().all()
    assert (paired["control_ratio_ci95_low"] <= paired["control_ratio"]).all()
    assert frame[frame["method"] != "paired"]["control_ratio"].isna().all()


def test_load_columns_are_recorded(micro_csv):
    frame = pd.read_csv(micro_csv)
    for col in ("load_before", "load_after", "others_busy_cores", "steal_percent"):
        assert frame[col].notna().all() and (frame[col] >= 0).all(), col
    assert frame["busy"].isin([True, False]).all()
    assert (frame["busy"] == ((frame["others_busy_cores"] > 0.25)
                              | (frame["steal_percent"] > 5.0))).all()


def test_metadata_columns_describe_the_run(micro_csv):
    frame = pd.read_csv(micro_csv)
    row = frame.iloc[0]
    assert row["torch_version"] == torch.__version__
    assert row["build_source"] == "pip" and row["simd"] in {"sse2", "avx2", "avx512f", "portable"}
    assert "-fopenmp" in row["build_flags"]
    assert row["tuning_source"] == "default" and row["grain"] == 64
    assert len(row["config_hash"]) == 12


# ---------------------------------------------------------------------------------------------
# The correctness gate (runs in the first worker, on a whole group)
# ---------------------------------------------------------------------------------------------
def make_group(tmp_path, methods, *, pattern="uniform", n=96, m=24, k=6, steps=5, gate=True,
               dtype="float32", seed=0):
    seq = masks.make_sequence(pattern, n=n, m=m, k=k, steps=steps, seed=seed)
    path = tmp_path / f"{pattern}-{dtype}-{gate}.pt"
    torch.save(seq, path)
    return {"N": n, "m": m, "k_target": k, "hidden": 8, "gate": gate, "dtype": dtype,
            "seed": seed, "grain": 2, "par_threshold": 0, "hybrid_tau_frac": 0.5,
            "threads": 1, "name": "g", "methods": list(methods), "masks_path": str(path)}


class WrongPaired(micro.CacheMethod):
    """A deliberately wrong method: it skips every other update."""

    def step(self, i):
        if i % 2:
            super().step(i)


class OneBadRowOnce(micro.TorchDeltaMethod):
    """Right slot bookkeeping, but at the first step one packed row is scribbled over: a fault
    only the cheap per-step row-sum check can see (the first step is not an exhaustive one)."""

    def step(self, i):
        super().step(i)
        if i == 1 and self.delta.m:
            self.delta.packed_c[0, 0] += 1.0


@pytest.mark.parametrize("wrong", [lambda t, s: WrongPaired(t, s, tau=2.0),
                                   lambda t, s: OneBadRowOnce(t, s)])
def test_correctness_gate_trips_on_a_wrong_method(tmp_path, monkeypatch, wrong):
    monkeypatch.setitem(micro.METHODS, "paired", wrong)
    group = micro.make_group(make_group(tmp_path, ["paired", "index_select"]))
    with pytest.raises(common.CorrectnessError, match="paired: .* refusing to time a wrong answer"):
        group.check()


def test_exhaustive_checks_are_a_sample_of_the_steps():
    """The full comparisons run at a strided sample of the cycle (and its last step), so the gate
    costs a few full comparisons per method, whatever the cycle length."""
    targets = micro.walk(33)
    every = max(1, len(targets) // micro.EXHAUSTIVE_CHECKS_PER_CYCLE)
    full = [s for s in range(len(targets)) if s % every == every - 1 or s == len(targets) - 1]
    assert 1 < len(full) <= micro.EXHAUSTIVE_CHECKS_PER_CYCLE + 1
    assert 0 not in full  # the first step is checked by row sums only (see OneBadRowOnce)


@pytest.mark.parametrize("pattern", ["uniform", "clustered", "sticky"])
def test_correctness_gate_passes_every_real_method(tmp_path, pattern):
    group = micro.make_group(make_group(tmp_path, micro.ALL_METHODS, pattern=pattern,
                                        gate=pattern != "clustered",
                                        dtype="float16" if pattern == "sticky" else "float32"))
    group.check()
    rows = group.info["rows_written"]
    assert set(rows) == set(micro.ALL_METHODS)
    assert all(len(r) == 2 * 5 for r in rows.values())


def test_torch_delta_keeps_the_caches_slots_exactly(tmp_path):
    """The plain-torch baseline follows the cache's slot rules: same row in every slot, every
    step, from masks and from index lists, growing and shrinking."""
    seq = torch.stack([masks.uniform(128, 40, 9, 1, seed=s)[1] for s in range(12)])
    seq[3] = seq[2].clone()
    seq[3][seq[3].nonzero()[:7, 0]] = False  # a pure shrink
    seq[4] = seq[3] | seq[5]                 # a grow
    path = tmp_path / "seq.pt"
    torch.save(seq, path)
    g = {"N": 128, "m": 40, "hidden": 8, "gate": True, "dtype": "float32", "seed": 1,
         "grain": 64, "par_threshold": 64, "hybrid_tau_frac": 0.5, "threads": 1, "name": "g",
         "methods": ["paired", "torch_delta", "torch_delta_indices"], "masks_path": str(path)}
    group = micro.make_group(g)
    paired, delta, delta_idx = (group.methods[n] for n in g["methods"])
    for target in micro.walk(len(seq)):
        for method in (paired, delta, delta_idx):
            method.step(target)
        want = paired.result()[2]
        assert torch.equal(delta.result()[2], want) and torch.equal(delta_idx.result()[2], want)
        assert torch.equal(delta.result()[0], paired.result()[0])
        assert torch.equal(delta.result()[1], paired.result()[1])
        assert delta.rows_written() == paired.rows_written() == delta_idx.rows_written()


# ---------------------------------------------------------------------------------------------
# Cache warmth: the sequence is lengthened until a cycle is cold
# ---------------------------------------------------------------------------------------------
def test_sequence_steps_reach_twice_the_llc():
    config = {"steps": 8, "k_target": 16, "pattern": "uniform"}
    row_bytes, llc = 48 * 1024, 32 << 20
    steps = micro.sequence_steps(config, row_bytes, llc, warm=False)
    assert steps * 2 * 16 * row_bytes >= 2 * llc > (steps - 1) * 2 * 16 * row_bytes
    assert micro.sequence_steps(config, row_bytes, llc, warm=True) == 8
    assert micro.sequence_steps({**config, "k_target": 0}, row_bytes, llc, warm=False) == 8
    assert micro.sequence_steps({**config, "pattern": "sticky"}, row_bytes, llc, warm=False) == 8
    assert micro.sequence_steps({**config, "k_target": 1}, 4, llc, warm=False) == micro.MAX_AUTO_STEPS


def test_cycle_bytes_count_the_rows_that_ever_change():
    seq = masks.uniform(200, 50, 5, 6, seed=3)
    changed = int((seq.any(0) & ~seq.all(0)).sum())
    assert changed >= 5 * 2
    assert micro.cycle_bytes(seq, 100) == 2 * changed * 100
    assert micro.cycle_bytes(masks.uniform(200, 50, 0, 3, seed=3), 100) == 0


def test_cold_run_lengthens_the_sequence_and_says_so(tmp_path):
    out = tmp_path / "micro.csv"
    tiny = [a for a in TINY if a != "--warm"]
    bench("micro", *tiny, "--k", "16", "--methods", "paired", "index_select", "memcpy_floor",
          "--out", str(out))
    row = pd.read_csv(out).iloc[0]
    assert row["llc_bytes"] == hostinfo.llc_bytes()
    assert row["steps"] > 4 and row["cycle_bytes"] > 0
    assert row["cache_state"] == ("cold" if row["cycle_bytes"] > row["llc_bytes"] else "warm")


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def test_mask_patterns_keep_m_and_control_churn():
    for pattern in ("uniform", "clustered"):
        seq = masks.make_sequence(pattern, n=200, m=50, k=7, steps=5, seed=2)
        assert (seq.sum(1) == 50).all()
        assert (masks.churn(seq) == 7).all()
    calm = masks.churn(masks.sticky(500, 50, 20, seed=0, beta=0.95)).float().mean()
    wild = masks.churn(masks.sticky(500, 50, 20, seed=0, beta=0.0)).float().mean()
    assert calm < wild


def test_trace_pattern_reads_a_mask_file(tmp_path):
    seq = masks.uniform(64, 16, 3, 5, seed=4)
    path = tmp_path / "trace.npy"
    np.save(path, seq.numpy())
    assert torch.equal(masks.load_trace(path, 64), seq)
    with pytest.raises(ValueError, match="bool array"):
        masks.load_trace(path, 65)


@pytest.mark.parametrize("args,needle", [
    (["--m", "300"], "--m 300"),
    (["--k", "100"], "--k 100"),
    (["--pattern", "trace"], "--trace"),
    (["--gate", "maybe"], "--gate"),
])
def test_bad_arguments_exit_2_naming_the_option(tmp_path, args, needle):
    proc = bench("micro", *TINY, *args, "--out", str(tmp_path / "x.csv"), check=False)
    assert proc.returncode == 2
    assert needle in proc.stderr


def test_rebuild_floor_follows_the_cores_streaming_threshold():
    from paired_replacement._extension import build_info

    assert int(build_info()["streaming_min_bytes"]) == micro.STREAMING_MIN_BYTES


# ---------------------------------------------------------------------------------------------
# autotune
# ---------------------------------------------------------------------------------------------
AUTOTUNE = ["--rows", "256", "--m", "64", "--hidden", "16", "--k-list", "4", "16", "40",
            "--steps", "3", "--grains", "8", "64", "--par-thresholds", "0", "--taus", "0.5", "1.0",
            "--fast", "--quiet"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("autotune")
    out = folder / "autotune.json"
    bench("autotune", *AUTOTUNE, "--threads", "1", "2", "--out", str(out),
          "--csv", str(folder / "autotune.csv"))
    return folder, json.loads(out.read_text())


def test_autotune_follows_the_timings_of_the_interleaved_harness(tmp_path, monkeypatch):
    """A spy in place of timing.run_groups: autotune must time every candidate of a thread count
    in one interleaved group (tuning masks), then the winner against the defaults (held-out
    masks), and take the winner and the held-out gain from those timings, not from anywhere else.
    The spy makes the candidate with the largest grain the fastest (the defaults would win any
    real tie) and the winner 2x faster than the defaults on held-out masks."""
    calls = []
    updates = len(micro.walk(3 + 1))

    def spy(module, groups, **kw):
        calls.append((module, kw["label"], groups))
        out = {}
        for g in groups:
            result = timing.GroupResult(g["name"])
            for c in g["candidates"]:
                if c["name"] in ("winner", "default"):
                    per_update = 1e-4 if c["name"] == "winner" else 2e-4
                else:
                    per_update = 1e-3 / c["grain"] + 1e-6 * c["hybrid_tau_frac"]
                rng = np.random.default_rng(len(out))
                result.methods[c["name"]] = timing.MethodValues(
                    loops=[1, 1], values=[list(per_update * updates
                                               * (1 + 0.01 * rng.random(6))) for _ in range(2)])
            out[g["name"]] = result
        return out

    monkeypatch.setattr(autotune.timing, "run_groups", spy)
    out = tmp_path / "autotune.json"
    assert autotune.main([*AUTOTUNE, "--threads", "2", "--out", str(out)]) == 0
    assert [(m, label) for m, label, _ in calls] == \
        [(autotune.__name__, "autotune"), (autotune.__name__, "autotune held-out")]
    (tune_group,), (held_group,) = calls[0][2], calls[1][2]
    names = {c["name"] for c in tune_group["candidates"]}
    assert len(names) == 2 * 1 * 2  # grains x par_thresholds x taus, all in one group
    assert {c["name"] for c in held_group["candidates"]} == {"winner", "default"}
    assert tune_group["masks_path"] != held_group["masks_path"]  # held out: other masks
    result = json.loads(out.read_text())
    winner = result["winners"]["2"]
    assert (winner["grain"], winner["hybrid_tau_frac"]) == (64, 0.5)  # the spy's fastest
    assert winner["median_s"] == pytest.approx(1e-3 / 64 + 0.5e-6, rel=0.02)
    held = result["held_out"]["2"]
    assert held["gain_vs_default"] == pytest.approx(2.0, rel=0.02)
    assert not held["within_noise"]
    win = next(c for c in held_group["candidates"] if c["name"] == "winner")
    assert (win["grain"], win["hybrid_tau_frac"]) == (64, 0.5)


def test_autotune_searches_only_knobs_that_change_what_runs(tuned):
    _, result = tuned
    tune = [c for c in result["candidates"] if c["phase"] == "tune"]
    one = [c for c in tune if c["threads"] == 1]
    two = [c for c in tune if c["threads"] == 2]
    # one thread: grain and par_threshold change nothing, only tau is searched
    assert {(c["grain"], c["par_threshold"]) for c in one} == {(64, 64)}
    assert sorted(c["hybrid_tau_frac"] for c in one) == [0.5, 1.0]
    assert len(two) == 2 * 1 * 2


def test_autotune_winner_is_the_fastest_candidate_per_thread_count(tuned):
    folder, result = tuned
    for threads in ("1", "2"):
        cands = [c for c in result["candidates"]
                 if c["phase"] == "tune" and str(c["threads"]) == threads]
        best = min(cands, key=lambda c: c["median_s"])
        winner = result["winners"][threads]
        assert (winner["grain"], winner["par_threshold"], winner["hybrid_tau_frac"]) == \
            (best["grain"], best["par_threshold"], best["hybrid_tau_frac"])
        assert sum(c["is_winner"] for c in cands) == 1
    table = common.validate_csv(folder / "autotune.csv", "autotune")
    assert table["is_winner"].sum() == 2
    assert set(table["phase"]) == {"tune", "held_out_winner", "held_out_default"}


def test_autotune_checks_the_winner_on_held_out_masks(tuned):
    folder, result = tuned
    assert result["tune_seed"] != result["seed"]
    tune = torch.load(folder / "autotune.tune.masks.pt")
    held = torch.load(folder / "autotune.held_out.masks.pt")
    assert not torch.equal(tune, held)  # tuned on other masks than the ones reported
    assert torch.equal(held, masks.mixed(256, 64, [4, 16, 40], 3, result["seed"]))
    for threads in ("1", "2"):
        h = result["held_out"][threads]
        assert h["gain_ci95_low"] <= h["gain_vs_default"] <= h["gain_ci95_high"]
        assert h["within_noise"] == (h["gain_ci95_low"] <= 1.0 <= h["gain_ci95_high"])
    table = pd.read_csv(folder / "autotune.csv")
    held_rows = table[table["phase"] == "held_out_winner"]
    assert held_rows["gain_vs_default"].notna().all()
    assert table[table["phase"] != "held_out_winner"]["gain_vs_default"].isna().all()


def test_micro_takes_the_winner_of_its_own_thread_count(tuned, tmp_path):
    folder, result = tuned
    out = folder / "autotune.json"
    csv = tmp_path / "micro.csv"
    bench("micro", *TINY, "--k", "4", "--threads", "1", "2", "--methods", "paired", "hybrid",
          "index_select", "--autotune-json", str(out), "--out", str(csv))
    frame = pd.read_csv(csv)
    assert (frame["tuning_source"] == f"autotune:{out}").all()
    for threads, rows in frame.groupby("threads"):
        winner = result["winners"][str(threads)]
        assert (rows["grain"] == winner["grain"]).all()
        assert (rows["hybrid_tau_frac"] == winner["hybrid_tau_frac"]).all()
    # a thread count the JSON has no winner for gets the defaults, and says so
    csv3 = tmp_path / "micro3.csv"
    bench("micro", *TINY, "--k", "4", "--threads", "3", "--methods", "paired", "index_select",
          "--autotune-json", str(out), "--out", str(csv3))
    assert (pd.read_csv(csv3)["tuning_source"] == "default (no autotune winner for 3 threads)").all()
    csv2 = tmp_path / "micro2.csv"
    bench("micro", *TINY, "--k", "4", "--methods", "paired", "index_select", "--autotune-json",
          str(out), "--skip-autotune-json", "--out", str(csv2))
    assert (pd.read_csv(csv2)["tuning_source"] == "default").all()


def _json_of(host: dict) -> str:
    return json.dumps({"host": host, "shape": {"N": 8, "m": 2, "hidden": 4},
                       "winners": {"1": {"grain": 8, "par_threshold": 8, "hybrid_tau_frac": 0.5}}})


def test_autotune_json_from_another_host_is_refused(tmp_path):
    path = tmp_path / "autotune.json"
    path.write_text(_json_of({"host_id": "elsewhere", "cpu_model": "Other CPU",
                              "logical_cpus": 128}))
    with pytest.raises(common.AutotuneError, match="another host.*host_id: 'elsewhere'"):
        common.load_autotune(path)
    proc = bench("micro", *TINY, "--k", "4", "--autotune-json", str(path),
                 "--out", str(tmp_path / "m.csv"), check=False)
    assert proc.returncode != 0 and "another host" in proc.stderr


def test_autotune_json_for_another_shape_warns(tmp_path):
    path = tmp_path / "autotune.json"
    path.write_text(_json_of(hostinfo.fingerprint()))
    with pytest.warns(UserWarning, match="tuned for shape"):
        tuning = common.load_autotune(path, {"N": 16, "m": 2, "hidden": 4}, threads=1)
    assert (tuning.grain, tuning.source) == (8, f"autotune:{path}")
    with pytest.raises(common.AutotuneError, match="not a usable autotune JSON"):
        path.write_text("{}")
        common.load_autotune(path)


def test_autotune_candidates_follow_the_thread_count():
    args = autotune.build_parser().parse_args(["--out", "x", "--grains", "8", "16",
                                               "--par-thresholds", "4", "--taus", "0.5", "1"])
    assert [c["name"] for c in autotune.candidates_for(args, 1)] == \
        ["g64-p64-t0.5-n1", "g64-p64-t1-n1"]
    assert len(autotune.candidates_for(args, 4)) == 2 * 1 * 2
