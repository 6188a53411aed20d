"""The memory tiers from measurement to the paper: micro's file tier and the real decode on pool
files (tiny shapes, the tiny random Llama) are merged, and the figure and sentences quote the
merged rows -- every number below is recomputed from the CSVs, not read from the code under test.
Without file-tier rows the paper says so; a skipped CUDA tier is said with its reason."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("transformers", reason="the model extra (transformers) is not installed")

from paired_replacement.analysis import data, tiers  # noqa: E402
from paired_replacement.analysis.__main__ import main as analysis  # noqa: E402
from paired_replacement.model.__main__ import main as model_cli  # noqa: E402

import test_analysis as synthetic  # noqa: E402
from test_bench_micro import bench  # noqa: E402


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiers")
    hosts = synthetic.build_hosts(root)
    # host alpha, as the pipeline sets it (the micro workers inherit the environment)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAIRED_REPLACEMENT_HOST", "alpha")
        bench("micro", "--tier", "file", "--rows", "256", "--m", "64", "--k", "4", "16",
              "--hidden", "32", "--steps", "4", "--fast", "--quiet", "--queue-depth", "4",
              "--threads", "1", "--out", str(hosts / "alpha" / "micro_file.csv"))
        assert model_cli(["decode", "--tiny", "--out", str(hosts / "alpha" / "decode.csv"),
                          "--methods", "dense", "paired", *tiers.FILE_DECODE,
                          "--densities", "0.5", "--window", "3", "--new-tokens", "3",
                          "--prompt-tokens", "4", "--rounds", "1", "--calib-tokens", "24",
                          "--logit-check-tokens", "0", "--rss-methods", "dense", "file_window",
                          "--quiet"]) == 0
    merged = root / "merged"
    assert analysis(["merge", "--hosts-dir", str(hosts), "--out-dir", str(merged),
                     "--skipped-stage", "cuda=no CUDA device on testhost", "--quiet"]) == 0
    return {"root": root, "hosts": hosts, "merged": merged}


def _macros(path: Path) -> dict[str, str]:
    return dict(re.findall(r"\\newcommand\{\\(\w+)\}\{(.*)\}\n", path.read_text()))


def test_merge_keeps_the_file_tier_apart(stage):
    merged = data.Merged(stage["merged"])
    source = pd.read_csv(stage["hosts"] / "alpha" / "micro_file.csv")
    assert len(merged["micro_file"]) == len(source)
    assert not (merged["micro"]["tier"] == "file").any()  # the dram micro is untouched
    decode = merged["decode"]
    assert set(decode[decode["tier"] == "file"]["method"]) == set(tiers.FILE_DECODE)
    from paired_replacement.analysis import model as model_analysis

    dram = model_analysis.decode(merged)
    assert set(dram["method"]) == {"dense", "paired"}  # the dram table never shows file rows


def test_figure_and_sentences_quote_the_merged_rows(stage, tmp_path):
    merged = stage["merged"]
    assert analysis(["figure", "tiers", "--merged-dir", str(merged), "--out",
                     str(tmp_path / "t.pdf"), "--quiet"]) == 0
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")
    assert analysis(["numbers", "--merged-dir", str(merged), "--out", str(tmp_path / "n.tex"),
                     "--quiet"]) == 0
    macros = _macros(tmp_path / "n.tex")
    source = pd.read_csv(stage["hosts"] / "alpha" / "micro_file.csv")
    text = macros["TierFileSentence"]
    judged = tiers.selection(data.Merged(merged))
    comp = data.comparison(judged, "paired", "speedup_vs_full_reload", "full_reload")
    excluded = dict(zip(comp["k_target"], comp["excluded"]))
    assert set(excluded) == {4, 16}
    for k in (4, 16):
        p = source[(source["method"] == "paired") & (source["k_target"] == k)].iloc[0]
        if excluded[k]:  # implausible or measured on a busy host: named, never quoted
            assert f"\\textit{{excluded}} at $k = {k}$" in text
            continue
        assert f"{p['slow_bytes_read_mean'] / 2**20:.1f}~MiB at $k = {k}$" in text
        assert f"{p['speedup_vs_full_reload']:.2f}$\\times$" in text
        assert f"bytes ratio {p['bytes_ratio_vs_full_reload']:.0f}" in text
    assert f"$N = {int(source['N'].iloc[0])}$" in text
    _check_efficiency_sentence(text, source, [k for k in (4, 16) if not excluded[k]])
    dec = pd.read_csv(stage["hosts"] / "alpha" / "decode.csv")
    sentence = macros["TierDecodeSentence"]
    for method in tiers.FILE_DECODE:
        r = dec[dec["method"] == method].iloc[0]
        assert f"{r['tokens_per_s']:.2f}~tokens/s" in sentence, method
        assert f"{r['slow_bytes_read_per_token'] / 1e6:.1f}~MB read per token" in sentence
    w = dec[dec["method"] == "file_window"].iloc[0]
    assert f"{w['speedup_vs_file_window_reload']:.2f}$\\times$" in sentence
    assert f"{w['end_rss_vs_dense']:.2f}$\\times$ the dense model's" in sentence
    assert "no CUDA device on testhost" in macros["TierCudaSentence"]
    shown = [k for k in (4, 16) if not excluded[k]]
    if shown:  # the highest included k is the one where the file tier pays least
        hi = source[(source["method"] == "paired") & (source["k_target"] == shown[-1])].iloc[0]
        assert f"at $k = {shown[-1]}$" in macros["TierPaySentence"]
        assert f"{hi['speedup_vs_full_reload']:.2f}$\\times$ a full reload" in macros[
            "TierPaySentence"]
    else:
        assert "every file-tier ratio was excluded" in macros["TierPaySentence"]


def _check_efficiency_sentence(text: str, source: pd.DataFrame, shown: list[int]) -> None:
    """The efficiency is said against the floor the CSV names for paired (the disk's time for
    the same records where the update floor was timed by the AIO reader), with its range over
    the k shown; the big-batch throughput is disk_floor's read_mbps; the latency remark quotes
    the update floor's time and what that throughput would allow, both from the CSV."""
    paired = source[source["method"] == "paired"].set_index("k_target")
    big = source[source["method"] == "disk_floor"]
    mbps = big["read_mbps"]
    assert (f"large batch (every active record, read by the same reader) was "
            f"{mbps.min():.0f}--{mbps.max():.0f}~MB/s") in text
    if not shown:
        return
    eff = paired.loc[shown, "efficiency_vs_floor"]
    span = f"{eff.min():.2f}--{eff.max():.2f}"
    floors = set(paired.loc[shown, "floor_method"])
    assert floors <= {"disk_update_floor", "disk_floor"}
    if floors == {"disk_update_floor"}:  # the AIO reader timed the update's own records
        assert set(paired.loc[shown, "floor_engine"]) == {"linux-aio"}
        assert (f"{span} of the disk's speed for the same records (an independent reader, "
                "Linux native AIO, of exactly the records each paired update reads, at the same "
                "queue depth)") in text
        upd = source[source["method"] == "disk_update_floor"].set_index("k_target")
        k = min(shown)
        allows = upd.loc[k, "slow_bytes_read_mean"] / (
            big.set_index("k_target").loc[k, "read_mbps"] * 1e6)
        took = upd.loc[k, "median_s"]
        assert f"At $k = {k}$ the disk took {took * 1e3:.2f}~ms" in text
        assert f"would allow {allows * 1e3:.2f}~ms" in text
    elif floors == {"disk_floor"}:  # no AIO here: the big batch's throughput, scaled
        assert f"{span} of the speed the disk's big-batch throughput allows for its bytes" in text
    assert ("the goal, at least 0.8 at every $k$, is met" in text) == (eff.min() >= 0.8)


