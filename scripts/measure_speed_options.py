#!/usr/bin/env python
"""What helped each model's training step and what did not: ms/step per option, per model.

Usage (from the repository root; on an otherwise idle machine for figures):

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_speed_options.py \\
        [--models cnn-deep,cnn-enhanced,se-cnn] [--options before,shipped,...] [--steps 30] [--rounds 3] \\
        [--batch-size 128] [--threads N] > speed_options.json

Every option of a model is timed in digitlab's engine (``Trainer``, resident uint8 data, the model's
recipe step) and the plain PyTorch loop is timed beside them (fp32, ``nn.MaxPool2d``, ``nn.Dropout``,
``DataLoader``) — all alternately, block by block, in one process, from the same initial weights
(``digitlab.bench.zoo.measure_variants``); ms/step are medians of the step intervals. JSON on stdout
(progress on stderr): per model, every option's ``ms_per_step``, ``ratio_vs_plain`` (the figure of
``digitlab bench zoo``) and ``speedup_vs_shipped`` (above 1: faster than what the code does now).

Options (each is the shipped engine with one change, unless it says otherwise):

* ``shipped``         — the model and registered settings as they are in the code;
* ``before``          — the layers as torch has them: ``nn.Dropout``, ``nn.AdaptiveAvgPool2d(1)`` and
  ``nn.Flatten`` instead of :class:`digitlab.models.ops.Dropout`, :class:`~digitlab.models.ops.GlobalAvgPool2d`
  and :class:`~digitlab.models.ops.Flatten` (whose gradient stays channels-last), se-cnn's SE scaling in
  layer order (``SECNN.scale_after_pool``, ``SECNN.scale_after_average``);
* ``torch-dropout``, ``torch-gap``, ``torch-flatten``, ``se-in-order`` — only one of those back (what each is worth);
* ``unfused-optimizer`` — torch's default per-parameter optimiser instead of the engine's fused Adam/AdamW/SGD
  kernels (``foreach`` Adadelta);
* ``foreach-clip``    — gradient clipping with ``foreach=True``. Needs a change in ``train/loop.py``;
* ``fp32-first-conv`` — the 1-channel input conv as ``Float32Conv2d`` (float32 under autocast, as fast-cnn);
* ``bf16-first-conv`` — the opposite for models that have a ``Float32Conv2d`` (fast-cnn);
* ``fp32``, ``bf16``, ``channels-last``, ``bf16+channels-last`` — the four autocast/memory-format settings;
* ``compile``         — ``torch.compile`` of the model (inductor; compile time is in the untimed warm-up);
  skipped with a note where torch.compile is unavailable.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DEFAULT_MODELS = "cnn-deep,cnn-enhanced,se-cnn,resnet-mini,densenet-mini"


@dataclass(frozen=True)
class Option:
    description: str
    build: Callable[[Any], Any]
    """registered TrainSettings -> EngineVariant"""


def _swap(model: nn.Module, match: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module],
          first_only: bool = False) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, make(child))
                if first_only:
                    return model
    return model


def torch_dropout(model: nn.Module) -> nn.Module:
    """Every :class:`digitlab.models.ops.Dropout` back to ``nn.Dropout``."""
    from digitlab.models.ops import Dropout

    return _swap(model, lambda m: isinstance(m, Dropout), lambda m: nn.Dropout(m.p))  # type: ignore[arg-type]


def torch_gap(model: nn.Module) -> nn.Module:
    """Every :class:`digitlab.models.ops.GlobalAvgPool2d` back to ``nn.AdaptiveAvgPool2d(1)``."""
    from digitlab.models.ops import GlobalAvgPool2d

    return _swap(model, lambda m: isinstance(m, GlobalAvgPool2d), lambda m: nn.AdaptiveAvgPool2d(1))


def torch_flatten(model: nn.Module) -> nn.Module:
    """Every :class:`digitlab.models.ops.Flatten` back to ``nn.Flatten``."""
    from digitlab.models.ops import Flatten

    return _swap(model, lambda m: isinstance(m, Flatten), lambda m: nn.Flatten())


def se_in_order(model: nn.Module) -> nn.Module:
    """se-cnn: every SE scaling in ``features``' order (``scale_after_pool`` and ``scale_after_average`` off)."""
    for flag in ("scale_after_pool", "scale_after_average"):
        if hasattr(model, flag):
            object.__setattr__(model, flag, False)
    return model


def previous_form(model: nn.Module) -> nn.Module:
    """The model with torch's own layers (dropout, global pooling, flatten) and SE scaling in layer order."""
    return se_in_order(torch_flatten(torch_gap(torch_dropout(model))))


