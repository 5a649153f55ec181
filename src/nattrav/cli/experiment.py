"""nattrav-experiment: run a declarative sweep of trials in the NAT lab, and plot what it recorded.

    nattrav-experiment run sweep.toml --out results.jsonl      # resumes: recorded trials are skipped
    nattrav-experiment plot results.jsonl --out-dir plots/     # PNG + SVG from the JSON lines only
    nattrav-experiment plot results.jsonl --x max_flows --series background
    nattrav-experiment table results.jsonl --title "UDP matrix" > results.md   # per case, Wilson intervals
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UsageError
from .exits import EXIT_OK, EXIT_USAGE, HANDLED, exit_code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nattrav-experiment", description=__doc__.splitlines()[0],
                                epilog="The sweep file's format is described in nattrav/experiment/sweep.py "
                                "(and examples/experiment/sweep.toml). `run` needs root (the NAT lab).",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the trials of a sweep not yet in the output")
    r.add_argument("spec", help="sweep spec, .toml or .json")
    r.add_argument("--out", required=True, help="JSON lines file to append to")
    r.add_argument("--plain", action="store_true", help="one progress line a trial instead of a live bar")
    r.add_argument("--json", action="store_true", help="print the counts as JSON")
    pl = sub.add_parser("plot", help="figures from recorded JSON lines")
    pl.add_argument("files", nargs="+")
    pl.add_argument("--out-dir", required=True)
    pl.add_argument("--prefix", default="")
    pl.add_argument("--x", help="an option to put on the x axis of a two-parameter plot")
    pl.add_argument("--series", help="an option or case field (background, shape) for its lines")
    tb = sub.add_parser("table", help="a markdown table per case (success, Wilson interval, odds, times)")
    tb.add_argument("files", nargs="+")
    tb.add_argument("--title", default="nattrav experiment")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "run":
            from ..experiment.runner import load_spec, run_sweep

            try:
                spec = load_spec(args.spec)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read the sweep spec {args.spec}: {exc}") from None
            counts = run_sweep(spec, args.out, live=not args.plain)
            print(json.dumps(counts) if args.json else
                  f"{counts['ran']} trials run ({counts['ok']} connected), {counts['skipped']} already recorded, "
                  f"{counts['total']} in the sweep")
            return EXIT_OK
        from ..experiment import plots

        try:
            rows = plots.load(*args.files)
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
        if args.cmd == "table":
            from ..experiment.tables import markdown

            print(markdown(rows, args.title), end="")
            return EXIT_OK
        written = plots.all_plots(rows, args.out_dir, args.prefix)
        if args.x and args.series:
            written += plots.two_params(rows, plots.Path(args.out_dir), args.x, args.series,
                                        f"{args.prefix}{args.x}-by-{args.series}")
        elif args.x or args.series:
            raise UsageError("--x and --series go together")
        for w in written:
            print(w)
        if not written:
            print("nothing to plot: no trial rows in those files", file=sys.stderr)
        return EXIT_OK
    except ImportError as exc:
        print(f"nattrav-experiment: {exc.name} is missing: pip install 'nattrav[experiment]'", file=sys.stderr)
        return EXIT_USAGE
    except HANDLED as exc:
        print(f"nattrav-experiment: {'interrupted' if isinstance(exc, KeyboardInterrupt) else exc}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