def test_efficiency_sentence_names_each_floor(stage):
    """A run whose paired rows name different floors (an old CSV, or a reader on threads at
    some k) says which range is against which floor."""
    merged = data.Merged(stage["merged"])
    rows = tiers.selection(merged)
    paired = rows[rows["method"] == "paired"].set_index("k_target").copy()
    paired["floor_method"] = ["disk_floor", "disk_update_floor"][: len(paired)]
    paired["efficiency_vs_floor"] = [0.5, 0.97][: len(paired)]
    paired["floor_engine"] = "linux-aio"
    text = tiers._efficiency_text(rows, paired, paired["efficiency_vs_floor"])
    assert ("0.97--0.97 of the disk's speed for the same records at $k = 16$" in text
            and "0.50--0.50 of the speed the disk's big-batch throughput allows for its bytes "
            "at $k = 4$" in text and "below the 0.8 goal at $k = 4$" in text), text


def test_without_file_tier_rows_the_paper_says_so(stage, tmp_path):
    empty = tmp_path / "merged"
    empty.mkdir()
    for f in stage["merged"].iterdir():
        (empty / f.name).write_bytes(f.read_bytes())
    frame = pd.read_csv(empty / "micro_file.csv").iloc[0:0]
    frame.to_csv(empty / "micro_file.csv", index=False)
    dec = pd.read_csv(empty / "decode.csv")
    dec[dec["tier"] != "file"].to_csv(empty / "decode.csv", index=False)
    merged = data.Merged(empty)
    assert tiers.file_sentence(merged).startswith("The file tier has no micro results here")
    assert "did not run on the file tier" in tiers.decode_sentence(merged)
    assert "not measured here" in tiers.pay_sentence(merged)
    assert analysis(["figure", "tiers", "--merged-dir", str(empty), "--out",
                     str(tmp_path / "t.pdf"), "--quiet"]) == 0
