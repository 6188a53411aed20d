# The pipeline of the paper: per-host build, autotune and benchmarks -> merged tables ->
# figures, tables, numbers -> paper/paper.pdf. Usage and every config key: config/README.md.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


# Nested --config values arrive as strings (e.g. --config paper='{enabled: false}'); they are
# converted to the schema's types first, then the config is checked (schema, then relations
# between keys such as k <= m) and completed with the schema's defaults before any rule is
# defined: a bad value stops the run here, in a few lines naming the key.
validate_config(coerce_config(config))


report: "workflow/report/workflow.rst"


wildcard_constraints:
    host=host_constraint(),


include: "workflow/rules/hostinfo.smk"
include: "workflow/rules/build.smk"
include: "workflow/rules/autotune.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"


rule all:
    default_target: True
    input:
        final_targets(),
    localrule: True


onsuccess:
    report_skipped()
