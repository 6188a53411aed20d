"""The figures draw the merged CSVs' numbers: the data is read back from the axes of each figure
and compared, panel by panel, with the values of the merged tables, selected here with plain
pandas from what the panel's title names (host, hidden size, baseline, thread count).

Built on the synthetic hosts of test_analysis (alpha and beta, two thread counts, flagged rows).
A figure that plots the wrong column, the wrong unit, the wrong host's rows, drops a point or
plots one twice fails here; that the files exist is checked in test_analysis.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from paired_replacement.analysis import data, figures
from paired_replacement.analysis.__main__ import main
from test_analysis import build_hosts  # the synthetic hosts (tests/ is on sys.path)


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("figure_data")
    out = root / "merged"
    assert main(["merge", "--hosts-dir", str(build_hosts(root)), "--out-dir", str(out),
                 "--quiet"]) == 0
    return out


def _csv(merged_dir: Path, kind: str) -> pd.DataFrame:
    return pd.read_csv(merged_dir / f"{kind}.csv")


def _data_lines(ax, caps: bool = False) -> list:
    """The data lines of a panel: lines in data coordinates (not axhline/axvline references,
    which are drawn in axes coordinates along one direction); with ``caps`` the error bars' caps
    instead (markers without a line)."""
    return [line for line in ax.get_lines() if line.get_transform() == ax.transData
            and (line.get_linestyle() in ("None", "")) == caps]


def _plotted(ax, caps: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every point of the panel's data lines (or error-bar caps), NaN y dropped."""
    xs, ys = [], []
    for line in _data_lines(ax, caps):
        xs.append(np.asarray(line.get_xdata(), float))
        ys.append(np.asarray(line.get_ydata(), float))
    if not xs:
        return np.array([]), np.array([])
    x, y = np.concatenate(xs), np.concatenate(ys)
    keep = np.isfinite(y)
    return x[keep], y[keep]


def _same_values(plotted: np.ndarray, expected, what: str) -> None:
    expected = np.asarray(expected, float)
    expected = np.sort(expected[np.isfinite(expected)])
    assert len(plotted) == len(expected), (what, np.sort(plotted), expected)
    np.testing.assert_allclose(np.sort(plotted), expected, rtol=1e-9, err_msg=what)


def _undodged(x_plotted: np.ndarray, x_expected) -> None:
    """The figures shift overlapping series by 6 % per series on log axes (figures.dodge)."""
    x_expected = np.asarray(x_expected, float)
    for x in x_plotted:
        assert np.min(np.abs(x_expected - x) / np.maximum(x_expected, 1)) <= 0.25, x


def _micro_selection(merged_dir: Path) -> pd.DataFrame:
    """The micro rows the figures draw: uniform masks, gate on, k >= 0, at the study's most
    measured (N, m) (a host without it: its own most measured), every hidden size."""
    micro = _csv(merged_dir, "micro")
    rows = micro[(micro["pattern"] == "uniform") & (micro["gate"].astype(str) == "True")
                 & (micro["k_target"] >= 0)]
    primary = rows.groupby(["N", "m"]).size().idxmax()
    parts = []
    for _, host_rows in rows.groupby("host_id"):
        shapes = host_rows.groupby(["N", "m"]).size()
        n, m = primary if primary in shapes.index else shapes.idxmax()
        parts.append(host_rows[(host_rows["N"] == n) & (host_rows["m"] == m)])
    assert len(rows[["N", "m"]].drop_duplicates()) > 1  # the choice is tested
    return pd.concat(parts)


TITLE_HOST_HIDDEN = re.compile(r"^(\w+), hidden=(\d+)")


