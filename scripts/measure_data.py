#!/usr/bin/env python
"""Measure the data layer: full MNIST parse vs cached load, and augmentation cost.

Usage (from the repository root):

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_data.py [--repeats 5] [--json] [--out FILE]

``--out results/data_loading.json`` writes the numbers (with the machine they were measured on)
for scripts/update_readme.py.

The cache is a fresh temporary folder, so the numbers do not depend on (or touch)
your own cache. Each timing is the median over ``--repeats`` runs (min and max too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable


def _timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None, help="default: $DIGITLAB_DATA_DIR / cache / system dir")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--out", default=None, metavar="FILE", help="also write the JSON to this file")
    args = parser.parse_args(argv)

    tmp_cache = tempfile.TemporaryDirectory(prefix="digitlab-measure-")
    os.environ["DIGITLAB_CACHE_DIR"] = tmp_cache.name  # before digitlab reads it
    import torch

    from digitlab.data import AugmentConfig, augment_batch, load_dataset, to_float

    def load(**kw: object) -> object:
        return load_dataset(args.dataset, data_dir=args.data_dir, download=False, progress=False, **kw)

    load(use_cache=False)  # warm the OS page cache for the source files and import paths
    from digitlab.bench import machine_info

    results: dict[str, object] = {"dataset": args.dataset, "torch_threads": torch.get_num_threads(),
                                  "repeats": args.repeats, "machine": machine_info()}
    # full parse: read .gz, gunzip, SHA-256 of the content, validate, make tensors
    results["parse_from_gz"] = _timed(lambda: load(use_cache=False), args.repeats)
    t0 = time.perf_counter()
    ds = load()  # parses and writes the cache entry
    results["first_load_writing_cache_s"] = time.perf_counter() - t0
    results["cached_load"] = _timed(load, args.repeats)
    # cached tensors are copy-on-write maps: also time load + copying every pixel once, so a lazy
    # load that merely moves the cost to the first use is not flattered
    def load_and_read() -> None:
        d = load()
        d.train_images.clone(), d.test_images.clone()

    results["cached_load_plus_full_read"] = _timed(load_and_read, args.repeats)

    n = ds.train_images.shape[0]
    bs = args.batch_size
    batches = [to_float(ds.train_images[i:i + bs]) for i in range(0, n, bs)]
    configs = {
        "default": AugmentConfig(),
        "default+elastic": AugmentConfig(elastic_alpha=2.0, elastic_sigma=4.0),
        "all": AugmentConfig(rotation=15, zoom=0.15, shift=0.1, shear=10, brightness=0.2,
                             contrast=0.2, elastic_alpha=2.0),
    }
    aug: dict[str, dict[str, float]] = {}
    for name, cfg in configs.items():
        gen = torch.Generator().manual_seed(0)

        def run(cfg: AugmentConfig = cfg, gen: torch.Generator = gen) -> None:
            for x in batches:
                augment_batch(x, cfg, gen)

        aug[name] = _timed(run, max(1, args.repeats // 2))
        aug[name]["images"] = n
        aug[name]["config"] = cfg.to_dict()  # type: ignore[assignment]
    results["augment_per_epoch"] = aug
    results["augment_batch_size"] = bs
    tmp_cache.cleanup()

    if args.out:
        from digitlab.utils import write_json_atomic

        write_json_atomic(args.out, results)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    p, c = results["parse_from_gz"], results["cached_load"]
    cr = results["cached_load_plus_full_read"]
    name = args.dataset
    print(f"{name}: full parse from .gz  {p['median_s']:.3f} s (min {p['min_s']:.3f}, max {p['max_s']:.3f})")
    print(f"{name}: first load + cache    {results['first_load_writing_cache_s']:.3f} s")
    print(f"{name}: cached load           {c['median_s']:.4f} s (min {c['min_s']:.4f}, max {c['max_s']:.4f})")
    print(f"{name}: cached load + copy    {cr['median_s']:.4f} s (reading every pixel once)")
    for name, a in aug.items():
        print(f"augment '{name}': {a['median_s']:.2f} s per {n} images (batch {bs}, "
              f"{n / a['median_s']:.0f} images/s, {results['torch_threads']} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
