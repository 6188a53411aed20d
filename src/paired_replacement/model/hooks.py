"""Record, per token and per layer, what a SwiGLU MLP computes during a teacher-forced forward.

For every decoder layer ``i`` (``model.model.layers[i].mlp``, Llama layout) the recorder keeps

- ``gate``    — ``gate_proj(x)``, the gate pre-activation (forward hook on ``gate_proj``);
- ``up``      — ``up_proj(x)`` (forward hook on ``up_proj``);
- ``down_in`` — the input of ``down_proj``, i.e. ``silu(gate) * up`` (pre-hook on ``down_proj``);
- ``mlp_input`` — optionally, the MLP's input ``x`` (pre-hook on the MLP; used by the tests).

Hooks only copy what the model already computed, so the forward (and its logits) is unchanged
and recording costs one copy per quantity, not an extra matmul.

Memory: SmolLM2 has 30 layers x 1536 neurons, so each quantity is 46 k floats per token; three
quantities in float32 would be 553 kB per token (142 MB for 256 tokens, 2.3 GB for 4096). Values are
therefore stored as **float16** by default (half that; relative rounding 2^-11, far below the
gaps that decide a top-k or a threshold except for exact near-ties), and callers record only the
quantities their policies need (the command line records ``gate`` and ``down_in``). Masks are
not computed on the fly because the threshold policy must first be calibrated on another split
and the window policies need the whole sequence; float16 keeps a few thousand tokens in memory.
``dtype=numpy.float32`` records exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

QUANTITIES = ("gate", "up", "down_in")


@dataclass
class LayerRecord:
    """One layer's recorded values, each ``[T, N]`` (``mlp_input``: ``[T, hidden]``) or None."""

    gate: np.ndarray | None = None
    up: np.ndarray | None = None
    down_in: np.ndarray | None = None
    mlp_input: np.ndarray | None = None

    _scores: dict = field(default_factory=dict, repr=False, compare=False)

    def get(self, name: str) -> np.ndarray:
        value = getattr(self, name)
        if value is None:
            raise KeyError(f"{name!r} was not recorded (pass it in quantities=...)")
        return value

    def silu_gate(self) -> np.ndarray:
        """``silu(gate)`` in float32, ``[T, N]``."""
        return silu(self.get("gate"))

    def score(self, name: str) -> np.ndarray:
        """``|down_in|`` or ``|silu(gate)|`` in float32, computed once and kept until
        :meth:`drop_scores` (several policies and densities score the same layer)."""
        if name not in self._scores:
            makers = {"abs_down_in": lambda: np.abs(self.get("down_in").astype(np.float32)),
                      "abs_silu_gate": lambda: np.abs(self.silu_gate())}
            self._scores[name] = makers[name]()
        return self._scores[name]

    def drop_scores(self) -> None:
        self._scores.clear()


def silu(values: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)`` in float32."""
    x = values.astype(np.float32)
    return x / (1.0 + np.exp(-x))


@dataclass
class Records:
    """All layers' records for one token sequence (one split's slice)."""

    layers: list[LayerRecord]
    token_ids: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        first = self.layers[0]
        for name in (*QUANTITIES, "mlp_input"):
            value = getattr(first, name)
            if value is not None:
                return int(value.shape[0])
        return 0

    @property
    def num_layers(self) -> int:
        return len(self.layers)


class MLPRecorder:
    """Context manager: hooks every layer's MLP of ``model``, removes the hooks on exit.

    ``with MLPRecorder(model) as rec: model(ids)`` then ``rec.records()``. Several forwards
    (segments) append along the token axis.
    """

    def __init__(
        self,
        model,
        quantities: Sequence[str] = QUANTITIES,
        *,
        dtype=np.float16,
        record_input: bool = False,
    ) -> None:
        unknown = set(quantities) - set(QUANTITIES)
        if unknown:
            raise ValueError(f"unknown quantities {sorted(unknown)}; choose from {QUANTITIES}")
        self.model = model
        self.quantities = tuple(quantities)
        self.record_input = record_input
        self.dtype = np.dtype(dtype)
        self._mlps = [layer.mlp for layer in model.model.layers]
        names = self.quantities + (("mlp_input",) if record_input else ())
        self._chunks: list[dict[str, list[np.ndarray]]] = [
            {name: [] for name in names} for _ in self._mlps
        ]
        self._handles: list = []

    def _store(self, layer: int, name: str) -> Callable:
        import torch

        target = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}[
            self.dtype
        ]
        chunks = self._chunks[layer][name]

        def keep(tensor) -> None:
            flat = tensor.detach().reshape(-1, tensor.shape[-1])
            chunks.append(flat.to(target, copy=True).numpy())

        return keep

    def __enter__(self) -> "MLPRecorder":
        for i, mlp in enumerate(self._mlps):
            hooks = {
                "gate": (mlp.gate_proj, False),
                "up": (mlp.up_proj, False),
                "down_in": (mlp.down_proj, True),
                "mlp_input": (mlp, True),
            }
            for name in self._chunks[i]:
                module, pre = hooks[name]
                keep = self._store(i, name)
                if pre:
                    handle = module.register_forward_pre_hook(
                        lambda _m, args, keep=keep: keep(args[0])
                    )
                else:
                    handle = module.register_forward_hook(
                        lambda _m, _args, out, keep=keep: keep(out)
                    )
                self._handles.append(handle)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def records(self, token_ids: Sequence[int] = ()) -> Records:
        layers = []
        for i, chunks in enumerate(self._chunks):
            values = {}
            for name, parts in chunks.items():
                arr = np.concatenate(parts) if parts else None
                if arr is not None and not np.isfinite(arr).all():
                    raise FloatingPointError(
                        f"layer {i} {name}: non-finite values recorded as {self.dtype}; "
                        "record with dtype=numpy.float32"
                    )
                values[name] = arr
            layers.append(LayerRecord(**values))
        return Records(layers, list(token_ids))


def run_segments(model, token_ids: Sequence[int], segments, *, keep_logits=True, on_segment=None):
    """Teacher-forced forwards of ``token_ids[start:stop]`` per segment (no KV cache kept).

    Returns the logits of every segment concatenated, ``[T, vocab]`` float32 torch tensor (None
    unless ``keep_logits``). ``on_segment(i, start, stop)`` is called after each forward.
    """
    import torch

    outs = []
    with torch.inference_mode():
        for i, (start, stop) in enumerate(segments):
            ids = torch.tensor([list(token_ids[start:stop])], dtype=torch.long)
            # Without logits wanted, the LM head runs on the last position only (logits_to_keep=1).
            extra = {} if keep_logits else {"logits_to_keep": 1}
            logits = model(input_ids=ids, use_cache=False, **extra).logits[0]
            if keep_logits:
                outs.append(logits)
            if on_segment is not None:
                on_segment(i, start, stop)
    return torch.cat(outs) if keep_logits else None


def record(
    model,
    token_ids: Sequence[int],
    segments,
    quantities: Sequence[str] = QUANTITIES,
    *,
    dtype=np.float16,
    record_input: bool = False,
    on_segment=None,
) -> Records:
    """Run the segments through ``model`` with an :class:`MLPRecorder`; return the records."""
    with MLPRecorder(model, quantities, dtype=dtype, record_input=record_input) as recorder:
        run_segments(model, token_ids, segments, keep_logits=False, on_segment=on_segment)
    return recorder.records(token_ids)
