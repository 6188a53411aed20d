# All host folders -> one schema-checked table per kind in results/merged/. The inputs are this
# run's host results plus the files of folders copied in from other machines; the merge command
# itself scans results/hosts/, so every folder there is merged. With merge.skip_invalid an
# invalid folder is left out with a warning instead of failing the merge.
#
# redraw_only: no merge rule at all, so results/merged/ is an input as it stands and nothing
# upstream (no benchmark) can be scheduled; figures, tables and numbers are redrawn from it.

if config["redraw_only"]:

    require_merged_tables()

else:

    rule merge:
        input:
            unpack(merge_inputs),
            code=analysis_code(),
        output:
            micro="results/merged/micro.csv",
            e2e="results/merged/e2e.csv",
            perf="results/merged/perf.csv",
            autotune="results/merged/autotune.csv",
            hosts="results/merged/hosts.csv",
        log:
            "logs/merge.log",
        localrule: True
        conda:
            "../envs/pipeline.yaml"
        params:
            hosts_dir=lambda wildcards, input: Path(input.hostinfo[0]).parent.parent,
            out_dir=lambda wildcards, output: Path(output.micro).parent,
            flags=merge_args(),
        shell:
            "python -m paired_replacement.analysis merge --hosts-dir {params.hosts_dir} "
            "--out-dir {params.out_dir} {params.flags} > {log} 2>&1"
