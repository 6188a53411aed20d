"""Command line of the analysis stage: merge, figure, table, numbers (each with --help)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bench.common import SchemaError
from . import merge


def _figure(args: argparse.Namespace) -> int:
    from .figures import render

    if args.out.suffix.lower() != ".pdf":
        print(f"error: --out must end in .pdf (the .png goes next to it), got {args.out}",
              file=sys.stderr)
        return 2
    pdf, png = render(args.name, args.merged_dir, args.out)
    if not args.quiet:
        print(f"wrote {pdf} and {png}")
    return 0


def _table(args: argparse.Namespace) -> int:
    from .data import Merged
    from .latex import write_text
    from .tables import TABLES

    path = write_text(args.out, TABLES[args.name](Merged(args.merged_dir)))
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def _numbers(args: argparse.Namespace) -> int:
    from .data import Merged
    from .latex import write_text
    from .numbers import numbers

    path = write_text(args.out, numbers(Merged(args.merged_dir)))
    if not args.quiet:
        print(f"wrote {path}")
    return 0


# Names only (the figure/table modules import matplotlib, seaborn: loaded when used).
FIGURE_NAMES = ["micro_speedup", "micro_efficiency", "e2e_speedup", "perf_counters",
                "autotune_landscape", "cross_host", "micro_time", "model_churn", "micro_trace",
                "model_decode", "tiers"]
TABLE_NAMES = ["micro_summary", "e2e_summary", "hosts", "model_churn", "model_quality",
               "model_decode"]


def _add_io_args(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The options figure, table and numbers share: where merge wrote, what to write."""
    parser.add_argument("--merged-dir", required=True, type=Path, help="output folder of merge")
    parser.add_argument("--out", required=True, type=Path, help=out_help)
    parser.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m paired_replacement.analysis",
        description="Analysis stage: merge per-host results, then render figures, LaTeX tables "
                    "and the numbers macro file. Missing data never fails a figure, table or "
                    "number: it shows as 'no data' / \\textit{n/a}.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    merge.add_parser(sub)

    fig = sub.add_parser("figure", help="one figure as PDF + PNG",
                         description="Render figure NAME from the merged tables to PATH.pdf and "
                                     "PATH.png (matplotlib Agg, seaborn). Error bars: 95% CI.")
    fig.add_argument("name", metavar="NAME", choices=FIGURE_NAMES,
                     help="one of: " + ", ".join(FIGURE_NAMES))
    _add_io_args(fig, out_help="PDF to write (PNG goes next to it)")
    fig.set_defaults(func=_figure)

    tab = sub.add_parser("table", help="one LaTeX (booktabs) tabular",
                         description="Write table NAME from the merged tables as a booktabs "
                                     "tabular (\\usepackage{booktabs}).")
    tab.add_argument("name", metavar="NAME", choices=TABLE_NAMES,
                     help="one of: " + ", ".join(TABLE_NAMES))
    _add_io_args(tab, out_help=".tex file to write")
    tab.set_defaults(func=_table)

    num = sub.add_parser("numbers", help="\\newcommand macros of the numbers the paper quotes",
                         description="Write one \\newcommand{\\Name}{value} per number the paper "
                                     "text quotes (see paired_replacement.analysis.numbers for "
                                     "the list); missing data gives \\textit{n/a}.")
    _add_io_args(num, out_help=".tex file to write")
    num.set_defaults(func=_numbers)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SchemaError as exc:  # a merged table that does not match its schema
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
