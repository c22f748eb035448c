"""``digitlab bench``: train a recipe once per seed, time it, report mean ± std.

``train_seconds`` is the training loop only (no data loading, no evaluation);
``total_seconds`` is the whole run including loading the dataset, building the
model and scoring the test set. ``run_bench_vs`` alternates two recipes seed by
seed, so both see the same machine state, and reports the ratio of medians.

Every recipe trains and scores on the dataset it is given (``mnist`` by default,
``fashion-mnist`` with ``--dataset``); an engine recipe's run directory records
that dataset in its ``config.yaml`` like any other run.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from digitlab.bench.plain import PLAIN, REFERENCE, PlainRecipe, train_plain
from digitlab.data.dataset import Dataset
from digitlab.errors import ConfigError
from digitlab.train.config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config: TrainConfig | None = None
    plain: PlainRecipe | None = None


def _shipped(name: str, recipe: str, description: str) -> Recipe:
    """An engine recipe backed by a shipped config (no run-time validation split, no TensorBoard)."""
    from digitlab.train.recipes import load_config

    return Recipe(name, description, config=load_config(recipe).override(val_fraction=0.0, tensorboard=False))


RECIPES: dict[str, Recipe] = {
    "plain": Recipe("plain", PLAIN.description, plain=PLAIN),
    "reference": Recipe("reference", REFERENCE.description, plain=REFERENCE),
    "fast": _shipped("fast", "fast-cnn", "digitlab engine, configs/fast-cnn.yaml: BN CNN (8/32 channels), resident "
                     "uint8 tensor, batch 256, Adam (0.8, 0.95) one-cycle to 0.025 over 190 steps (0.81 epoch), "
                     "label smoothing 0.05, bf16 autocast (where the CPU has native bf16), channels-last, "
                     "MaxPool2x2"),
    "best": _shipped("best", "best-cnn", "digitlab engine, configs/best-cnn.yaml: VGG-style BN CNN, 20 epochs, "
                     "AdamW one-cycle 3e-3, label smoothing 0.1, strong augmentation, bf16 autocast (where native); "
                     "final epoch, no selection on test"),
}


def machine_info() -> dict[str, Any]:
    from digitlab.utils import machine_summary

    m = machine_summary()
    return {"cpu": m["cpu"], "cpu_count": m["cores"], "simd": m["simd"], "bf16_instructions": m["bf16_instructions"],
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": m["python"],
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}") from None


def run_once(recipe: Recipe, seed: int, dataset: Dataset | str = "mnist", data_dir: str | None = None,
             epochs: int | None = None, out: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Train ``recipe`` with ``seed`` on ``dataset`` (a loaded Dataset or a name); returns accuracy and timings."""
    from digitlab.data import load_dataset

    t0 = time.perf_counter()
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_dir, progress=False)
    if recipe.plain is not None:
        result = train_plain(recipe.plain, ds, seed, epochs=epochs, device=device)
        result["total_seconds"] = time.perf_counter() - t0
        return {"seed": seed, **result}
    from digitlab.train.run import train_run

    assert recipe.config is not None
    cfg = recipe.config.override(seed=seed, epochs=epochs, dataset=ds.name, device=device)
    run_dir = os.path.join(out, f"{recipe.name}-seed{seed}") if out else None
    res = train_run(cfg, run_dir, dataset=ds, progress=False)
    return {"seed": seed, "test_accuracy": res.metrics["test_accuracy"],
            "train_seconds": res.metrics["train_seconds"], "total_seconds": time.perf_counter() - t0,
            "epochs": res.metrics["epochs_completed"], "run_dir": run_dir}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "median": statistics.median(values), "min": min(values), "max": max(values)}

    return {"test_accuracy": stats("test_accuracy"), "train_seconds": stats("train_seconds"),
            "total_seconds": stats("total_seconds")}


def _check_args(seeds: int, device: str) -> None:
    """Usage errors before any work: no half-made run directory for --device cuda without CUDA."""
    from digitlab.utils import resolve_device

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    resolve_device(device)


def run_bench(name: str, seeds: int = 1, seed: int = 0, dataset: str = "mnist", data_dir: str | None = None,
              epochs: int | None = None, out: str | None = None, device: str = "auto",
              on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train recipe ``name`` with ``seeds`` seeds starting at ``seed`` on ``dataset``; mean ± std."""
    from digitlab.data import load_dataset

    _check_args(seeds, device)
    recipe = get_recipe(name)
    ds = load_dataset(dataset, data_dir, progress=False)
    runs = []
    for s in range(seed, seed + seeds):
        runs.append(run_once(recipe, s, ds, epochs=epochs, out=out, device=device))
        if on_run:
            on_run({"recipe": name, **runs[-1]})
    return {"recipe": name, "description": recipe.description, "dataset": ds.name, "runs": runs,
            "summary": summarise(runs), "machine": machine_info()}


def run_bench_vs(name: str, other: str, seeds: int = 1, seed: int = 0, dataset: str = "mnist",
                 data_dir: str | None = None, epochs: int | None = None, out: str | None = None,
                 device: str = "auto", on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Alternate ``name`` and ``other`` seed by seed on ``dataset``; ratio of median training times."""
    from digitlab.data import load_dataset

    _check_args(seeds, device)
    a, b = get_recipe(name), get_recipe(other)
    ds = load_dataset(dataset, data_dir, progress=False)
    runs_a: list[dict[str, Any]] = []
    runs_b: list[dict[str, Any]] = []
    for s in range(seed, seed + seeds):
        for recipe, runs in ((a, runs_a), (b, runs_b)):
            runs.append(run_once(recipe, s, ds, epochs=epochs if recipe is a else None, out=out, device=device))
            if on_run:
                on_run({"recipe": recipe.name, **runs[-1]})
    sa, sb = summarise(runs_a), summarise(runs_b)
    return {
        "recipe": name, "description": a.description, "dataset": ds.name, "runs": runs_a, "summary": sa,
        "vs": {"recipe": other, "description": b.description, "runs": runs_b, "summary": sb},
        "ratio_median_train_seconds": sa["train_seconds"]["median"] / sb["train_seconds"]["median"],
        "machine": machine_info(),
    }
