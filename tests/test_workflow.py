"""The Snakemake workflow (Snakefile, workflow/, config/).

Fast checks run Snakemake without executing jobs (dry runs, lint, config validation, snakefmt).
The slow ones run the smoke configuration end to end in a scratch copy of the repository
(tracked and untracked-but-not-ignored files, so results of the checkout are never touched),
then check that a second run has nothing to do, that deleting one figure redraws only that
figure, and that redraw_only never schedules a benchmark.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIGURES = ["micro_speedup", "micro_efficiency", "e2e_speedup", "perf_counters",
           "autotune_landscape", "cross_host"]
TABLES = ["micro_summary", "e2e_summary", "hosts"]
BENCH_RULES = {"hostinfo", "build", "autotune", "micro", "e2e", "sweep", "perf"}
ANALYSIS_RULES = {"merge", "figures", "tables", "numbers"}

pytestmark = pytest.mark.skipif(
    shutil.which("snakemake", path=str(BIN)) is None and shutil.which("snakemake") is None,
    reason="snakemake is not installed")


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # python, paired-replacement-build
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def snakemake(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``python -m snakemake ARGS`` in ``cwd``; stdout and stderr together in .stdout."""
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule -> job count (without the total)."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    except StopIteration:
        return counts
    for line in lines[start + 3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        if match[1] != "total":
            counts[match[1]] = int(match[2])
    return counts


def paper_buildable(root: Path) -> bool:
    return shutil.which("latexmk") is not None and (root / "paper" / "paper.tex").is_file()


# ---------------------------------------------------------------------------------------------
# Dry runs, lint, format
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("configfile", [None, "config/smoke.yaml"])
def test_dry_run(configfile):
    args = ["-n"] + (["--configfile", configfile] if configfile else [])
    result = snakemake(*args)
    assert result.returncode == 0, result.stdout
    counts = job_counts(result.stdout)
    if (REPO / "results").exists():  # a checkout that has run the workflow: only check it parses
        return
    for rule in BENCH_RULES | {"merge", "numbers"}:
        assert counts.get(rule) == 1, (rule, counts)
    assert counts["figures"] == len(FIGURES) and counts["tables"] == len(TABLES), counts
    assert counts.get("paper", 0) == (1 if paper_buildable(REPO) else 0), counts


def test_dry_run_slurm_profiles_and_hosts(tmp_path):
    """A two-host cluster config through the SLURM profile: every host gets its own jobs, its
    benchmarks an exclusive node with its constraint and nodelist, its threads."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"threads": [0, 1], "hosts": {
        "icx": {"slurm_constraint": "icelake", "slurm_nodelist": "node01", "threads": 32},
        "skl": {"threads": 16}}}))
    for profile in ("workflow/profiles/slurm", "workflow/profiles/slurm-noacct"):
        result = snakemake("-n", "-p", "--cores", "64", "--profile", profile,
                           "--configfile", str(cluster))
        assert result.returncode == 0, result.stdout
        counts = job_counts(result.stdout)
        for rule in BENCH_RULES:
            assert counts.get(rule) == 2, (rule, counts)
        out = result.stdout
        assert "slurm_extra=--exclusive --constraint=icelake --nodelist=node01" in out
        assert "PAIRED_REPLACEMENT_HOST=icx python -m paired_replacement.bench micro" in out
        # threads [0, 1]: every core of the host's node, and one thread
        assert re.search(r"bench micro .*--threads 32 1 .*hosts/icx/micro\.csv", out)
        assert re.search(r"bench micro .*--threads 16 1 .*hosts/skl/micro\.csv", out)


def test_slurm_noacct_profile_is_slurm_plus_squeue():
    slurm = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    noacct = yaml.safe_load((REPO / "workflow/profiles/slurm-noacct/config.yaml").read_text())
    assert noacct.pop("slurm-status-command") == "squeue"
    assert noacct == slurm
    assert slurm["resources"] == {"bench_slot": 1}
    default = yaml.safe_load((REPO / "workflow/profiles/default/config.yaml").read_text())
    assert default["resources"] == {"bench_slot": 1}


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout


def test_snakefmt_check():
    snakefmt = shutil.which("snakefmt", path=str(BIN)) or shutil.which("snakefmt")
    if snakefmt is None:
        pytest.skip("snakefmt is not installed")
    result = subprocess.run([snakefmt, "--check", "Snakefile", "workflow/"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------------
def test_schema_describes_every_key():
    """Every key has a description and a default; every mapping refuses unknown keys; the
    shipped configs set only known keys (checked by the dry runs) and every default is valid."""
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def walk(node, path):
        if node.get("type") == "object":
            assert "additionalProperties" in node, path
            if "properties" in node:
                assert node["additionalProperties"] is False, path
            if isinstance(node["additionalProperties"], dict):
                walk(node["additionalProperties"], path + "[*]")
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{path}.{key} has no description"
            assert "default" in sub, f"{path}.{key} has no default"
            walk(sub, f"{path}.{key}")

    walk(schema, "config")
    jsonschema = pytest.importorskip("jsonschema")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    smoke = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    assert set(smoke) == set(config) == set(schema["properties"])  # both set every key
    for cfg in (config, smoke):
        jsonschema.Draft202012Validator(schema).validate(cfg)


@pytest.mark.parametrize("text, needles", [
    ("bogus_key: 1\n", ["bogus_key", "Additional properties are not allowed"]),
    ("micro:\n  k: [-1]\n", ["['micro']['k']", "-1 is less than the minimum of 0"]),
    ("micro:\n  methods: [paired, teleport]\n", ["['micro']['methods']", "'teleport'"]),
    ("hosts:\n  node1:\n    cores: 4\n", ["['hosts']['node1']", "'cores' was unexpected"]),
])
def test_invalid_config_is_refused_before_any_job(tmp_path, text, needles):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = snakemake("-n", "--configfile", str(bad))
    assert result.returncode != 0
    assert "Error validating config file" in result.stdout, result.stdout
    for needle in needles:
        assert needle in result.stdout, (needle, result.stdout)
    assert "Building DAG" not in result.stdout  # refused while parsing: no job was considered


def test_nested_config_strings_are_typed():
    """--config values inside a mapping arrive as strings; they are converted (and checked)."""
    result = snakemake("-n", "--config", "paper={enabled: false}", "micro={k: [0, 64]}")
    assert result.returncode == 0, result.stdout
    assert "Paper PDF skipped: config paper.enabled is false" in result.stdout
    assert "paper" not in job_counts(result.stdout)
    refused = snakemake("-n", "--config", "micro={k: [-1]}")
    assert refused.returncode != 0 and "-1 is less than the minimum of 0" in refused.stdout


# ---------------------------------------------------------------------------------------------
# The smoke configuration end to end, in a scratch copy
# ---------------------------------------------------------------------------------------------
def _copy_worktree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the checkout (what a clone would hold plus
    work in progress), without results, logs or build outputs."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot list the work tree")
    for rel in filter(None, listed.stdout.decode().split("\0")):
        src = REPO / rel
        if not src.is_file() or rel.startswith("logs/"):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    if not (REPO / "src/paired_replacement/analysis/__main__.py").is_file():
        pytest.skip("the analysis CLI (python -m paired_replacement.analysis) is not there yet")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler for the per-host build")
    root = tmp_path_factory.mktemp("workflow")
    _copy_worktree(root)
    t0 = time.perf_counter()
    result = snakemake("--workflow-profile", "workflow/profiles/default", "--cores", "2",
                       "--configfile", "config/smoke.yaml", cwd=root, timeout=1800)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in root.glob("logs/**/*.log"))
        pytest.fail(f"smoke run failed (exit {result.returncode}):\n{result.stdout[-6000:]}\n{logs}")
    print(f"smoke run: {seconds:.0f} s")
    return root


def _outputs(root: Path) -> list[Path]:
    return ([root / "paper" / "figures" / f"{name}.{ext}" for name in FIGURES
             for ext in ("pdf", "png")]
            + [root / "paper" / "tables" / f"{name}.tex" for name in TABLES]
            + [root / "paper" / "generated" / "numbers.tex"])


@pytest.mark.slow
def test_smoke_run_makes_every_output(smoke_run):
    root = smoke_run
    for path in _outputs(root):
        assert path.is_file() and path.stat().st_size > 0, path
    assert (root / "paper/figures/micro_speedup.pdf").read_bytes().startswith(b"%PDF")
    assert (root / "paper/figures/micro_speedup.png").read_bytes().startswith(b"\x89PNG")
    hosts = [p.name for p in (root / "results" / "hosts").iterdir()]
    assert len(hosts) == 1
    for name in ["hostinfo.json", "autotune.json", "autotune.csv", "micro.csv", "e2e.csv",
                 "sweep.csv", "perf.csv", "build/manifest.json"]:
        assert (root / "results" / "hosts" / hosts[0] / name).is_file(), name
    for name in ["micro", "e2e", "perf", "autotune", "hosts"]:
        assert (root / "results" / "merged" / f"{name}.csv").is_file(), name
    assert "\\newcommand" in (root / "paper/generated/numbers.tex").read_text()
    for log in ["merge.log", "numbers.log", f"{hosts[0]}/micro.log", "figures/cross_host.log"]:
        assert (root / "logs" / log).is_file(), log
    pdf = root / "paper" / "paper.pdf"
    if paper_buildable(root):
        assert pdf.read_bytes().startswith(b"%PDF")
        assert not (root / "paper" / "paper.aux").exists()  # latexmk -c cleaned up
    else:
        assert not pdf.exists()


@pytest.mark.slow
def test_second_run_has_nothing_to_do(smoke_run):
    result = snakemake("-n", "--configfile", "config/smoke.yaml", cwd=smoke_run)
    assert result.returncode == 0, result.stdout
    assert "Nothing to be done" in result.stdout, result.stdout


@pytest.mark.slow
def test_deleting_one_figure_redraws_only_that_figure(smoke_run):
    root = smoke_run
    victim = root / "paper" / "figures" / "cross_host.png"
    victim.unlink()
    planned = snakemake("-n", "--configfile", "config/smoke.yaml", cwd=root)
    assert planned.returncode == 0, planned.stdout
    counts = job_counts(planned.stdout)
    assert counts.pop("figures") == 1, counts
    assert "wildcards: name=cross_host" in planned.stdout
    # Downstream of the figure only: the paper (when built) and the target.
    assert set(counts) <= {"paper", "all"}, counts

    others = [p for p in _outputs(root) if p.stem != "cross_host"]
    others += sorted((root / "results").rglob("*.csv"))
    before = {p: p.stat().st_mtime_ns for p in others}
    result = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=root)
    assert result.returncode == 0, result.stdout
    assert victim.is_file()
    assert {p: p.stat().st_mtime_ns for p in others} == before  # nothing else was redone


@pytest.mark.slow
def test_redraw_only_never_schedules_a_benchmark(smoke_run):
    root = smoke_run
    (root / "paper" / "tables" / "hosts.tex").unlink()
    # Edit a C++ source: a normal run would now rebuild and re-measure everything ...
    header = root / "csrc/paired_replacement/weight_cache.hpp"
    text, stat = header.read_bytes(), header.stat()
    header.write_bytes(text + b"\n// edited\n")
    normal = snakemake("-n", "--configfile", "config/smoke.yaml", cwd=root)
    header.write_bytes(text)
    os.utime(header, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert normal.returncode == 0, normal.stdout
    assert BENCH_RULES - {"hostinfo"} <= set(job_counts(normal.stdout)), normal.stdout
    # ... redraw_only redraws from results/merged/ as it is.
    for target in (["paper_figures"], []):
        redraw = snakemake(*target, "-n", "--configfile", "config/smoke.yaml", "--config",
                           "redraw_only=true", cwd=root)
        assert redraw.returncode == 0, redraw.stdout
        counts = job_counts(redraw.stdout)
        assert counts.get("tables") == 1, counts
        assert not (set(counts) & (BENCH_RULES | {"merge"})), counts
    done = snakemake("paper_figures", "--cores", "2", "--configfile", "config/smoke.yaml",
                     "--config", "redraw_only=true", cwd=root)
    assert done.returncode == 0, done.stdout
    assert (root / "paper" / "tables" / "hosts.tex").is_file()


@pytest.mark.slow
def test_copied_host_folder_is_merged_never_measured(smoke_run):
    """A host folder copied in from another machine joins the merge and the figures; none of
    its files is remade here."""
    root = smoke_run
    hosts_dir = root / "results" / "hosts"
    here = next(p.name for p in hosts_dir.iterdir())
    other = hosts_dir / "otherbox"
    other.mkdir()
    for name in ["hostinfo.json", "micro.csv", "e2e.csv"]:  # a partial folder is fine
        text = (hosts_dir / here / name).read_text()
        if name.endswith(".json"):
            text = text.replace(f'"host_id": "{here}"', '"host_id": "otherbox"')
        else:
            text = re.sub(rf"^{re.escape(here)},", "otherbox,", text, flags=re.M)
        (other / name).write_text(text)
    planned = snakemake("-n", "--configfile", "config/smoke.yaml", cwd=root)
    assert planned.returncode == 0, planned.stdout
    counts = job_counts(planned.stdout)
    assert counts.get("merge") == 1, counts
    assert not (set(counts) & BENCH_RULES), counts
    result = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=root)
    assert result.returncode == 0, result.stdout
    merged_hosts = (root / "results" / "merged" / "hosts.csv").read_text()
    assert "otherbox" in merged_hosts and here in merged_hosts
    assert sorted(p.name for p in other.iterdir()) == ["e2e.csv", "hostinfo.json", "micro.csv"]


def test_redraw_only_without_merged_tables_says_what_is_missing(tmp_path):
    shutil.copy2(REPO / "Snakefile", tmp_path / "Snakefile")
    for folder in ("workflow", "config"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    result = snakemake("-n", "--config", "redraw_only=true", cwd=tmp_path)
    assert result.returncode != 0
    assert "redraw_only is true" in result.stdout and "results/merged/micro.csv" in result.stdout
