"""Real decode with per-layer weight caches: every method against an FFN written by hand in plain
torch, density 1 against the dense model's logits, the window union, memory release, the CLI.
Tiny random Llama (transformers only; no GGUF needed)."""

from __future__ import annotations

import csv
import json
import math

import pytest

pytest.importorskip("transformers", reason="the model extra (transformers) is not installed")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from paired_replacement.model import decode, smollm2  # noqa: E402
from paired_replacement.model.__main__ import main  # noqa: E402

SPARSE = [m for m in decode.DRAM_METHODS if m != "dense"]
PROMPT = list(range(5, 17))


@pytest.fixture()
def tiny():
    return smollm2.tiny_llama(seed=1)


def _by_hand(mlp, x, mask):
    """The SwiGLU MLP restricted to ``mask`` in plain torch (float64)."""
    g = x.double() @ mlp.gate_proj.weight.double().T
    u = x.double() @ mlp.up_proj.weight.double().T
    return ((F.silu(g) * u) * mask.double()) @ mlp.down_proj.weight.double().T


def _threshold_mask(mlp, x, threshold):
    return F.silu(x.double() @ mlp.gate_proj.weight.double().T)[0].abs() > threshold


@pytest.mark.parametrize("method", SPARSE)
def test_each_method_computes_the_masked_ffn_token_by_token(tiny, method):
    """Ten tokens through one layer's CachedFFN: each output equals the by-hand FFN on the
    policy's mask (the union of the last W masks for paired_window; the current token's own mask
    for paired_window_subset), and the cache holds exactly that mask's rows."""
    mlp = tiny.layers[0].mlp
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(10, 1, mlp.up_proj.weight.shape[1], generator=gen)
    # a threshold that keeps about a third of the neurons of these inputs
    with torch.no_grad():
        scores = torch.cat([F.silu(x @ mlp.gate_proj.weight.T).abs() for x in xs]).flatten()
    threshold = float(scores.quantile(0.67))
    window = 3
    module = decode.CachedFFN(mlp, method, threshold, window, decode.PhaseClock())
    recent = []
    with torch.no_grad():
        for t, x in enumerate(xs):
            current = _threshold_mask(mlp, x, threshold)
            recent = (recent + [current])[-window:]
            union = torch.stack(recent).any(dim=0)
            used = union if method == "paired_window" else current
            y = module(x.unsqueeze(0))[0]
            torch.testing.assert_close(y.double(), _by_hand(mlp, x, used), rtol=1e-4, atol=1e-5,
                                       msg=f"{method}, token {t}")
            if method in ("paired", "paired_window", "paired_window_subset"):
                held = union if method.startswith("paired_window") else current
                assert torch.equal(module.cache.mask, held), (method, t)
                module.cache.check_invariants()
            if method == "torch_delta":
                assert torch.equal(module.delta.active_indices().sort().values,
                                   current.nonzero().squeeze(1))


@pytest.mark.parametrize("method", SPARSE)
def test_density_one_reproduces_the_dense_logits(tiny, method):
    diff, scale = decode.max_logit_difference(tiny.model, tiny.layers, method, PROMPT, 6)
    assert scale > 0.1
    assert diff <= 1e-5 * max(1.0, scale), (method, diff)


def test_density_one_check_can_fail(tiny):
    """The check is not vacuous: a sparse method at a real threshold changes the logits."""
    clock = decode.PhaseClock()
    originals = [layer.mlp for layer in tiny.layers]
    decode.install(tiny.layers, decode.build_layers(tiny.layers, "dense", [], 1, clock))
    dense = decode.greedy_decode(tiny.model, PROMPT, 4, clock, keep_logits=True)
    decode.install(tiny.layers, originals)
    decode.install(tiny.layers, decode.build_layers(tiny.layers, "paired", [0.05] * 2, 1, clock))
    sparse = decode.greedy_decode(tiny.model, PROMPT, 4, clock, forced=dense.tokens,
                                  keep_logits=True)
    assert float((sparse.logits - dense.logits).abs().max()) > 1e-3


def test_greedy_decode_with_kv_cache_equals_full_recompute(tiny):
    """The KV-cached token-by-token decode yields the tokens a full forward would pick."""
    clock = decode.PhaseClock()
    decode.install(tiny.layers, decode.build_layers(tiny.layers, "dense", [], 1, clock))
    run = decode.greedy_decode(tiny.model, PROMPT, 5, clock, keep_logits=True)
    ids = list(PROMPT)
    with torch.inference_mode():
        for step in range(5):
            logits = tiny.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            torch.testing.assert_close(run.logits[step], logits, rtol=1e-4, atol=1e-4)
            ids.append(int(logits.argmax()))
    assert run.tokens == ids[len(PROMPT):]
    assert len(run.step_s) == 5 and all(s > 0 for s in run.step_s)


