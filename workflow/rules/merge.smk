# All host folders -> one schema-checked table per kind in results/merged/, plus study.json (the
# primary host, whether this is a smoke run, the config of this run, the hosts merged and the
# hosts skipped). The inputs are this run's host results plus the files of folders copied in
# from other machines; the merge command itself scans results/hosts/, so every folder there is
# merged. With merge.skip_invalid an invalid folder is left out with a warning (on the terminal,
# in the log, in study.json and so in the paper's hosts table) instead of failing the merge.
#
# redraw_only: no merge rule at all, so results/merged/ is an input as it stands and nothing
# upstream (no benchmark) can be scheduled; figures, tables and numbers are redrawn from it.

if config["redraw_only"]:

    require_merged_tables()

else:

    # The configuration of this run as a file: merge copies it into study.json, so the report
    # and the paper describe the config the results came from, not whatever config is current
    # when they are rendered. Its text is a param: a config change re-runs it (and the merge).
    rule study_config:
        output:
            yaml="results/study_config.yaml",
        log:
            "logs/study_config.log",
        localrule: True
        params:
            text=study_config_text(),
        message:
            "Recording this run's configuration for the merged results"
        run:
            Path(output.yaml).write_text(params.text)
            Path(log[0]).write_text(f"wrote {output.yaml}\n")

    rule merge:
        input:
            unpack(merge_inputs),
            study_config="results/study_config.yaml",
            code=analysis_code(),
        output:
            micro=report(
                "results/merged/micro.csv",
                caption="../report/merged.rst",
                category="Data",
            ),
            e2e=report(
                "results/merged/e2e.csv",
                caption="../report/merged.rst",
                category="Data",
            ),
            perf=report(
                "results/merged/perf.csv",
                caption="../report/merged.rst",
                category="Data",
            ),
            autotune=report(
                "results/merged/autotune.csv",
                caption="../report/merged.rst",
                category="Data",
            ),
            hosts=report(
                "results/merged/hosts.csv",
                caption="../report/merged.rst",
                category="Data",
            ),
            churn=report(
                "results/merged/churn.csv",
                caption="../report/merged.rst",
                category="Data",
            ),
            churn_tokens="results/merged/churn_tokens.csv",
            quality=report(
                "results/merged/quality.csv",
                caption="../report/merged.rst",
                category="Data",
            ),
            micro_trace=report(
                "results/merged/micro_trace.csv",
                caption="../report/merged.rst",
                category="Data",
            ),
            decode=report(
                "results/merged/decode.csv",
                caption="../report/merged.rst",
                category="Data",
            ),
            micro_file=report(
                "results/merged/micro_file.csv",
                caption="../report/merged.rst",
                category="Data",
            ),
            study=report(
                "results/merged/study.json",
                caption="../report/study.rst",
                category="Study",
            ),
        log:
            "logs/merge.log",
        localrule: True
        conda:
            "../envs/pipeline.yaml"
        params:
            hosts_dir=lambda wildcards, input: Path(input.hostinfo[0]).parent.parent,
            out_dir=lambda wildcards, output: Path(output.micro).parent,
            flags=merge_args(),
        message:
            "Merging every host folder under results/hosts/ into results/merged/"
        shell:
            "python -m paired_replacement.analysis merge --hosts-dir {params.hosts_dir} "
            "--out-dir {params.out_dir} --study-config {input.study_config} {params.flags} "
            "2>&1 | tee {log}"
