"""Mask sequences for the micro benchmarks, generated before any timing and shared by every method.

Each generator returns a bool tensor [steps + 1, N]: the initial mask and one mask per update.

- ``uniform``: each step swaps k random active rows for k random inactive rows (m stays fixed).
- ``clustered``: each step swaps a run of k consecutive active rows (in row order) for a run of
  k consecutive inactive rows: block-structured churn.
- ``sticky``: top-m of an exponential moving average of Gaussian scores,
  s_t = beta * s_{t-1} + (1 - beta) * noise; churn emerges from beta (k is not controlled).
- ``trace``: recorded masks: a trace of ``python -m paired_replacement.model traces`` (its
  ``.json``; one layer, or ``tile`` consecutive layers side by side: :func:`replay_trace`), or a
  bool file (.npy [T, N], or .npz with an array named "masks").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PATTERNS = ("uniform", "clustered", "sticky", "trace")


def _initial(n: int, m: int, gen: torch.Generator) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:m]] = True
    return mask


def uniform(n: int, m: int, k: int, steps: int, seed: int) -> torch.Tensor:
    return mixed(n, m, [k], steps, seed)


def mixed(n: int, m: int, ks: list[int], steps: int, seed: int) -> torch.Tensor:
    """Like ``uniform`` but step j swaps ks[j % len(ks)] rows: a workload mixing churn levels."""
    gen = torch.Generator().manual_seed(seed)
    seq = [_initial(n, m, gen)]
    for j in range(steps):
        cur, k = seq[-1], ks[j % len(ks)]
        on, off = cur.nonzero().squeeze(1), (~cur).nonzero().squeeze(1)
        nxt = cur.clone()
        nxt[on[torch.randperm(on.numel(), generator=gen)[:k]]] = False
        nxt[off[torch.randperm(off.numel(), generator=gen)[:k]]] = True
        seq.append(nxt)
    return torch.stack(seq)


def clustered(n: int, m: int, k: int, steps: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    seq = [_initial(n, m, gen)]
    for _ in range(steps):
        cur = seq[-1]
        on, off = cur.nonzero().squeeze(1), (~cur).nonzero().squeeze(1)
        nxt = cur.clone()
        kk = min(k, on.numel(), off.numel())
        if kk:
            a = int(torch.randint(0, on.numel() - kk + 1, (1,), generator=gen))
            b = int(torch.randint(0, off.numel() - kk + 1, (1,), generator=gen))
            nxt[on[a:a + kk]] = False
            nxt[off[b:b + kk]] = True
        seq.append(nxt)
    return torch.stack(seq)


def sticky(n: int, m: int, steps: int, seed: int, beta: float = 0.9) -> torch.Tensor:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    gen = torch.Generator().manual_seed(seed)
    score = torch.randn(n, generator=gen)
    seq = []
    for _ in range(steps + 1):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[score.topk(m).indices] = True
        seq.append(mask)
        score = beta * score + (1.0 - beta) * torch.randn(n, generator=gen)
    return torch.stack(seq)


def load_trace(path: str | Path, n: int | None = None) -> torch.Tensor:
    """A bool mask file (.npy [T, N], or .npz with an array "masks"); ``n``: the N it must have."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a .npy/.npz mask file ({exc})") from None
    masks = data["masks"] if isinstance(data, np.lib.npyio.NpzFile) else data
    if masks.dtype != np.bool_ or masks.ndim != 2 or masks.shape[0] < 2 or (
            n is not None and masks.shape[1] != n):
        want = "N" if n is None else f"N = {n}"
        raise ValueError(f"{path}: a trace must be a bool array [T >= 2, {want}], got "
                         f"{masks.dtype} {masks.shape}")
    return torch.from_numpy(np.ascontiguousarray(masks))


@dataclass
class TraceReplay:
    """Recorded masks as a micro sequence: ``seq`` bool [T', tile * num_neurons], block j
    (columns ``j * num_neurons`` .. ``(j + 1) * num_neurons - 1``) holding layer
    ``(layer + j) % num_layers``.
    ``hidden`` and ``cache_has_gate`` are what the trace says of its model (None: not recorded)."""

    seq: torch.Tensor
    key: str
    layer: int
    tile: int
    num_layers: int
    num_neurons: int
    hidden: int | None
    cache_has_gate: bool | None


