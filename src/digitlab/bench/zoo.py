"""``digitlab bench zoo``: milliseconds per training step, digitlab's engine against a plain loop, per model.

For every gradient model of the zoo (the scikit-learn baselines have no training
step) two loops train the same architecture from the same initial weights on
the same training images, with the same batch size, optimiser and loss:

* **engine**: :class:`digitlab.train.loop.Trainer` itself, on the resident uint8
  tensor indexed per batch and turned into floats on the fly, with the model's
  fastest settings from the registry (:func:`digitlab.models.train_settings`:
  bf16 autocast, channels-last), its fast layers (``MaxPool2x2``, ``Dropout``,
  ``GlobalAvgPool2d``, ``Flatten``, in-place activations) and the engine's fused
  optimiser kernels;
* **plain**: the textbook loop — a ``DataLoader`` over a float ``TensorDataset``
  (per-sample indexing and collation), float32, the model's
  :func:`digitlab.models.ops.plain_copy` (``nn.MaxPool2d``, plain convs, out-of-place
  activations) and torch's default optimiser (:func:`textbook_optimizer`).

Both loops add the model's own L2 penalty (notebook 001 models) and clip the
gradient norm when the model's recipe does, so they do the same work per step.
No augmentation in either (it is a per-recipe choice, not part of the step).

The two are timed **alternately** in one process — warm-up, then engine block,
plain block, engine block, … — so both see the same machine state. A step's time
is the interval between the ends of consecutive steps (the first step of each
block, which includes the block's set-up, is not counted); on CPU the result is
the median over all counted steps, on CUDA (asynchronous: one synchronisation at
the end of each block, none per step) the median over blocks of the block's mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from digitlab.data.dataset import Dataset
from digitlab.errors import ConfigError
from digitlab.models.registry import TrainSettings
from digitlab.train.callbacks import Callback

__all__ = ["PLAIN", "EngineVariant", "ZooResult", "ZooRow", "ZooSettings", "bench_zoo", "check_zoo_models",
           "engine_config", "measure_model", "measure_variants", "zoo_models"]


@dataclass(frozen=True)
class ZooSettings:
    """How one model was measured."""

    amp: bool
    """Engine: bf16 autocast, as run (off where the device has no native bf16, whatever is registered)."""
    channels_last: bool
    """Engine: channels-last weights and batches."""
    batch_size: int
    optimizer: str
    """Both loops (with the recipe's learning rate and coefficients)."""
    grad_clip: float | None
    """Both loops clip the global gradient norm to this (the recipe's value)."""
    l2_penalty: bool
    """Both loops add the model's own Keras-style L2 term to the loss."""
    device: str
    threads: int
    """``torch.get_num_threads()`` during the measurement."""
    steps: int
    """Counted steps per loop (split into ``rounds`` blocks)."""
    rounds: int
    """Alternating blocks per loop."""
    warmup_steps: int
    """Untimed steps of each loop before the first block."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ZooRow:
    """One model's result."""

    model: str
    engine_ms_per_step: float
    plain_ms_per_step: float
    settings: ZooSettings
    engine_block_ms: list[float] = field(default_factory=list)
    """Mean ms per counted step of each engine block, in order (for judging the noise)."""
    plain_block_ms: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Engine time per step over plain time per step (below 1: the engine is faster)."""
        return self.engine_ms_per_step / self.plain_ms_per_step

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "engine_ms_per_step": self.engine_ms_per_step,
                "plain_ms_per_step": self.plain_ms_per_step, "ratio": self.ratio,
                "settings": self.settings.to_dict(), "engine_block_ms": list(self.engine_block_ms),
                "plain_block_ms": list(self.plain_block_ms)}


@dataclass(frozen=True)
class ZooResult:
    """What ``digitlab bench zoo`` reports."""

    models: list[ZooRow]
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"models": [row.to_dict() for row in self.models], "machine": dict(self.machine)}


def zoo_models() -> list[str]:
    """Every registered model trained by gradient steps (the zoo minus the scikit-learn baselines)."""
    from digitlab.models import list_models, model_info

    return [name for name in list_models() if model_info(name).uses_gradient]


def check_zoo_models(models: list[str] | None) -> list[str]:
    """``models`` checked (known, trained by gradient steps), or every gradient model for None."""
    from digitlab.models import model_info

    if models is None:
        return zoo_models()
    if not models:
        raise ConfigError("--models needs at least one model name")
    for name in models:
        if not model_info(name).uses_gradient:  # model_info: ConfigError for an unknown name
            raise ConfigError(f"{name} is fitted without gradient steps (no training step to time); "
                              f"gradient models: {', '.join(zoo_models())}")
    return list(models)


def engine_config(name: str, batch_size: int, device: str = "auto", settings: TrainSettings | None = None) -> Any:
    """The ``TrainConfig`` the engine is timed with: the model's recipe (optimiser, learning rate,
    gradient clipping) at ``batch_size``, without augmentation, validation, early stopping or
    TensorBoard (a plateau schedule becomes constant: it needs validation), with ``settings``
    (default: the model's registered fastest settings)."""
    from digitlab.models import model_info
    from digitlab.train.config import TrainConfig
    from digitlab.train.recipes import load_config

    info = model_info(name)
    base = load_config(info.recipe) if info.recipe else TrainConfig(model=name)
    s = settings if settings is not None else info.train_settings
    return dataclasses.replace(
        base, model=name, batch_size=batch_size, augment=None, early_stopping=False, val_fraction=0.0,
        tensorboard=False, device=device, amp=s.amp, channels_last=s.channels_last, epochs=1 << 20,
        max_steps=None, checkpoint_every=0, eval_every_steps=0,
        # the plateau schedule acts at epoch ends on validation metrics; its per-step work is a constant LR
        schedule="constant" if base.schedule == "plateau" else base.schedule)


class _StepClock(Callback):
    """A Trainer callback: the time at the end of every step (one CUDA sync at the block's last step)."""

    name = "zoo-step-clock"

    def __init__(self, steps: int, cuda: bool, clock: Callable[[], float] = time.perf_counter) -> None:
        self.steps, self.cuda, self.clock = steps, cuda, clock
        self.times: list[float] = []

    def on_step_end(self, trainer: Any, **_: Any) -> None:
        if self.cuda and len(self.times) == self.steps - 1:
            torch.cuda.synchronize()
        self.times.append(self.clock())


def _ms_per_step(blocks: list[list[float]], cuda: bool) -> tuple[float, list[float]]:
    """(the measurement, each block's mean) from per-block step-end timestamps."""
    means = [1000 * (b[-1] - b[0]) / (len(b) - 1) for b in blocks]
    if cuda:
        return statistics.median(means), means
    intervals = [1000 * (t1 - t0) for b in blocks for t0, t1 in zip(b, b[1:], strict=False)]
    return statistics.median(intervals), means


def _plain_batches(images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int,
                   seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches from a ``DataLoader`` over a float ``TensorDataset`` (CPU, as most code has it)."""
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(images_u8.cpu().unsqueeze(1).float().div_(255.0), labels.cpu())
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    while True:
        yield from loader


def textbook_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """The plain loop's optimiser as a notebook builds it: torch's default implementation (on CPU the
    per-parameter loop, no ``foreach``/``fused``) with the recipe's hyper-parameters. Kept apart from
    the engine's ``build_optimizer`` so that an engine choice of implementation is measured, not copied."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, rho=cfg.rho, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}")


@dataclass(frozen=True)
class EngineVariant:
    """One way of running the engine: ``settings``, whether the model keeps its fast layers, and
    (for ``scripts/measure_speed_options.py``) an edit of the model and of torch's global state."""

    settings: TrainSettings
    fast_layers: bool = True
    """False: train the model's :func:`~digitlab.models.ops.plain_copy` (``nn.MaxPool2d``, no in-place ops)."""
    transform: Callable[[nn.Module], nn.Module] | None = None
    """Applied to the variant's own copy of the model before training (it must keep the state-dict keys)."""
    context: Callable[[], AbstractContextManager[Any]] | None = None
    """Entered around each of the variant's blocks: a change of global state (e.g. a patched
    ``digitlab.train.loop`` function, ``torch.utils.deterministic.fill_uninitialized_memory``)
    that trying an engine change without editing the engine needs."""


PLAIN = "plain"
"""The key of the plain loop in :func:`measure_variants`' result."""


def measure_variants(name: str, images_u8: torch.Tensor, labels: torch.Tensor, variants: dict[str, EngineVariant],
                     steps: int = 30, batch_size: int = 128, device: str = "auto", rounds: int = 3,
                     warmup: int = 3, seed: int = 0, clock: Callable[[], float] = time.perf_counter,
                     ) -> tuple[dict[str, tuple[float, list[float]]], ZooSettings]:
    """Time model ``name``'s training step in the engine under each of ``variants`` and in the plain
    loop (key :data:`PLAIN`), alternately block by block, all from the same initial weights.

    ``clock``: wall time by default; ``time.process_time`` (with one thread) measures the CPU time of
    each step instead, which other processes on a busy machine disturb far less.

    Returns ``{key: (ms per step, per-block means)}`` and the settings of the measurement
    (``amp``/``channels_last`` of the first variant).
    """
    import copy

    from digitlab.data.splits import DataSplits, Split
    from digitlab.models import create_model
    from digitlab.models.ops import plain_copy
    from digitlab.train.loop import Trainer
    from digitlab.utils import resolve_device

    if steps < 1 or rounds < 1 or warmup < 0 or batch_size < 1 or not variants or PLAIN in variants:
        raise ConfigError(f"bench zoo needs steps >= 1, rounds >= 1, warmup >= 0, batch size >= 1 and engine "
                          f"variants (got steps={steps}, rounds={rounds}, warmup={warmup}, batch size={batch_size})")
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    base_cfg = engine_config(name, batch_size, str(dev))
    per_block = max(1, -(-steps // rounds))
    torch.manual_seed(seed)
    model = create_model(name, **base_cfg.model_kwargs)
    if hasattr(model, "prepare"):  # data-dependent state (mlp-selected's pixels) for the copies;
        model.prepare(images_u8.cpu(), labels.cpu())  # type: ignore[operator]  # the Trainer refits it, untimed
    splits = DataSplits(train=Split(images_u8, labels).to(dev), val=None, test=Split(images_u8[:1], labels[:1]))
    engines = {}
    for key, v in variants.items():
        net = copy.deepcopy(model) if v.fast_layers else plain_copy(model)
        if v.transform is not None:
            net = v.transform(net)
        engines[key] = (net, dataclasses.replace(base_cfg, amp=v.settings.amp, channels_last=v.settings.channels_last))

    def engine_block(key: str, n: int, block: int) -> list[float]:
        net, cfg = engines[key]
        step_clock = _StepClock(n, cuda)
        step_clock.clock = clock
        context = variants[key].context
        with context() if context is not None else contextlib.nullcontext():
            Trainer(net, splits, dataclasses.replace(cfg, max_steps=n, seed=seed + block),
                    callbacks=[step_clock], device=dev).fit()
        return step_clock.times

    plain = plain_copy(model).to(dev)
    opt = textbook_optimizer(plain, base_cfg)
    l2 = getattr(plain, "l2_penalty", None)
    batches = _plain_batches(images_u8, labels, batch_size, seed)

    def plain_block(n: int) -> list[float]:
        plain.train()
        times = []
        for i in range(n):
            x, y = next(batches)
            x, y = x.to(dev), y.to(dev)
            opt.zero_grad()
            loss = F.cross_entropy(plain(x), y)
            if l2 is not None:
                loss = loss + l2()
            loss.backward()
            if base_cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(plain.parameters(), base_cfg.grad_clip)
            opt.step()
            if cuda and i == n - 1:
                torch.cuda.synchronize()
            times.append(clock())
        return times

    if warmup:
        for key in engines:
            engine_block(key, warmup, -1)
        plain_block(warmup)
    times: dict[str, list[list[float]]] = {key: [] for key in [*engines, PLAIN]}
    for block in range(rounds):
        for key in engines:
            times[key].append(engine_block(key, per_block + 1, block))
        times[PLAIN].append(plain_block(per_block + 1))
    first = next(iter(variants.values())).settings
    from digitlab.utils import native_bf16

    # what the engine ran: its Trainer drops bf16 autocast where the device has no native bf16
    settings = ZooSettings(amp=first.amp and native_bf16(dev), channels_last=first.channels_last,
                           batch_size=batch_size,
                           optimizer=base_cfg.optimizer, grad_clip=base_cfg.grad_clip, l2_penalty=l2 is not None,
                           device=str(dev), threads=torch.get_num_threads(), steps=per_block * rounds,
                           rounds=rounds, warmup_steps=warmup)
    return {key: _ms_per_step(blocks, cuda) for key, blocks in times.items()}, settings


def measure_model(name: str, images_u8: torch.Tensor, labels: torch.Tensor, steps: int = 30,
                  batch_size: int = 128, device: str = "auto", rounds: int = 3, warmup: int = 3,
                  settings: TrainSettings | None = None, seed: int = 0) -> ZooRow:
    """Time model ``name``'s training step in the engine (with ``settings``, default its registered
    ones) and in the plain loop, alternately; see the module docstring."""
    from digitlab.models import train_settings

    engine = EngineVariant(settings if settings is not None else train_settings(name))
    result, used = measure_variants(name, images_u8, labels, {"engine": engine}, steps=steps,
                                    batch_size=batch_size, device=device, rounds=rounds, warmup=warmup, seed=seed)
    (engine_ms, engine_means), (plain_ms, plain_means) = result["engine"], result[PLAIN]
    return ZooRow(model=name, engine_ms_per_step=engine_ms, plain_ms_per_step=plain_ms, settings=used,
                  engine_block_ms=engine_means, plain_block_ms=plain_means)


def bench_zoo(models: list[str] | None = None, steps: int = 30, batch_size: int = 128, device: str = "auto",
              dataset: Dataset | str = "mnist", data_dir: str | None = None, rounds: int = 3, warmup: int = 3,
              threads: int | None = None, on_row: Callable[[ZooRow], None] | None = None) -> ZooResult:
    """ms per training step of the engine and of the plain loop for ``models`` (default: every gradient
    model, :func:`zoo_models`), ``steps`` counted steps per loop and model in ``rounds`` alternating blocks.

    ``dataset``: a loaded :class:`~digitlab.data.dataset.Dataset` or a dataset name (its training images
    are the batches). ``threads``: ``torch.set_num_threads`` for the measurement (restored after).
    ``on_row`` is called as each model finishes (progress).
    """
    from digitlab.bench.harness import machine_info
    from digitlab.utils import resolve_device

    names = check_zoo_models(models)
    resolve_device(device)  # a usage error before loading anything
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if isinstance(dataset, Dataset):
        ds = dataset
    else:
        from digitlab.data import load_dataset

        ds = load_dataset(dataset, data_dir, progress=False)
    previous_threads = torch.get_num_threads()
    rows = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for name in names:
            rows.append(measure_model(name, ds.train_images, ds.train_labels, steps=steps, batch_size=batch_size,
                                      device=device, rounds=rounds, warmup=warmup))
            if on_row is not None:
                on_row(rows[-1])
        machine = machine_info()
    finally:
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)
    return ZooResult(models=rows, machine=machine)
