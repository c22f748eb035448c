"""Seeded, stratified train/validation splits over resident tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from digitlab.errors import ConfigError


@dataclass
class Split:
    """Images (uint8 ``N×28×28``) and int64 labels of one split."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class DataSplits:
    train: Split
    val: Split | None
    test: Split


def stratified_indices(labels: torch.Tensor, val_fraction: float, seed: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) with each class split in the same proportion.

    Deterministic for a given seed; loops over classes, never over samples.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls, as_tuple=False).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_val = int(round(val_fraction * idx.numel()))
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    train_idx = torch.cat(train_parts)
    val_idx = torch.cat(val_parts)
    # sorted: cache-friendly gathers, and the order carries no class information
    return train_idx.sort().values, val_idx.sort().values


def make_splits(dataset, val_fraction: float = 0.1, seed: int = 0) -> DataSplits:  # noqa: ANN001
    """Train/validation split of the training set (stratified), plus the test set."""
    test = Split(dataset.test_images, dataset.test_labels)
    if val_fraction == 0:
        return DataSplits(Split(dataset.train_images, dataset.train_labels), None, test)
    tr, va = stratified_indices(dataset.train_labels, val_fraction, seed)
    return DataSplits(
        train=Split(dataset.train_images[tr], dataset.train_labels[tr]),
        val=Split(dataset.train_images[va], dataset.train_labels[va]),
        test=test,
    )
