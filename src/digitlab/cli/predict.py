"""``digitlab predict``: classify pictures with a trained model, or read whole numbers (``--number``).

This module is on the path of ``digitlab predict one.png``: it imports only the standard
library at module level, and the predictor is loaded with ``prefer_onnx=True``, so the
shipped default model (and any ``.onnx`` file) runs on onnxruntime without importing torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from digitlab.cli import HelpFormatter, add_device_arg, add_json_arg, add_model_arg, add_quiet_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify image files (photos, scans, drawings of single digits or items), or read numbers",
        formatter_class=HelpFormatter,
        description="Prepare each picture the way the model's dataset was made and classify it: for digit "
                    "models polarity, crop to the ink, 20×20 box, centre of mass; for other datasets "
                    "(Fashion-MNIST) the whole picture fitted into 28×28 on a dark background. Prints the "
                    "class name (JSON: integer 'label' and 'name'). With --number (digit models), each "
                    "picture is read as a number of several digits written left to right (JSON: 'number' "
                    "as a string, leading zeros kept, null when no digit is found; 'digits' with each "
                    "digit's label, confidence and box; 'confidence'). Accepted formats: PNG, JPEG, GIF, "
                    "BMP, TIFF, WebP. A file that cannot be read gets a one-line error and the others are "
                    "still read; exit status 1 if any file could not be read, 2 for usage errors. The "
                    "shipped default model and .onnx files run on onnxruntime when it is installed.",
        epilog="examples:\n  digitlab predict seven.png\n"
               "  digitlab predict my_digits/ --json\n"
               "  digitlab predict page.png --number --json    # a whole number, e.g. \"4721\"\n"
               "  digitlab predict scans/ --recursive --model runs/a --top-k 3\n"
               "  digitlab predict shoe.jpg --model runs/fashion --json\n"
               "  digitlab predict digit.jpg --model model.onnx        # needs digitlab[onnx]")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories of images")
    add_model_arg(p, positional=False, onnx=True)
    add_device_arg(p)
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="also list the K most likely classes")
    p.add_argument("--number", action="store_true",
                   help="read each picture as a whole number of several digits (digit models only)")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into subdirectories")
    add_json_arg(p, "one JSON object per file and line")
    add_quiet_arg(p)
    p.set_defaults(handler=_predict)


# --------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class DigitReading:
    """One digit of a number read from a picture."""

    label: int | None
    """The digit (null when this part of the picture was refused as not a digit)."""
    confidence: float | None
    """Probability of ``label``."""
    box: list[int] | None
    """Where the digit is in the picture: ``[left, top, right, bottom]`` in pixels (right/bottom exclusive)."""


@dataclass(frozen=True)
class NumberReading:
    """A whole number read from one picture (the fields of ``predict --number --json`` and ``POST /api/number``)."""

    number: str | None
    """The digits left to right as a string (leading zeros kept); null when no digit was found."""
    digits: list[DigitReading]
    """Each digit found, left to right."""
    confidence: float | None
    """Product of the digits' confidences (the probability that every digit is right); null with ``number``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def number_reading(raw: Mapping[str, Any]) -> NumberReading:
    """The typed form of :meth:`Predictor.read_number`'s result.

    A picture with no digit, or with a part that is not a digit, reads as no number (``number`` null).
    """
    digits = [DigitReading(label=None if d.get("label") is None else int(d["label"]),
                           confidence=None if d.get("confidence") is None else float(d["confidence"]),
                           box=_box(d.get("box")))
              for d in raw.get("digits", [])]
    number = raw.get("number")
    if not digits or any(d.label is None for d in digits) or not number:
        return NumberReading(number=None, digits=digits, confidence=None)
    confidence = raw.get("confidence")
    return NumberReading(number=str(number), digits=digits,
                         confidence=None if confidence is None else float(confidence))


def _box(value: Any) -> list[int] | None:
    if value is None:
        return None
    return [int(v) for v in value]


def read_numbers(predictor: Any, files: Sequence[Any]) -> list[dict[str, Any]]:
    """``{file, number, digits, confidence}`` per file, or ``{file, error}`` for one that cannot be read."""
    from digitlab.errors import ImageError

    records: list[dict[str, Any]] = []
    for f in files:
        try:
            reading = number_reading(predictor.read_number(f))
        except ImageError as exc:
            records.append({"file": str(f), "error": _file_error(exc, f)})
            continue
        records.append({"file": str(f), **reading.to_dict()})
    return records


def _file_error(exc: Exception, f: Any) -> str:
    msg = str(exc)
    return msg[len(str(f)) + 2:] if msg.startswith(f"{f}: ") else msg  # the record names the file


def _number_line(r: Mapping[str, Any]) -> str:
    if r["number"] is None:
        refused = sum(d["label"] is None for d in r["digits"])
        why = f"{refused} of {len(r['digits'])} marks are not digits" if refused else "no digit found"
        return f"{r['file']}: no number read ({why})"
    per_digit = ", ".join(f"{d['label']} {100 * d['confidence']:.1f}%" for d in r["digits"])
    return f"{r['file']}: {r['number']}  ({100 * r['confidence']:.1f}% for the whole number; digits: {per_digit})"


# --------------------------------------------------------------------------- command


def _predict(args: argparse.Namespace) -> int:
    from digitlab.cli import model_from_args, require_extra
    from digitlab.errors import ConfigError
    from digitlab.inference.predictor import collect_image_files, load_predictor, predict_files

    if args.top_k is not None and not 1 <= args.top_k <= 10:
        raise ConfigError(f"--top-k {args.top_k}: must be between 1 and 10")
    if args.number and args.top_k is not None:
        raise ConfigError("--top-k lists classes of one picture; it does not go with --number")
    model = model_from_args(args)
    if model.lower().endswith(".onnx"):
        require_extra("onnxruntime", "onnx")
    files = collect_image_files(args.paths, recursive=args.recursive)
    if not files:
        raise ConfigError(f"no image files found in {', '.join(args.paths)}"
                          + ("" if args.recursive else " (use --recursive for subdirectories)"))
    predictor = load_predictor(model, device=args.device, prefer_onnx=True)
    if args.number:
        if not predictor.digits:
            raise ConfigError(f"--number reads digits; this model is trained on {predictor.dataset}")
        records = read_numbers(predictor, files)
    else:
        records = predict_files(predictor, files, top_k=args.top_k,
                                progress=not (args.json or args.quiet) and sys.stderr.isatty() and len(files) > 20)
    for r in records:
        if args.json:
            print(json.dumps(r), flush=False)
        elif "error" in r:
            print(f"{r['file']}: error: {r['error']}", file=sys.stderr)
        elif args.number:
            print(_number_line(r))
        else:
            if r.get("label") is None:
                print(f"{r['file']}: no digit found ({r.get('rejected', 'blank')} picture); no label given")
                continue
            line = f"{r['file']}: {r['name']}  ({100 * r['confidence']:.1f}%)"
            if "top_k" in r:
                tops = (f"{t['name']} {100 * t['probability']:.1f}%" for t in r["top_k"])
                line += "   top: " + ", ".join(tops)
            print(line)
    sys.stdout.flush()
    return 1 if any("error" in r for r in records) else 0
