#!/usr/bin/env python
"""Read generated user-style pictures with a model and score every answer.

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_pictures.py [--model default] [--n 200] [--json]

The pictures come from ``digitlab.data.pictures`` (MNIST test digits rendered as user pictures,
photos of paper, thin/thick strokes, small in a corner, multi-digit pages, blank pages and
non-digits), seeded, so every run reads the same bytes. A digit picture is read right when the
label matches; a refusal (``label`` null) on a digit is a false
rejection; on blank and non-digit pictures the right answer is a refusal. Pages with numbers are
read with ``read_number`` and count when the whole number is exact.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any


def _refused(r: dict[str, Any]) -> bool:
    return r.get("label") is None  # an abstention (blank, not a digit) carries no label


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default', a run directory, a checkpoint or an .onnx file")
    ap.add_argument("--n", type=int, default=200, help="pictures per set")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated pictures")
    ap.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)

    from digitlab.bench import machine_info
    from digitlab.data import load_dataset
    from digitlab.data.pictures import make_picture_sets
    from digitlab.inference import load_predictor

    ds = load_dataset("mnist", args.data_dir, progress=False)
    sets = make_picture_sets(ds.test_images.numpy(), ds.test_labels.numpy(), n=args.n, seed=args.seed)
    predictor = load_predictor(args.model, device="cpu")
    rows: dict[str, dict[str, Any]] = {}
    for name, ps in sets.items():
        t0 = time.perf_counter()
        right = refused = 0
        conf: list[float] = []
        for image, answer in zip(ps.images, ps.answers, strict=True):
            if name == "number":
                got = predictor.read_number(image)
                right += int(str(got.get("number")) == answer)
                continue
            r = predictor.predict_image(image)
            is_refused = _refused(r)
            refused += int(is_refused)
            if answer is None:
                right += int(is_refused)
            else:
                right += int(not is_refused and r.get("label") == answer)
                if not is_refused and r.get("confidence") is not None:
                    conf.append(float(r["confidence"]))
        kind = "number" if name == "number" else ("no digit" if ps.answers[0] is None else "digit")
        rows[name] = {"kind": kind, "n": len(ps), "right": right, "rate": right / len(ps),
                      "refused": refused if name != "number" else None,
                      "median_confidence": statistics.median(conf) if conf else None,
                      "ms_per_picture": 1000 * (time.perf_counter() - t0) / len(ps)}
    result = {"model": args.model, "n_per_set": args.n, "seed": args.seed, "sets": rows,
              "machine": machine_info()}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for name, r in rows.items():
        what = {"digit": "read right", "no digit": "refused", "number": "exact number"}[r["kind"]]
        extra = f", {r['refused']} refused" if r["kind"] == "digit" else ""
        print(f"{name:13s} {100 * r['rate']:6.2f}% {what} ({r['right']}/{r['n']}{extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
