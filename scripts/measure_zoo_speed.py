#!/usr/bin/env python
"""What helped each model's training step and what did not: every speed setting on and off, per model.

Usage (from the repository root, on an otherwise idle machine):

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_zoo_speed.py \\
        [--models cnn-deep,se-cnn] [--steps 40] [--rounds 4] [--batch-size 128] [--threads N] [--json]

For each gradient model (default: all of them) the engine (`Trainer`, resident uint8 data) is timed
with bf16 autocast on/off × channels-last on/off, and once more with the model's registered settings
but its plain layers (``nn.MaxPool2d``, no in-place ops: what the fast layers are worth), against the
plain PyTorch loop (fp32, ``DataLoader`` over a float ``TensorDataset``) — all alternately, block by
block, in one process (``digitlab.bench.zoo.measure_variants``). ms/step are medians. ``registered``
marks the variant the model's registry entry (``digitlab.models.train_settings``) uses; ``best``
the fastest measured here. If they differ on a quiet machine, update the registry.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch


def _variants(registered: Any) -> dict[str, Any]:
    from digitlab.bench.zoo import EngineVariant
    from digitlab.models import TrainSettings

    out = {}
    for amp in (False, True):
        for cl in (False, True):
            name = "+".join([n for n, on in (("bf16", amp), ("channels-last", cl)) if on]) or "fp32"
            out[name] = EngineVariant(TrainSettings(amp=amp, channels_last=cl))
    out["registered, plain layers"] = EngineVariant(registered, fast_layers=False)
    return out


def measure(name: str, images: torch.Tensor, labels: torch.Tensor, steps: int, rounds: int, batch_size: int,
            device: str) -> dict[str, Any]:
    from digitlab.bench.zoo import PLAIN, measure_variants
    from digitlab.models import train_settings

    registered = train_settings(name)
    variants = _variants(registered)
    result, settings = measure_variants(name, images, labels, variants, steps=steps, batch_size=batch_size,
                                        device=device, rounds=rounds, warmup=2)
    plain_ms = result[PLAIN][0]
    fp32_ms = result["fp32"][0]
    rows = []
    for key, variant in variants.items():
        ms, blocks = result[key]
        rows.append({"variant": key, "amp": variant.settings.amp, "channels_last": variant.settings.channels_last,
                     "fast_layers": variant.fast_layers, "ms_per_step": ms, "block_ms": blocks,
                     "ratio_vs_plain": ms / plain_ms, "speedup_vs_engine_fp32": fp32_ms / ms,
                     "registered": variant.fast_layers and variant.settings == registered})
    best = min((r for r in rows if r["fast_layers"]), key=lambda r: r["ms_per_step"])
    return {"model": name, "registered": registered.to_dict(), "best": best["variant"],
            "plain_ms_per_step": plain_ms, "plain_block_ms": result[PLAIN][1], "variants": rows,
            "settings": {k: v for k, v in settings.to_dict().items() if k not in ("amp", "channels_last")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated model names (default: every gradient model)")
    parser.add_argument("--steps", type=int, default=40, help="counted steps per variant and model (default 40)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating blocks per variant (default 4)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per step (default 128)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument("--dataset", default="mnist", help="training images to batch (default mnist)")
    parser.add_argument("--data-dir", default=None, help="folder with the dataset's IDX files")
    parser.add_argument("--json", action="store_true", help="print the table as JSON on stdout")
    args = parser.parse_args(argv)

    from digitlab.bench.harness import machine_info
    from digitlab.bench.zoo import check_zoo_models
    from digitlab.data import load_dataset
    from digitlab.errors import DigitlabError

    try:
        names = check_zoo_models(args.models.split(",") if args.models else None)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        ds = load_dataset(args.dataset, args.data_dir, progress=False)
        table = []
        for name in names:
            table.append(measure(name, ds.train_images, ds.train_labels, args.steps, args.rounds,
                                 args.batch_size, args.device))
            row = table[-1]
            if not args.json:
                print(f"\n{name}: plain loop {row['plain_ms_per_step']:.1f} ms/step; registered {row['registered']}; "
                      f"fastest here: {row['best']}")
                print(f"  {'variant':<28}{'ms/step':>9}{'vs plain':>10}{'vs fp32':>9}")
                for v in row["variants"]:
                    mark = " *" if v["registered"] else ""
                    print(f"  {v['variant']:<28}{v['ms_per_step']:>9.1f}{v['ratio_vs_plain']:>10.3f}"
                          f"{v['speedup_vs_engine_fp32']:>8.2f}x{mark}")
            else:
                print(f"{name}: done", file=sys.stderr, flush=True)
    except DigitlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump({"models": table, "machine": machine_info()}, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
