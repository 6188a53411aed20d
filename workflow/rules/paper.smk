# paper/paper.pdf from paper/paper.tex (and any other hand-written .tex/.bib/.sty in paper/)
# with every figure, table and the numbers as inputs. latexmk runs in paper/ (-cd); its
# auxiliary files are cleaned away after a successful build (on failure they stay, with the log).
# Part of the default target only when paper.enabled is true and latexmk is on PATH.


rule paper:
    input:
        tex="paper/paper.tex",
        sources=paper_sources(),
        figures=expand("paper/figures/{name}.pdf", name=FIGURES),
        tables=expand("paper/tables/{name}.tex", name=TABLES),
        numbers="paper/generated/numbers.tex",
    output:
        pdf=report("paper/paper.pdf", caption="../report/paper.rst", category="Paper"),
    log:
        "logs/paper.log",
    localrule: True
    conda:
        "../envs/latex.yaml"
    message:
        "Building paper/paper.pdf with latexmk ({log})"
    shell:
        "latexmk -pdf -cd -interaction=nonstopmode -halt-on-error {input.tex} > {log} 2>&1 "
        "&& latexmk -c -cd {input.tex} >> {log} 2>&1"
