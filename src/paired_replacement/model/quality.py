"""What a mask policy costs in quality: held-out perplexity of the model with sparse FFNs.

Masks are applied **online**, inside the forward: a pre-hook on each layer's ``down_proj`` keeps
only the neurons the policy selects from that layer's own activations, which already carry the
earlier layers' sparsity (masks taken from a dense run would describe a different model). Per
token and layer:

- ``oracle_topk`` — the ``k = round(density * N)`` largest ``|silu(gate) * up|``;
- ``gate_threshold`` — ``|silu(gate)| > t_layer``, ``t_layer`` calibrated on the calibration
  split (dense activations, as CATS does);
- ``window`` W > 1 — the union of the base masks of the last W positions of the segment (this
  one included): the FFN computes on the whole union, which is what a packed block holding the
  union gives for free. Computing on the current token's own subset instead is the base policy
  (W = 1) with a cache that holds more rows: same quality as W = 1.

Perplexity is ``exp(mean NLL)`` of predicting each next token, over every teacher-forced segment
of the held-out split; the dense model (no hook) is the reference row. ``mask_density`` is the
fraction of neurons the FFNs actually computed on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .policies import GateThreshold, OracleTopK, Policy, WindowUnion, density_k


@dataclass
class Quality:
    key: str
    policy: str
    density: float
    window: int
    tokens: int
    nll: float
    perplexity: float
    mask_density: float


def _base(policy: Policy) -> Policy:
    return policy.base if isinstance(policy, WindowUnion) else policy


def _window_union_torch(mask, window: int):
    """``mask[..., t, :] | mask[..., t-1, :] | ... | mask[..., t-W+1, :]`` over the sequence
    dimension (the second to last: ``[batch, T, N]`` or ``[T, N]``)."""
    out = mask.clone()
    for lag in range(1, min(window, mask.shape[-2])):
        out[..., lag:, :] |= mask[..., :-lag, :]
    return out


class SparseFFN:
    """Context manager: every layer's FFN computes only on ``policy``'s neurons (online).

    ``selected`` / ``offered`` count the (token, neuron) pairs kept and seen, for the measured
    density. The hooks are removed on exit, whatever happens."""

    def __init__(self, layers: Sequence, policy: Policy) -> None:
        base = _base(policy)
        if not isinstance(base, (OracleTopK, GateThreshold)):
            raise TypeError(f"{policy!r}: no online form for this policy")
        if isinstance(base, GateThreshold):
            if base.thresholds is None:
                raise RuntimeError(f"{policy!r}: call fit(calibration_records) first")
            if len(base.thresholds) != len(layers):
                raise ValueError(f"{policy!r} was fitted on {len(base.thresholds)} layers, the "
                                 f"model has {len(layers)}")
        self.layers, self.policy, self.base = list(layers), policy, base
        self.window = int(policy.window)
        self.handles: list = []
        self.selected = 0
        self.offered = 0

    def _gate_hook(self, store: dict):
        def keep(module, args, output):
            import torch

            store["abs_silu_gate"] = torch.nn.functional.silu(output).abs()
        return keep

    def _down_hook(self, layer: int, store: dict):
        def mask_input(module, args):
            (x,) = args
            if isinstance(self.base, OracleTopK):
                n = x.shape[-1]
                k = density_k(self.base.density, n)
                top = x.abs().topk(k, dim=-1).indices
                mask = x.new_zeros(x.shape, dtype=bool).scatter_(-1, top, True)
            else:
                mask = store.pop("abs_silu_gate") > self.base.thresholds[layer]
            if self.window > 1:
                mask = _window_union_torch(mask, self.window)
            self.selected += int(mask.sum())
            self.offered += mask.numel()
            return (x * mask,)
        return mask_input

    def __enter__(self) -> "SparseFFN":
        try:
            for i, layer in enumerate(self.layers):
                store: dict = {}
                if isinstance(self.base, GateThreshold):
                    self.handles.append(
                        layer.mlp.gate_proj.register_forward_hook(self._gate_hook(store)))
                self.handles.append(
                    layer.mlp.down_proj.register_forward_pre_hook(self._down_hook(i, store)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    @property
    def density(self) -> float:
        return self.selected / self.offered if self.offered else float("nan")


def nll(model, token_ids: Sequence[int], segments) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods over the segments, and how many were scored."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for start, stop in segments:
            if stop - start < 2:
                continue
            ids = torch.tensor([list(token_ids[start:stop])], dtype=torch.long)
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:],
                                                             reduction="sum"))
            count += stop - start - 1
    return total, count


def evaluate(model, layers: Sequence, token_ids: Sequence[int], segments,
             policies: Sequence[Policy], on_policy=None) -> list[Quality]:
    """The dense model, then every (fitted) policy: perplexity on the same tokens."""
    total, count = nll(model, token_ids, segments)
    if count == 0:
        raise ValueError("no token to score: every segment is shorter than 2 tokens")
    rows = [Quality("dense", "dense", 1.0, 1, count, total / count, math.exp(total / count), 1.0)]
    for policy in policies:
        with SparseFFN(layers, policy) as sparse:
            total, _ = nll(model, token_ids, segments)
        rows.append(Quality(policy.key, policy.name, policy.density, policy.window, count,
                            total / count, math.exp(total / count), sparse.density))
        if on_policy is not None:
            on_policy(policy)
    return rows
