"""digitlab.inference.imageops against scipy.ndimage, call by call as preprocess.py / reject.py make them.

Exact equality for everything the code branches on (labels, masks, min/max filters); the float
filters (gaussian, zoom) are held to 1e-12 (they come out bit-identical in practice)."""

from __future__ import annotations

import subprocess
import sys
from typing import Literal

import numpy as np
import pytest
from scipy import ndimage

from digitlab.inference import imageops

SHAPES = [(1, 1), (1, 9), (9, 1), (2, 2), (3, 50), (5, 9), (17, 13), (32, 40), (64, 64)]
DENSITIES = [0.0, 0.05, 0.3, 0.5, 0.7, 0.95, 1.0]
EIGHT = np.ones((3, 3), bool)


def _masks(seed: int = 0) -> list[np.ndarray]:
    """Random masks of several densities and shapes, plus structured ones (snakes, combs,
    checkerboards, stripes) that stress the merging of runs."""
    rng = np.random.default_rng(seed)
    out = [rng.random(shape) < d for shape in SHAPES for d in DENSITIES]
    # a serpentine: one long component whose runs alternate direction
    snake = np.zeros((41, 37), bool)
    snake[::2] = True
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    out.append(snake)
    # a comb: teeth that only meet in the bottom row (many roots merged late), and its mirror
    comb = np.zeros((30, 41), bool)
    comb[:, ::2] = True
    comb[-1] = True
    out += [comb, comb[::-1, ::-1].copy()]
    out.append((np.indices((20, 23)).sum(axis=0) % 2).astype(bool))  # checkerboard: 8-connected only
    out.append(np.tile([True, False, False], (9, 11)))  # vertical stripes
    out.append(np.eye(30, dtype=bool) | np.eye(30, dtype=bool)[::-1])  # diagonals crossing
    out.append(rng.random((300, 257)) < 0.45)  # big noise: many runs, many merges
    return out


MASKS = _masks()


def _floats(seed: int, dtype: type = np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(shape).astype(dtype) for shape in SHAPES] + [
        (rng.random((40, 33)) > 0.8).astype(dtype),  # flat regions with jumps (strokes)
        np.linspace(0, 1, 24 * 30, dtype=dtype).reshape(24, 30),  # a ramp
    ]


# --------------------------------------------------------------------------- labelling


@pytest.mark.parametrize("connectivity", [4, 8])
def test_label_matches_scipy(connectivity: Literal[4, 8]) -> None:
    structure = EIGHT if connectivity == 8 else None
    for m in MASKS:
        ours, n = imageops.label(m, connectivity=connectivity)
        ref, n_ref = ndimage.label(m, structure=structure)
        assert n == n_ref, m.shape
        assert ours.dtype == ref.dtype
        np.testing.assert_array_equal(ours, ref)


def test_label_numbers_components_in_raster_order() -> None:
    m = np.zeros((5, 6), bool)
    m[0, 5] = m[1, 0] = m[4, 2] = m[2, 3] = True
    labels, n = imageops.label(m)
    assert n == 4
    assert [labels[0, 5], labels[1, 0], labels[2, 3], labels[4, 2]] == [1, 2, 3, 4]


def test_label_empty() -> None:
    for shape in [(0, 0), (0, 4), (3, 0), (4, 4)]:
        labels, n = imageops.label(np.zeros(shape, bool), connectivity=8)
        assert n == 0 and labels.shape == shape and not labels.any()


