"""Benchmark suite: ``python -m paired_replacement.bench <command> --help``.

Commands: micro (one update vs k), e2e and sweep (decode steps of a sparse FFN), autotune
(per-host settings search), perf (counters of the timed updates), hostinfo (host description).
Timing interleaves the methods of a configuration round by round in several fresh processes
(timing.py, stats.py, load.py); outputs are schema-checked CSVs (schemas/) with host metadata and
the raw values as pyperf JSON.
"""
