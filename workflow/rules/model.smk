# The real-model stage (not per host: the masks depend on the model and the corpus, not on the
# machine): SmolLM2-135M-Instruct run offline over the licence texts, its MLP activations turned
# into mask traces per policy x density x window (results/traces/), then their churn, replayed
# through the reference cache, and the held-out perplexity with every FFN masked online by each
# policy (results/model/), and on each host the greedy decode with a weight cache per layer
# (results/hosts/<host>/decode.csv). merge takes them into results/merged/. Without
# the `model` extra the rules are not used and merge records why (model_skip_reason).


rule traces:
    output:
        traces=directory("results/traces"),
    log:
        "logs/model/traces.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        # the extraction speed is measured: nothing else runs beside it
        bench_slot=1,
    params:
        args=model_args(),
    message:
        "Real model: recording SmolLM2's MLP activations and writing mask traces (progress "
        "below and in {log})"
    shell:
        "HF_HUB_OFFLINE=1 python -m paired_replacement.model traces {params.args} "
        "--time-dense --threads 1 --out {output.traces} 2>&1 | tee {log}"


rule churn:
    input:
        traces="results/traces",
    output:
        churn="results/model/churn.csv",
        tokens="results/model/churn_tokens.csv",
    log:
        "logs/model/churn.log",
    conda:
        "../envs/pipeline.yaml"
    message:
        "Real model: churn of every trace (additions, removals, rows the cache writes)"
    shell:
        "python -m paired_replacement.model churn --traces {input.traces} "
        "--out {output.churn} --per-token {output.tokens} > {log} 2>&1"


rule quality:
    output:
        csv="results/model/quality.csv",
    log:
        "logs/model/quality.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    params:
        args=quality_args(),
    message:
        "Real model: held-out perplexity, dense and with every FFN masked by each policy "
        "(progress below and in {log})"
    shell:
        "HF_HUB_OFFLINE=1 python -m paired_replacement.model quality {params.args} "
        "--threads 1 --out {output.csv} 2>&1 | tee {log}"


# Greedy decode of the real model on each host (timed: it holds the host like a benchmark), every
# layer's FFN behind a weight cache of the host's build, one method after another run by run.
rule decode:
    input:
        unpack(bench_inputs),
    output:
        csv="results/hosts/{host}/decode.csv",
        details="results/hosts/{host}/decode.json",
    log:
        "logs/{host}/decode.log",
    conda:
        "../envs/pipeline.yaml"
    threads: bench_threads
    resources:
        bench_slot=1,
        slurm_extra=bench_slurm_extra,
    params:
        placement=placement,
        build_dir=lambda wildcards, input: Path(input.build).parent,
        args=decode_args(),
    message:
        "{wildcards.host}: real decode, SmolLM2 token by token with a weight cache per layer, every method interleaved (progress below and in {log}){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} HF_HUB_OFFLINE=1 "
        "python -m paired_replacement.model decode {params.args} "
        "--build-dir {params.build_dir} --out {output.csv} --json {output.details} "
        "2>&1 | tee {log}"
