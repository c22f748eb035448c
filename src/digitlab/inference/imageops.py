"""The few image operations the picture preprocessing needs, in numpy alone.

``scipy.ndimage`` did these before, but importing it costs about 0.3 s (SciPy's array-API
layer pulls in numpy.f2py, numpy.testing and more), two thirds of ``digitlab predict
one.png``. Each function here reproduces one ``scipy.ndimage`` call exactly as
:mod:`digitlab.inference.preprocess` and :mod:`digitlab.inference.reject` make it:

* :func:`grey_closing`, :func:`grey_opening`, :func:`grey_dilation` — the same values
  (``mode="reflect"``, scipy's origin shift for even sizes), by the van Herk / Gil-Werman
  running extremum (three passes per axis whatever the window);
* :func:`gaussian_filter` (``mode="reflect"``) and :func:`zoom_linear` (``order=1,
  mode="nearest", grid_mode=True``) — scipy's own arithmetic, in the same order, so the
  results are bit-identical, not just close;
* :func:`label` — scipy's labels (components numbered in raster order of their first pixel),
  by union-find over row runs; :func:`find_objects`, :func:`sum_labels`;
* :func:`binary_erosion` (cross structure, ``border_value=0``) and :func:`disk_dilation`,
  which equals ``scipy.ndimage.distance_transform_edt(~mask) <= radius``.

Only 2-D arrays, and NaN-free data for the grey-level filters (that is all the callers have).
``tests/test_imageops.py`` compares every function against ``scipy.ndimage``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

__all__ = ["binary_erosion", "disk_dilation", "find_objects", "gaussian_filter", "grey_closing",
           "grey_dilation", "grey_opening", "label", "sum_labels", "zoom_linear"]

_Op = Callable[..., np.ndarray]


# --------------------------------------------------------------------------- grey-level morphology


def _fill(dtype: np.dtype, op: _Op) -> float | int | bool:
    """The identity of ``op`` (np.minimum / np.maximum) for ``dtype``: pads blocks without changing results."""
    is_min = op is np.minimum
    if dtype.kind == "f":
        return np.inf if is_min else -np.inf
    if dtype.kind == "b":
        return bool(is_min)
    info = np.iinfo(dtype)
    return info.max if is_min else info.min


def _running(p: np.ndarray, k: int, op: _Op) -> np.ndarray:
    """``out[..., i] = op over p[..., i:i + k]`` along the last axis (length ``L - k + 1``).

    van Herk / Gil-Werman: cut the line into blocks of ``k``; a window covers the tail of one
    block and the head of the next, so it is ``op`` of a suffix and a prefix extremum, both
    found by one ``accumulate`` per block. Exact (only comparisons), O(L) for any ``k``.
    """
    if k == 1:
        return p.copy()
    length = p.shape[-1]
    blocks = -(-length // k)
    q = np.full(p.shape[:-1] + (blocks * k,), _fill(p.dtype, op), dtype=p.dtype)
    q[..., :length] = p
    b = q.reshape(p.shape[:-1] + (blocks, k))
    prefix = op.accumulate(b, axis=-1).reshape(q.shape)  # type: ignore[attr-defined]
    suffix = op.accumulate(b[..., ::-1], axis=-1)[..., ::-1].reshape(q.shape)  # type: ignore[attr-defined]
    n = length - k + 1
    return op(suffix[..., :n], prefix[..., k - 1:k - 1 + n])


def _sizes(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    a, b = size
    return int(a), int(b)


def _box_filter(x: np.ndarray, size: tuple[int, int], op: _Op, dilation: bool) -> np.ndarray:
    """scipy's ``minimum_filter`` / ``maximum_filter`` with a ``size`` box, ``mode="reflect"``.

    The window of output ``i`` starts ``k // 2 + origin`` before ``i``; scipy's grey dilation
    uses origin -1 along an axis of even size (it mirrors the structuring element), erosion 0.
    """
    out = np.asarray(x)
    for axis, k in enumerate(size):
        if k < 1:
            raise ValueError(f"filter size must be positive, got {size}")
        before = k // 2 - (1 if dilation and k % 2 == 0 else 0)
        pad = [(0, 0), (0, 0)]
        pad[axis] = (before, k - 1 - before)
        p = np.pad(out, pad, mode="symmetric")  # numpy's "symmetric" is scipy's "reflect"
        out = _running(np.moveaxis(p, axis, -1), k, op)
        out = np.moveaxis(out, -1, axis)
    return np.ascontiguousarray(out)


def grey_closing(x: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """``scipy.ndimage.grey_closing(x, size=size)``: max filter then min filter over a box."""
    s = _sizes(size)
    return _box_filter(_box_filter(x, s, np.maximum, True), s, np.minimum, False)


def grey_opening(x: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """``scipy.ndimage.grey_opening(x, size=size)``: min filter then max filter over a box."""
    s = _sizes(size)
    return _box_filter(_box_filter(x, s, np.minimum, False), s, np.maximum, True)


def _row_runs(fp: np.ndarray) -> list[tuple[int, int, int]]:
    """``(row, first column, length)`` of each horizontal run of True in a small footprint."""
    runs = []
    for a, row in enumerate(fp):  # loop over the footprint's rows, not over pixels
        d = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
        runs += [(a, int(s), int(e - s)) for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1),
                                                            strict=True)]
    return runs


def grey_dilation(x: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.grey_dilation(x, footprint=footprint)`` (``mode="reflect"``).

    Each row of the footprint is a few runs; a run is a running maximum along the rows
    (computed once per distinct run), shifted into place.
    """
    x = np.asarray(x)
    fp = np.asarray(footprint, dtype=bool)[::-1, ::-1]  # scipy mirrors the footprint of a dilation
    if fp.ndim != 2 or x.ndim != 2:
        raise ValueError("grey_dilation: 2-D image and footprint only")
    h, w = x.shape
    fh, fw = fp.shape
    top, left = fh // 2 - (1 - fh % 2), fw // 2 - (1 - fw % 2)
    p = np.pad(x, ((top, fh - 1 - top), (left, fw - 1 - left)), mode="symmetric")
    runs = _row_runs(fp)
    if not runs:
        raise ValueError("grey_dilation: empty footprint")
    cache: dict[tuple[int, int], np.ndarray] = {}
    out: np.ndarray | None = None
    for a, b0, n in runs:
        key = (b0, n)
        if key not in cache:
            cache[key] = _running(p[:, b0:b0 + w + n - 1], n, np.maximum)
        part = cache[key][a:a + h]
        out = part.copy() if out is None else np.maximum(out, part, out=out)
    assert out is not None
    return out


