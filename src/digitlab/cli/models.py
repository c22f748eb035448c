"""``digitlab models``: list the model zoo."""

from __future__ import annotations

import argparse
import json

from digitlab.cli import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models", help="list the registered models", formatter_class=HelpFormatter,
        description="List every registered model with its family, parameter count, input kind and\n"
                    "the published recipe it reproduces. PARAMS counts trainable parameters; KERAS\n"
                    "adds BatchNorm moving statistics, as the notebooks' Keras summaries do.",
        epilog="examples:\n  digitlab models\n  digitlab models --pattern 'mlp-*'\n"
               "  digitlab models --json",
    )
    p.add_argument("--pattern", default="*", help="glob over model names, e.g. 'cnn-*'")
    p.add_argument("--json", action="store_true", help="machine-readable output (a list of objects)")
    p.set_defaults(handler=_list)


def _fmt(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def _list(args: argparse.Namespace) -> int:
    from digitlab.models.catalog import model_catalog

    rows = model_catalog(args.pattern)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}")
        return 0
    header = ("NAME", "FAMILY", "PARAMS", "KERAS", "INPUT", "RECIPE", "REFERENCE")
    table = [header] + [(r["name"], r["family"], _fmt(r["params"]), _fmt(r["params_keras"]), r["input_kind"],
                         r["recipe"] or "-", r["reference"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [c.rjust(w) if i in (2, 3) else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        print("  ".join(cells + [row[-1]]))
    return 0
