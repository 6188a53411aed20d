"""Analysis stage of the pipeline: merge the per-host results, then figures, tables and numbers.

    python -m paired_replacement.analysis merge   --hosts-dir results/hosts --out-dir results/merged
    python -m paired_replacement.analysis figure  NAME --merged-dir results/merged --out F.pdf
    python -m paired_replacement.analysis table   NAME --merged-dir results/merged --out T.tex
    python -m paired_replacement.analysis numbers --merged-dir results/merged --out N.tex

Modules: ``data`` (loading and row selection), ``merge``, ``figures`` (``FIGURES``), ``tables``
(``TABLES``), ``numbers`` (the macro list), ``latex`` (escaping and formatting).
"""
