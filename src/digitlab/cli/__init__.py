"""The ``digitlab`` command line: parses arguments and calls library functions.

Each command group lives in its own module exposing ``register(subparsers)``;
a command's handler returns an exit code. A :class:`DigitlabError` becomes one
line on stderr and exit status 2 — no traceback for user errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from digitlab import __version__
from digitlab.errors import DigitlabError

# command modules, in --help order
COMMAND_MODULES = ("data", "explore", "models", "train", "evaluate", "study", "predict", "serve", "export",
                   "bench", "sweep", "robustness", "label_issues")

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
    """Examples kept as written; defaults shown, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default:" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``digitlab`` parser with every command, or only ``command``'s when its module (``cli/NAME.py``,
    dashes as underscores) registers it: building all of them costs a one-picture ``predict`` ~10% of
    its run time. Any other ``command`` (a typo, an option, a command of another module) gets the full
    parser, so help and error messages list every command."""
    if command is not None:
        name = command.replace("-", "_")
        if name in COMMAND_MODULES:
            parser, sub = _empty_parser()
            importlib.import_module(f"digitlab.cli.{name}").register(sub)
            if command in sub.choices:
                return parser
    parser, sub = _empty_parser()
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"digitlab.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"digitlab.cli.{name}":
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


def _empty_parser() -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(
        prog="digitlab", description="Handwritten-digit recognition toolkit.",
        epilog=EPILOG, formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"digitlab {__version__}")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def add_data_args(p: argparse.ArgumentParser, *, from_run: bool = False) -> None:
    """``--dataset`` and ``--data-dir``, shared by every command that loads data.

    ``from_run``: the command scores a saved model, whose own dataset (recorded in its
    checkpoint) is the default; ``--dataset`` overrides it.
    """
    default_help = ("the model's own dataset (from its checkpoint); give a name to override"
                    if from_run else "mnist")
    p.add_argument("--dataset", default=None if from_run else "mnist",
                   help=f"dataset name: mnist or fashion-mnist (default: {default_help})")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the four IDX files (default: $DIGITLAB_DATA_DIR, the cache, "
                        "/usr/share/datasets/NAME, then a verified download)")


def add_model_arg(p: argparse.ArgumentParser, *, positional: bool, default: str | None = "default",
                  onnx: bool = False) -> None:
    """The model a command uses: ``--model MODEL`` everywhere; also positional where the model is the subject.

    MODEL is ``default`` (the shipped model), a run directory, a ``.safetensors`` checkpoint or
    (``onnx``: the command can run one) an ``.onnx`` file.
    """
    text = ("'default' (the shipped model), a run directory, a .safetensors checkpoint or an .onnx file "
            "(needs digitlab[onnx])" if onnx else
            "'default' (the shipped model), a run directory or a .safetensors checkpoint")
    if positional:
        p.add_argument("model_pos", nargs="?", metavar="MODEL", default=None,
                       help=f"{text} (same as --model)")
        p.add_argument("--model", default=None, help=f"{text} (default: {default})")
        p.set_defaults(model_default=default)
    else:
        p.add_argument("--model", default=default, help=text)


def model_from_args(args: argparse.Namespace) -> str:
    """The MODEL given positionally or with ``--model`` (one-line error when both or neither)."""
    from digitlab.errors import ConfigError

    pos, opt = getattr(args, "model_pos", None), getattr(args, "model", None)
    if pos is not None and opt is not None and pos != opt:
        raise ConfigError(f"MODEL given twice: {pos!r} and --model {opt!r}")
    chosen = pos if pos is not None else opt
    if chosen is None:
        chosen = getattr(args, "model_default", None)
    if chosen is None:
        raise ConfigError("give the model: MODEL or --model MODEL ('default', a run directory or a checkpoint)")
    return str(chosen)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device``, with the same default (auto: CUDA when present, else CPU) in every command."""
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")


def add_json_arg(p: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json``: machine-readable output on stdout; progress and messages go to stderr."""
    p.add_argument("--json", action="store_true",
                   help=f"print {what} as JSON on stdout (progress and messages go to stderr)")


def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bars or progress lines (results are still printed)."""
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress messages on stderr")


def require_extra(module: str, extra: str) -> None:
    """Fail with a one-line message naming the pip extra when an optional dependency is missing."""
    import importlib.util

    from digitlab.errors import MissingExtraError

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"this needs the optional package {module!r}: "
                                f"pip install 'digitlab[{extra}]' (or 'digitlab[all]')")


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(words[0] if words else None)
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
    except BrokenPipeError:
        # the reader went away (`digitlab evaluate … | head`): stop quietly, as Unix tools do, and keep
        # the interpreter's final flush of stdout from raising again
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