def _trace_hidden(meta: dict, json_path: Path) -> int | None:
    """The model's hidden size: the trace's own metadata, else its run.json's model entry."""
    if meta.get("hidden_size"):
        return int(meta["hidden_size"])
    run = json_path.with_name(meta.get("run_file") or "run.json")
    try:
        model = json.loads(run.read_text()).get("model") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return int(model["hidden_size"]) if model.get("hidden_size") else None


def replay_trace(path: str | Path, *, layer: int = 0, tile: int = 1,
                 steps: int | None = None) -> TraceReplay:
    """The masks of ``path`` as one sequence: the first ``steps + 1`` tokens (all, if fewer) of
    ``tile`` consecutive layers from ``layer`` on (wrapping around after the last), placed side by
    side along the neurons. Tiling gives a larger N from real masks, not a larger model: each
    block churns like one layer, and the blocks are independent. A ``.json`` is read with
    :func:`paired_replacement.model.traces.read_trace` (checked: format, sha256, shape); a
    ``.npy``/``.npz`` is one layer without metadata. Raises ValueError naming the argument."""
    from ..model.traces import TraceError, read_trace

    path = Path(path)
    if tile < 1:
        raise ValueError(f"--trace-tile must be >= 1, got {tile}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if path.suffix == ".json":
        try:
            trace = read_trace(path)
        except (TraceError, KeyError) as exc:
            raise ValueError(f"--trace {path}: not a mask trace ({exc})") from None
        num_layers, key = trace.num_layers, str(trace.meta.get("key", path.stem))
        layer_masks = trace.layer
        hidden = _trace_hidden(trace.meta, path)
        params = trace.meta.get("params") or {}
        has_gate = None if "cache_has_gate" not in params else bool(params["cache_has_gate"])
        if "policy" in trace.meta and has_gate is None:
            has_gate = True  # a policy that computes its mask from the full FFN keeps the gate
    elif path.suffix in (".npy", ".npz"):
        single = load_trace(path).numpy()
        num_layers, key, hidden, has_gate = 1, path.stem, None, None
        layer_masks = lambda i: single  # noqa: E731
    else:
        raise ValueError(f"--trace {path}: expected a trace .json (results/traces) or a bool "
                         ".npy/.npz")
    if not 0 <= layer < num_layers:
        raise ValueError(f"--trace-layer {layer} is out of range: {path} has {num_layers} "
                         f"layer(s), 0..{num_layers - 1}")
    blocks = [layer_masks((layer + j) % num_layers) for j in range(tile)]
    tokens = blocks[0].shape[0] if steps is None else min(steps + 1, blocks[0].shape[0])
    if tokens < 2:
        raise ValueError(f"--trace {path}: {blocks[0].shape[0]} token(s); a sequence needs 2")
    seq = np.concatenate([b[:tokens] for b in blocks], axis=1)
    return TraceReplay(torch.from_numpy(np.ascontiguousarray(seq)), key, layer, tile, num_layers,
                       int(blocks[0].shape[1]), hidden, has_gate)


def make_sequence(pattern: str, *, n: int, m: int, k: int, steps: int, seed: int,
                  beta: float = 0.9, trace: str | None = None) -> torch.Tensor:
    """The mask sequence [steps + 1, N] of one configuration (see module doc)."""
    if pattern == "uniform":
        return uniform(n, m, k, steps, seed)
    if pattern == "clustered":
        return clustered(n, m, k, steps, seed)
    if pattern == "sticky":
        return sticky(n, m, steps, seed, beta)
    if pattern == "trace":
        if not trace:
            raise ValueError("pattern 'trace' needs --trace FILE")
        return load_trace(trace, n)  # the micro CLI replays traces with replay_trace
    raise ValueError(f"unknown mask pattern {pattern!r}; choose from {', '.join(PATTERNS)}")


def churn(seq: torch.Tensor) -> torch.Tensor:
    """Additions per step of a sequence [T, N] -> [T - 1]."""
    return (seq[1:] & ~seq[:-1]).sum(dim=1)
