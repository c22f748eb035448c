"""Batch iteration over a resident uint8 tensor: index, convert, optionally augment.

Images stay uint8 on their device; each batch is gathered with one index op,
scaled to [0, 1] floats (the input convention of every digitlab model) and
shaped ``N×1×28×28``. No DataLoader, no worker processes, no per-sample Python.

With ``seed`` set, the order of epoch ``e`` and the augmentation of batch ``b``
are pure functions of ``(seed, e, b)``: a run resumed at any batch, or split
across DDP ranks, sees exactly the samples an uninterrupted single run sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from digitlab.data.splits import Split

AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``N×28×28`` → float32 ``N×1×28×28`` in [0, 1]."""
    x = images_u8.unsqueeze(1).to(torch.float32)
    # in place only on the fresh copy: for float32 input .to() returns a view of the caller's tensor
    return x.div_(255.0) if images_u8.dtype != torch.float32 else x / 255.0


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (splitmix64-style), stable across runs."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x & 0x7FFFFFFFFFFFFFFF


class BatchIterator:
    """Iterate ``(x, y)`` batches of a :class:`Split`, reshuffled every epoch.

    Args:
        split: the data, already on the target device.
        batch_size: samples per (global) batch.
        shuffle: draw a new permutation each epoch.
        drop_last: drop a final partial batch.
        augment: optional function applied to each float batch.
        generator: a CPU generator used for shuffling and augmentation, advanced
            as batches are drawn (ignored when ``seed`` is given).
        seed: derive epoch order and per-batch augmentation from ``(seed, epoch, batch)``.
        rank, world_size: for data-parallel training, each rank yields its
            contiguous slice of every global batch.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: AugmentFn | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.seed = seed
        self.generator = generator or torch.Generator().manual_seed(0 if seed is None else seed)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self) -> torch.Tensor:
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        gen = self.generator
        if self.seed is not None:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return torch.randperm(n, generator=gen)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of the current epoch, starting at batch index ``start_batch``."""
        order = self.epoch_order().to(self.split.images.device)
        n = order.numel()
        stop = n - n % self.batch_size if self.drop_last else n
        for b, start in enumerate(range(0, stop, self.batch_size)):
            if b < start_batch:
                continue
            idx = order[start:start + self.batch_size]
            if self.world_size > 1:
                per_rank = -(-idx.numel() // self.world_size)
                idx = idx[self.rank * per_rank:(self.rank + 1) * per_rank]
            x = to_float(self.split.images[idx])
            if self.augment is not None:
                gen = self.generator
                if self.seed is not None:
                    gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, b, 1))
                x = self.augment(x, gen)
            yield x, self.split.labels[idx]


def iterate_eval(images_u8: torch.Tensor, batch_size: int = 1000) -> Iterator[torch.Tensor]:
    """Float batches of ``images_u8`` in order, for inference."""
    for start in range(0, images_u8.shape[0], batch_size):
        yield to_float(images_u8[start:start + batch_size])
