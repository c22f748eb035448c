"""Multilayer perceptrons from reference notebooks 000, 003 and 004.

All follow their Keras source (Glorot-uniform kernels, zero biases, Keras
BatchNorm settings; see :mod:`digitlab.models._common`). Inputs are the
``N×1×28×28`` [0, 1] images, flattened inside the model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from digitlab.data.pixel_stats import f_classif
from digitlab.errors import DataError
from digitlab.models._common import he_uniform, keras_bn1d, keras_init_
from digitlab.models.registry import AMP, register_model

NUM_PIXELS = 28 * 28


# --------------------------------------------------------------------------- basic MLP sweep

def _basic_builder(width: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10) -> nn.Module:
        return keras_init_(nn.Sequential(
            nn.Flatten(), nn.Linear(NUM_PIXELS, width), nn.ReLU(inplace=True), nn.Linear(width, num_classes),
        ))

    build.__doc__ = f"Flatten → Dense({width}) ReLU → Dense(10): notebook 000's basic MLP."
    build.__name__ = f"mlp_basic_{width}"
    return build


_BASIC_REFERENCE = {
    128: "notebook 000: 98.42% val (128 units); 101,770 params",
    256: "notebook 000: 98.82% val (256 units); 203,530 params",
    512: "notebook 000: 99.00% val, 99.05% test (512 units, best of the sweep); 407,050 params",
}
for _width, _ref in _BASIC_REFERENCE.items():
    register_model(f"mlp-basic-{_width}", family="mlp", input_kind="flat", reference=_ref,
                   recipe=f"mlp-basic-{_width}")(_basic_builder(_width))


# --------------------------------------------------------------------------- notebook 003

@register_model("mlp-128-64", family="mlp", input_kind="flat", recipe="mlp-128-64", train_settings=AMP,
                reference="notebook 003: 97.46% test; 109,386 params")
def mlp_128_64(num_classes: int = 10, dropout: float = 0.2) -> nn.Module:
    """784 → 128 ReLU → Dropout 0.2 → 64 ReLU → Dropout 0.2 → 10 (notebook 003)."""
    return keras_init_(nn.Sequential(
        nn.Flatten(),
        nn.Linear(NUM_PIXELS, 128), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(128, 64), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(64, num_classes),
    ))


# --------------------------------------------------------------------------- notebook 004

@register_model("mlp-bn", family="mlp", input_kind="flat", recipe="mlp-bn", train_settings=AMP,
                reference="notebook 004: 98.76% test; 569,226 trainable params "
                          "(+1,792 BN moving statistics in Keras' total)")
def mlp_bn(num_classes: int = 10, dropouts: list[float] | tuple[float, ...] = (0.5, 0.4, 0.3)) -> nn.Module:
    """512 → 256 → 128, each Dense(ReLU, He-uniform) → BatchNorm → Dropout (notebook 004)."""
    layers: list[nn.Module] = [nn.Flatten()]
    cin = NUM_PIXELS
    for width, p in zip((512, 256, 128), dropouts, strict=True):
        # Keras order: Dense(activation='relu', kernel_initializer=HeUniform()) → BN → Dropout
        layers += [he_uniform(nn.Linear(cin, width)), nn.ReLU(inplace=True), keras_bn1d(width), nn.Dropout(p)]
        cin = width
    layers.append(nn.Linear(cin, num_classes))  # output layer keeps Keras' Glorot default
    return keras_init_(nn.Sequential(*layers))


# --------------------------------------------------------------------------- feature-selected MLP

def f_classif_scores(images_u8: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """One-way ANOVA F statistic of every pixel against the labels (sklearn's ``f_classif``).

    A torch front end to :func:`digitlab.data.pixel_stats.f_classif` (the project's
    one F-test), which sums the raw 0–255 values exactly in integers (the F
    statistic is scale-invariant). Returns a float64 tensor of ``H·W`` scores;
    pixels that are constant over the data get ``nan`` (sklearn does the same),
    pixels that are constant within every class but not overall get ``inf``.
    Labels must be in ``0..num_classes-1``.
    """
    x = images_u8.detach().to("cpu").reshape(images_u8.shape[0], -1).numpy()
    y = labels.detach().to("cpu", torch.int64).reshape(-1).numpy()
    if x.shape[0] != y.shape[0]:
        raise DataError(f"f_classif_scores: {x.shape[0]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"f_classif_scores: labels must be in 0..{num_classes - 1}")
    scores, _ = f_classif(x, y)
    return torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float64))


def select_pixels(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending pixel order) of the ``k`` highest scores; ``nan`` ranks lowest.

    Ties are broken towards the lower pixel index, so the selection is deterministic.
    """
    ranked = torch.nan_to_num(scores.to(torch.float64), nan=float("-inf"))
    order = torch.sort(ranked, descending=True, stable=True).indices
    return order[:k].sort().values


def _central_pixels(k: int) -> torch.Tensor:
    # placeholder selection before prepare(): the k pixels closest to the image centre
    r, c = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    dist = ((r - 13.5) ** 2 + (c - 13.5) ** 2).reshape(-1)
    return torch.sort(dist, stable=True).indices[:k].sort().values


class SelectedPixelMLP(nn.Module):
    """Notebook 000's "optimized model": an MLP on the ``k`` pixels with the highest F-test score.

    The selection is data-dependent: :meth:`prepare` fits it on the training split
    (never on validation or test data) and stores it in persistent buffers, so it
    travels with the checkpoint:

      * ``selected`` — int64 ``(k,)`` pixel indices into the flattened 28×28 image;
      * ``pixel_scores`` — float32 ``(784,)`` F statistics (``nan`` for constant
        pixels), kept for importance maps;
      * ``prepared`` — bool scalar, False until :meth:`prepare` ran.

    Before :meth:`prepare` the selection is the ``k`` most central pixels, so the
    model still runs (e.g. for shape checks); the training engine must call
    :meth:`prepare` first. Matches the notebook's ranking: constant pixels rank
    lowest, the top ``k`` of the rest are kept.
    """

    selected: torch.Tensor
    nan_buffers = ("pixel_scores",)
    """Buffers that hold NaN by design (checkpoint loading accepts NaN there only)."""
    pixel_scores: torch.Tensor
    prepared: torch.Tensor

    def __init__(self, num_features: int = 196, hidden: tuple[int, ...] = (256, 128),
                 dropouts: tuple[float, ...] = (0.3, 0.2), num_classes: int = 10) -> None:
        super().__init__()
        if not 1 <= num_features <= NUM_PIXELS:
            from digitlab.errors import ConfigError

            raise ConfigError(f"mlp-selected: num_features must be in 1..{NUM_PIXELS}, got {num_features}")
        self.num_features = num_features
        self.num_classes = num_classes
        self.register_buffer("selected", _central_pixels(num_features))
        self.register_buffer("pixel_scores", torch.full((NUM_PIXELS,), float("nan")))
        self.register_buffer("prepared", torch.tensor(False))
        layers: list[nn.Module] = []
        cin = num_features
        for width, p in zip(hidden, dropouts, strict=True):
            layers += [nn.Linear(cin, width), nn.ReLU(inplace=True), nn.Dropout(p)]
            cin = width
        layers.append(nn.Linear(cin, num_classes))
        self.mlp = keras_init_(nn.Sequential(*layers))

    @property
    def is_prepared(self) -> bool:
        return bool(self.prepared)

    @torch.no_grad()
    def prepare(self, images_u8: torch.Tensor, labels: torch.Tensor) -> None:
        """Fit the pixel selection on training images (uint8 ``N×28×28``) and labels."""
        scores = f_classif_scores(images_u8, labels, num_classes=self.num_classes)
        self.pixel_scores.copy_(scores.to(torch.float32))
        self.selected.copy_(select_pixels(scores, self.num_features))
        self.prepared.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.flatten(1).index_select(1, self.selected))


@register_model("mlp-selected", family="mlp", input_kind="selected", recipe="mlp-selected",
                reference="notebook 000: 97.86% test (98.05% val); 196 F-test pixels; 84,618 params")
def mlp_selected(num_features: int = 196, hidden: list[int] | tuple[int, ...] = (256, 128),
                 dropouts: list[float] | tuple[float, ...] = (0.3, 0.2), num_classes: int = 10) -> nn.Module:
    """196 F-test-selected pixels → 256 → Dropout 0.3 → 128 → Dropout 0.2 → 10 (notebook 000)."""
    return SelectedPixelMLP(num_features=num_features, hidden=tuple(hidden), dropouts=tuple(dropouts),
                            num_classes=num_classes)