# --------------------------------------------------------------------------- linear filters


def _gaussian_weights(sigma: float, radius: int) -> np.ndarray:
    # scipy.ndimage._filters._gaussian_kernel1d(sigma, 0, radius), the same expression
    sigma2 = sigma * sigma
    x = np.arange(-radius, radius + 1)
    phi_x = np.exp(-0.5 / sigma2 * x ** 2)
    return np.asarray(phi_x / phi_x.sum())[::-1]


def _correlate_symmetric(x: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """scipy's ``correlate1d`` for a symmetric kernel, ``mode="reflect"``, in float64.

    Same order of operations as its C loop (centre first, then the pairs from the outermost
    in), so the sums are bit-identical.
    """
    r = weights.size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    p = np.moveaxis(np.pad(x.astype(np.float64), pad, mode="symmetric"), axis, -1)
    n = x.shape[axis]
    acc = p[..., r:r + n] * weights[r]
    for d in range(r, 0, -1):  # loop over the kernel's offsets
        acc += (p[..., r - d:r - d + n] + p[..., r + d:r + d + n]) * weights[r - d]
    return np.moveaxis(acc, -1, axis)


def gaussian_filter(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(x, sigma, truncate=truncate)`` for a floating 2-D array.

    Axis by axis, each pass stored in ``x``'s dtype as scipy does (so float32 input is rounded
    between the passes exactly as there).
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"gaussian_filter: floating-point input only, got {x.dtype}")
    if sigma <= 1e-15:  # scipy skips such axes
        return x.copy()
    radius = int(truncate * float(sigma) + 0.5)
    weights = _gaussian_weights(sigma, radius)
    out = x
    for axis in range(x.ndim):
        out = _correlate_symmetric(out, weights, axis).astype(x.dtype)
    return out


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights along one axis of scipy's ``zoom(order=1, mode="nearest",
    grid_mode=True)`` (NI_ZoomShift + get_spline_interpolation_weights).

    The coordinate itself is not clamped: past an edge both taps read the edge pixel, with the
    weights of the unclamped position (so the value can differ from the edge pixel by an ulp,
    as scipy's does).
    """
    scale = n_in / n_out if n_out else 1.0
    cc = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5  # pixel centres (grid mode)
    fl = np.floor(cc)
    w0 = 1.0 - (cc - fl)
    w1 = 1.0 - w0  # scipy: the last weight is 1 minus the others
    i0 = fl.astype(np.intp)
    return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), w0, w1


def zoom_linear(x: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """``scipy.ndimage.zoom(x, factors, order=1, mode="nearest", grid_mode=True)`` of a 2-D array.

    Bilinear resampling with pixel-area alignment: output shape ``round(shape × factors)``,
    same dtype. Summed in scipy's order (corner (0,0), (0,1), (1,0), (1,1); each tap
    ``value × row weight × column weight``) in float64, so the result is bit-identical.
    """
    x = np.asarray(x)
    if x.ndim != 2 or len(factors) != 2:
        raise ValueError("zoom_linear: 2-D arrays only")
    if all(z == 1 for z in factors):  # scipy returns the input unchanged
        return x.copy()
    shape = tuple(int(round(n * z)) for n, z in zip(x.shape, factors, strict=True))
    r0, r1, rw0, rw1 = _linear_taps(x.shape[0], shape[0])
    c0, c1, cw0, cw1 = _linear_taps(x.shape[1], shape[1])
    d = x.astype(np.float64)
    t = np.zeros(shape)
    for ri, rw in ((r0, rw0), (r1, rw1)):
        rows = d[ri]
        for ci, cw in ((c0, cw0), (c1, cw1)):
            t += rows[:, ci] * rw[:, None] * cw[None, :]
    return t.astype(x.dtype)


# --------------------------------------------------------------------------- binary morphology


def binary_erosion(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, border_value=0)``: a pixel stays if it and its four
    neighbours are set (outside the image counts as unset)."""
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, 1)
    return m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def disk_dilation(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within Euclidean distance ``radius`` of a set pixel of ``mask``.

    Equals ``scipy.ndimage.distance_transform_edt(~mask) <= radius`` for a mask with a set
    pixel (same test: ``sqrt(dy² + dx²) <= radius`` in float64). Each row of the disk is a
    horizontal dilation (a running count by cumulative sums), OR-ed in at its row offset.
    """
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    out = np.zeros((h, w), bool)
    if radius < 0 or not m.any():
        return out
    big = int(np.floor(radius))
    dy = np.arange(-big, big + 1)
    dx = np.arange(0, big + 1)
    inside = np.sqrt((dy[:, None] ** 2 + dx[None, :] ** 2).astype(np.float64)) <= radius
    half = inside.sum(axis=1) - 1  # dx = 0 always qualifies (|dy| <= radius)
    counts = np.zeros((h, w + 1), np.int32)
    np.cumsum(m, axis=1, out=counts[:, 1:])
    cols = np.arange(w)
    grown: dict[int, np.ndarray] = {}
    for oy_, a_ in zip(dy, half, strict=True):  # loop over the disk's rows
        a, oy = int(a_), int(oy_)
        if a not in grown:
            lo, hi = np.maximum(cols - a, 0), np.minimum(cols + a + 1, w)
            grown[a] = counts[:, hi] > counts[:, lo]
        g = grown[a]
        if abs(oy) >= h:
            continue
        # output row i takes row i - oy of the horizontally grown mask
        if oy >= 0:
            out[oy:] |= g[:h - oy]
        else:
            out[:h + oy] |= g[-oy:]
    return out


# --------------------------------------------------------------------------- connected components


def _runs(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, start and end (exclusive) of each horizontal run of True, in raster order."""
    h, w = m.shape
    d = np.diff(np.pad(m, ((0, 0), (1, 1))).view(np.int8), axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows, starts, ends


def label(mask: np.ndarray, connectivity: Literal[4, 8] = 4) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label(mask)`` (``connectivity=4``) or with ``structure=np.ones((3, 3))``
    (``connectivity=8``): ``int32`` labels 1..n, numbered in raster order of each component's
    first pixel as scipy does, and ``n``.

    Union-find over row runs: runs of adjacent rows that touch are found by binary search,
    roots are merged by hooking the larger onto the smaller and pointer jumping, a loop over
    merge rounds (a few), not over pixels.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError("label: 2-D masks only")
    h, w = m.shape
    out = np.zeros((h, w), np.int32)
    if m.size == 0:
        return out, 0
    rows, starts, ends = _runs(m)
    n_runs = rows.size
    if n_runs == 0:
        return out, 0
    # keys that order runs by (row, column); band = w + 2 keeps rows apart
    band = w + 2
    skey = rows * band + starts
    ekey = rows * band + ends
    below = (rows + 1) * band
    if connectivity == 8:  # touching diagonally counts: end >= start and start <= end
        lo = np.searchsorted(ekey, below + starts, side="left")
        hi = np.searchsorted(skey, below + ends, side="right")
    elif connectivity == 4:  # overlapping columns: end > start and start < end
        lo = np.searchsorted(ekey, below + starts, side="right")
        hi = np.searchsorted(skey, below + ends, side="left")
    else:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    count = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n_runs), count)
    b = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(a.size)
    parent = np.arange(n_runs)
    while a.size:
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            break
        a, b, pa, pb = a[differ], b[differ], pa[differ], pb[differ]  # joined pairs stay joined
        np.minimum.at(parent, np.maximum(pa, pb), np.minimum(pa, pb))
        while True:  # pointer jumping: every run points at its root (the smallest run index)
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    # a component's root is its first run in raster order, which holds its first pixel
    is_root = parent == np.arange(n_runs)
    number = np.cumsum(is_root).astype(np.int32)
    run_label = number[parent]
    # paint the runs: +label at each start, -label at each end, running sum along the flat image
    flat = np.zeros(h * w + 1, np.int64)
    flat[rows * w + starts] = run_label
    np.subtract.at(flat, rows * w + ends, run_label)  # an end can be the next row's start: .at adds
    out[...] = np.cumsum(flat[:-1]).reshape(h, w)
    return out, int(number[-1])


