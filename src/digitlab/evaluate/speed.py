"""Inference speed and size: latency, throughput, whole-set time, parameters, file size.

Timings use ``time.perf_counter`` around ``torch.inference_mode`` forward passes
after warm-up runs (the first calls pay for allocation and kernel selection).
On CUDA each timed call is synchronised so the clock measures the work, not the
launch. Numbers depend on the machine and its load: report them with the
hardware, and compare models measured in the same process.

The one protocol every command uses (:func:`measure_speed`): the models are timed
in *rounds*, each round timing every model in turn (interleaved, so a burst of load
from another process hits all of them rather than one), and each figure is the
median over rounds with the spread (lowest and highest round) beside it.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.models.forward import as_float_batch, inference_layout, model_device, predict_logits


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (same count as ``digitlab.models.count_parameters`` and checkpoint meta)."""
    from digitlab.models import count_parameters

    return int(count_parameters(model))


def checkpoint_bytes(source: str | os.PathLike[str]) -> int:
    """Size on disk of a checkpoint file, or of ``model.safetensors`` in a run directory."""
    from digitlab.checkpoint import checkpoint_file

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
        # a batch runs in the layout every batched evaluation uses (predict_logits)
        with inference_layout(model, dev, x.shape[0]) as channels_last, torch.inference_mode():
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
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


@dataclass
class SpeedProfile:
    """Batch-1 latency and batched throughput of one model, measured in rounds (:func:`measure_speed`).

    ``*_low``/``*_high`` are the lowest and highest per-round medians: two models whose
    ranges overlap are not told apart by this measurement.
    """

    latency_ms_p50: float
    """Median over rounds of each round's median batch-1 latency (ms)."""
    latency_ms_p95: float
    """95th percentile of every timed batch-1 call (ms)."""
    latency_ms_mean: float
    latency_ms_low: float
    latency_ms_high: float
    throughput_per_s: float
    """Median over rounds of images per second at ``throughput_batch_size``."""
    throughput_low: float
    throughput_high: float
    throughput_batch_size: int
    latency_repeats: int
    """Timed batch-1 calls in total (rounds × calls per round)."""
    rounds: int
    device: str
    torch_threads: int

    @property
    def latency_spread(self) -> float:
        """Relative spread of the latency: (highest − lowest round median) / median."""
        return (self.latency_ms_high - self.latency_ms_low) / self.latency_ms_p50 if self.latency_ms_p50 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_speed(models: dict[str, nn.Module], images: torch.Tensor, *, repeats: int = 50, rounds: int = 5,
                  warmup: int = 5, batch_size: int = 1000, throughput_repeats: int = 1
                  ) -> dict[str, SpeedProfile]:
    """Time every model in ``rounds`` interleaved rounds: the one latency protocol of digitlab.

    Each round times, model after model, ``ceil(repeats / rounds)`` batch-1 calls on the first image
    and ``throughput_repeats`` passes over the first ``batch_size`` images. Every model is warmed
    up (``warmup`` calls of each kind) before the first round.
    """
    if repeats < 1 or rounds < 1:
        raise ValueError("repeats and rounds must be >= 1")
    rounds = min(rounds, repeats)
    per_round = -(-repeats // rounds)
    one = as_float_batch(images[:1])
    batch = as_float_batch(images[:batch_size])
    lat: dict[str, list[np.ndarray]] = {name: [] for name in models}
    thr: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        _timed_calls(model, one, 1, warmup)
        _timed_calls(model, batch, 1, 1)
    for _ in range(rounds):
        for name, model in models.items():
            lat[name].append(_timed_calls(model, one, per_round, 0) * 1e3)
            t = _timed_calls(model, batch, throughput_repeats, 0)
            thr[name].append(batch.shape[0] / float(np.median(t)))
    out = {}
    for name, model in models.items():
        medians = np.array([float(np.median(r)) for r in lat[name]])
        every = np.concatenate(lat[name])
        tp = np.array(thr[name])
        out[name] = SpeedProfile(
            latency_ms_p50=float(np.median(medians)), latency_ms_p95=float(np.percentile(every, 95)),
            latency_ms_mean=float(every.mean()), latency_ms_low=float(medians.min()),
            latency_ms_high=float(medians.max()), throughput_per_s=float(np.median(tp)),
            throughput_low=float(tp.min()), throughput_high=float(tp.max()),
            throughput_batch_size=int(batch.shape[0]), latency_repeats=int(every.size), rounds=rounds,
            device=str(model_device(model)), torch_threads=torch.get_num_threads())
    return out


def speed_profile(model: nn.Module, images: torch.Tensor, *, repeats: int = 50, warmup: int = 5,
                  batch_size: int = 1000, throughput_repeats: int = 3, rounds: int = 5) -> SpeedProfile:
    """:func:`measure_speed` of one model: batch-1 latency and throughput at ``batch_size``."""
    return measure_speed({"model": model}, images, repeats=repeats, rounds=rounds, warmup=warmup,
                         batch_size=batch_size, throughput_repeats=throughput_repeats)["model"]
