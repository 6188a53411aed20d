# Figures (PDF + PNG, in the report), LaTeX tables and the numbers macro file of the paper, all
# drawn from results/merged/ only. `paper_figures` is the target that regenerates all of them;
# with redraw_only it never runs a benchmark (see config/README.md).


rule figures:
    input:
        **merged_tables(),
        code=analysis_code(),
    output:
        pdf=report(
            "paper/figures/{name}.pdf",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{name}", "format": "PDF"},
        ),
        png=report(
            "paper/figures/{name}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{name}", "format": "PNG"},
        ),
    log:
        "logs/figures/{name}.log",
    wildcard_constraints:
        name="|".join(FIGURES),
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    params:
        merged_dir=lambda wildcards, input: Path(input.micro).parent,
    message:
        "Drawing figure {wildcards.name} from results/merged/"
    shell:
        "python -m paired_replacement.analysis figure {wildcards.name} "
        "--merged-dir {params.merged_dir} --out {output.pdf} > {log} 2>&1"


rule tables:
    input:
        **merged_tables(),
        code=analysis_code(),
    output:
        tex=report(
            "paper/tables/{name}.tex",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{name}"},
        ),
    log:
        "logs/tables/{name}.log",
    wildcard_constraints:
        name="|".join(TABLES),
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    params:
        merged_dir=lambda wildcards, input: Path(input.micro).parent,
    message:
        "Writing table {wildcards.name} from results/merged/"
    shell:
        "python -m paired_replacement.analysis table {wildcards.name} "
        "--merged-dir {params.merged_dir} --out {output.tex} > {log} 2>&1"


rule numbers:
    input:
        **merged_tables(),
        code=analysis_code(),
    output:
        tex=report(
            "paper/generated/numbers.tex",
            caption="../report/numbers.rst",
            category="Numbers",
        ),
    log:
        "logs/numbers.log",
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    params:
        merged_dir=lambda wildcards, input: Path(input.micro).parent,
    message:
        "Writing the numbers and data-dependent sentences of the paper (numbers.tex)"
    shell:
        "python -m paired_replacement.analysis numbers "
        "--merged-dir {params.merged_dir} --out {output.tex} > {log} 2>&1"


# Target: every figure, table and the numbers, without the PDF.
rule paper_figures:
    input:
        analysis_outputs(),
    localrule: True