def test_release_drops_the_mlp_weights_and_decoding_still_works(tiny):
    """With release, the MLP's own copies of what the caches hold are gone (one copy of each
    weight) and the model decodes the same tokens as without release; a fused method holds the
    gate in its pool too, so it drops the gate weight as well."""
    clock = decode.PhaseClock()
    thresholds = [0.05] * len(tiny.layers)
    keep = smollm2.tiny_llama(seed=1)
    decode.install(keep.layers, decode.build_layers(keep.layers, "paired", thresholds, 1, clock))
    expected = decode.greedy_decode(keep.model, PROMPT, 4, clock).tokens
    mlps = [layer.mlp for layer in tiny.layers]
    modules = decode.build_layers(tiny.layers, "paired", thresholds, 1, clock, release=True)
    # paired caches up and down; the mask's gate is the model's own, kept
    assert all(m.up_proj.weight.numel() == 0 and m.down_proj.weight.numel() == 0 for m in mlps)
    assert all(m.gate_proj.weight.numel() > 0 for m in mlps)
    assert all(layer.mlp is module for layer, module in zip(tiny.layers, modules))
    decode.install(tiny.layers, modules)
    assert decode.greedy_decode(tiny.model, PROMPT, 4, clock).tokens == expected
    fused = smollm2.tiny_llama(seed=1)
    mlps = [layer.mlp for layer in fused.layers]
    modules = decode.build_layers(fused.layers, "no_pack", thresholds, 1, clock, release=True)
    assert all(m.gate_proj.weight.numel() == 0 for m in mlps)
    decode.install(fused.layers, modules)
    assert decode.greedy_decode(fused.model, PROMPT, 4, clock).tokens == expected


def test_measure_interleaves_and_restores_the_model(tiny):
    originals = [layer.mlp for layer in tiny.layers]
    seen = []
    runs = decode.measure(tiny.model, tiny.layers, [0.05] * 2, ["dense", "paired", "gather"], 2,
                          PROMPT, 3, 2, on_run=lambda r, m, run: seen.append((r, m)))
    assert [layer.mlp for layer in tiny.layers] == originals
    assert {m: len(rs) for m, rs in runs.items()} == {"dense": 2, "paired": 2, "gather": 2}
    assert sorted(seen) == sorted((r, m) for r in range(3) for m in ("dense", "paired", "gather"))
    # paired and gather compute the same FFN on the same masks: same greedy tokens
    assert runs["paired"][0].tokens == runs["gather"][0].tokens
    rows = decode.summarize(runs, num_layers=2, num_neurons=128)
    by = {r["method"]: r for r in rows}
    assert by["dense"]["speedup_vs_dense"] == pytest.approx(1.0)
    for r in rows:
        assert r["tokens_per_s_ci95_low"] <= r["tokens_per_s"] <= r["tokens_per_s_ci95_high"]
        shares = r["mask_share"] + r["update_share"] + r["ffn_share"] + r["other_share"]
        assert shares == pytest.approx(1.0)
    assert by["gather"]["rows_written_per_layer"] == pytest.approx(
        by["gather"]["active_fraction"] * 128)
    assert by["paired"]["rows_written_per_layer"] < by["gather"]["rows_written_per_layer"]


