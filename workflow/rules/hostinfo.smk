# This host's description (CPU, caches, ISA flags, memory, OS, versions): merge's hosts.csv.
# PAIRED_REPLACEMENT_HOST pins the id written inside every result to the folder's name.


rule hostinfo:
    output:
        json="results/hosts/{host}/hostinfo.json",
    log:
        "logs/{host}/hostinfo.log",
    message:
        "{wildcards.host}: describing the machine (CPU, caches, ISA, memory, versions)"
    conda:
        "../envs/pipeline.yaml"
    resources:
        slurm_extra=host_slurm_extra,
    shell:
        "PAIRED_REPLACEMENT_HOST={wildcards.host} "
        "python -m paired_replacement.bench hostinfo --out {output.json} > {log} 2>&1"
