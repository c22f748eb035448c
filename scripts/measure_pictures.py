#!/usr/bin/env python
"""Read generated user-style pictures with a model and score every answer.

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_pictures.py [--model default] [--n 200] [--json]

The pictures come from ``digitlab.data.pictures`` (MNIST test digits rendered as user pictures,
photos of paper, thin/thick strokes, small in a corner, multi-digit pages, blank pages and
non-digits), seeded, so every run reads the same bytes. A digit picture is read right when the
label matches; a refusal (``label`` null) on a digit is a false rejection; on blank and
non-digit pictures the right answer is a refusal (the detection rate), broken down by what the
picture shows. Pages with numbers are read with ``read_number`` and count when the whole number
is exact. For each digit set the ECE of the model's confidences is reported before
(``softmax(logits)``) and after (``softmax(logits / T)``) its calibration temperature.

Per set, the JSON has: ``rate`` (share answered right), ``right``, ``n``, ``refused``; digit sets
add ``false_rejections`` / ``false_rejection_rate`` and ``ece`` / ``ece_uncalibrated``; no-digit sets
add ``detection_rate`` and ``by_kind``. The seed-0 sets measured here are never used to choose a
threshold: the not-a-digit test's statistics and thresholds come from ``scripts/fit_reject.py`` (MNIST
training split; validation pictures of seeds 2, 5–10, 12–15; see ``digitlab.inference.reject``).
With ``--n 200`` one picture is half a percentage point; ``--n 1000`` gives finer figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np


def _refused(r: dict[str, Any]) -> bool:
    return r.get("label") is None  # an abstention (blank, not a digit) carries no label


def _ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    from digitlab.evaluate.calibration import expected_calibration_error

    return expected_calibration_error(probs, labels, n_bins)


def preprocess_timing(data_dir: str | None, n: int, seed: int, rounds: int = 7) -> dict[str, Any]:
    """Milliseconds per picture of ``to_mnist`` (decode included) on ``n`` typical pictures
    (:func:`digitlab.data.pictures.typical_picture` of MNIST test digits), ``rounds`` times over:
    CPU time (less sensitive to other work on the machine) and wall time, best and median round."""
    from digitlab.data import load_dataset
    from digitlab.data.pictures import typical_picture
    from digitlab.inference.preprocess import to_mnist

    ds = load_dataset("mnist", data_dir, progress=False)
    rng = np.random.default_rng(seed)
    images = ds.test_images.numpy()
    pictures = [typical_picture(images[i], rng) for i in range(n)]
    for p in pictures[:10]:
        to_mnist(p)  # warm-up
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for p in pictures:
            to_mnist(p)
        cpu.append(1000 * (time.process_time() - c0) / n)
        wall.append(1000 * (time.perf_counter() - w0) / n)
    return {"what": "to_mnist on 112x112 grey PNGs (MNIST test digits, dark on white)", "pictures": n,
            "rounds": rounds, "cpu_ms_per_picture_best": min(cpu), "cpu_ms_per_picture_median": statistics.median(cpu),
            "wall_ms_per_picture_best": min(wall), "wall_ms_per_picture_median": statistics.median(wall)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default', a run directory, a checkpoint or an .onnx file")
    ap.add_argument("--n", type=int, default=200, help="pictures per set")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated pictures")
    ap.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--preprocess-timing", action="store_true",
                    help="only time the preprocessing of typical pictures (112×112 PNG, dark digit on white)")
    args = ap.parse_args(argv)
    if args.preprocess_timing:
        print(json.dumps(preprocess_timing(args.data_dir, args.n, args.seed), indent=1))
        return 0

    from digitlab.bench import machine_info
    from digitlab.data import load_dataset
    from digitlab.data.pictures import make_picture_sets
    from digitlab.inference import load_predictor
    from digitlab.numerics import softmax

    ds = load_dataset("mnist", args.data_dir, progress=False)
    sets = make_picture_sets(ds.test_images.numpy(), ds.test_labels.numpy(), n=args.n, seed=args.seed)
    predictor = load_predictor(args.model, device="cpu")
    rows: dict[str, dict[str, Any]] = {}
    for name, ps in sets.items():
        t0 = time.perf_counter()
        right = refused = 0
        conf: list[float] = []
        raw_logits: list[np.ndarray] = []
        by_kind: dict[str, list[int]] = {}
        for i, (image, answer) in enumerate(zip(ps.images, ps.answers, strict=True)):
            if name.startswith("number"):
                got = predictor.read_number(image)
                right += int(str(got.get("number")) == answer)
                continue
            pre = predictor.preprocess(image)
            labels, probs, logits = predictor.predict_with_logits(pre[None])
            r = predictor.result(pre[None], labels, probs)[0]
            is_refused = _refused(r)
            refused += int(is_refused)
            if answer is None:
                right += int(is_refused)
                kind = ps.kinds[i] if i < len(ps.kinds) else "all"
                by_kind.setdefault(kind, []).append(int(is_refused))
            else:
                right += int(not is_refused and r.get("label") == answer)
                raw_logits.append(logits[0])
                if not is_refused and r.get("confidence") is not None:
                    conf.append(float(r["confidence"]))
        kind = "number" if name.startswith("number") else ("no digit" if ps.answers[0] is None else "digit")
        row: dict[str, Any] = {"kind": kind, "n": len(ps), "right": right, "rate": right / len(ps),
                               "refused": refused if kind != "number" else None,
                               "median_confidence": statistics.median(conf) if conf else None,
                               "ms_per_picture": 1000 * (time.perf_counter() - t0) / len(ps)}
        if kind == "digit":
            z = np.stack(raw_logits).astype(np.float64)
            y = np.asarray(ps.answers, dtype=np.int64)
            row.update(false_rejections=refused, false_rejection_rate=refused / len(ps),
                       ece_uncalibrated=_ece(softmax(z), y), ece=_ece(softmax(z / predictor.temperature), y))
        elif kind == "no digit":
            row.update(detection_rate=right / len(ps),
                       by_kind={k: {"n": len(v), "detection_rate": sum(v) / len(v)}
                                for k, v in sorted(by_kind.items())})
        rows[name] = row
    result = {"model": args.model, "temperature": predictor.temperature, "n_per_set": args.n, "seed": args.seed,
              "sets": rows, "machine": machine_info()}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for name, r in rows.items():
        what = {"digit": "read right", "no digit": "refused", "number": "exact number"}[r["kind"]]
        extra = ""
        if r["kind"] == "digit":
            extra = (f", {r['false_rejections']} falsely refused; ECE {100 * r['ece_uncalibrated']:.2f}% -> "
                     f"{100 * r['ece']:.2f}%")
        elif r["kind"] == "no digit":
            extra = "; " + ", ".join(f"{k} {100 * v['detection_rate']:.0f}%" for k, v in r["by_kind"].items())
        print(f"{name:13s} {100 * r['rate']:6.2f}% {what} ({r['right']}/{r['n']}{extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
