"""Data-parallel training (DDP) on the one training loop.

``digitlab train --nproc N`` spawns N local processes; ``torchrun`` (any number
of machines) works too, since the CLI picks up ``RANK``/``WORLD_SIZE`` from the
environment. Each rank takes its slice of every global batch of the resident
tensor (see :class:`~digitlab.data.batches.BatchIterator`), gradients are
averaged by DDP, and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from digitlab.errors import ConfigError
from digitlab.train.config import TrainConfig


def backend_for(device: str) -> str:
    return "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, cfg: TrainConfig | None, out: str, resume: bool,
            data_dir: str | None, progress: bool, threads: int) -> None:
    from digitlab.train.run import train_run

    torch.set_num_threads(threads)
    device = cfg.device if cfg is not None else "auto"
    dist.init_process_group(backend_for(device), init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world_size)
    try:
        train_run(cfg, out, resume=resume, data_dir=data_dir, progress=progress and rank == 0,
                  rank=rank, world_size=world_size)
    finally:
        dist.destroy_process_group()


def train_distributed(cfg: TrainConfig | None, out: str | os.PathLike[str], nproc: int, *,
                      resume: bool = False, data_dir: str | None = None,
                      progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Run ``nproc`` local DDP processes; returns rank 0's metrics and the run directory."""
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    out = Path(out)
    if not resume:
        if cfg is None:
            raise ConfigError("a new run needs a config (or --resume RUN_DIR)")
        from digitlab.checkpoint import CONFIG_FILE
        from digitlab.models import create_model
        from digitlab.utils import ensure_new_dir, write_text_atomic

        create_model(cfg.model, **cfg.model_kwargs)  # bad model arguments: one error, no directory
        ensure_new_dir(out, "run directory")  # before spawning, so a refusal is one clean error
        write_text_atomic(out / CONFIG_FILE, cfg.to_yaml())
    threads = max(1, (os.cpu_count() or 1) // nproc)
    mp.spawn(_worker, args=(nproc, free_port(), cfg, str(out), resume, data_dir, progress, threads),
             nprocs=nproc, join=True)
    meta = json.loads((out / "meta.json").read_text())
    return meta["metrics"], out


def init_from_env() -> tuple[int, int]:
    """Join a process group launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` set); else (0, 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend_for("auto"))
    return dist.get_rank(), world_size