def test_micro_speedup_plots_the_speedup_columns_of_each_panels_rows(merged_dir):
    rows = _micro_selection(merged_dir)
    fig = figures.micro_speedup(data.Merged(merged_dir))
    panels = 0
    for ax in fig.axes:
        title = ax.get_title()
        match = TITLE_HOST_HIDDEN.match(title)
        if not match or ": vs " not in title:
            continue
        host, hidden = match.group(1), int(match.group(2))
        base = title.rsplit(": vs ", 1)[1]
        want = rows[(rows["host_id"] == host) & (rows["hidden"] == hidden)
                    & rows["method"].isin(figures.SPEEDUP_METHODS)]
        x, y = _plotted(ax)
        _same_values(y, want[f"speedup_vs_{base}"], title)
        _undodged(x, want["k_target"])
        # the error bars are the CSV's paired-sample intervals
        bounds = pd.concat([want[f"speedup_vs_{base}_ci95_low"],
                            want[f"speedup_vs_{base}_ci95_high"]])
        _same_values(_plotted(ax, caps=True)[1], bounds, title + " (interval)")
        panels += 1
    plt.close(fig)
    assert panels >= 4  # alpha at two hidden sizes, beta, each vs two baselines


def _thread_panels(fig, rows: pd.DataFrame):
    """(panel, title, the rows of ``rows`` it names) for every panel of a host x hidden by
    thread-count grid that draws data."""
    for ax in fig.axes:
        title = ax.get_title()
        match = TITLE_HOST_HIDDEN.match(title)
        threads = re.search(r", (\d+) threads?$", title)
        if not match or not threads or not _data_lines(ax):
            continue
        host, hidden, t = match.group(1), int(match.group(2)), int(threads.group(1))
        yield ax, title, rows[(rows["host_id"] == host) & (rows["hidden"] == hidden)
                              & (rows["threads"] == t)]


def test_micro_time_plots_median_milliseconds_per_thread_count(merged_dir):
    rows = _micro_selection(merged_dir)
    fig = figures.micro_time(data.Merged(merged_dir))
    panels = 0
    for ax, title, want in _thread_panels(fig, rows[rows["method"].isin(figures.TIME_METHODS)]):
        x, y = _plotted(ax)
        _same_values(y, want["median_s"] * 1e3, title)  # ms, not s
        bounds = pd.concat([want["ci95_low_s"], want["ci95_high_s"]]) * 1e3
        _same_values(_plotted(ax, caps=True)[1], bounds, title + " (interval)")
        _undodged(x, want["k_target"])
        panels += 1
    plt.close(fig)
    assert panels >= 3


def test_micro_efficiency_plots_the_efficiency_column(merged_dir):
    rows = _micro_selection(merged_dir)
    fig = figures.micro_efficiency(data.Merged(merged_dir))
    panels = 0
    for ax, title, want in _thread_panels(fig,
                                          rows[rows["method"].isin(figures.EFFICIENCY_METHODS)]):
        _same_values(_plotted(ax)[1], want["efficiency_vs_floor"], title)
        panels += 1
    plt.close(fig)
    assert panels >= 3


def test_e2e_speedup_plots_paired_over_each_baseline_per_host(merged_dir):
    e2e = _csv(merged_dir, "e2e")
    fig = figures.e2e_speedup(data.Merged(merged_dir))
    panels = 0
    for ax in fig.axes:
        match = re.match(r"^(\w+): vs (\w+) \((sweep|e2e), ", ax.get_title())
        if not match or not _data_lines(ax):
            continue
        host, base, source = match.groups()
        rows = e2e[(e2e["host_id"] == host) & (e2e["method"] == "paired")]
        rows = rows[rows["benchmark"] == "sweep"] if source == "sweep" else \
            rows[rows["benchmark"] != "sweep"]
        # each host's most measured fixed settings (figures say so in the subtitle)
        fixed = rows.groupby(data.E2E_FIXED, dropna=False).size().idxmax()
        for column, value in zip(data.E2E_FIXED, fixed):
            rows = rows[rows[column] == value]
        x, y = _plotted(ax)
        _same_values(y, rows[f"speedup_vs_{base}"], ax.get_title())
        _undodged(x, rows["m"])
        panels += 1
    plt.close(fig)
    assert panels >= 2
