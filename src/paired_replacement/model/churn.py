"""Churn of a mask sequence: what the paired cache must do from one token to the next.

For consecutive masks ``M[t-1] -> M[t]`` (t = 1..T-1) of one layer:

- ``added`` A = |M[t] \\ M[t-1]|, ``removed`` R = |M[t-1] \\ M[t]|, ``m`` = |M[t]|;
- ``rows_written``: the packed rows the cache writes for this update, counted by running the NumPy
  reference :class:`paired_replacement.reference.PairedCache` (the executable specification) on
  dummy one-column weights. Its paired path writes ``max(A, h)`` rows (h = removed rows whose slot
  lies below the new size), which depends on the slot layout the earlier updates left, hence the
  simulation. The hybrid full rebuild is switched off (``hybrid_tau_frac=1``: a paired update never
  writes more than m' rows), so the count is the paired path's, the minimum any packed layout needs.

Ratios are taken over the new mask size m (transitions to an empty mask are left out of ratios).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..reference import PairedCache

RATIO_COLUMNS = ("added_over_m", "removed_over_m", "rows_written_over_m")
SUMMARY_COLUMNS = (
    "layer", "policy", "density", "window", "key", "num_tokens", "transitions",
    "density_measured", "mask_size_mean", "mask_size_min", "mask_size_max",
    *(f"{c}_{s}" for c in RATIO_COLUMNS for s in ("mean", "median", "p90")),
)
PER_TOKEN_COLUMNS = ("key", "layer", "t", "m", "added", "removed", "rows_written")


@dataclass
class ChurnSeries:
    """Per transition t = 1..T-1: new size, additions, removals, rows written."""

    m: np.ndarray
    added: np.ndarray
    removed: np.ndarray
    rows_written: np.ndarray

    def ratios(self) -> dict[str, np.ndarray]:
        """A/m, R/m and rows_written/m over transitions with m > 0."""
        ok = self.m > 0
        m = self.m[ok].astype(np.float64)
        return {
            "added_over_m": self.added[ok] / m,
            "removed_over_m": self.removed[ok] / m,
            "rows_written_over_m": self.rows_written[ok] / m,
        }


def churn_series(masks: np.ndarray) -> ChurnSeries:
    """Replay ``masks`` (bool ``[T, N]``) through the reference cache, one update per token."""
    masks = np.asarray(masks, dtype=bool)
    t, n = masks.shape
    dummy = np.zeros((n, 1), dtype=np.float32)
    cache = PairedCache(masks[0], 1, None, dummy, dummy.T.copy(), hybrid_tau_frac=1.0)
    out = np.zeros((4, max(t - 1, 0)), dtype=np.int64)
    for i in range(1, t):
        stats = cache.update(masks[i])
        out[:, i - 1] = stats.m_after, stats.added, stats.removed, stats.rows_written
    return ChurnSeries(*out)


def _stats(values: np.ndarray, prefix: str) -> dict:
    if values.size == 0:
        return {f"{prefix}_{s}": float("nan") for s in ("mean", "median", "p90")}
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_median": float(np.median(values)),
        f"{prefix}_p90": float(np.percentile(values, 90)),
    }


def summary_row(meta: dict, masks: np.ndarray, series: ChurnSeries) -> dict:
    """One CSV row for one trace (layer x policy x density x window)."""
    sizes = masks.sum(axis=1)
    row = {
        "layer": meta["layer"],
        "policy": meta["policy"],
        "density": meta["density"],
        "window": meta["window"],
        "key": meta["key"],
        "num_tokens": int(masks.shape[0]),
        "transitions": int(series.m.size),
        "density_measured": float(masks.mean()),
        "mask_size_mean": float(sizes.mean()),
        "mask_size_min": int(sizes.min()),
        "mask_size_max": int(sizes.max()),
    }
    for name, values in series.ratios().items():
        row.update(_stats(values, name))
    return row


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def per_token_rows(key: str, layer: int, series: ChurnSeries) -> Iterable[dict]:
    for i in range(series.m.size):
        yield {
            "key": key, "layer": layer, "t": i + 1, "m": int(series.m[i]),
            "added": int(series.added[i]), "removed": int(series.removed[i]),
            "rows_written": int(series.rows_written[i]),
        }
