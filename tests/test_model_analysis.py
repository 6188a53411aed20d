"""The real-model stage from traces to the paper: merge takes its churn tables and run summary,
the analysis pools them, and the paper's sentences, table and figure follow the data -- or say
that the stage did not run, and why.

The traces come from the tiny random Llama (no GGUF needed, transformers only), so the numbers
are meaningless but real: every check recomputes them from the per-transition CSV by hand.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("transformers", reason="the model extra (transformers) is not installed")

from paired_replacement.analysis import data  # noqa: E402
from paired_replacement.analysis import model as model_analysis  # noqa: E402
from paired_replacement.analysis.__main__ import main as analysis  # noqa: E402
from paired_replacement.bench import common  # noqa: E402
from paired_replacement.model.__main__ import main as model_cli  # noqa: E402

import test_analysis as synthetic  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model_stage")
    traces, out = root / "traces", root / "model"
    assert model_cli(["traces", "--out", str(traces), "--tokens", "40", "--tiny", "--densities",
                      "0.25", "0.5", "--windows", "1", "4", "--time-dense", "--quiet"]) == 0
    assert model_cli(["churn", "--traces", str(traces), "--out", str(out / "churn.csv"),
                      "--per-token", str(out / "churn_tokens.csv"), "--quiet"]) == 0
    assert model_cli(["quality", "--tiny", "--out", str(out / "quality.csv"), "--tokens", "40",
                      "--calib-tokens", "24", "--densities", "0.25", "0.5", "--windows", "1",
                      "4", "--quiet"]) == 0
    hosts = synthetic.build_hosts(root)
    # the greedy decode of host alpha (host id from the environment, as the pipeline sets it)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAIRED_REPLACEMENT_HOST", "alpha")
        assert model_cli(["decode", "--tiny", "--out", str(hosts / "alpha" / "decode.csv"),
                          "--densities", "0.25", "0.5", "--window", "4", "--new-tokens", "3",
                          "--prompt-tokens", "4", "--rounds", "2", "--calib-tokens", "24",
                          "--logit-check-tokens", "0", "--rss-methods", "dense", "paired",
                          "--quiet"]) == 0
    merged = root / "merged"
    assert analysis(["merge", "--hosts-dir", str(hosts), "--out-dir", str(merged),
                     "--model-dir", str(out), "--traces-dir", str(traces), "--quiet"]) == 0
    return {"root": root, "traces": traces, "model": out, "hosts": hosts, "merged": merged}


def _macros(path: Path) -> dict[str, str]:
    text = path.read_text()
    return dict(re.findall(r"\\newcommand\{\\(\w+)\}\{(.*)\}\n", text))


def test_merge_takes_the_churn_tables_and_the_run(stage):
    merged = stage["merged"]
    for name in ("churn", "churn_tokens", "quality"):
        source = pd.read_csv(stage["model"] / f"{name}.csv", dtype=str, keep_default_na=False)
        copied = common.read_results_csv(merged / f"{name}.csv", name)
        pd.testing.assert_frame_equal(source, copied)
    study = json.loads((merged / "study.json").read_text())
    run = json.loads((stage["traces"] / "run.json").read_text())
    assert study["model"]["model"] == run["model"]
    assert study["model"]["timings"] == run["timings"]
    assert "token_ids" not in study["model"]["heldout"]  # they stay in run.json
    assert study["skipped_stages"] == {}


def test_pooled_statistics_equal_a_count_by_hand(stage):
    table = model_analysis.traces(data.Merged(stage["merged"]))
    tokens = pd.read_csv(stage["model"] / "churn_tokens.csv")
    summary = pd.read_csv(stage["model"] / "churn.csv")
    assert len(table) == summary["key"].nunique() == 2 * 2 * 2  # policies x densities x W
    for r in table.itertuples():
        t = tokens[(tokens["key"] == r.key) & (tokens["m"] > 0)]
        assert r.rows_median == pytest.approx(np.median(t["rows_written"] / t["m"]))
        assert r.added_median == pytest.approx(np.median(t["added"] / t["m"]))
        assert r.rows_p90 == pytest.approx(np.percentile(t["rows_written"] / t["m"], 90))
        s = summary[summary["key"] == r.key]
        assert r.density_measured == pytest.approx(s["density_measured"].mean())
        assert r.layers == s["layer"].nunique() == 2


def test_table_figure_and_sentences_follow_the_data(stage, tmp_path):
    merged = stage["merged"]
    table = model_analysis.traces(data.Merged(merged))
    assert analysis(["table", "model_churn", "--merged-dir", str(merged), "--out",
                     str(tmp_path / "t.tex"), "--quiet"]) == 0
    tex = (tmp_path / "t.tex").read_text()
    assert tex.count(r" \\") - 1 == len(table)  # header + one row per trace
    first = table.iloc[0]
    assert f"{100 * first.rows_median:.1f}" in tex
    assert analysis(["figure", "model_churn", "--merged-dir", str(merged), "--out",
                     str(tmp_path / "f.pdf"), "--quiet"]) == 0
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
    assert analysis(["numbers", "--merged-dir", str(merged), "--out", str(tmp_path / "n.tex"),
                     "--quiet"]) == 0
    macros = _macros(tmp_path / "n.tex")
    oracle = table[(table["policy"] == "oracle_topk") & (table["window"] == 1)]
    paragraph = macros["ModelParagraph"]
    assert paragraph.startswith(macros["ModelStageSentence"])
    for r in oracle.itertuples():
        assert f"{100 * r.rows_median:.1f}\\%" in paragraph
        assert f"{1 / r.rows_median:.1f}$\\times$" in paragraph
    lead = "few" if oracle["rows_median"].max() > 0.5 else "most"
    assert f"share {lead} of their active neurons" in paragraph
    assert "$W = 4$" in paragraph and "tokens/s" in paragraph and "Gate thresholds" in paragraph
    assert "did not run" not in paragraph


def test_quality_table_and_sentence_follow_the_data(stage, tmp_path):
    merged = stage["merged"]
    source = pd.read_csv(stage["model"] / "quality.csv")
    table = model_analysis.quality(data.Merged(merged))
    assert len(table) == len(source) == 1 + 2 * 2 * 2 and table.iloc[0]["policy"] == "dense"
    dense = float(source.loc[source["policy"] == "dense", "perplexity"].iloc[0])
    assert np.allclose(table["vs_dense"], table["perplexity"] / dense)
    assert analysis(["table", "model_quality", "--merged-dir", str(merged), "--out",
                     str(tmp_path / "q.tex"), "--quiet"]) == 0
    tex = (tmp_path / "q.tex").read_text()
    assert tex.count(r" \\") - 1 == len(table) and f"{dense:.2f}" in tex
    assert analysis(["numbers", "--merged-dir", str(merged), "--out", str(tmp_path / "n.tex"),
                     "--quiet"]) == 0
    paragraph = _macros(tmp_path / "n.tex")["ModelParagraph"]
    assert f"perplexity is {dense:.1f}" in paragraph
    w1 = table[(table["policy"] != "dense") & (table["window"] == 1)]
    for r in w1.itertuples():
        assert f"{r.perplexity:.1f} ({r.vs_dense:.2f}$\\times$)" in paragraph
    within = w1[w1["vs_dense"] <= 1.05]
    assert ("No policy measured here stays within 5" in paragraph) == within.empty
    assert "perplexity on licence texts" in _macros(tmp_path / "n.tex")["ModelThreatSentence"]


def test_a_skipped_stage_is_said_in_the_paper(stage, tmp_path):
    merged = tmp_path / "merged"
    assert analysis(["merge", "--hosts-dir", str(stage["hosts"]), "--out-dir", str(merged),
                     "--skipped-stage", "model=transformers not installed", "--quiet"]) == 0
    study = json.loads((merged / "study.json").read_text())
    assert study["skipped_stages"] == {"model": "transformers not installed"}
    assert study["model"] is None
    for name in ("churn", "churn_tokens", "quality"):  # header-only: readers still work
        assert pd.read_csv(merged / f"{name}.csv").empty
    assert analysis(["numbers", "--merged-dir", str(merged), "--out", str(tmp_path / "n.tex"),
                     "--quiet"]) == 0
    macros = _macros(tmp_path / "n.tex")
    assert macros["ModelStageSentence"] == ("The real-model stage did not run: transformers not "
                                            "installed.")
    assert macros["ModelParagraph"] == macros["ModelStageSentence"]  # nothing else to say
    assert "No real model" in macros["ModelThreatSentence"]
    assert analysis(["table", "model_churn", "--merged-dir", str(merged), "--out",
                     str(tmp_path / "t.tex"), "--quiet"]) == 0
    assert "no data" in (tmp_path / "t.tex").read_text()
    assert analysis(["figure", "model_churn", "--merged-dir", str(merged), "--out",
                     str(tmp_path / "f.pdf"), "--quiet"]) == 0


def test_bad_stage_inputs_are_refused(stage, tmp_path, capsys):
    assert analysis(["merge", "--hosts-dir", str(stage["hosts"]), "--out-dir",
                     str(tmp_path / "a"), "--skipped-stage", "model"]) == 2
    assert "expected STAGE=REASON" in capsys.readouterr().err
    damaged = tmp_path / "model"
    shutil.copytree(stage["model"], damaged)
    frame = pd.read_csv(damaged / "churn.csv", dtype=str, keep_default_na=False)
    frame.loc[frame.index[1], "rows_written_over_m_median"] = "nan"
    frame.to_csv(damaged / "churn.csv", index=False)
    assert analysis(["merge", "--hosts-dir", str(stage["hosts"]), "--out-dir",
                     str(tmp_path / "b"), "--model-dir", str(damaged)]) == 1
    err = capsys.readouterr().err
    assert "churn.csv: line 3, column rows_written_over_m_median: not a finite number" in err
    assert not (tmp_path / "b").exists()


def test_decode_table_figure_and_sentences_follow_the_data(stage, tmp_path):
    merged = stage["merged"]
    source = pd.read_csv(stage["hosts"] / "alpha" / "decode.csv")
    copied = pd.read_csv(merged / "decode.csv")
    assert len(copied) == len(source) == 7 * 2  # every method at each density
    rows = model_analysis.decode(data.Merged(merged))
    assert list(rows["config_density"]) == sorted(rows["config_density"])
    assert analysis(["table", "model_decode", "--merged-dir", str(merged), "--out",
                     str(tmp_path / "d.tex"), "--quiet"]) == 0
    tex = (tmp_path / "d.tex").read_text()
    assert tex.count(r" \\") - 1 == len(source)
    for r in source.itertuples():
        assert f"{r.tokens_per_s:.1f} [{r.tokens_per_s_ci95_low:.1f}, " \
               f"{r.tokens_per_s_ci95_high:.1f}]" in tex
    # the frontier pairs each method with the perplexity of the mask it computes on
    points = model_analysis._frontier_points(data.Merged(merged))
    quality = pd.read_csv(stage["model"] / "quality.csv")
    gate = quality[quality["policy"] == "gate_threshold"]
    window = points[(points["method"] == "paired_window") & (points["density"] == 0.5)]
    assert window["perplexity"].iloc[0] == pytest.approx(float(
        gate[(gate["density"] == 0.5) & (gate["window"] == 4)]["perplexity"].iloc[0]))
    paired = points[(points["method"] == "paired") & (points["density"] == 0.25)]
    assert paired["perplexity"].iloc[0] == pytest.approx(float(
        gate[(gate["density"] == 0.25) & (gate["window"] == 1)]["perplexity"].iloc[0]))
    assert analysis(["figure", "model_decode", "--merged-dir", str(merged), "--out",
                     str(tmp_path / "f.pdf"), "--quiet"]) == 0
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
    assert analysis(["numbers", "--merged-dir", str(merged), "--out", str(tmp_path / "n.tex"),
                     "--quiet"]) == 0
    macros = _macros(tmp_path / "n.tex")
    sentence = macros["ModelDecodeSentence"]
    first = source[source["density"].isin([0.25, 1.0])].head(7)
    dense = first[first["method"] == "dense"].iloc[0]
    assert f"dense model at {dense.tokens_per_s:.1f} tokens/s" in sentence
    paired = first[first["method"] == "paired"].iloc[0]
    assert f"cache update {100 * paired.update_share:.0f}\\%" in sentence
    assert ("within the 10" in sentence) == (
        float(first[first["method"] == "paired_window"]["update_share"].iloc[0]) <= 0.10)
    memory = macros["ModelMemorySentence"]
    ratio = float(source[(source["method"] == "paired") & source["peak_rss_vs_dense"].notna()]
                  ["peak_rss_vs_dense"].iloc[0])
    assert f"paired {ratio:.2f}$\\times$" in memory
    assert ("every probed method stays within" in memory) == (ratio <= 1.15)
