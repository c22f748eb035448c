"""Package a finished run as the model shipped inside digitlab (``load_model("default")``).

    python scripts/ship_default_model.py RUN_DIR [--min-accuracy 0.995] [--max-bytes 2000000]

Re-measures the run's test accuracy on its own dataset (it does not trust the stored number),
checks the size limit, and writes src/digitlab/pretrained/default.safetensors
with the measurement added to its metadata, plus default.json (the same
metadata, readable). Refuses to overwrite an existing shipped model unless
--replace is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from digitlab.checkpoint import dataset_of, load_checkpoint, save_checkpoint
from digitlab.data import load_dataset
from digitlab.evaluate.evaluator import score_logits
from digitlab.models.forward import predict_logits
from digitlab.utils import write_json_atomic

TARGET = Path(__file__).resolve().parent.parent / "src" / "digitlab" / "pretrained"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="finished run directory (or .safetensors checkpoint) to ship")
    ap.add_argument("--min-accuracy", type=float, default=0.995, help="refuse below this measured test accuracy")
    ap.add_argument("--max-bytes", type=int, default=2_000_000, help="refuse a checkpoint larger than this")
    ap.add_argument("--replace", action="store_true", help="overwrite the shipped model")
    ap.add_argument("--data-dir", help="folder with the dataset's four IDX files (default: the usual search)")
    args = ap.parse_args()
    dest = TARGET / "default.safetensors"
    if dest.exists() and not args.replace:
        sys.exit(f"{dest} exists; pass --replace to overwrite it")
    model, meta = load_checkpoint(args.run)
    dataset = dataset_of(meta)
    ds = load_dataset(dataset, args.data_dir, progress=False)
    result = score_logits(predict_logits(model, ds.test_images), ds.test_labels)
    accuracy = result.accuracy
    print(f"{args.run}: {dataset} test accuracy {accuracy:.4f} ({result.n} images), loss {result.loss:.4f}")
    if accuracy < args.min_accuracy:
        sys.exit(f"accuracy {accuracy:.4f} is below the required {args.min_accuracy}")
    meta["shipped"] = {
        "source_run": str(Path(args.run).name),
        "measured_test_accuracy": accuracy, "measured_test_loss": result.loss,
        "measured_by": f"scripts/ship_default_model.py (re-evaluated on the {result.n:,} {dataset} test images)",
        "reproduce": f"digitlab train --config {meta['model']} --seed {meta['config'].get('seed', 0)}",
    }
    TARGET.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest, model, meta)
    size = dest.stat().st_size
    if size > args.max_bytes:
        dest.unlink()
        sys.exit(f"checkpoint is {size} bytes, over the {args.max_bytes} limit")
    write_json_atomic(TARGET / "default.json", meta)
    print(f"shipped {dest} ({size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
