"""Batch iteration over a resident uint8 tensor: index, convert, optionally augment.

Images stay uint8 on their device; each batch is gathered with one index op,
scaled to [0, 1] floats (the input convention of every digitlab model) and
shaped ``N×1×28×28``. No DataLoader, no worker processes, no per-sample Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from digitlab.data.splits import Split

AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``N×28×28`` → float32 ``N×1×28×28`` in [0, 1]."""
    return images_u8.unsqueeze(1).to(torch.float32).div_(255.0)


class BatchIterator:
    """Iterate ``(x, y)`` batches of a :class:`Split`, reshuffled every epoch.

    Args:
        split: the data, already on the target device.
        batch_size: samples per batch.
        shuffle: draw a new permutation each epoch (from ``generator``).
        drop_last: drop a final partial batch.
        augment: optional function applied to each float batch.
        generator: CPU generator for shuffling and augmentation (seeded by the caller).
        indices: optional subset of sample indices (used for a DDP rank's shard).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: AugmentFn | None = None,
        generator: torch.Generator | None = None,
        indices: torch.Tensor | None = None,
    ) -> None:
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.generator = generator or torch.Generator().manual_seed(0)
        self.indices = indices

    def __len__(self) -> int:
        n = len(self.split) if self.indices is None else int(self.indices.numel())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_order(self) -> torch.Tensor:
        n = len(self.split) if self.indices is None else int(self.indices.numel())
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        return order if self.indices is None else self.indices[order]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_order().to(self.split.images.device)
        n = order.numel()
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = to_float(self.split.images[idx])
            if self.augment is not None:
                x = self.augment(x, self.generator)
            yield x, self.split.labels[idx]


def iterate_eval(images_u8: torch.Tensor, batch_size: int = 1000) -> Iterator[torch.Tensor]:
    """Float batches of ``images_u8`` in order, for inference."""
    for start in range(0, images_u8.shape[0], batch_size):
        yield to_float(images_u8[start:start + batch_size])
