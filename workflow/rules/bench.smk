# The benchmarks of one host. Each takes the host's build and (unless autotune.enabled is false)
# its autotune JSON. None of them may run beside another benchmark of the host: each claims
# every core of the job (threads) and the one `bench_slot` the profiles allow, and on a cluster
# an --exclusive node (slurm_extra). Progress lines and the goal tables go to the logs.


rule micro:
    input:
        unpack(bench_inputs),
    output:
        csv="results/hosts/{host}/micro.csv",
    log:
        "logs/{host}/micro.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        build_dir=lambda wildcards, input: Path(input.build).parent,
        tuning=tuning_arg,
        args=micro_args(),
        timing=timing_args(),
        threads=torch_threads,
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench micro {params.args} {params.timing} "
        "--threads {params.threads} --build-dir {params.build_dir} {params.tuning} "
        "--out {output.csv} > {log} 2>&1"


rule e2e:
    input:
        unpack(bench_inputs),
    output:
        csv="results/hosts/{host}/e2e.csv",
    log:
        "logs/{host}/e2e.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        build_dir=lambda wildcards, input: Path(input.build).parent,
        tuning=tuning_arg,
        args=e2e_args(),
        timing=timing_args(),
        threads=torch_threads,
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench e2e {params.args} {params.timing} "
        "--threads {params.threads} --build-dir {params.build_dir} {params.tuning} "
        "--out {output.csv} > {log} 2>&1"


rule sweep:
    input:
        unpack(bench_inputs),
    output:
        csv="results/hosts/{host}/sweep.csv",
    log:
        "logs/{host}/sweep.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        build_dir=lambda wildcards, input: Path(input.build).parent,
        tuning=tuning_arg,
        args=sweep_args(),
        timing=timing_args(),
        threads=torch_threads,
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench sweep {params.args} {params.timing} "
        "--threads {params.threads} --build-dir {params.build_dir} {params.tuning} "
        "--out {output.csv} > {log} 2>&1"


# Counters of the timed updates (perf stat, else cachegrind). The counted program is a
# torch-free single-threaded C++ driver that perf compiles itself with generic flags (cached in
# perf_driver/ next to the CSV), so it takes neither the build nor the autotune JSON; its sources
# are inputs instead. It still holds the node alone: hardware counters see everything that runs.
rule perf:
    input:
        driver="csrc/tools/perf_driver.cpp",
        core="csrc/paired_replacement/weight_cache.hpp",
    output:
        csv="results/hosts/{host}/perf.csv",
    log:
        "logs/{host}/perf.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        args=perf_args(),
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench perf {params.args} --jobs {threads} "
        "--out {output.csv} > {log} 2>&1"
