# The ops compiled for this host (-march=native / -mcpu=native unless build.generic) into
# results/hosts/{host}/build/ with a manifest; every benchmark of the host uses this build.
# The C++ sources are inputs (an edit rebuilds, and re-runs the benchmarks); they are compiled
# from the working tree (PAIRED_REPLACEMENT_SOURCE_ROOT), the same files as the inputs. The
# library is an output; build/ninja/ is not: the compiler's scratch folder, made afresh by each
# rebuild (hostbuild), so nothing of a previous compile can leak into the new library.


rule build:
    input:
        binding="csrc/binding/weight_cache_torch.cpp",
        core="csrc/paired_replacement/weight_cache.hpp",
        row_ffn="csrc/paired_replacement/row_ffn.hpp",
        file_pool="csrc/paired_replacement/file_pool.hpp",
        flags="src/paired_replacement/_buildflags.py",
    output:
        manifest="results/hosts/{host}/build/manifest.json",
        library="results/hosts/{host}/build/paired_replacement_ops.so",
    log:
        "logs/{host}/build.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        slurm_extra=host_slurm_extra,
    params:
        placement=placement,
        out_dir=lambda wildcards, output: Path(output.manifest).parent,
        source_root=lambda wildcards, input: Path(input.binding).parent.parent.parent,
        flags=build_args(),
    message:
        "{wildcards.host}: compiling the ops for this host ({log}){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "PAIRED_REPLACEMENT_SOURCE_ROOT={params.source_root} "
        "paired-replacement-build --out {params.out_dir} {params.flags} > {log} 2>&1"
