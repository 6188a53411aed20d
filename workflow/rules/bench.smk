# The benchmarks of one host. Each takes the host's build and (unless autotune.enabled is false)
# its autotune JSON. None of them may run beside another benchmark of the host: each claims
# every core of the job (threads) and the one `bench_slot` the profiles allow, and on a cluster
# an --exclusive node (slurm_extra); across Snakemake processes (an orphan of a killed run) the
# benchmark's own lock on results/hosts/<host>/.bench.lock refuses a second one. Every file a
# benchmark writes is an output, so Snakemake removes all of them before a re-run. Progress
# lines (with an ETA) and the goal tables go to the terminal and to the log.


rule micro:
    input:
        unpack(bench_inputs),
    output:
        csv="results/hosts/{host}/micro.csv",
        pyperf="results/hosts/{host}/micro.pyperf.json",
        spec="results/hosts/{host}/micro.pyperf.spec.json",
        masks=directory("results/hosts/{host}/micro.masks"),
    log:
        "logs/{host}/micro.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        placement=placement,
        build_dir=lambda wildcards, input: Path(input.build).parent,
        tuning=tuning_arg,
        args=micro_args(),
        timing=timing_args(),
        threads=torch_threads,
    message:
        "{wildcards.host}: micro benchmark, one update vs k, every method interleaved (the longest step; progress below and in {log}){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench micro {params.args} {params.timing} "
        "--threads {params.threads} --build-dir {params.build_dir} {params.tuning} "
        "--out {output.csv} 2>&1 | tee {log}"


# micro on the real model's recorded masks (results/traces/, made by the model stage; the rule
# is a target only when that stage runs): the model's N and hidden size, and tile x N with the
# masks of `tile` consecutive layers side by side (rows say so: trace, trace_tile).
rule micro_trace:
    input:
        unpack(bench_inputs),
        traces=TRACES_DIR,
    output:
        csv="results/hosts/{host}/micro_trace.csv",
        pyperf="results/hosts/{host}/micro_trace.pyperf.json",
        spec="results/hosts/{host}/micro_trace.pyperf.spec.json",
        masks=directory("results/hosts/{host}/micro_trace.masks"),
    log:
        "logs/{host}/micro_trace.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        placement=placement,
        build_dir=lambda wildcards, input: Path(input.build).parent,
        tuning=tuning_arg,
        args=lambda wildcards, input: micro_trace_args(input.traces),
        timing=timing_args(),
        threads=torch_threads,
    message:
        "{wildcards.host}: micro benchmark on the real model's recorded masks, per trace and tile (progress below and in {log}){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench micro {params.args} {params.timing} "
        "--threads {params.threads} --build-dir {params.build_dir} {params.tuning} "
        "--out {output.csv} 2>&1 | tee {log}"


# micro on the file tier: the pool in a pool file (written next to the CSV, deleted after the
# run), the packed block in memory; paired vs a full reload of the active rows vs the disk's own
# speed at the same queue depth (the CSV's io_mode says the page cache was bypassed).
rule micro_file:
    input:
        unpack(bench_inputs),
    output:
        csv="results/hosts/{host}/micro_file.csv",
        pyperf="results/hosts/{host}/micro_file.pyperf.json",
        spec="results/hosts/{host}/micro_file.pyperf.spec.json",
        masks=directory("results/hosts/{host}/micro_file.masks"),
    log:
        "logs/{host}/micro_file.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        placement=placement,
        build_dir=lambda wildcards, input: Path(input.build).parent,
        tuning=tuning_arg,
        args=micro_file_args(),
        timing=timing_args(),
        threads=torch_threads,
    message:
        "{wildcards.host}: micro benchmark on the file tier (pool file read with direct I/O vs a full reload and the disk's speed; progress below and in {log}){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench micro {params.args} {params.timing} "
        "--threads {params.threads} --build-dir {params.build_dir} {params.tuning} "
        "--out {output.csv} 2>&1 | tee {log}"


# The CUDA tier (only where torch sees a GPU: cuda_skip_reason): the device-resident cache's
# equivalence checks on the GPU, then CUDA-event timings of paired updates (pool on the device,
# pool pinned in host memory) vs an on-device index_select rebuild and a full .to(device).
rule cuda_tier:
    input:
        unpack(bench_inputs),
    output:
        json="results/hosts/{host}/cuda.json",
    log:
        "logs/{host}/cuda.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        placement=placement,
        build_dir=lambda wildcards, input: Path(input.build).parent,
    message:
        "{wildcards.host}: the CUDA tier (GPU equivalence checks and CUDA-event timings; {log}){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.gpu_check --require-gpu --build-dir {params.build_dir} "
        "--json {output.json} 2>&1 | tee {log}"


rule e2e:
    input:
        unpack(bench_inputs),
    output:
        csv="results/hosts/{host}/e2e.csv",
        pyperf="results/hosts/{host}/e2e.pyperf.json",
        spec="results/hosts/{host}/e2e.pyperf.spec.json",
    log:
        "logs/{host}/e2e.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        placement=placement,
        build_dir=lambda wildcards, input: Path(input.build).parent,
        tuning=tuning_arg,
        args=e2e_args(),
        timing=timing_args(),
        threads=torch_threads,
    message:
        "{wildcards.host}: e2e benchmark, decode steps of a sparse SwiGLU FFN (progress below and in {log}){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench e2e {params.args} {params.timing} "
        "--threads {params.threads} --build-dir {params.build_dir} {params.tuning} "
        "--out {output.csv} 2>&1 | tee {log}"


rule sweep:
    input:
        unpack(bench_inputs),
    output:
        csv="results/hosts/{host}/sweep.csv",
        pyperf="results/hosts/{host}/sweep.pyperf.json",
        spec="results/hosts/{host}/sweep.pyperf.spec.json",
    log:
        "logs/{host}/sweep.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        placement=placement,
        build_dir=lambda wildcards, input: Path(input.build).parent,
        tuning=tuning_arg,
        args=sweep_args(),
        timing=timing_args(),
        threads=torch_threads,
    message:
        "{wildcards.host}: sweep benchmark, decode steps over m x batch x hidden (progress below and in {log}){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench sweep {params.args} {params.timing} "
        "--threads {params.threads} --build-dir {params.build_dir} {params.tuning} "
        "--out {output.csv} 2>&1 | tee {log}"


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
        driver=directory("results/hosts/{host}/perf_driver"),
    log:
        "logs/{host}/perf.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        placement=placement,
        args=perf_args(),
    message:
        "{wildcards.host}: perf benchmark, counters of the timed updates (perf stat or cachegrind; {log}){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench perf {params.args} --jobs {threads} "
        "--out {output.csv} 2>&1 | tee {log}"
