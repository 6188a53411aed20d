"""micro and autotune CLIs on tiny configurations: outputs, schema, correctness gate, tuning."""

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

from paired_replacement.bench import autotune, common, masks, micro

TINY = ["--rows", "256", "--m", "64", "--hidden", "32", "--steps", "4", "--fast", "--quiet"]


def bench(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "paired_replacement.bench", *args],
                          capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def micro_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro") / "micro.csv"
    bench("micro", *TINY, "--k", "0", "8", "--out", str(out))
    return out


def test_micro_csv_validates_and_has_every_method(micro_csv):
    frame = common.validate_csv(micro_csv, "micro")
    assert set(frame["method"]) == set(micro.ALL_METHODS)
    assert sorted(set(frame["k_target"])) == [0, 8]
    assert (micro_csv.parent / "micro.pyperf.json").is_file()
    assert (frame["n_values"] >= 3).all()
    assert (frame["ci95_low_s"] <= frame["median_s"]).all()
    assert (frame["median_s"] <= frame["ci95_high_s"]).all()


def test_micro_rows_written_follow_the_minimum_write_rule(micro_csv):
    frame = pd.read_csv(micro_csv)
    k8 = frame[frame["k_target"] == 8].set_index("method")
    # k swaps keep m fixed: every removal slot is inside the prefix, so the paired update writes k.
    for method in ("paired", "paired_indices", "numpy_reference", "memcpy_floor", "memcpy_floor_nt"):
        assert k8.loc[method, "rows_written_mean"] == 8
    for method in ("index_select", "bool_mask"):
        assert k8.loc[method, "rows_written_mean"] == 64
    assert (frame[frame["k_target"] == 0]["k_mean"] == 0).all()
    row_bytes = 4 * 32 * 3
    assert k8.loc["paired", "bytes_moved_mean"] == 8 * row_bytes


def test_micro_ratios_are_ratios_of_medians_in_the_same_run(micro_csv):
    frame = pd.read_csv(micro_csv)
    for _, group in frame.groupby("config_hash"):
        g = group.set_index("method")
        base = g.loc["index_select", "median_s"]
        floor = min(g.loc["memcpy_floor", "median_s"], g.loc["memcpy_floor_nt", "median_s"])
        for method, row in g.iterrows():
            assert math.isclose(row["speedup_vs_index_select"], base / row["median_s"], rel_tol=1e-9)
            if row["rows_written_mean"] and method not in ("index_select", "bool_mask"):
                assert math.isclose(row["efficiency_vs_floor"], floor / row["median_s"], rel_tol=1e-9)
            else:
                assert math.isnan(row["efficiency_vs_floor"])


def test_metadata_columns_describe_the_run(micro_csv):
    frame = pd.read_csv(micro_csv)
    row = frame.iloc[0]
    assert row["torch_version"] == torch.__version__
    assert row["build_source"] == "pip" and row["simd"] in {"sse2", "avx2", "avx512f", "portable"}
    assert row["tuning_source"] == "default" and row["grain"] == 64
    assert len(row["config_hash"]) == 12 and frame["config_hash"].nunique() == 2


class WrongPaired(micro.CacheMethod):
    """A deliberately wrong method: it skips every other update."""

    def step(self, i):
        if i % 2:
            super().step(i)


def test_correctness_gate_trips_on_a_wrong_method(monkeypatch):
    monkeypatch.setitem(micro.METHODS, "paired", lambda t, s: WrongPaired(t, s, tau=2.0))
    task = {"N": 64, "m": 16, "hidden": 8, "gate": True, "dtype": "float32", "seed": 0,
            "grain": 64, "par_threshold": 64, "hybrid_tau_frac": 0.5, "method": "paired"}
    seq = masks.uniform(64, 16, 4, 4, seed=0)
    with pytest.raises(common.CorrectnessError, match="paired: .* refusing to time a wrong answer"):
        micro.replay_and_check(task, seq)


def test_correctness_gate_passes_every_real_method_for_every_pattern():
    task = {"N": 96, "m": 24, "hidden": 8, "gate": False, "dtype": "float16", "seed": 3,
            "grain": 2, "par_threshold": 0, "hybrid_tau_frac": 0.5}
    for pattern in ("uniform", "clustered", "sticky"):
        seq = masks.make_sequence(pattern, n=96, m=24, k=6, steps=4, seed=1)
        for method in micro.ALL_METHODS:
            rows = micro.replay_and_check({**task, "method": method}, seq)
            assert len(rows) == 2 * (len(seq) - 1)


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
    import numpy as np

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


def test_autotune_json_and_its_use_by_micro(tmp_path):
    out = tmp_path / "autotune.json"
    bench("autotune", "--rows", "256", "--m", "64", "--hidden", "16", "--k-list", "4", "16",
          "--grains", "8", "64", "--par-thresholds", "0", "--taus", "0.5", "--fast", "--quiet",
          "--out", str(out), "--csv", str(tmp_path / "autotune.csv"))
    result = json.loads(out.read_text())
    assert len(result["candidates"]) == 2
    assert result["winner"]["median_s"] == min(c["median_s"] for c in result["candidates"])
    table = common.validate_csv(tmp_path / "autotune.csv", "autotune")
    assert table["is_winner"].sum() == 1

    csv = tmp_path / "micro.csv"
    bench("micro", *TINY, "--k", "4", "--methods", "paired", "hybrid", "index_select",
          "--autotune-json", str(out), "--out", str(csv))
    frame = pd.read_csv(csv)
    assert (frame["tuning_source"] == f"autotune:{out}").all()
    assert (frame["grain"] == result["winner"]["grain"]).all()

    csv2 = tmp_path / "micro2.csv"
    bench("micro", *TINY, "--k", "4", "--methods", "paired", "index_select", "--autotune-json",
          str(out), "--skip-autotune-json", "--out", str(csv2))
    assert (pd.read_csv(csv2)["tuning_source"] == "default").all()


def test_autotune_json_from_another_host_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "autotune.json"
    path.write_text(json.dumps({
        "host": {"host_id": "elsewhere", "cpu_model": "Other CPU", "logical_cpus": 128},
        "shape": {"N": 8, "m": 2, "hidden": 4},
        "winner": {"grain": 8, "par_threshold": 8, "hybrid_tau_frac": 0.5}}))
    with pytest.raises(common.AutotuneError, match="another host.*host_id: 'elsewhere'"):
        common.load_autotune(path)
    proc = bench("micro", *TINY, "--k", "4", "--autotune-json", str(path),
                 "--out", str(tmp_path / "m.csv"), check=False)
    assert proc.returncode != 0 and "another host" in proc.stderr


def test_autotune_json_for_another_shape_warns(tmp_path):
    from paired_replacement.bench import hostinfo

    path = tmp_path / "autotune.json"
    path.write_text(json.dumps({"host": hostinfo.fingerprint(), "shape": {"N": 8, "m": 2, "hidden": 4},
                                "winner": {"grain": 8, "par_threshold": 8, "hybrid_tau_frac": 0.5}}))
    with pytest.warns(UserWarning, match="tuned for shape"):
        tuning = common.load_autotune(path, {"N": 16, "m": 2, "hidden": 4})
    assert (tuning.grain, tuning.source) == (8, f"autotune:{path}")
    with pytest.raises(common.AutotuneError, match="not a usable autotune JSON"):
        path.write_text("{}")
        common.load_autotune(path)


def test_autotune_reuses_micro_timer():
    assert autotune.make_timer.__module__ == autotune.__name__