def fp32_first_conv(model: nn.Module) -> nn.Module:
    """The first 1-input-channel ``nn.Conv2d`` as a ``Float32Conv2d`` with the same weights."""
    from digitlab.models.ops import Float32Conv2d

    def make(conv: nn.Module) -> nn.Module:
        assert isinstance(conv, nn.Conv2d)
        new = Float32Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                            stride=conv.stride, padding=conv.padding,
                            bias=conv.bias is not None)
        new.load_state_dict(conv.state_dict())
        for attr in ("keras_l2", "keras_init"):
            if hasattr(conv, attr):
                setattr(new, attr, getattr(conv, attr))
        return new

    return _swap(model, lambda m: type(m) is nn.Conv2d and m.in_channels == 1, make, first_only=True)


@contextlib.contextmanager
def unfused_optimizer() -> Iterator[None]:
    """The engine's ``build_optimizer`` with torch's default per-parameter kernels (no ``fused``/``foreach``)."""
    from digitlab.train import loop

    original = loop.build_optimizer

    def build(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        opt = original(model, cfg)
        for group in opt.param_groups:
            for key in ("fused", "foreach"):
                if group.get(key):
                    group[key] = False if key == "fused" else None
        opt.defaults.pop("fused", None)
        return opt

    loop.build_optimizer = build
    try:
        yield
    finally:
        loop.build_optimizer = original


@contextlib.contextmanager
def foreach_clip() -> Iterator[None]:
    """``nn.utils.clip_grad_norm_(..., foreach=True)`` in the engine (one multi-tensor norm)."""
    original = nn.utils.clip_grad_norm_
    nn.utils.clip_grad_norm_ = functools.partial(original, foreach=True)
    try:
        yield
    finally:
        nn.utils.clip_grad_norm_ = original


def bf16_first_conv(model: nn.Module) -> nn.Module:
    """Every ``Float32Conv2d`` as a plain ``nn.Conv2d`` (which follows autocast) with the same weights."""
    from digitlab.models.ops import Float32Conv2d

    def make(conv: nn.Module) -> nn.Module:
        assert isinstance(conv, nn.Conv2d)
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                        stride=conv.stride, padding=conv.padding,  # type: ignore[arg-type]
                        bias=conv.bias is not None)
        new.load_state_dict(conv.state_dict())
        return new

    return _swap(model, lambda m: isinstance(m, Float32Conv2d), make)


def compiled(model: nn.Module) -> nn.Module:
    model.compile()  # in place: the state-dict keys stay as they are
    return model


def compile_available() -> str | None:
    """None when torch.compile works here, else why not."""
    try:
        f = torch.compile(lambda t: t * 2 + 1)
        f(torch.ones(2))
    except Exception as exc:  # noqa: BLE001 - any failure means "unavailable here"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def options() -> dict[str, Option]:
    from digitlab.bench.zoo import EngineVariant
    from digitlab.models import TrainSettings

    def settings(amp: bool, cl: bool) -> Callable[[Any], Any]:
        return lambda reg: EngineVariant(TrainSettings(amp=amp, channels_last=cl))

    return {
        "shipped": Option("the model and registered settings as shipped", lambda reg: EngineVariant(reg)),
        "before": Option("torch's nn.Dropout, nn.AdaptiveAvgPool2d(1), nn.Flatten; SE scaling in layer order",
                         lambda reg: EngineVariant(reg, transform=previous_form)),
        "torch-dropout": Option("shipped but nn.Dropout instead of ops.Dropout",
                                lambda reg: EngineVariant(reg, transform=torch_dropout)),
        "se-in-order": Option("shipped but se-cnn's SE scaling before the pooling (no effect on other models)",
                              lambda reg: EngineVariant(reg, transform=se_in_order)),
        "torch-gap": Option("shipped but nn.AdaptiveAvgPool2d(1) instead of ops.GlobalAvgPool2d",
                            lambda reg: EngineVariant(reg, transform=torch_gap)),
        "torch-flatten": Option("shipped but nn.Flatten instead of ops.Flatten",
                                lambda reg: EngineVariant(reg, transform=torch_flatten)),
        "unfused-optimizer": Option("shipped but torch's default (unfused) optimizer kernels",
                                    lambda reg: EngineVariant(reg, context=unfused_optimizer)),
        "foreach-clip": Option("shipped + clip_grad_norm_(foreach=True) (needs the loop change)",
                               lambda reg: EngineVariant(reg, context=foreach_clip)),
        "fp32-first-conv": Option("shipped + the 1-channel input conv kept float32 under autocast",
                                  lambda reg: EngineVariant(reg, transform=fp32_first_conv)),
        "bf16-first-conv": Option("shipped but Float32Conv2d layers as plain convs (bf16 under autocast)",
                                  lambda reg: EngineVariant(reg, transform=bf16_first_conv)),
        "fp32": Option("no autocast, NCHW", settings(False, False)),
        "bf16": Option("bf16 autocast, NCHW", settings(True, False)),
        "channels-last": Option("float32, channels-last", settings(False, True)),
        "bf16+channels-last": Option("bf16 autocast, channels-last", settings(True, True)),
        "compile": Option("shipped + torch.compile(model)", lambda reg: EngineVariant(reg, transform=compiled)),
    }


