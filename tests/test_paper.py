"""The paper: every data-dependent statement comes from results/ (numbers.tex, figures, tables).

Built on the synthetic hosts of test_analysis (alpha and beta, two thread counts, flagged rows)
plus a hand-written ``study.json``: the primary host it names leads the headline, a smoke study
puts a banner on the first page, the break-even sentence is a sentence in every case, every
figure and table the paper includes has a generator, no figure draws bars on a log axis, the k of
the text is the k of the figure, and the PDF builds from smoke and from empty results without
overfull lines or undefined references (latexmk needed for that one).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from matplotlib.patches import Rectangle

from paired_replacement.analysis import data, figures, numbers, tables
from paired_replacement.analysis.__main__ import FIGURE_NAMES, TABLE_NAMES, main
from paired_replacement.bench.common import SchemaError
from test_analysis import build_hosts  # the synthetic hosts (tests/ is on sys.path)

PAPER = Path(__file__).resolve().parents[1] / "paper" / "paper.tex"
LINE = re.compile(r"^\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}$")


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paper")
    hosts = build_hosts(root)
    out = root / "merged"
    assert main(["merge", "--hosts-dir", str(hosts), "--out-dir", str(out), "--quiet"]) == 0
    return out


def copy_with(merged_dir: Path, dest: Path, study: dict | None) -> Path:
    """A copy of the merged folder with ``study`` as its study.json (None: no study.json)."""
    shutil.copytree(merged_dir, dest)
    (dest / data.STUDY_FILE).unlink(missing_ok=True)
    if study is not None:
        (dest / data.STUDY_FILE).write_text(json.dumps({**data.default_study(), **study}))
    return dest


def macros(merged: Path) -> dict[str, str]:
    values = {}
    for line in numbers.numbers(data.Merged(merged, warn=False)).splitlines():
        match = LINE.match(line)
        assert match, line
        values[match.group(1)] = match.group(2)
    return values


def edit_csv(merged: Path, kind: str, edit) -> None:
    frame = pd.read_csv(merged / f"{kind}.csv", dtype=str, keep_default_na=False)
    edit(frame).to_csv(merged / f"{kind}.csv", index=False)


# ---------------------------------------------------------------------------------------------
# study.json
# ---------------------------------------------------------------------------------------------
def test_load_study_defaults_and_names_a_malformed_file(tmp_path):
    assert data.load_study(tmp_path) == data.default_study()
    (tmp_path / "study.json").write_text('{"primary_host": "vm", "smoke": true}')
    study = data.load_study(tmp_path)
    assert study["primary_host"] == "vm" and study["smoke"] and study["skipped_hosts"] == []
    for bad in ("{not json", "[1, 2]", '{"smoke": "yes"}', '{"hosts": "vm"}',
                '{"skipped_hosts": [{"host": "x"}]}', '{"primary_host": 3}'):
        (tmp_path / "study.json").write_text(bad)
        with pytest.raises(SchemaError, match="study.json"):
            data.load_study(tmp_path)
    # The command line reports it as an error naming the file, not a traceback.
    assert main(["numbers", "--merged-dir", str(tmp_path), "--out",
                 str(tmp_path / "n.tex"), "--quiet"]) == 1


def test_the_primary_host_comes_from_study_json(merged_dir, tmp_path):
    # Without a choice and with two hosts: the old rule (alpha), and the text says so.
    v = macros(copy_with(merged_dir, tmp_path / "none", {}))
    assert v["MicroPrimaryHost"] == "alpha"
    assert "not chosen in the workflow configuration" in v["PrimaryHostSentence"]
    # study.json names beta: beta's headline (8 threads), named in the text with dtype/threads.
    chosen = copy_with(merged_dir, tmp_path / "beta", {"primary_host": "beta"})
    v = macros(chosen)
    assert v["MicroPrimaryHost"] == "beta" and v["MicroThreads"] == "8 threads"
    assert "with 8 threads" in v["MicroHeadlineSentence"]
    assert "alpha" not in v["MicroHeadlineSentence"]
    assert v["PrimaryHostSentence"].startswith("The primary host is beta (float32, 8 threads)")
    assert "not chosen" not in v["PrimaryHostSentence"]
    # Renaming the other host (another folder copied in) changes nothing in the headline.
    renamed = copy_with(merged_dir, tmp_path / "renamed", {"primary_host": "beta"})
    for kind in ("micro", "e2e", "perf", "autotune", "hosts"):
        edit_csv(renamed, kind, lambda f: f.assign(host_id=f["host_id"].replace("alpha", "aaa")))
    w = macros(renamed)
    for name in ("MicroHeadlineSentence", "MicroHeadlineK", "MicroN", "MicroM", "MicroHidden",
                 "MicroBreakEvenSentence", "PrimaryHostSentence"):
        assert w[name] == v[name], name
    # A named host without micro rows: said, and never a silent pick when one host remains.
    gone = copy_with(merged_dir, tmp_path / "gone", {"primary_host": "gamma"})
    edit_csv(gone, "micro", lambda f: f[f["host_id"] == "beta"])
    v = macros(gone)
    assert v["MicroPrimaryHost"] == "beta"
    assert "the only host with micro results" in v["PrimaryHostSentence"]
    assert "gamma" in v["PrimaryHostSentence"]


def test_the_primary_host_fixes_figures_and_tables_too(merged_dir, tmp_path):
    merged = data.Merged(copy_with(merged_dir, tmp_path / "beta", {"primary_host": "beta"}))
    assert merged.primary.host == "beta" and merged.primary.source == "config"
    rows, primary = data.micro_primary_rows(merged.micro, merged.study)
    assert primary == merged.primary
    assert "beta" in tables.micro_summary(merged)


def test_smoke_results_carry_a_banner(merged_dir, tmp_path):
    v = macros(copy_with(merged_dir, tmp_path / "smoke", {"smoke": True}))
    assert v["IsSmoke"] == "true" and "Smoke run" in v["SmokeBanner"]
    assert "fbox" in v["SmokeBanner"]
    v = macros(copy_with(merged_dir, tmp_path / "real", {"smoke": False}))
    assert v["IsSmoke"] == "false" and v["SmokeBanner"] == ""
    # No study.json: told from the data (every timed row from a single process).
    assert macros(copy_with(merged_dir, tmp_path / "plain", None))["SmokeBanner"] == ""
    single = copy_with(merged_dir, tmp_path / "single", None)
    for kind in ("micro", "e2e", "autotune"):
        edit_csv(single, kind, lambda f: f.assign(n_processes="1"))
    v = macros(single)
    assert v["IsSmoke"] == "true" and "single worker process" in v["SmokeBanner"]


# ---------------------------------------------------------------------------------------------
# Sentences that used to be typed
# ---------------------------------------------------------------------------------------------
def _set_gather_ratio(value: float):
    def edit(frame):
        mask = frame["method"] == "paired"
        frame.loc[mask, "speedup_vs_index_select"] = str(value)
        frame.loc[mask, "speedup_vs_index_select_ci95_low"] = str(0.95 * value)
        frame.loc[mask, "speedup_vs_index_select_ci95_high"] = str(1.05 * value)
        return frame
    return edit


def test_the_break_even_sentence_is_a_sentence_in_every_case(merged_dir, tmp_path):
    cases = {"as measured": None, "always faster": _set_gather_ratio(3.0),
             "never faster": _set_gather_ratio(0.5)}
    seen = {}
    for name, edit in cases.items():
        merged = copy_with(merged_dir, tmp_path / name.replace(" ", "_"), {"primary_host": "alpha"})
        if edit:
            edit_csv(merged, "micro", edit)
        seen[name] = macros(merged)["MicroBreakEvenSentence"]
    seen["no data"] = macros(_empty(tmp_path))["MicroBreakEvenSentence"]
    for name, sentence in seen.items():
        assert "none" not in sentence.lower() and "n/a" not in sentence, (name, sentence)
        assert sentence.endswith(".") and sentence[0].isupper(), (name, sentence)
    # The synthetic data: index_select wins at k = 256 with 2 threads (1 thread: busy there).
    assert "with 2 threads it is faster up to $k$ = 64" in seen["as measured"]
    assert "not at $k$ = 256" in seen["as measured"]
    assert "lies between them" in seen["as measured"]
    assert "lies above the measured range" in seen["always faster"]
    assert "lies below it" in seen["never faster"]
    assert "not measured" in seen["no data"]


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "no_hosts").mkdir(exist_ok=True)
    out = tmp_path / "empty_merged"
    if not out.exists():
        assert main(["merge", "--hosts-dir", str(tmp_path / "no_hosts"), "--out-dir", str(out),
                     "--quiet"]) == 0
    return out


def test_claims_follow_the_data(merged_dir, tmp_path):
    v = macros(copy_with(merged_dir, tmp_path / "m", {"primary_host": "alpha"}))
    # Churn by batch: the synthetic steps replace 10% of the active rows at every batch size.
    assert "do not churn more" in v["EtoEChurnSentence"]
    assert "with batch 1" in v["EtoEChurnSentence"] and "with batch 4" in v["EtoEChurnSentence"]
    # The e2e job's rows (beside alpha's sweep), the hybrid and the index forms are reported.
    assert "single-configuration decode job ($m$ = 256, batch 1" in v["EtoEJobSentence"]
    assert "\\texttt{hybrid}" in v["EtoEHybridSentence"]
    assert "\\texttt{paired\\_indices}" in v["MicroIndexFormSentence"]
    assert "faster" in v["MicroIndexFormSentence"]
    assert "\\texttt{hybrid}" in v["MicroHybridSentence"]
    # Patterns: alpha also timed a sticky sequence.
    assert v["MicroPatterns"] == "uniform and sticky"
    assert "sticky masks" in v["MicroPatternSentence"]
    # Counters: cachegrind on alpha, on a build that is the timed one.
    assert "cachegrind" in v["PerfThreatSentence"]
    assert "AVX-512" not in "".join(v.values())
    assert "with 1 thread" in v["AutotuneWinnerSentence"]
    assert "with 2 threads" in v["AutotuneWinnerSentence"]
    # Only uniform masks: said so, and the paper's mask list follows.
    uniform = copy_with(merged_dir, tmp_path / "u", {"primary_host": "alpha"})
    edit_csv(uniform, "micro", lambda f: f[f["pattern"] == "uniform"])
    w = macros(uniform)
    assert w["MicroPatterns"] == "uniform" and "Only uniform churn" in w["MicroPatternSentence"]
    # Larger batches churning more is said only when they do.
    churn = copy_with(merged_dir, tmp_path / "c", {"primary_host": "alpha"})

    def more(frame):
        four = frame["batch"] == "4"
        frame.loc[four, "k_mean"] = (frame.loc[four, "k_mean"].astype(float) * 3).astype(str)
        return frame
    edit_csv(churn, "e2e", more)
    assert macros(churn)["EtoEChurnSentence"].startswith("Larger batches churn more")


def test_the_k_of_the_text_is_the_k_of_the_figure(merged_dir, tmp_path):
    merged = copy_with(merged_dir, tmp_path / "m", {"primary_host": "alpha"})
    for drop_64 in (False, True):
        if drop_64:
            edit_csv(merged, "perf", lambda f: f[f["k"] != "64"])
        v = macros(merged)
        fig = figures.perf_counters(data.Merged(merged))
        titles = " ".join(ax.get_title() for ax in fig.axes)
        plt.close(fig)
        shown = set(re.findall(r"k=(\d+)", titles))
        assert shown == {v["PerfFigureK"]}, (titles, v["PerfFigureK"])
        assert f"at $k$ = {v['PerfFigureK']}, the $k$ of Figure" in v["PerfIrSentence"]
        assert v["PerfFigureK"] == ("16" if drop_64 else "64")
    # The headline k is one of the k the micro figure shows.
    fig = figures.micro_speedup(data.Merged(merged))
    ticks = {f"{t:g}" for ax in fig.axes for t in ax.get_xticks()}
    plt.close(fig)
    assert v["MicroHeadlineK"] in ticks


# ---------------------------------------------------------------------------------------------
# Figures and the paper's sources
# ---------------------------------------------------------------------------------------------
def test_no_figure_draws_bars_on_a_log_axis(merged_dir):
    merged = data.Merged(merged_dir)
    for name, make in figures.FIGURES.items():
        fig = make(merged)
        for ax in fig.axes:
            if "log" not in (ax.get_yscale(), ax.get_xscale()):
                continue
            bars = [p for p in ax.patches if isinstance(p, Rectangle)]
            assert not bars and not any(isinstance(c, BarContainer) for c in ax.containers), \
                (name, ax.get_title())
        plt.close(fig)


def test_no_goal_lines_in_paper_figures(merged_dir):
    merged = data.Merged(merged_dir)
    for name, make in figures.FIGURES.items():
        fig = make(merged)
        texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
        plt.close(fig)
        assert "goal" not in texts.lower(), name


def test_micro_time_shows_times_with_intervals(merged_dir):
    fig = figures.micro_time(data.Merged(merged_dir))
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert axes and all(ax.get_yscale() == "log" for ax in axes)
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "1 thread" in titles and "2 threads" in titles
    labels = " ".join(t.get_text() for lg in fig.legends for t in lg.get_texts())
    for method in ("paired", "torch_delta", "index_select"):
        assert method in labels
    assert any(len(ax.collections) > 2 for ax in axes)  # error bars + points
    plt.close(fig)


def test_every_graphic_and_input_of_the_paper_has_a_generator():
    tex = PAPER.read_text()
    graphics = re.findall(r"\\includegraphics(?:\[[^\]]*\])?\{figures/([a-z0-9_]+)\.pdf\}", tex)
    inputs = re.findall(r"\\input\{([^}]+)\}", tex)
    assert len(graphics) == len(re.findall(r"\\includegraphics", tex))
    assert set(graphics) == set(FIGURE_NAMES), "every figure is in the paper, none without one"
    tabs = [i[len("tables/"):-len(".tex")] for i in inputs if i.startswith("tables/")]
    assert set(tabs) == set(TABLE_NAMES)
    assert set(inputs) - {f"tables/{t}.tex" for t in tabs} == {"generated/numbers.tex"}
    assert "\\SmokeBanner" in tex.split("\\begin{abstract}")[0]
    assert "gate|up" not in tex  # | is an em dash in OT1 text
    for ref in re.findall(r"\\cite\{([^}]+)\}", tex):
        for key in ref.split(","):
            assert f"{{{key.strip()}," in (PAPER.parent / "references.bib").read_text(), key


# ---------------------------------------------------------------------------------------------
# The PDF
# ---------------------------------------------------------------------------------------------
def build_paper(merged: Path, folder: Path) -> str:
    """figures, tables, numbers and latexmk in ``folder``; returns the LaTeX log."""
    folder.mkdir(parents=True)
    shutil.copy(PAPER, folder / "paper.tex")
    shutil.copy(PAPER.parent / "references.bib", folder / "references.bib")
    for name in FIGURE_NAMES:
        assert main(["figure", name, "--merged-dir", str(merged), "--out",
                     str(folder / "figures" / f"{name}.pdf"), "--quiet"]) == 0
    for name in TABLE_NAMES:
        assert main(["table", name, "--merged-dir", str(merged), "--out",
                     str(folder / "tables" / f"{name}.tex"), "--quiet"]) == 0
    assert main(["numbers", "--merged-dir", str(merged), "--out",
                 str(folder / "generated" / "numbers.tex"), "--quiet"]) == 0
    proc = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error",
                           "paper.tex"], cwd=folder, capture_output=True, text=True, timeout=300)
    log = (folder / "paper.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert (folder / "paper.pdf").stat().st_size > 10000
    return log


@pytest.mark.skipif(shutil.which("latexmk") is None, reason="latexmk is not installed, so the "
                    "PDF cannot be built here (the paper rule needs TeX Live with latexmk)")
@pytest.mark.parametrize("which", ["smoke", "empty"])
def test_the_paper_builds_without_overfull_lines_or_undefined_references(merged_dir, tmp_path,
                                                                         which):
    if which == "smoke":
        merged = copy_with(merged_dir, tmp_path / "merged", {"smoke": True,
                                                             "primary_host": "alpha"})
        # Long host and CPU names, as a host folder copied in from elsewhere may bring.
        edit_csv(merged, "hosts", lambda f: f.assign(
            cpu_model="Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz with a long model name",
            compiler="c++ (Debian 12.2.0-14+deb12u1) 12.2.0 and a long version string"))
    else:
        merged = _empty(tmp_path)
    log = build_paper(merged, tmp_path / "paper")
    overfull = [float(x) for x in re.findall(r"Overfull \\hbox \((\d+(?:\.\d+)?)pt too wide",
                                             log)]
    assert all(x <= 1.0 for x in overfull), overfull
    undefined = [ln for ln in log.splitlines()
                 if re.search(r"(Citation|Reference) `[^']*' .*undefined|There were undefined",
                              ln)]
    assert not undefined, undefined
    if which == "smoke":
        assert (tmp_path / "paper" / "paper.bbl").is_file()


def test_a_skipped_host_is_named_in_the_hosts_table_and_the_text(merged_dir, tmp_path):
    merged = copy_with(merged_dir, tmp_path / "m", {"skipped_hosts": [
        {"host": "broken_box", "file": "micro.csv", "reason": "not a finite number"}]})
    table = tables.hosts(data.Merged(merged))
    assert "broken\\_box" in table and "left out by the merge: micro.csv" in table
    v = macros(merged)
    assert "broken\\_box (micro.csv: not a finite number)" in v["SkippedHostsSentence"]
    assert macros(copy_with(merged_dir, tmp_path / "ok", {}))["SkippedHostsSentence"] == \
        "The merge left out no host folder."
