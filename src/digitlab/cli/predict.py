"""``digitlab predict``: classify pictures with a trained model."""

from __future__ import annotations

import argparse
import json
import sys

from digitlab.cli import HelpFormatter, add_device_arg, add_json_arg, add_model_arg, add_quiet_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify image files (photos, scans, drawings of single digits or items)",
        formatter_class=HelpFormatter,
        description="Prepare each picture the way the model's dataset was made and classify it: for digit "
                    "models polarity, crop to the ink, 20×20 box, centre of mass; for other datasets "
                    "(Fashion-MNIST) the whole picture fitted into 28×28 on a dark background. Prints the "
                    "class name (JSON: integer 'label' and 'name'). Accepted formats: PNG, JPEG, GIF, BMP, "
                    "TIFF, WebP. Exit status 1 if any file could not be read, 2 for usage errors.",
        epilog="examples:\n  digitlab predict seven.png\n"
               "  digitlab predict my_digits/ --json\n"
               "  digitlab predict scans/ --recursive --model runs/a --top-k 3\n"
               "  digitlab predict shoe.jpg --model runs/fashion --json\n"
               "  digitlab predict digit.jpg --model model.onnx        # needs digitlab[onnx]")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories of images")
    add_model_arg(p, positional=False, onnx=True)
    add_device_arg(p)
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="also list the K most likely classes")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into subdirectories")
    add_json_arg(p, "one JSON object per file and line")
    add_quiet_arg(p)
    p.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from digitlab.cli import model_from_args, require_extra
    from digitlab.errors import ConfigError
    from digitlab.inference.predictor import collect_image_files, load_predictor, predict_files

    if args.top_k is not None and not 1 <= args.top_k <= 10:
        raise ConfigError(f"--top-k {args.top_k}: must be between 1 and 10")
    model = model_from_args(args)
    if model.lower().endswith(".onnx"):
        require_extra("onnxruntime", "onnx")
    files = collect_image_files(args.paths, recursive=args.recursive)
    if not files:
        raise ConfigError(f"no image files found in {', '.join(args.paths)}"
                          + ("" if args.recursive else " (use --recursive for subdirectories)"))
    predictor = load_predictor(model, device=args.device)
    records = predict_files(predictor, files, top_k=args.top_k,
                            progress=not (args.json or args.quiet) and sys.stderr.isatty() and len(files) > 20)
    for r in records:
        if args.json:
            print(json.dumps(r), flush=False)
        elif "error" in r:
            print(f"{r['file']}: error: {r['error']}", file=sys.stderr)
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