def find_objects(labels: np.ndarray, max_label: int | None = None) -> list[tuple[slice, ...] | None]:
    """``scipy.ndimage.find_objects(labels, max_label)``: the bounding slices of labels
    ``1..max_label`` (``None`` for a label that does not occur)."""
    lab = np.asarray(labels)
    if max_label is None:
        max_label = int(lab.max()) if lab.size else 0
    if max_label < 1:
        return []
    flat = lab.ravel()
    idx = np.flatnonzero((flat > 0) & (flat <= max_label))
    which = flat[idx].astype(np.intp)
    present = np.zeros(max_label + 1, bool)
    present[which] = True
    bounds = []
    for coord in np.unravel_index(idx, lab.shape):  # loop over the array's axes
        lo = np.full(max_label + 1, np.iinfo(np.intp).max, np.intp)
        hi = np.full(max_label + 1, -1, np.intp)
        np.minimum.at(lo, which, coord)
        np.maximum.at(hi, which, coord)
        bounds.append((lo.tolist(), hi.tolist()))
    return [tuple(slice(lo[i], hi[i] + 1) for lo, hi in bounds) if present[i] else None
            for i in range(1, max_label + 1)]


def sum_labels(values: np.ndarray, labels: np.ndarray, index: Sequence[int] | np.ndarray) -> np.ndarray:
    """``scipy.ndimage.sum_labels(values, labels, index)`` for non-negative integer labels and a
    sequence ``index``: float64 sums per label, 0 for labels that do not occur."""
    sums = np.bincount(np.asarray(labels).ravel(), weights=np.asarray(values).ravel())
    idx = np.asarray(index, np.int_).copy()
    found = (idx >= 0) & (idx < sums.size)
    idx[~found] = 0
    out = sums[idx]
    out[~found] = 0
    return np.asarray(out)
