# This host's description (CPU, caches, ISA flags, memory, OS, versions): merge's hosts.csv.
# PAIRED_REPLACEMENT_HOST pins the id written inside every result to the folder's name.


rule hostinfo:
    output:
        json="results/hosts/{host}/hostinfo.json",
    log:
        "logs/{host}/hostinfo.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        slurm_extra=host_slurm_extra,
    params:
        placement=placement,
    message:
        "{wildcards.host}: describing the machine (CPU, caches, ISA, memory, versions){params.placement}"
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench hostinfo --out {output.json} > {log} 2>&1"
