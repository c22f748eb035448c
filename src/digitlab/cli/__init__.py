"""The ``digitlab`` command line: parses arguments and calls library functions.

Each command group lives in its own module exposing ``register(subparsers)``;
a command's handler returns an exit code. A :class:`DigitlabError` becomes one
line on stderr and exit status 2 — no traceback for user errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from digitlab import __version__
from digitlab.errors import DigitlabError

# command modules, in --help order
COMMAND_MODULES = ("data", "explore", "models", "train", "evaluate", "analysis", "study",
                   "predict", "serve", "export", "bench")

EPILOG = """examples:
  digitlab data info --dataset mnist --json
  digitlab explore --out explore/
  digitlab train --model cnn-simple --epochs 1 --out runs/a
  digitlab evaluate runs/a --json
  digitlab study --preset quick --out studies/q
  digitlab predict my_digits/ --json
  digitlab serve --port 8000
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitlab", description="Handwritten-digit recognition toolkit.",
        epilog=EPILOG, formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"digitlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"digitlab.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"digitlab.cli.{name}":
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


def add_data_args(p: argparse.ArgumentParser) -> None:
    """``--dataset`` and ``--data-dir``, shared by every command that loads data."""
    p.add_argument("--dataset", default="mnist", help="dataset name (mnist, fashion-mnist)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the four IDX files (else $DIGITLAB_DATA_DIR, the cache, the system dir)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except DigitlabError as exc:
        print(f"digitlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("digitlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