DEFAULT_OPTIONS = "shipped,before,unfused-optimizer,fp32-first-conv,fp32,bf16,channels-last,bf16+channels-last"


def measure(name: str, images: torch.Tensor, labels: torch.Tensor, chosen: list[str], steps: int, rounds: int,
            batch_size: int, device: str, cpu_time: bool = False) -> dict[str, Any]:
    from digitlab.bench.zoo import PLAIN, measure_variants
    from digitlab.models import train_settings

    registered = train_settings(name)
    table = options()
    variants = {key: table[key].build(registered) for key in chosen}
    result, used = measure_variants(name, images, labels, variants, steps=steps, batch_size=batch_size,
                                    device=device, rounds=rounds, warmup=2,
                                    clock=time.process_time if cpu_time else time.perf_counter)
    plain_ms = result[PLAIN][0]
    shipped_ms = result["shipped"][0] if "shipped" in result else None
    rows = []
    for key in chosen:
        ms, blocks = result[key]
        rows.append({"option": key, "description": table[key].description, "ms_per_step": ms, "block_ms": blocks,
                     "ratio_vs_plain": ms / plain_ms,
                     "speedup_vs_shipped": shipped_ms / ms if shipped_ms else None})
    return {"model": name, "registered": registered.to_dict(), "plain_ms_per_step": plain_ms,
            "plain_block_ms": result[PLAIN][1], "options": rows,
            "fastest": min(rows, key=lambda r: r["ms_per_step"])["option"],
            "settings": {k: v for k, v in used.to_dict().items() if k not in ("amp", "channels_last")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated models (default {DEFAULT_MODELS})")
    parser.add_argument("--options", default=DEFAULT_OPTIONS,
                        help=f"comma-separated options, 'shipped' first (default {DEFAULT_OPTIONS}; also: compile)")
    parser.add_argument("--steps", type=int, default=30, help="counted steps per option and model (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating blocks per option (default 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per step (default 128)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the process's CPU time instead of wall time (with --threads 1: robust on a "
                             "busy machine; not the figure of `digitlab bench zoo`)")
    parser.add_argument("--dataset", default="mnist", help="training images to batch (default mnist)")
    parser.add_argument("--data-dir", default=None, help="folder with the dataset's IDX files")
    args = parser.parse_args(argv)

    from digitlab.bench.harness import machine_info
    from digitlab.bench.zoo import check_zoo_models
    from digitlab.data import load_dataset
    from digitlab.errors import DigitlabError

    chosen = [o for o in args.options.split(",") if o]
    unknown = sorted(set(chosen) - set(options()))
    if unknown or not chosen:
        print(f"error: unknown options {unknown}; choose from {', '.join(options())}", file=sys.stderr)
        return 2
    notes = {}
    if "compile" in chosen:
        why = compile_available()
        if why is not None:
            chosen.remove("compile")
            notes["compile"] = f"skipped: torch.compile unavailable here ({why})"
    try:
        names = check_zoo_models(args.models.split(","))
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        ds = load_dataset(args.dataset, args.data_dir, progress=False)
        table = []
        for name in names:
            table.append(measure(name, ds.train_images, ds.train_labels, chosen, args.steps, args.rounds,
                                 args.batch_size, args.device, args.cpu_time))
            row = table[-1]
            summary = ", ".join(f"{r['option']} {r['ms_per_step']:.1f}" for r in row["options"])
            print(f"{name}: plain {row['plain_ms_per_step']:.1f} ms/step; {summary}", file=sys.stderr, flush=True)
    except DigitlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clock = "process CPU time" if args.cpu_time else "wall time"
    json.dump({"models": table, "clock": clock, "notes": notes, "machine": machine_info()}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
