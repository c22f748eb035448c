#!/usr/bin/env python
"""What each design choice of the `fast` recipe is worth: variants trained alternately, seed by seed.

Usage (from the repository root, on an otherwise idle machine):

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_fast_variants.py [--seeds 5] [--json]

Every variant is `configs/fast-cnn.yaml` with one change, trained with digitlab's engine
(`Trainer`, training time only, test accuracy of the final weights). Variants run one after
another for seed 0, then for seed 1, ... so slow drifts of the machine hit all of them alike;
the table gives the median training time, its ratio to the shipped recipe, and the mean and
minimum test accuracy. A micro-benchmark of the 2×2 max-pool layer (forward + backward at
fast-cnn's two pooling shapes) comes first.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _median_ms(step: Callable[[], object], repeats: int) -> float:
    for _ in range(5):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _pool_step(pool: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> None:
    pool(x).backward(grad)


def _pool_micro(repeats: int = 40) -> list[dict[str, Any]]:
    from digitlab.models.ops import max_pool_2x2

    rows = []
    for shape in [(256, 8, 24, 24), (256, 32, 8, 8)]:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape).to(dtype).requires_grad_()
            grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2).to(dtype)
            row: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype).removeprefix("torch.")}
            pools: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
                ("torch_ms", lambda t: F.max_pool2d(t, 2)), ("digitlab_ms", max_pool_2x2)]
            for name, pool in pools:
                row[name] = _median_ms(functools.partial(_pool_step, pool, x, grad), repeats)
            row["speedup"] = row["torch_ms"] / row["digitlab_ms"]
            rows.append(row)
    return rows


class _Crop(nn.Module):
    def __init__(self, border: int) -> None:
        super().__init__()
        self.border = border

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.border
        return x[:, :, b:-b, b:-b]


def _variants() -> dict[str, tuple[str, Callable[[nn.Sequential], nn.Sequential], dict[str, Any]]]:
    from digitlab.models.ops import MaxPool2x2

    def torch_pool(model: nn.Sequential) -> nn.Sequential:
        for i, layer in enumerate(model):
            if isinstance(layer, MaxPool2x2):
                model[i] = nn.MaxPool2d(2)
        return model

    def fp32_first_conv(model: nn.Sequential) -> nn.Sequential:
        from digitlab.models.ops import Float32Conv2d

        first = model[0]
        conv = Float32Conv2d(first.in_channels, first.out_channels, first.kernel_size, bias=False)
        conv.weight = first.weight
        model[0] = conv
        return model

    def crop2(model: nn.Sequential) -> nn.Sequential:
        # 28 → 24 (crop) → 20 → 10 → 6 → 3: the classifier sees 3×3 instead of 4×4 maps
        linear = model[9]
        assert isinstance(linear, nn.Linear)
        model[9] = nn.Linear(linear.in_features * 9 // 16, linear.out_features)
        return nn.Sequential(_Crop(2), *model)

    def torch_flatten(model: nn.Sequential) -> nn.Sequential:
        from digitlab.models.ops import Flatten

        for i, layer in enumerate(model):
            if isinstance(layer, Flatten):
                model[i] = nn.Flatten()
        return model

    same: Callable[[nn.Sequential], nn.Sequential] = lambda m: m  # noqa: E731
    return {
        "shipped": ("configs/fast-cnn.yaml as shipped", same, {}),
        "torch-maxpool": ("nn.MaxPool2d instead of MaxPool2x2", torch_pool, {}),
        "torch-flatten": ("nn.Flatten instead of ops.Flatten (its gradient not laid out channels-last)",
                          torch_flatten, {}),
        "fp32-first-conv": ("first conv kept float32 under autocast (Float32Conv2d; the earlier shipped form)",
                            fp32_first_conv, {}),
        "before": ("nn.MaxPool2d (the session-1 recipe: first conv in bf16 too)", torch_pool, {}),
        "fp32": ("no autocast (all float32)", same, {"amp": False}),
        "channels-last": ("channels-last memory format", same, {"channels_last": True}),
        "c2=16": ("8/16 channels instead of 8/32", same, {"model_kwargs": {"c2": 16}}),
        "c2=20": ("8/20 channels (not a multiple of 8)", same, {"model_kwargs": {"c2": 20}}),
        "batch-512": ("batch 512, 85 steps (same images)", same, {"batch_size": 512, "max_steps": 85}),
        "crop-2px": ("crop the 2-pixel border (12% of digits have ink there)", crop2, {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="default: $DIGITLAB_DATA_DIR / cache / system dir")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--variants", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)

    from digitlab.bench.harness import machine_info
    from digitlab.data import load_dataset, make_splits
    from digitlab.models import create_model
    from digitlab.train.loop import Trainer, evaluate_split
    from digitlab.train.recipes import load_config

    variants = _variants()
    names = args.variants.split(",") if args.variants else list(variants)
    unknown = sorted(set(names) - set(variants))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(variants)}")
    splits = make_splits(load_dataset("mnist", args.data_dir, progress=False), 0.0, 0)
    base = load_config("fast-cnn").override(val_fraction=0.0, tensorboard=False)
    pool_rows = _pool_micro()

    def train(name: str, seed: int) -> tuple[float, float]:
        _, edit, overrides = variants[name]
        cfg = base.override(seed=seed, **overrides)
        torch.manual_seed(seed)
        model = edit(create_model(cfg.model, **cfg.model_kwargs))
        result = Trainer(model, splits, cfg).fit()
        return evaluate_split(model, splits.test)["accuracy"], result.train_seconds

    train("shipped", 0)  # warm-up: one-time kernel selection is not part of any variant's time
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for seed in range(args.seeds):
        for name in names:
            runs[name].append(train(name, seed))
    ref = statistics.median(t for _, t in runs["shipped"]) if "shipped" in runs else None
    table = []
    for name in names:
        accs, secs = [a for a, _ in runs[name]], [t for _, t in runs[name]]
        median = statistics.median(secs)
        table.append({"variant": name, "change": variants[name][0], "median_train_seconds": median,
                      "time_vs_shipped": median / ref if ref else None,
                      "accuracy_mean": statistics.fmean(accs), "accuracy_min": min(accs),
                      "runs": [{"seed": s, "test_accuracy": a, "train_seconds": t}
                               for s, (a, t) in enumerate(runs[name])]})
    out = {"pool_micro": pool_rows, "variants": table, "seeds": args.seeds,
           "machine": machine_info()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("| shape | dtype | nn.MaxPool2d fwd+bwd ms | MaxPool2x2 fwd+bwd ms | speed-up |")
    print("|---|---|---|---|---|")
    for r in pool_rows:
        print(f"| {'×'.join(map(str, r['shape']))} | {r['dtype']} | {r['torch_ms']:.2f} | "
              f"{r['digitlab_ms']:.2f} | {r['speedup']:.1f}× |")
    print()
    print(f"| variant | change | median train s | time vs shipped | test acc. mean | min ({args.seeds} seeds) |")
    print("|---|---|---|---|---|---|")
    for r in table:
        ratio = f"{r['time_vs_shipped']:.2f}×" if r["time_vs_shipped"] else "–"
        print(f"| {r['variant']} | {r['change']} | {r['median_train_seconds']:.2f} | {ratio} | "
              f"{100 * r['accuracy_mean']:.2f}% | {100 * r['accuracy_min']:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
