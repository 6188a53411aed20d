"""Medians, ratios and their intervals from values grouped by worker process.

Values from one process share that process's fate (its memory placement, the load while it ran),
so they are not independent draws: treating the 8 values of 2 processes as 8 independent ones
gives intervals that are too narrow. Intervals here come from a *hierarchical bootstrap*: resample
the processes with replacement, then the rounds within each resampled process, and take the
statistic of the pooled resample. With one process this is the ordinary bootstrap, and the
interval says nothing about between-process variation (``n_processes`` = 1 in the CSV says so).

Ratios between two methods are taken round by round (the two values of one round were measured
seconds apart, see timing.py) and the interval is the hierarchical bootstrap of the median of
those paired ratios -- the baseline's own noise is in it, not treated as exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000


def _as_blocks(values_by_process: Sequence[Sequence[float]]) -> list[np.ndarray]:
    blocks = [np.asarray(v, dtype=float) for v in values_by_process if len(v)]
    if not blocks:
        raise ValueError("no values")
    return blocks


def hierarchical_bootstrap(values_by_process: Sequence[Sequence[float]], *, seed: int = 0,
                           resamples: int = RESAMPLES, level: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the median of all values and its ``level`` interval (see module doc)."""
    blocks = _as_blocks(values_by_process)
    point = float(np.median(np.concatenate(blocks)))
    rng = np.random.default_rng(seed)
    p = len(blocks)
    lengths = {b.size for b in blocks}
    if len(lengths) == 1:  # the usual case: vectorised
        data = np.stack(blocks)  # [P, n]
        n = data.shape[1]
        pick_p = rng.integers(p, size=(resamples, p))
        pick_v = rng.integers(n, size=(resamples, p, n))
        sample = data[pick_p[:, :, None], pick_v].reshape(resamples, p * n)
        medians = np.median(sample, axis=1)
    else:
        medians = np.empty(resamples)
        for r in range(resamples):
            chosen = [blocks[i] for i in rng.integers(p, size=p)]
            medians[r] = np.median(np.concatenate([rng.choice(b, size=b.size) for b in chosen]))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return point, float(low), float(high)


def paired_ratios(numerator: Sequence[Sequence[float]],
                  denominator: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """numerator / denominator round by round, per process (the two must have equal shapes)."""
    out = []
    for num, den in zip(numerator, denominator, strict=True):
        num, den = np.asarray(num, float), np.asarray(den, float)
        if num.shape != den.shape:
            raise ValueError(f"paired ratios need equal rounds, got {num.shape} and {den.shape}")
        out.append(num / den)
    return out


def ratio_interval(numerator: Sequence[Sequence[float]], denominator: Sequence[Sequence[float]],
                   *, seed: int = 0) -> tuple[float, float, float]:
    """(median ratio, low, high) of numerator/denominator from paired samples."""
    return hierarchical_bootstrap(paired_ratios(numerator, denominator), seed=seed)


def summary(values_by_process: Sequence[Sequence[float]], *, seed: int = 0) -> dict[str, float]:
    """The ``stats`` columns of a results row (see schemas/common.schema.json)."""
    blocks = _as_blocks(values_by_process)
    flat = np.concatenate(blocks)
    median, low, high = hierarchical_bootstrap(blocks, seed=seed)
    q1, q3 = np.percentile(flat, [25, 75])
    return {"n_processes": len(blocks), "n_values": int(flat.size), "median_s": median,
            "iqr_s": float(q3 - q1), "ci95_low_s": low, "ci95_high_s": high,
            "mean_s": float(flat.mean()),
            "stdev_s": float(flat.std(ddof=1)) if flat.size > 1 else 0.0}


def ratio_columns(prefix: str, ratio: tuple[float, float, float] | None) -> dict[str, float]:
    """``prefix``, ``prefix_ci95_low``, ``prefix_ci95_high`` of a results row (NaN when None)."""
    point, low, high = ratio if ratio is not None else (math.nan, math.nan, math.nan)
    return {prefix: point, f"{prefix}_ci95_low": low, f"{prefix}_ci95_high": high}


def relative_half_width(point: float, low: float, high: float) -> float:
    """Half the interval's width relative to the point estimate (0.05 = +-5%)."""
    if not point or math.isnan(point):
        return math.nan
    return (high - low) / 2.0 / abs(point)