def test_find_objects_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    for m in MASKS:
        labels, n = ndimage.label(m, structure=EIGHT)
        assert imageops.find_objects(labels) == ndimage.find_objects(labels)
        for max_label in {1, max(1, n // 2), n, n + 3}:
            assert imageops.find_objects(labels, max_label=max_label) == \
                ndimage.find_objects(labels, max_label=max_label)
        if n > 2:  # labels with gaps: missing ones give None
            gappy = np.where(np.isin(labels, rng.choice(n, n // 2) + 1), 0, labels)
            assert imageops.find_objects(gappy) == ndimage.find_objects(gappy)


def test_sum_labels_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    for m in MASKS:
        x = rng.random(m.shape).astype(np.float32)
        labels, n = ndimage.label(m, structure=EIGHT)
        for index in (np.arange(1, n + 1), np.array([0, n, n + 2, -1]), np.arange(n + 1)[::-1]):
            np.testing.assert_array_equal(imageops.sum_labels(x, labels, index),
                                          ndimage.sum_labels(x, labels, index=index))


# --------------------------------------------------------------------------- binary morphology


def test_binary_erosion_matches_scipy() -> None:
    for m in MASKS:
        np.testing.assert_array_equal(imageops.binary_erosion(m), ndimage.binary_erosion(m, border_value=0))


def test_disk_dilation_matches_distance_transform() -> None:
    rng = np.random.default_rng(3)
    radii = [0.0, 0.5, 1.0, 1.4142135623730951, 1.5, 2.0, 2.2360679774997896, 2.5, 3.75, 5.0, 7.3, 40.0]
    for m in MASKS:
        if not m.any():
            continue
        for radius in radii + list(rng.uniform(0, 8, 3)):
            ours = imageops.disk_dilation(m, radius)
            ref = ndimage.distance_transform_edt(~m) <= radius
            np.testing.assert_array_equal(ours, ref, err_msg=f"{m.shape} r={radius}")


def test_disk_dilation_of_empty_mask_is_empty() -> None:
    assert not imageops.disk_dilation(np.zeros((6, 7), bool), 3.0).any()
    assert not imageops.disk_dilation(np.ones((6, 7), bool), -1.0).any()


# --------------------------------------------------------------------------- grey-level morphology


SIZES = [1, 2, 3, 4, 5, 8, 11, (3, 4), (6, 2), (1, 7), 70]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_grey_closing_and_opening_match_scipy(dtype: type) -> None:
    rng = np.random.default_rng(4)
    for x in _floats(4):
        x = (x * 255).astype(dtype) if dtype is np.uint8 else x.astype(dtype)
        for size in SIZES + [tuple(int(v) for v in rng.integers(1, 20, 2))]:
            sz = size if isinstance(size, tuple) else (size, size)
            ours, ref = imageops.grey_closing(x, sz), ndimage.grey_closing(x, size=sz)
            assert ours.dtype == ref.dtype
            np.testing.assert_array_equal(ours, ref, err_msg=f"closing {x.shape} {sz}")
            np.testing.assert_array_equal(imageops.grey_opening(x, sz), ndimage.grey_opening(x, size=sz),
                                          err_msg=f"opening {x.shape} {sz}")


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return np.asarray((yy ** 2 + xx ** 2) <= radius ** 2 + 0.5)


def test_grey_dilation_matches_scipy() -> None:
    rng = np.random.default_rng(5)
    footprints = [_disk(r) for r in (0.4, 1.0, 1.7, 2.5, 4.2)]
    footprints += [np.ones((2, 3), bool), np.ones((4, 4), bool), np.eye(3, dtype=bool)]
    footprints += [rng.random(tuple(int(v) for v in rng.integers(1, 6, 2))) < 0.6 for _ in range(6)]
    for x in _floats(5):
        for fp in footprints:
            if not fp.any():
                fp = fp.copy()
                fp.flat[0] = True
            ours, ref = imageops.grey_dilation(x, fp), ndimage.grey_dilation(x, footprint=fp)
            assert ours.dtype == ref.dtype
            np.testing.assert_array_equal(ours, ref, err_msg=f"{x.shape} footprint {fp.astype(int).tolist()}")


def test_grey_dilation_as_thicken_uses_it() -> None:
    """``preprocess._thicken``: a zero-padded crop dilated by a disk."""
    rng = np.random.default_rng(6)
    crop = np.where(rng.random((37, 21)) > 0.9, rng.random((37, 21)), 0).astype(np.float32)
    for radius in (1.2, 3.0, 6.5):
        r = int(np.ceil(radius))
        padded = np.pad(crop, r)
        np.testing.assert_array_equal(imageops.grey_dilation(padded, _disk(radius)),
                                      ndimage.grey_dilation(padded, footprint=_disk(radius)))


# --------------------------------------------------------------------------- linear filters


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gaussian_filter_matches_scipy(dtype: type) -> None:
    for x in _floats(7, dtype):
        for sigma, truncate in [(1.5, 2.0), (0.3, 2.0), (1.0, 4.0), (2.7, 2.0), (6.0, 3.0), (1e-16, 2.0)]:
            ours = imageops.gaussian_filter(x, sigma, truncate=truncate)
            ref = ndimage.gaussian_filter(x, sigma, truncate=truncate)
            assert ours.dtype == ref.dtype
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12, err_msg=f"{x.shape} sigma={sigma}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zoom_linear_matches_scipy(dtype: type) -> None:
    rng = np.random.default_rng(8)
    for x in _floats(8, dtype):
        factors = [(4.0, 4.0), (2.0, 3.0), (1.0, 2.5), (0.5, 0.7)]
        factors += [(float(u), float(v)) for u, v in rng.uniform(0.3, 5, (4, 2))]
        # as preprocess._flat_field makes them: full shape / reduced shape
        factors += [((x.shape[0] * 4 + 3) / x.shape[0], (x.shape[1] * 3 + 2) / x.shape[1])]
        for z in factors:
            ours = imageops.zoom_linear(x, z)
            ref = ndimage.zoom(x, z, order=1, mode="nearest", grid_mode=True)
            assert ours.shape == ref.shape and ours.dtype == ref.dtype
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12, err_msg=f"{x.shape} zoom={z}")


# --------------------------------------------------------------------------- import cost


def test_preprocess_does_not_import_scipy_ndimage() -> None:
    """The reason imageops exists: ``import scipy.ndimage`` costs ~0.3 s of ``digitlab predict``'s start-up."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import digitlab.inference.preprocess as pp\n"
        "from digitlab.inference.reject import enclosed_regions\n"
        "yy, xx = np.mgrid[0:160, 0:200]\n"
        "img = (200 + 40 * xx / 200).astype(np.uint8)  # uneven lighting: the flat-field path\n"
        "img[40:120, 60:70] = 20\n"
        "img[40:50, 60:140] = 20\n"
        "digit = pp.to_mnist(img)\n"
        "assert digit.any()\n"
        "enclosed_regions(digit)\n"
        "pp.split_digits(img)\n"
        "print('scipy.ndimage' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
