"""micro on recorded masks (``--pattern trace``): the replayed masks are the recorded ones, bit for
bit, tiles place consecutive layers side by side, bad input names its argument, and a tiny run
writes rows that say what they replay. Traces are written with ``model.traces.write_trace`` from
random masks (no model needed); the reference is the masks array itself. No timing is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from paired_replacement.analysis.__main__ import main as analysis_main
from paired_replacement.bench import common, masks, micro
from paired_replacement.model import traces

from test_bench_micro import bench  # tests/ is on sys.path

LAYERS, TOKENS, NEURONS, HIDDEN = 3, 12, 100, 16  # N not a multiple of 8: the packing's tail


def recorded(seed: int, *, fixed: int | None = None) -> np.ndarray:
    """bool [L, T, N]: ``fixed`` neurons per token (oracle-like), else a varying count."""
    rng = np.random.default_rng(seed)
    if fixed is None:
        return rng.random((LAYERS, TOKENS, NEURONS)) < 0.25
    out = np.zeros((LAYERS, TOKENS, NEURONS), dtype=bool)
    for layer in range(LAYERS):
        for t in range(TOKENS):
            out[layer, t, rng.permutation(NEURONS)[:fixed]] = True
    return out


@pytest.fixture()
def folder(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """A traces folder as ``model traces`` writes it: an oracle trace (the cache keeps its gate),
    a gate-threshold trace (``cache_has_gate: False``, varying m) and run.json with the model."""
    arrays = {"oracle_topk-d0.250-w1": recorded(1, fixed=25),
              "gate_threshold-d0.250-w1": recorded(2)}
    traces.write_trace(tmp_path, "oracle_topk-d0.250-w1", arrays["oracle_topk-d0.250-w1"],
                       {"policy": "oracle_topk", "params": {"density": 0.25, "window": 1}})
    traces.write_trace(tmp_path, "gate_threshold-d0.250-w1", arrays["gate_threshold-d0.250-w1"],
                       {"policy": "gate_threshold",
                        "params": {"density": 0.25, "window": 1, "cache_has_gate": False}})
    traces.write_run(tmp_path, {"model": {"hidden_size": HIDDEN, "num_layers": LAYERS}})
    return tmp_path, arrays


def tiled(array: np.ndarray, layer: int, tile: int, tokens: int) -> np.ndarray:
    """The independent reference: layers layer, layer + 1, ... (mod L) side by side."""
    return np.concatenate([array[(layer + j) % LAYERS, :tokens] for j in range(tile)], axis=1)


# ---------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer,tile,steps", [(0, 1, None), (1, 1, 5), (2, 4, 7), (0, 3, 100)])
def test_replayed_masks_are_the_recorded_ones_block_by_block(folder, layer, tile, steps):
    path, arrays = folder
    for key, array in arrays.items():
        replay = masks.replay_trace(path / f"{key}.json", layer=layer, tile=tile, steps=steps)
        tokens = TOKENS if steps is None else min(steps + 1, TOKENS)
        assert replay.seq.dtype == torch.bool
        assert tuple(replay.seq.shape) == (tokens, tile * NEURONS)
        assert np.array_equal(replay.seq.numpy(), tiled(array, layer, tile, tokens))
        trace = traces.read_trace(path / f"{key}.json")
        for j in range(tile):  # block j is layer (layer + j) % L, as the trace reads it back
            block = replay.seq[:, j * NEURONS:(j + 1) * NEURONS].numpy()
            assert np.array_equal(block, trace.layer((layer + j) % LAYERS)[:tokens])
        assert (replay.key, replay.layer, replay.tile) == (key, layer, tile)
        assert (replay.num_layers, replay.num_neurons) == (LAYERS, NEURONS)


def test_hidden_and_gate_come_from_the_trace(folder):
    path, _ = folder
    oracle = masks.replay_trace(path / "oracle_topk-d0.250-w1.json")
    threshold = masks.replay_trace(path / "gate_threshold-d0.250-w1.json")
    assert oracle.hidden == threshold.hidden == HIDDEN  # from run.json
    assert oracle.cache_has_gate is True and threshold.cache_has_gate is False
    (path / "run.json").unlink()
    assert masks.replay_trace(path / "oracle_topk-d0.250-w1.json").hidden is None


def test_a_bool_mask_file_still_replays(tmp_path):
    seq = masks.uniform(64, 16, 3, 5, seed=4)
    np.save(tmp_path / "t.npy", seq.numpy())
    replay = masks.replay_trace(tmp_path / "t.npy", tile=2, steps=3)
    assert torch.equal(replay.seq, torch.cat([seq[:4], seq[:4]], dim=1))
    assert replay.key == "t" and replay.hidden is None and replay.cache_has_gate is None


def test_bad_input_names_the_argument(folder, tmp_path):
    path, _ = folder
    oracle = path / "oracle_topk-d0.250-w1.json"
    with pytest.raises(ValueError, match="--trace-tile must be >= 1"):
        masks.replay_trace(oracle, tile=0)
    with pytest.raises(ValueError, match=r"--trace-layer 3 is out of range.*3 layer\(s\), 0..2"):
        masks.replay_trace(oracle, layer=3)
    with pytest.raises(ValueError, match="--trace-layer -1"):
        masks.replay_trace(oracle, layer=-1)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="--trace .*other.json: not a mask trace"):
        masks.replay_trace(other)
    (tmp_path / "t.csv").write_text("1,0\n")
    with pytest.raises(ValueError, match="--trace .*expected a trace .json"):
        masks.replay_trace(tmp_path / "t.csv")
    np.save(tmp_path / "f.npy", np.zeros((4, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="bool array"):
        masks.replay_trace(tmp_path / "f.npy")
    # a damaged mask file is refused by the trace reader (sha256), named
    npy = path / "oracle_topk-d0.250-w1.npy"
    npy.write_bytes(npy.read_bytes()[:-3])
    with pytest.raises(ValueError, match="damaged or truncated"):
        masks.replay_trace(oracle)


@pytest.mark.parametrize("args,needle", [
    (["--trace-tile", "0"], "--trace-tile must be >= 1"),
    (["--trace-layer", "7"], "--trace-layer 7 is out of range"),
    (["--pattern", "uniform"], "--trace is only read by --pattern trace"),
])
def test_bad_cli_arguments_exit_2_naming_the_option(folder, tmp_path, args, needle):
    path, _ = folder
    cli = ["--pattern", "trace", "--trace", str(path / "oracle_topk-d0.250-w1.json"), "--fast",
           "--quiet", "--out", str(tmp_path / "x.csv")]
    proc = bench("micro", *cli, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr


def test_a_trace_without_its_hidden_size_needs_hidden(tmp_path):
    np.save(tmp_path / "t.npy", masks.uniform(64, 16, 3, 5, seed=4).numpy())
    proc = bench("micro", "--pattern", "trace", "--trace", str(tmp_path / "t.npy"), "--fast",
                 "--quiet", "--out", str(tmp_path / "x.csv"), check=False)
    assert proc.returncode == 2 and "records no hidden size" in proc.stderr
    assert "--hidden" in proc.stderr


# ---------------------------------------------------------------------------------------------
# A tiny run end to end
# ---------------------------------------------------------------------------------------------
METHODS = ["paired", "paired_control", "torch_delta", "index_select", "memcpy_floor",
           "memcpy_floor_nt"]


@pytest.fixture()
def run(folder, tmp_path):
    path, arrays = folder
    out = tmp_path / "out" / "micro_trace.csv"
    bench("micro", "--pattern", "trace", "--trace", *(str(path / f"{k}.json") for k in arrays),
          "--trace-layer", "2", "--trace-tile", "1", "3", "--steps", "6", "--threads", "1",
          "--fast", "--quiet", "--methods", *METHODS, "--out", str(out))
    return out, arrays


def test_a_tiny_trace_run_says_what_it_replays(run):
    out, arrays = run
    frame = common.validate_csv(out, "micro")  # the one reader: schema, ratios
    assert len(frame) == 2 * 2 * len(METHODS)  # trace x tile x method
    assert (frame["pattern"] == "trace").all() and (frame["k_target"] == -1).all()
    assert (frame["trace_layer"] == 2).all() and (frame["steps"] == 6).all()
    assert (frame["hidden"] == HIDDEN).all()
    for (key, tile), rows in frame.groupby(["trace", "trace_tile"]):
        reference = tiled(arrays[key], 2, tile, 7)
        sizes = reference.sum(axis=1)
        assert (rows["N"] == tile * NEURONS).all()
        assert np.allclose(rows["m_mean"], sizes.mean())
        assert (rows["m"] == round(sizes.mean())).all()
        assert (rows["gate"] == (key.startswith("oracle"))).all()  # the policy's cache
        added = (reference[1:] & ~reference[:-1]).sum(axis=1)
        assert np.allclose(rows["k_mean"], added.mean())
        # the masks every method was fed and checked on (the gate passed: the run wrote rows)
        chash = rows["config_hash"].iloc[0]
        seq = torch.load(out.with_name("micro_trace.masks") / f"{chash}.pt")
        assert np.array_equal(seq.numpy(), reference)
        # over the walk 0 -> T -> 0 the paired update writes at least each step's additions (the
        # forward additions, then the forward removals coming back); a rebuild writes all m'
        removed = (reference[:-1] & ~reference[1:]).sum(axis=1)
        by = rows[rows["trace_layer"] == 2].set_index("method")
        assert by.loc["paired", "rows_written_mean"] >= np.concatenate([added, removed]).mean()
        targets = micro.walk(len(reference))
        assert np.isclose(by.loc["index_select", "rows_written_mean"], sizes[targets].mean())
        for method in ("memcpy_floor", "memcpy_floor_nt", "torch_delta", "paired_control"):
            assert by.loc[method, "rows_written_mean"] == by.loc["paired", "rows_written_mean"]


def test_synthetic_rows_say_they_replay_nothing_and_old_files_still_read(run, tmp_path):
    out, _ = run
    synthetic = tmp_path / "uniform.csv"
    bench("micro", "--rows", "128", "--m", "32", "--k", "4", "--hidden", "8", "--steps", "3",
          "--warm", "--threads", "1", "--fast", "--quiet", "--methods", "paired", "torch_delta",
          "--out", str(synthetic))
    frame = common.validate_csv(synthetic, "micro")
    assert (frame["trace"].isna()).all() and (frame["trace_tile"] == 0).all()
    assert (frame["trace_layer"] == 0).all() and (frame["m_mean"] == 32).all()
    # A file written before these columns existed reads back with them filled in.
    old = pd.read_csv(synthetic, dtype=str, keep_default_na=False).drop(
        columns=["trace", "trace_layer", "trace_tile", "m_mean"])
    old.to_csv(tmp_path / "old.csv", index=False)
    filled = common.read_results_csv(tmp_path / "old.csv", "micro")
    assert list(filled.columns) == common.column_names("micro")
    assert (filled["trace"] == "").all() and (filled["trace_tile"] == "0").all()


def test_merge_figure_and_numbers_take_the_trace_rows(run, tmp_path):
    """A host folder with micro_trace.csv merges into merged/micro_trace.csv; the figure draws
    it and the numbers quote paired vs torch_delta at each tile with its interval."""
    import test_analysis as synthetic  # the synthetic hostinfo (tests/ is on sys.path)

    from paired_replacement.analysis import data, figures, trace_micro

    out, _ = run
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    host = frame["host_id"].iloc[0]
    folder = tmp_path / "hosts" / host
    folder.mkdir(parents=True)
    (folder / "hostinfo.json").write_text(json.dumps(synthetic.hostinfo(host)))
    frame.to_csv(folder / "micro_trace.csv", index=False)
    merged = tmp_path / "merged"
    assert analysis_main(["merge", "--hosts-dir", str(tmp_path / "hosts"), "--out-dir",
                          str(merged), "--quiet"]) == 0
    table = common.validate_csv(merged / "micro_trace.csv", "micro")
    assert len(table) == len(frame)
    assert (merged / "micro.csv").read_text().count("\n") == 1  # header only
    fig = figures.FIGURES["micro_trace"](data.Merged(merged))
    assert "no data" not in " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    pdf = tmp_path / "fig" / "micro_trace.pdf"
    assert analysis_main(["figure", "micro_trace", "--merged-dir", str(merged), "--out",
                          str(pdf), "--quiet"]) == 0
    assert pdf.read_bytes().startswith(b"%PDF")
    sentence = trace_micro.trace_sentence(data.Merged(merged))
    assert "side by side" in sentence and "$N = 300$" in sentence and "$N = 100$" in sentence
    for tile in (1, 3):  # each trace's ratio with its interval as the CSV gives it, or excluded
        at = table[table["trace_tile"] == tile]
        for key in at["trace"].unique():
            rows = at[at["trace"] == key].set_index("method")
            flagged = not (rows.loc["paired", "plausible"] and rows.loc["torch_delta", "plausible"]
                           and not rows.loc["paired", "busy"]
                           and not rows.loc["torch_delta", "busy"])
            r = rows.loc["paired"]
            quoted = (f"{r['speedup_vs_torch_delta']:.2f}$\\times$ "
                      f"[{r['speedup_vs_torch_delta_ci95_low']:.2f}, "
                      f"{r['speedup_vs_torch_delta_ci95_high']:.2f}]")
            assert ("\\textit{excluded}" if flagged else quoted) in sentence, (quoted, sentence)
