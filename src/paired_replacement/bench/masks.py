"""Mask sequences for the micro benchmarks, generated before any timing and shared by every method.

Each generator returns a bool tensor [steps + 1, N]: the initial mask and one mask per update.

- ``uniform``: each step swaps k random active rows for k random inactive rows (m stays fixed).
- ``clustered``: each step swaps a run of k consecutive active rows (in row order) for a run of
  k consecutive inactive rows: block-structured churn.
- ``sticky``: top-m of an exponential moving average of Gaussian scores,
  s_t = beta * s_{t-1} + (1 - beta) * noise; churn emerges from beta (k is not controlled).
- ``trace``: masks read from a file (.npy bool [T, N], or .npz with an array named "masks").
"""

from __future__ import annotations

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


def load_trace(path: str | Path, n: int) -> torch.Tensor:
    path = Path(path)
    data = np.load(path)
    masks = data["masks"] if isinstance(data, np.lib.npyio.NpzFile) else data
    if masks.dtype != np.bool_ or masks.ndim != 2 or masks.shape[1] != n or masks.shape[0] < 2:
        raise ValueError(f"{path}: a trace must be a bool array [T >= 2, N = {n}], got "
                         f"{masks.dtype} {masks.shape}")
    return torch.from_numpy(np.ascontiguousarray(masks))


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
        return load_trace(trace, n)
    raise ValueError(f"unknown mask pattern {pattern!r}; choose from {', '.join(PATTERNS)}")


def churn(seq: torch.Tensor) -> torch.Tensor:
    """Additions per step of a sequence [T, N] -> [T - 1]."""
    return (seq[1:] & ~seq[:-1]).sum(dim=1)
