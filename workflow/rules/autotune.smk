# grain x par_threshold x tau on the configured shape: the winner (JSON, tied to this host's
# fingerprint) feeds every benchmark of the host; the CSV of all candidates feeds the
# autotune_landscape figure. Skipped entirely when autotune.enabled is false. The masks and the
# raw timings of both phases are outputs too (removed before a re-run).


rule autotune:
    input:
        build="results/hosts/{host}/build/manifest.json",
    output:
        json="results/hosts/{host}/autotune.json",
        csv="results/hosts/{host}/autotune.csv",
        side=multiext(
            "results/hosts/{host}/autotune",
            ".tune.masks.pt",
            ".tune.pyperf.json",
            ".tune.pyperf.spec.json",
            ".held_out.masks.pt",
            ".held_out.pyperf.json",
            ".held_out.pyperf.spec.json",
        ),
    log:
        "logs/{host}/autotune.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        placement=placement,
        build_dir=lambda wildcards, input: Path(input.build).parent,
        shape=autotune_args(),
        timing=timing_args(),
        threads=torch_threads,
    message:
        "{wildcards.host}: autotune, grain x par_threshold x tau per thread count, then the "
        "winner on held-out masks (progress below and in {log}){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench autotune {params.shape} {params.timing} "
        "--threads {params.threads} --build-dir {params.build_dir} "
        "--out {output.json} --csv {output.csv} 2>&1 | tee {log}"