def test_bad_arguments_are_named(tiny):
    mlp = tiny.layers[0].mlp
    with pytest.raises(ValueError, match="method must be one of"):
        decode.CachedFFN(mlp, "dense", 0.0, 1, decode.PhaseClock())
    with pytest.raises(ValueError, match="window must be >= 1"):
        decode.CachedFFN(mlp, "paired_window", 0.0, 0, decode.PhaseClock())
    with pytest.raises(ValueError, match="unknown decode method 'fast'"):
        decode.build_layers(tiny.layers, "fast", [0.0, 0.0], 1, decode.PhaseClock())
    with pytest.raises(ValueError, match="1 thresholds for 2 layers"):
        decode.build_layers(tiny.layers, "paired", [0.0], 1, decode.PhaseClock())
    module = decode.CachedFFN(mlp, "paired", 0.0, 1, decode.PhaseClock())
    with pytest.raises(TypeError, match="float32 activations"):
        module(torch.zeros(1, 1, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one prompt token"):
        decode.greedy_decode(tiny.model, [], 3, decode.PhaseClock())


def test_cli_decode_on_tiny_model(tmp_path, capsys):
    out, details = tmp_path / "decode.csv", tmp_path / "decode.json"
    rc = main(["decode", "--tiny", "--out", str(out), "--json", str(details), "--densities", "0.5",
               "--new-tokens", "3", "--prompt-tokens", "6", "--rounds", "2", "--calib-tokens",
               "40", "--logit-check-tokens", "3", "--rss-methods", "dense", "paired", "--quiet"])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["method"] for r in rows) == sorted(decode.DRAM_METHODS)
    assert {r["tier"] for r in rows} == {"dram"} and {r["io_mode"] for r in rows} == {"memory"}
    by = {r["method"]: r for r in rows}
    assert float(by["dense"]["peak_rss_vs_dense"]) == pytest.approx(1.0)
    assert float(by["paired"]["peak_rss_mib"]) > 0
    assert by["gather"]["peak_rss_mib"] == ""
    assert by["paired_window"]["window"] == "4" and by["paired"]["window"] == "1"
    info = json.loads(details.read_text())
    assert {c["method"] for c in info["logit_check"]} == set(SPARSE)
    assert all(c["max_abs_diff"] < 1e-4 for c in info["logit_check"])
    for r in rows:  # the CSV carries the check, so the paper can quote it
        if r["method"] == "dense":
            assert r["density1_max_logit_diff"] == ""
        else:
            check = next(c for c in info["logit_check"] if c["method"] == r["method"])
            assert float(r["density1_max_logit_diff"]) == pytest.approx(check["max_abs_diff"])
    assert len(info["prompt_ids"]) == 6
    assert all(math.isfinite(float(r["tokens_per_s"])) for r in rows)


def test_cli_decode_refuses_bad_arguments(tmp_path, capsys):
    assert main(["decode", "--tiny", "--out", str(tmp_path / "x.csv"), "--methods", "fast"]) == 2
    assert "unknown --methods ['fast']" in capsys.readouterr().err
    assert main(["decode", "--tiny", "--out", str(tmp_path / "x.csv"), "--densities", "0"]) == 2
    assert "--densities must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_cli_decode_refuses_to_run_beside_another_benchmark(tmp_path, capsys):
    from paired_replacement.bench.__main__ import LOCKED_EXIT, host_lock

    with host_lock(tmp_path, "micro (held by this test)"):
        rc = main(["decode", "--tiny", "--out", str(tmp_path / "decode.csv"), "--quiet"])
    assert rc == LOCKED_EXIT
    err = capsys.readouterr().err
    assert "another benchmark is running on this host" in err and "micro (held by" in err
    assert not (tmp_path / "decode.csv").exists()


# ---------------------------------------------------------------------------------------------
# File tier: each layer's up/down in a pool file, only the packed rows in memory
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def pools(tiny, tmp_path):
    return decode.write_pool_files(tiny.layers, tmp_path / "pools")


@pytest.mark.parametrize("method", decode.FILE_METHODS)
def test_file_methods_compute_the_masked_ffn_and_read_the_records_they_write(tiny, pools,
                                                                             method):
    """Ten tokens through layer 0 with its pool in a file: the output is the by-hand FFN on the
    policy's mask; the bytes read are the records of the rows written (all m' active rows for
    the reload methods, which rebuild every token; only the changed ones for the paired ones)."""
    from paired_replacement.pool_file import read_header

    mlp = tiny.layers[0].mlp
    record = read_header(pools[0]).record_bytes
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(10, 1, mlp.up_proj.weight.shape[1], generator=gen)
    with torch.no_grad():
        scores = torch.cat([F.silu(x @ mlp.gate_proj.weight.T).abs() for x in xs]).flatten()
    threshold = float(scores.quantile(0.67))
    window = 3
    clock = decode.PhaseClock()
    module = decode.CachedFFN(mlp, method, threshold, window, clock, pools[0])
    assert module.cache.tier_info.tier == "file"
    recent, held_before = [], torch.zeros(mlp.up_proj.weight.shape[0], dtype=torch.bool)
    reload = method in decode.RELOAD_METHODS
    with torch.no_grad():
        for t, x in enumerate(xs):
            current = _threshold_mask(mlp, x, threshold)
            recent = (recent + [current])[-window:]
            union = torch.stack(recent).any(dim=0)
            held = union if method in decode.WINDOW_METHODS else current
            y = module(x.unsqueeze(0))[0]
            torch.testing.assert_close(y.double(), _by_hand(mlp, x, held), rtol=1e-4, atol=1e-5,
                                       msg=f"{method}, token {t}")
            assert torch.equal(module.cache.mask, held), (method, t)
            module.cache.check_invariants()
            changed = bool((held != held_before).any())
            added = int((held & ~held_before).sum())
            stranded = int(held.sum()) < int(held_before.sum())
            rows = int(held.sum()) if reload and changed else (
                module.cache.last_update_stats().rows_written)
            if not reload and not stranded:
                assert rows == added  # m' >= m: the paired update writes the additions only
            assert clock.take_bytes() == rows * record, (method, t)
            held_before = held


@pytest.mark.parametrize("method", decode.FILE_METHODS)
def test_file_methods_at_density_one_reproduce_the_dense_logits(tiny, pools, method):
    diff, scale = decode.max_logit_difference(tiny.model, tiny.layers, method, PROMPT, 4, pools)
    assert scale > 0.1 and diff <= 1e-5 * max(1.0, scale), (method, diff)


def test_file_methods_release_the_weights_they_read_from_files(tiny, pools):
    """A file method keeps no up/down in memory (they are in the pool files) and decodes the same
    tokens as the in-memory paired cache at the same thresholds."""
    clock = decode.PhaseClock()
    thresholds = [0.05] * len(tiny.layers)
    keep = smollm2.tiny_llama(seed=1)
    decode.install(keep.layers, decode.build_layers(keep.layers, "paired", thresholds, 1, clock))
    expected = decode.greedy_decode(keep.model, PROMPT, 4, clock).tokens
    mlps = [layer.mlp for layer in tiny.layers]
    modules = decode.build_layers(tiny.layers, "file_paired", thresholds, 1, clock, release=True,
                                  pool_paths=pools)
    assert all(m.up_proj.weight.numel() == 0 and m.down_proj.weight.numel() == 0 for m in mlps)
    decode.install(tiny.layers, modules)
    run = decode.greedy_decode(tiny.model, PROMPT, 4, clock)
    assert run.tokens == expected and all(b > 0 for b in run.bytes_read[:1])


def test_file_tier_arguments_are_checked(tiny, pools, tmp_path):
    from paired_replacement.pool_file import write_pool_file

    mlp = tiny.layers[0].mlp
    with pytest.raises(ValueError, match="needs a pool file"):
        decode.CachedFFN(mlp, "file_paired", 0.0, 1, decode.PhaseClock())
    with pytest.raises(ValueError, match="keeps its pool in memory"):
        decode.CachedFFN(mlp, "paired", 0.0, 1, decode.PhaseClock(), pools[0])
    with pytest.raises(ValueError, match="needs one pool file per layer"):
        decode.build_layers(tiny.layers, "file_window", [0.0, 0.0], 2, decode.PhaseClock(),
                            pool_paths=pools[:1])
    n, h = mlp.up_proj.weight.shape
    other = tmp_path / "other.pool"
    write_pool_file(other, None, torch.zeros(n + 1, h), torch.zeros(h, n + 1))
    with pytest.raises(ValueError, match=f"mask must have N = {n + 1} entries, got {n}"):
        decode.CachedFFN(mlp, "file_reload", 0.0, 1, decode.PhaseClock(), other)


def test_cli_decode_file_tier(tmp_path):
    """--tier file: the four file methods, interleaved with dense; bytes per token, speedups over
    the full reloads and the resident memory of the window cache; the pool files are deleted."""
    out = tmp_path / "decode.csv"
    rc = main(["decode", "--tiny", "--out", str(out), "--tier", "file", "--densities", "0.5",
               "--new-tokens", "3", "--prompt-tokens", "6", "--rounds", "1", "--calib-tokens",
               "40", "--logit-check-tokens", "2", "--rss-methods", "dense", "file_window",
               "--quiet"])
    assert rc == 0
    rows = {r["method"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == set(decode.FILE_METHODS)
    for r in rows.values():
        assert r["tier"] == "file" and r["io_mode"] in ("direct", "buffered+dontneed")
        assert float(r["slow_bytes_read_per_token"]) > 0
        assert float(r["density1_max_logit_diff"]) < 1e-4
    assert float(rows["file_reload"]["speedup_vs_file_reload"]) == pytest.approx(1.0)
    assert math.isfinite(float(rows["file_window"]["speedup_vs_file_window_reload"]))
    assert float(rows["file_paired"]["slow_bytes_read_per_token"]) < float(
        rows["file_reload"]["slow_bytes_read_per_token"])
    assert float(rows["file_window"]["end_rss_vs_dense"]) > 0
    assert not (tmp_path / "decode.pools").exists()
