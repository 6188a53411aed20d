"""Quality of a mask policy: the online masking against an independent, by-hand FFN, and the
perplexity against cross-entropy computed by hand. Tiny random Llama (transformers only)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the model extra (transformers) is not installed")

import torch  # noqa: E402

from paired_replacement.model import smollm2  # noqa: E402
from paired_replacement.model.__main__ import main  # noqa: E402
from paired_replacement.model.hooks import record  # noqa: E402
from paired_replacement.model.policies import GateThreshold, OracleTopK, WindowUnion  # noqa: E402
from paired_replacement.model.quality import SparseFFN, evaluate, nll  # noqa: E402

TOKENS = list(range(3, 43))
SEGMENTS = [(0, 20), (20, 40)]


@pytest.fixture(scope="module")
def tiny():
    return smollm2.tiny_llama()


def _mlp_by_hand(mlp, x, keep):
    """silu(x Wg^T) * (x Wu^T), masked by ``keep`` (a function of the activation), then down."""
    with torch.no_grad():
        gate = x @ mlp.gate_proj.weight.T
        act = torch.nn.functional.silu(gate) * (x @ mlp.up_proj.weight.T)
        return (act * keep(act, gate)) @ mlp.down_proj.weight.T


def _mlp_input(tiny, layer=0):
    """The input of layer ``layer``'s MLP for SEGMENTS[0] (hooked from a dense forward)."""
    seen = {}
    handle = tiny.layers[layer].mlp.register_forward_pre_hook(
        lambda m, args: seen.setdefault("x", args[0].detach().clone()))
    try:
        with torch.inference_mode():
            tiny.model(input_ids=torch.tensor([TOKENS[0:20]]), use_cache=False)
    finally:
        handle.remove()
    return seen["x"][0].clone()  # a normal tensor (not an inference one)


def test_online_topk_equals_a_by_hand_masked_ffn(tiny):
    """Layer 0 sees the same input with and without the hooks, so its masked output can be
    compared with a hand-written masked FFN."""
    mlp = tiny.layers[0].mlp
    x = _mlp_input(tiny)
    policy = OracleTopK(0.25)
    k = round(0.25 * mlp.up_proj.weight.shape[0])

    def topk(act, gate):
        keep = torch.zeros_like(act, dtype=torch.bool)
        return keep.scatter_(-1, act.abs().topk(k, dim=-1).indices, True)

    with SparseFFN(tiny.layers, policy) as sparse, torch.inference_mode():
        got = mlp(x)
    want = _mlp_by_hand(mlp, x, topk)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert sparse.density == pytest.approx(k / mlp.up_proj.weight.shape[0])
    assert not mlp.down_proj._forward_pre_hooks  # removed on exit


def test_online_window_union_and_threshold_by_hand(tiny):
    mlp = tiny.layers[0].mlp
    x = _mlp_input(tiny)
    calibration = record(tiny.model, TOKENS, SEGMENTS, ("gate",))
    base = GateThreshold(0.3).fit(calibration)
    threshold = base.thresholds[0]

    def union_of_threshold(act, gate):
        own = torch.nn.functional.silu(gate).abs() > threshold
        out = own.clone()
        for lag in range(1, 3):  # W = 3: this position and the two before it
            out[lag:] |= own[:-lag]
        return out

    with SparseFFN(tiny.layers, WindowUnion(base, 3)), torch.inference_mode():
        got = mlp(x)
    torch.testing.assert_close(got, _mlp_by_hand(mlp, x, union_of_threshold), rtol=1e-5,
                               atol=1e-6)


def test_full_density_reproduces_the_dense_logits(tiny):
    ids = torch.tensor([TOKENS[:20]])
    with torch.inference_mode():
        dense = tiny.model(input_ids=ids, use_cache=False).logits
        with SparseFFN(tiny.layers, OracleTopK(1.0)):
            full = tiny.model(input_ids=ids, use_cache=False).logits
    assert torch.equal(dense, full)


def test_nll_is_cross_entropy_by_hand(tiny):
    total, count = nll(tiny.model, TOKENS, SEGMENTS)
    want = 0.0
    with torch.inference_mode():
        for start, stop in SEGMENTS:
            logits = tiny.model(input_ids=torch.tensor([TOKENS[start:stop]]),
                                use_cache=False).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            want -= sum(float(logp[i, TOKENS[start + i + 1]]) for i in range(stop - start - 1))
    assert count == 38 and total == pytest.approx(want, rel=1e-5)


def test_evaluate_orders_dense_first_and_sparser_is_worse_on_average(tiny):
    calibration = record(tiny.model, TOKENS, SEGMENTS, ("gate",))
    policies = [OracleTopK(1.0), OracleTopK(0.05), GateThreshold(0.5).fit(calibration)]
    rows = evaluate(tiny.model, tiny.layers, TOKENS, SEGMENTS, policies)
    assert [r.key for r in rows] == ["dense"] + [p.key for p in policies]
    assert rows[1].perplexity == pytest.approx(rows[0].perplexity, rel=1e-9)
    assert rows[2].mask_density == pytest.approx(round(0.05 * 128) / 128)
    assert all(math.isclose(r.perplexity, math.exp(r.nll)) for r in rows)
    with pytest.raises(RuntimeError, match="fit"):
        with SparseFFN(tiny.layers, GateThreshold(0.5)):
            pass
    with pytest.raises(ValueError, match="no token to score"):
        evaluate(tiny.model, tiny.layers, TOKENS, [(0, 1)], [])


def test_cli_writes_the_quality_table(tmp_path):
    out = tmp_path / "quality.csv"
    assert main(["quality", "--tiny", "--out", str(out), "--tokens", "48", "--calib-tokens",
                 "32", "--densities", "0.25", "1.0", "--windows", "1", "2", "--quiet"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["key"] for r in rows][0] == "dense"
    assert len(rows) == 1 + 2 * 2 * 2  # dense + policies x densities x windows
    full = [r for r in rows if float(r["density"]) == 1.0]
    dense = float(rows[0]["perplexity"])
    assert all(np.isclose(float(r["perplexity"]), dense) for r in full)
    from paired_replacement.bench import common

    common.read_results_csv(out, "quality")
