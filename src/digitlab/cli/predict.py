"""``digitlab predict``: classify pictures of digits with a trained model."""

from __future__ import annotations

import argparse
import json
import sys

from digitlab.cli import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify image files (photos, scans, drawings of single digits)",
        formatter_class=HelpFormatter,
        description="Preprocess each picture into MNIST form (polarity, crop, 20×20 box, centre of mass) "
                    "and classify it. Exit status 1 if any file could not be read, 2 for usage errors.",
        epilog="examples:\n  digitlab predict seven.png\n"
               "  digitlab predict my_digits/ --json\n"
               "  digitlab predict scans/ --recursive --model runs/a --top-k 3\n"
               "  digitlab predict digit.jpg --model model.onnx")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories of images")
    p.add_argument("--model", default="default",
                   help="'default' (shipped model), a run directory, a .safetensors or an .onnx file")
    p.add_argument("--device", default="cpu", help="torch device for checkpoint models (cpu, cuda, auto)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="also list the K most likely digits")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into subdirectories")
    p.add_argument("--json", action="store_true", help="one JSON object per file and line")
    p.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from digitlab.errors import ConfigError
    from digitlab.inference.predictor import collect_image_files, load_predictor, predict_files

    if args.top_k is not None and not 1 <= args.top_k <= 10:
        raise ConfigError(f"--top-k {args.top_k}: must be between 1 and 10")
    files = collect_image_files(args.paths, recursive=args.recursive)
    if not files:
        raise ConfigError(f"no image files found in {', '.join(args.paths)}"
                          + ("" if args.recursive else " (use --recursive for subdirectories)"))
    predictor = load_predictor(args.model, device=args.device)
    records = predict_files(predictor, files, top_k=args.top_k,
                            progress=not args.json and sys.stderr.isatty() and len(files) > 20)
    for r in records:
        if args.json:
            print(json.dumps(r), flush=False)
        elif "error" in r:
            print(f"{r['file']}: error: {r['error']}", file=sys.stderr)
        else:
            line = f"{r['file']}: {r['label']}  ({100 * r['confidence']:.1f}%)"
            if r.get("blank"):
                line = f"{r['file']}: no ink found (blank image)"
            elif "top_k" in r:
                tops = (f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top_k"])
                line += "   top: " + ", ".join(tops)
            print(line)
    sys.stdout.flush()
    return 1 if any("error" in r for r in records) else 0
