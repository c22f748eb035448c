"""Inference speed and size: latency, throughput, whole-set time, parameters, file size.

Timings use ``time.perf_counter`` around ``torch.inference_mode`` forward passes
after warm-up runs (the first calls pay for allocation and kernel selection).
On CUDA each timed call is synchronised so the clock measures the work, not the
launch. Numbers depend on the machine and its load: report them with the
hardware, and compare models measured in the same process.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.evaluate.inference import as_float_batch, model_device, predict_logits


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (same count as ``digitlab.models.count_parameters`` and checkpoint meta)."""
    from digitlab.models import count_parameters

    return int(count_parameters(model))


def checkpoint_bytes(source: str | os.PathLike[str]) -> int:
    """Size on disk of a checkpoint file, or of ``model.safetensors`` in a run directory."""
    from digitlab.train.checkpoint import checkpoint_file

    return int(checkpoint_file(source).stat().st_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_calls(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> np.ndarray:
    """Seconds per forward pass of ``x``, one entry per timed repeat."""
    dev = model_device(model)
    x = x.to(dev)
    was_training = model.training
    model.eval()
    times = np.empty(repeats, dtype=np.float64)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            _sync(dev)
            for i in range(repeats):
                t0 = time.perf_counter()
                model(x)
                _sync(dev)
                times[i] = time.perf_counter() - t0
    finally:
        model.train(was_training)
    return times


def latency(model: nn.Module, image: torch.Tensor, repeats: int = 100, warmup: int = 10) -> dict[str, Any]:
    """Batch-1 latency of ``model`` on one image (uint8 ``28×28`` / ``1×28×28`` or float).

    Returns ``{"p50_ms", "p95_ms", "mean_ms", "min_ms", "repeats"}``.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    x = image.unsqueeze(0) if image.ndim == 2 else image
    x = as_float_batch(x)[:1]
    t = _timed_calls(model, x, repeats, warmup) * 1e3
    return {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)),
            "mean_ms": float(t.mean()), "min_ms": float(t.min()), "repeats": int(repeats)}


def throughput(model: nn.Module, images: torch.Tensor, batch_size: int = 1000, repeats: int = 5,
               warmup: int = 1) -> dict[str, Any]:
    """Images per second at ``batch_size`` (the first ``batch_size`` of ``images``, repeated).

    Uses the median time per batch over ``repeats`` runs. Returns
    ``{"images_per_s", "batch_size", "seconds_per_batch", "repeats"}``.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    x = as_float_batch(images[:batch_size])
    t = _timed_calls(model, x, repeats, warmup)
    per_batch = float(np.median(t))
    return {"images_per_s": float(x.shape[0] / per_batch), "batch_size": int(x.shape[0]),
            "seconds_per_batch": per_batch, "repeats": int(repeats)}


def predict_seconds(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> float:
    """Wall-clock seconds to compute logits for the whole of ``images`` with :func:`predict_logits`."""
    _sync(model_device(model))
    t0 = time.perf_counter()
    predict_logits(model, images, batch_size=batch_size)
    _sync(model_device(model))
    return time.perf_counter() - t0


def speed_profile(model: nn.Module, images: torch.Tensor, *, repeats: int = 50, warmup: int = 5,
                  batch_size: int = 1000, throughput_repeats: int = 3) -> dict[str, Any]:
    """Latency at batch 1 (``repeats`` timed runs) and throughput at ``batch_size``.

    Returns ``{"latency_ms_p50", "latency_ms_p95", "latency_ms_mean",
    "throughput_per_s", "throughput_batch_size", "latency_repeats", "device",
    "torch_threads"}``.
    """
    lat = latency(model, images[:1], repeats=repeats, warmup=warmup)
    thr = throughput(model, images, batch_size=batch_size, repeats=throughput_repeats,
                     warmup=1)
    return {"latency_ms_p50": lat["p50_ms"], "latency_ms_p95": lat["p95_ms"],
            "latency_ms_mean": lat["mean_ms"], "throughput_per_s": thr["images_per_s"],
            "throughput_batch_size": thr["batch_size"], "latency_repeats": lat["repeats"],
            "device": str(model_device(model)), "torch_threads": torch.get_num_threads()}
