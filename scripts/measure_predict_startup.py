"""Wall time of ``digitlab predict one.png`` next to ``python -c "import torch"``, measured in the same run.

Predicting one picture with the shipped default model (or an .onnx file) must not
import torch, and must take at most 0.3× the time of importing torch alone. The two commands
are run alternately (``--rounds`` each, after one untimed warm-up of each, so the file cache
is warm for both), each in a fresh interpreter; the medians and their ratio are printed as JSON.

    python scripts/measure_predict_startup.py                  # shipped default model, 5 rounds
    python scripts/measure_predict_startup.py --model model.onnx --rounds 9

Quiet machine needed for figures worth quoting (the load average is recorded).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digitlab.utils import machine_summary

TARGET_RATIO = 0.3

CHECK_MODULES = """
import runpy, sys
sys.argv = ["digitlab", *sys.argv[1:]]
try:
    runpy.run_module("digitlab", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print("TORCH-IMPORTED" if "torch" in sys.modules else "TORCH-NOT-IMPORTED", file=sys.stderr)
"""


def _picture(folder: Path) -> Path:
    """A 112×112 PNG of a hand-drawn-looking 7, dark on white (no dataset needed)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (112, 112), 255)
    draw = ImageDraw.Draw(img)
    draw.line([(30, 28), (82, 28), (50, 92)], fill=0, width=9, joint="curve")
    path = folder / "seven.png"
    buf = io.BytesIO()
    img.save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="MODEL for digitlab predict (default: the shipped model)")
    ap.add_argument("--rounds", type=int, default=5, help="timed runs of each command, alternating")
    ap.add_argument("--picture", default=None, help="picture to predict (default: a generated 112×112 PNG)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    with tempfile.TemporaryDirectory(prefix="digitlab-startup-") as tmp:
        picture = Path(args.picture) if args.picture else _picture(Path(tmp))
        predict = [sys.executable, "-m", "digitlab", "predict", str(picture), "--model", args.model, "--json"]
        torch_import = [sys.executable, "-c", "import torch"]
        # not timed: does the predict path import torch? which backend runs the model?
        check = subprocess.run([sys.executable, "-c", CHECK_MODULES, *predict[3:]], capture_output=True,
                               text=True)
        if check.returncode != 0:
            raise SystemExit(f"digitlab predict failed: {check.stderr.strip()}")
        torch_imported = "TORCH-IMPORTED" in check.stderr.splitlines()
        result = json.loads(check.stdout.splitlines()[0])
        load_before = os.getloadavg()
        _time(predict)
        _time(torch_import)  # warm-up: both read from a warm file cache
        times: dict[str, list[float]] = {"predict": [], "import_torch": []}
        for _ in range(args.rounds):
            times["predict"].append(_time(predict))
            times["import_torch"].append(_time(torch_import))
        load_after = os.getloadavg()

    med_predict = statistics.median(times["predict"])
    med_torch = statistics.median(times["import_torch"])
    ratio = med_predict / med_torch
    print(json.dumps({
        "command": " ".join(["digitlab", *predict[3:-1]]).replace(str(picture), "one.png"),
        "baseline": 'python -c "import torch"',
        "model": args.model,
        "rounds": args.rounds,
        "predict_seconds": {"median": round(med_predict, 4), "runs": [round(t, 4) for t in times["predict"]]},
        "import_torch_seconds": {"median": round(med_torch, 4), "runs": [round(t, 4) for t in times["import_torch"]]},
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "torch_imported_by_predict": torch_imported,
        "prediction": {k: result.get(k) for k in ("label", "confidence")},
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "machine": machine_summary(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
