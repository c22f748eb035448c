"""``digitlab models``: list the model zoo, or one model's layers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from digitlab.cli import HelpFormatter, add_json_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models", help="list the registered models, or one model's layers", formatter_class=HelpFormatter,
        description="List every registered model with its family, parameter count, input kind and\n"
                    "the published recipe it reproduces. PARAMS counts trainable parameters; KERAS\n"
                    "adds BatchNorm moving statistics, as the notebooks' Keras summaries do.\n"
                    "--summary NAME prints one model's layers instead: output shape per image and\n"
                    "parameters of each layer, with the totals.",
        epilog="examples:\n  digitlab models\n  digitlab models --pattern 'mlp-*'\n"
               "  digitlab models --json\n  digitlab models --summary cnn-deep\n"
               "  digitlab models --summary lenet5 --json",
    )
    p.add_argument("--pattern", default="*", help="glob over model names, e.g. 'cnn-*'")
    p.add_argument("--summary", metavar="NAME", default=None,
                   help="show the layers of the registered model NAME (layer, output shape, parameters) "
                        "instead of the list")
    add_json_arg(p, "the list (or with --summary, the layer table)")
    p.set_defaults(handler=_models)


def _fmt(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def _table(rows: list[tuple[str, ...]], right: tuple[int, ...]) -> None:
    """Print ``rows`` (the first is the header) in aligned columns; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        print("  ".join(cells + [row[-1]]).rstrip())


def _models(args: argparse.Namespace) -> int:
    if args.summary is not None:
        return _summary(args)
    from digitlab.models.catalog import model_catalog

    rows = model_catalog(args.pattern)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}")
        return 0
    header = ("NAME", "FAMILY", "PARAMS", "KERAS", "INPUT", "RECIPE", "REFERENCE")
    _table([header] + [(r["name"], r["family"], _fmt(r["params"]), _fmt(r["params_keras"]), r["input_kind"],
                        r["recipe"] or "-", r["reference"]) for r in rows], right=(2, 3))
    return 0


def _shape(shape: Any) -> str:
    return "-" if shape is None else "×".join(str(d) for d in shape)


def _summary(args: argparse.Namespace) -> int:
    from digitlab.models.catalog import model_summary

    s = model_summary(args.summary)
    if args.json:
        print(json.dumps(s.to_dict()))
        return 0
    print(f"{s.model}: input {_shape(s.input_shape)} → output {_shape(s.output_shape)} (per image)")
    table = [("LAYER", "TYPE", "OUTPUT", "PARAMS")]
    table += [(r.name, r.kind, _shape(r.output_shape), _fmt(r.params)) for r in s.layers]
    # right-align PARAMS: pad it here since the last column is printed as is
    width = max(len(row[3]) for row in table)
    _table([(*row[:3], row[3].rjust(width)) for row in table], right=())
    print(f"total parameters: {_fmt(s.params)} (Keras count with BatchNorm statistics: {_fmt(s.params_keras)})")
    return 0
