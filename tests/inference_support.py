"""Shared helpers for the inference/serve/export tests: a quickly trained model, test images.

Training happens once per pytest process (cached), whichever test file asks
first; the checkpoint goes to a session temp dir supplied by the caller. The
dataset comes from conftest's session ``mnist`` fixture.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from digitlab.checkpoint import build_meta, save_run_checkpoint
from digitlab.data import to_float
from digitlab.data.pictures import user_picture
from digitlab.models import create_model
from digitlab.utils import torch_threads

TRAIN_STEPS = 150
BATCH = 64


def train_cnn(ds, steps: int = 100, seed: int = 0, lr: float = 1e-3, batch: int = 64) -> torch.nn.Module:
    """cnn-simple after ``steps`` Adam steps on random batches: a real model in seconds (~90% at 100 steps).

    A minimal loop on purpose: tests of evaluation and inference must not depend on the engine.
    """
    torch.manual_seed(seed)
    model = create_model("cnn-simple")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = ds.train_images.shape[0]
    model.train()
    with torch_threads(1):
        for _ in range(steps):
            idx = torch.randint(0, n, (batch,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(to_float(ds.train_images[idx])), ds.train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


_RUNS: dict[str, Path] = {}


def trained_run(tmp_path_factory, ds) -> Path:
    """A run directory holding the inline-trained cnn-simple (``model.safetensors`` + ``meta.json``)."""
    if "run" not in _RUNS:
        model = train_cnn(ds, steps=TRAIN_STEPS, lr=2e-3, batch=BATCH)
        with torch.inference_mode(), torch_threads(1):
            pred = torch.cat([model(to_float(ds.test_images[i:i + 2000])).argmax(1)
                              for i in range(0, 10000, 2000)])
        acc = float((pred == ds.test_labels).float().mean())
        run = tmp_path_factory.mktemp("inference-run")
        save_run_checkpoint(run, model, build_meta(model, config={"steps": TRAIN_STEPS},
                                                   metrics={"test_accuracy": acc}))
        _RUNS["run"] = run
    return _RUNS["run"]


def sample_test_digits(ds, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random MNIST test digits (uint8 n×28×28) and labels."""
    idx = np.random.default_rng(seed).choice(ds.test_images.shape[0], n, replace=False)
    return ds.test_images.numpy()[idx], ds.test_labels.numpy()[idx]


def digit_png(digit: np.ndarray, size: int = 140, dark_on_light: bool = True) -> bytes:
    """A 28×28 MNIST digit as an upscaled PNG, by default as dark ink on white paper."""
    import io

    from PIL import Image

    pixels = 255 - digit if dark_on_light else digit
    buf = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares ``width × height`` pixels (a decompression-bomb stand-in)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def save_image(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def render_real_world(digit: np.ndarray, kind: int, rng: np.random.Generator) -> bytes:
    """Dark ink on white, upscaled to 100-300 px, off-centre on a larger canvas, saved in style ``kind`` (0-5)."""
    return user_picture(digit, rng, kind=kind)
