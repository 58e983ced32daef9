"""The `intq` command: one function per subcommand, user errors as one line and exit 2."""
from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import IntqError


def cmd_inspect(args) -> int:
    from .analysis import format_table, layer_table
    from .pipeline import float_graph

    table = layer_table(float_graph(args.model))
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="intq", description="Integer-only inference compiler for CNNs.")
    p.add_argument("--version", action="version", version=f"intq {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", help="show the graph after the float passes, with MACs and parameters")
    s.add_argument("model", help="ONNX file")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_inspect)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IntqError as e:
        print(f"intq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("intq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
