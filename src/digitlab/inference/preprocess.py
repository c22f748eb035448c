"""Turn real-world pictures of digits into MNIST-form 28×28 images.

MNIST digits (LeCun et al.) are white ink on black, size-normalised to fit a
20×20 box with their aspect ratio kept (anti-aliased, so the box holds grey
levels), then placed in a 28×28 field with the centre of mass of the pixels at
the centre. :func:`to_mnist` reproduces that from any picture Pillow can read:

1. decode (first frame, EXIF orientation applied, decompression-bomb guard);
2. flatten transparency onto the background the visible pixels imply, so a
   transparent layer with black strokes reads as black ink on white paper;
3. detect polarity (the paper is the majority and the border; if those disagree, the
   reading that looks more like a digit wins) and invert dark-on-light;
4. remove the paper level — locally, for unevenly lit photos (flat-field via a large
   grey closing) — and normalise contrast so a typical stroke is 1;
5. threshold, drop specks (small connected components) and crop to the ink's
   bounding box;
6. thicken hair-line strokes to MNIST's relative stroke width;
7. fit into 20×20 keeping the aspect ratio, and place in 28×28 so the centre of
   mass is at (14, 14) in array indices — where MNIST's own digits have it.

That clean-up is for digits. Pictures for a model trained on another dataset
(Fashion-MNIST: clothing) take :func:`fit_picture` instead, which repeats how
Fashion-MNIST was made from product photos: background made dark (a light
background is inverted), the uniform background around the object trimmed,
the longest side resized to 28 and the object centred in 28×28 (aspect kept).

Only PNG, JPEG, GIF, BMP, TIFF and WebP files are decoded (:data:`ALLOWED_FORMATS`);
anything else (EPS, PSD, ...) is refused before a decoder runs. Paths must be
regular files (a FIFO would block the reader forever). Large palette images are
reduced strip by strip, so a small PNG that declares a huge canvas costs little
memory beyond its decoded 1-byte-per-pixel form.

Everything is vectorised numpy / Pillow (the few ``scipy.ndimage`` operations needed are re-done in
:mod:`digitlab.inference.imageops`: importing scipy.ndimage would double ``predict``'s start-up);
no per-pixel Python.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from typing import BinaryIO, Union, cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitlab.errors import ImageError
from digitlab.inference import imageops

__all__ = [
    "ALLOWED_FORMATS", "MAX_IMAGE_PIXELS", "ImageSource", "ImageTooLargeError", "fit_picture", "ink_map",
    "load_image", "split_digit_boxes", "split_digits", "to_mnist",
]

ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
"""The image formats Pillow may decode (by content, whatever the file is called)."""

MAX_IMAGE_PIXELS = 40_000_000
"""Refuse images with more pixels than this (decoded size, read from the header before decoding)."""

WORK_MAX_SIDE = 1024
"""Larger images are reduced to at most this side before analysis: plenty for a 20×20 target."""

BOX = 20
"""MNIST's size-normalisation box."""

ORIENTATION_TAG = 0x0112
"""EXIF orientation: pictures from phones are rotated by it."""

SIDE = 28
CENTRE = 14.0
"""MNIST's centre of mass in array-index coordinates (measured: 14.00 ± 0.29 on the training set)."""

TARGET_STROKE = 2.5
"""Stroke width given to thickened strokes, in 28×28 pixels (MNIST median: 2.8, 10th percentile 2.2)."""

MIN_STROKE = 1.5
"""Thinner strokes (after scaling to the 20×20 box) are thickened to :data:`TARGET_STROKE`."""

MIN_CONTRAST = 0.2
"""Below this ink-to-paper contrast (luminance 0..1), measured after a small blur, the picture counts
as blank. The blur averages sensor noise and paper texture away (a blank page with σ = 6 grey levels
of noise peaks near 0.05 after it, a digit stroke keeps at least 0.5 on the generated photo sets)."""

BLANK_BLUR = 1.5
"""Gaussian σ, in working-resolution pixels, of the blur before the blank test."""
SPECK_STROKES = 1.5
"""In a picture of one digit (:func:`to_mnist`), an ink component with less area than this many squares of
the main stroke's width (a dot, a speck of paper texture) is dropped, besides those under 5% of the largest
component. Chosen on validation pictures (seed 2 of :mod:`digitlab.data.pictures`): 3 dropped real pieces
of thick digits and small-corner digits; 1.5 dropped only specks and stray marks. Pages of several digits
keep the largest-component rule alone (on seeds 2, 5 and 6 the stroke-width rule lost 0.3–1.3 points of
exact numbers)."""

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]


class ImageTooLargeError(ImageError):
    """The image (bytes or decoded pixels) exceeds the configured limit."""


# --------------------------------------------------------------------------- decoding


def load_image(source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS,
               max_bytes: int | None = None) -> Image.Image:
    """Decode ``source`` into a fully loaded :class:`PIL.Image.Image` (first frame).

    ``source`` may be a path, raw bytes, a binary file object, a PIL image or a
    numpy array (``H×W`` grey, ``H×W×3`` RGB or ``H×W×4`` RGBA). Raises
    :class:`ImageError` for missing, empty, unreadable or truncated data and
    :class:`ImageTooLargeError` when the header declares more than
    ``max_pixels`` pixels (checked before any pixel is decoded) or the data is
    larger than ``max_bytes``.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, "image")
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    name, data = _read_source(source, max_bytes)
    if not data:
        raise ImageError(f"{name}: empty file")
    # PIL warns above Image.MAX_IMAGE_PIXELS and raises above twice that; treat both as
    # a bomb. (catch_warnings is process-global; our own header check below is what
    # enforces the limit, the filter only keeps PIL's warning out of logs.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            _check_pixels(img.size, max_pixels, name)
            try:
                img.seek(0)  # first frame of GIF/APNG/TIFF stacks
            except EOFError:
                pass
            img.load()
            if img.getexif().get(ORIENTATION_TAG, 1) not in (0, 1):  # else exif_transpose only copies
                img = ImageOps.exif_transpose(img) or img
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLargeError(f"{name}: image too large (decompression-bomb guard: {exc})") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image in an accepted format "
                             "(PNG, JPEG, GIF, BMP, TIFF or WebP)") from None
        except Exception as exc:  # noqa: BLE001 - decoders of untrusted data raise anything
            raise ImageError(f"{name}: truncated or corrupt image ({type(exc).__name__}: {exc})") from None
    return img


def _read_source(source: ImageSource, max_bytes: int | None) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "image data"
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        data = _read_regular_file(name, max_bytes)
    elif hasattr(source, "read"):
        name = str(getattr(source, "name", "image stream"))
        data = source.read() if max_bytes is None else source.read(max_bytes + 1)
    else:
        raise ImageError(f"cannot read an image from a {type(source).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"{name}: larger than the {max_bytes}-byte limit")
    return name, data


def _read_regular_file(name: str, max_bytes: int | None) -> bytes:
    """The bytes of ``name``, which must be a regular file: a FIFO or device would block or never end.

    Opened non-blocking and checked with ``fstat`` on the open descriptor, so the file
    cannot be swapped for a FIFO between the check and the read.
    """
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ImageError(f"{name}: is a directory, not an image")
        if not stat.S_ISREG(mode):
            raise ImageError(f"{name}: not a regular file ({_file_kind(mode)}); give an image file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            return fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: image has no pixels ({w}×{h})")
    if w * h > max_pixels:
        raise ImageTooLargeError(f"{name}: {w}×{h} pixels exceeds the limit of {max_pixels} "
                                 "(decompression-bomb guard)")


def _from_array(arr: np.ndarray, max_pixels: int) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {arr.shape} is not an image (need H×W, H×W×3 or H×W×4)")
    _check_pixels((arr.shape[1], arr.shape[0]), max_pixels, "array")
    if arr.dtype != np.uint8:
        a = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ImageError("array contains NaN or infinite values")
        # floats in [0, 1] are scaled; anything else is taken as 0..255
        a = a * 255.0 if a.size and a.max() <= 1.0 and a.min() >= 0.0 and arr.dtype.kind == "f" else a
        arr = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(arr), mode)


# --------------------------------------------------------------------------- analysis


_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _canonical(img: Image.Image) -> Image.Image:
    """One of ``L``, ``RGBA`` (when there is any transparency) or ``F`` (16/32-bit data)."""
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return img.convert("RGBA")
    if img.mode.startswith("I") or img.mode == "F":
        return img.convert("F") if img.mode != "F" else img
    return img.convert("L")


def _luminance_alpha(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Working-resolution luminance in [0, 1] and alpha (``None`` when fully opaque)."""
    src_mode = img.mode
    factor = -(-max(img.size) // WORK_MAX_SIDE)
    if img.mode == "P" and factor > 1:
        return _palette_reduced(img, factor)
    try:
        img = _canonical(img)
    except (ValueError, OSError) as exc:
        raise ImageError(f"cannot convert a {src_mode} image to greyscale ({exc})") from None
    factor = -(-max(img.size) // WORK_MAX_SIDE)
    if factor > 1:
        img = img.reduce(factor)  # box filter; premultiplies alpha for RGBA
    if img.mode == "F":
        lum = np.asarray(img, dtype=np.float32)
        if not np.isfinite(lum).all():
            raise ImageError("image contains NaN or infinite pixel values")
        hi = float(lum.max()) if lum.size else 1.0
        # 16-bit grey is 0..65535; plain F images may already be 0..1 or 0..255
        scale = 65535.0 if src_mode.startswith("I;16") or hi > 255 else (255.0 if hi > 1.0 else 1.0)
        return np.clip(lum / scale, 0.0, 1.0), None
    if img.mode == "L":
        return np.asarray(img, dtype=np.float32) / 255.0, None
    rgba = np.asarray(img, dtype=np.float32) / 255.0
    lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma
    alpha = rgba[..., 3]
    return lum, (alpha if alpha.min() < 0.98 else None)


def _palette_reduced(img: Image.Image, factor: int, rows: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance and alpha of a large palette image, box-reduced by ``factor`` strip by strip.

    Converting the whole image to RGBA first would cost 4 bytes per pixel (plus
    Pillow's premultiplied copy for the reduce); a 39 KB PNG of 6300² pixels then
    costs hundreds of MB. Here only ``rows·factor`` image rows are expanded at a time,
    through per-palette-entry lookup tables, with alpha premultiplied as in
    :meth:`PIL.Image.Image.reduce`.
    """
    pal_mode = img.palette.mode if img.palette is not None else "RGB"
    raw = img.getpalette("RGBA" if pal_mode == "RGBA" else "RGB") or []
    bands = 4 if pal_mode == "RGBA" else 3
    table = np.zeros((256, 4), np.float32)
    table[:, 3] = 1.0
    entries = np.asarray(raw, np.float32).reshape(-1, bands)[:256] / 255.0
    table[:len(entries), :bands] = entries
    trns = img.info.get("transparency")
    if isinstance(trns, int) and 0 <= trns < 256:
        table[trns, 3] = 0.0
    elif isinstance(trns, (bytes, bytearray)):
        a = np.frombuffer(bytes(trns), np.uint8)[:256].astype(np.float32) / 255.0
        table[:len(a), 3] = a
    lum_lut = table[:, :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    alpha_lut = table[:, 3]
    w, h = img.size
    out_h, out_w = -(-h // factor), -(-w // factor)
    lum_sum = np.zeros((out_h, out_w), np.float32)
    alpha_sum = np.zeros((out_h, out_w), np.float32)
    step = rows * factor
    for top in range(0, h, step):
        idx = np.asarray(img.crop((0, top, w, min(h, top + step))))
        a = alpha_lut[idx]
        premult = lum_lut[idx] * a
        r0 = top // factor
        for src, dst in ((premult, lum_sum), (a, alpha_sum)):
            block = _block_sums(src, factor)
            dst[r0:r0 + block.shape[0]] = block
    rows_in = np.minimum(factor, h - factor * np.arange(out_h)).astype(np.float32)
    cols_in = np.minimum(factor, w - factor * np.arange(out_w)).astype(np.float32)
    counts = rows_in[:, None] * cols_in[None, :]  # pixels per block (fewer at the ragged edges)
    alpha = alpha_sum / counts
    lum = np.where(alpha_sum > 0, lum_sum / np.maximum(alpha_sum, 1e-12), 0.0).astype(np.float32)
    return lum, (alpha.astype(np.float32) if float(alpha.min()) < 0.98 else None)


def _block_sums(x: np.ndarray, f: int) -> np.ndarray:
    """Sums over ``f×f`` blocks (partial blocks at the bottom/right edges summed as they are)."""
    h, w = x.shape
    ph, pw = -(-h // f) * f - h, -(-w // f) * f - w
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw)))
    return x.reshape(x.shape[0] // f, f, x.shape[1] // f, f).sum(axis=(1, 3))


def _flatten_alpha(lum: np.ndarray, alpha: np.ndarray) -> np.ndarray | None:
    """Composite onto the background the visible pixels imply; ``None`` if nothing is visible.

    When most of the picture is opaque, the transparent parts are margins around
    paper: fill them with the paper's colour. When only a minority is visible,
    the visible pixels are the strokes on a transparent layer: fill with the
    colour that contrasts with them (white behind dark strokes, black behind light).
    """
    visible = alpha > 0.5
    if not visible.any():
        return None
    if visible.mean() > 0.5:
        bg = float(np.median(lum[visible]))
    else:
        bg = 1.0 if float(np.median(lum[visible])) < 0.5 else 0.0
    return alpha * lum + (1.0 - alpha) * bg


def _border(a: np.ndarray) -> np.ndarray:
    b = max(1, round(0.02 * min(a.shape)))
    return np.concatenate([a[:b].ravel(), a[-b:].ravel(), a[b:-b, :b].ravel(), a[b:-b, -b:].ravel()])


def _otsu(x: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (vectorised over a 256-bin histogram)."""
    bins = np.minimum((x * 256).astype(np.int32), 255)  # x is already clipped to [0, 1]
    p = np.bincount(bins.ravel(), minlength=256).astype(np.float64) / max(1, x.size)
    centres = (np.arange(256) + 0.5) / 256
    w0 = np.cumsum(p)
    m = np.cumsum(p * centres)
    denom = w0 * (1.0 - w0)
    valid = denom != 0  # 0/0 and x/0 count as 0, as nan_to_num made them before
    between = np.zeros(256)
    np.divide((m[-1] * w0 - m) ** 2, denom, out=between, where=valid)
    return float(centres[int(np.argmax(between))])


def _flat_field(lum: np.ndarray, invert: bool) -> np.ndarray | None:
    """Ink relative to the local paper level, for unevenly lit photos; ``None`` if lighting is even.

    The paper's illumination is estimated with a grey closing (dark ink on light
    paper) or opening (light ink on dark) over a window a third of the short
    side: it erases strokes narrower than the window and follows smooth shading
    (exactly, for a linear ramp). Dark-on-light ink is the fraction of light the
    ink absorbs (``1 - lum / paper``), light-on-dark the excess over the ground.
    """
    win = max(3, min(lum.shape) // 3)
    if invert:
        # estimate on a 4× reduced copy for speed: illumination is smooth anyway
        f = max(1, min(4, min(lum.shape) // 64))
        small = lum[: lum.shape[0] // f * f, : lum.shape[1] // f * f]
        small = small.reshape(small.shape[0] // f, f, small.shape[1] // f, f).mean(axis=(1, 3))
        level = imageops.grey_closing(small, (max(3, win // f),) * 2)
    else:
        f = 1
        level = imageops.grey_opening(lum, (win, win))
    lo, hi = np.percentile(level, [5, 95])
    if hi - lo < 0.1:
        return None
    if f > 1:
        zoom = (lum.shape[0] / level.shape[0], lum.shape[1] / level.shape[1])
        level = imageops.zoom_linear(level, zoom)
    if invert:
        return 1.0 - lum / np.maximum(level, 1e-3)
    return lum - level


def ink_map(image: ImageSource, *, invert: bool | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
            speck_strokes: float = 0.0) -> np.ndarray:
    """Float ``H×W`` ink intensity in [0, 1] (0 paper, 1 stroke) at working resolution.

    Transparency flattened, polarity fixed (``invert=None`` detects it from the
    paper colour), lighting evened out, contrast normalised, specks removed. All zeros for a
    blank picture. ``speck_strokes``: also drop components smaller than this many squares of the
    largest component's stroke width (:data:`SPECK_STROKES`; :func:`to_mnist` uses it, pages of
    several digits do not: there a small piece of one digit is more often ink than a speck).
    """
    img = image if isinstance(image, Image.Image) else load_image(image, max_pixels=max_pixels)
    lum, alpha = _luminance_alpha(img)
    if alpha is not None:
        flat = _flatten_alpha(lum, alpha)
        if flat is None:
            return np.zeros_like(lum)
        lum = flat
    # Polarity. Split the pixels into a light and a dark class (Otsu, so grey paper in a dim
    # photo still counts as light). Usually the paper is both the majority class and the
    # border's class. When those disagree (a sheet photographed on a dark desk: the border is
    # desk; a tight crop of a bold digit: ink is the majority) build both readings and keep
    # the more digit-like one.
    level = _detrend(lum)  # votes on evenly lit luminance: shading must not split the paper
    light = level > _otsu(level)
    if invert is not None:
        return _ink_for(lum, light, invert, speck_strokes)
    by_majority = bool(light.mean() > 0.5)
    by_border = bool(_border(light).mean() > 0.5)
    if by_majority == by_border and abs(float(light.mean()) - 0.5) > 0.1:
        return _ink_for(lum, light, by_majority, speck_strokes)
    return min((_ink_for(lum, light, inv, speck_strokes) for inv in (True, False)), key=_implausibility)


def _detrend(lum: np.ndarray) -> np.ndarray:
    """``lum`` minus its least-squares plane (a light gradient), recentred on 0.5, in [0, 1].

    A plane, not a curved surface: a curved one would also fit a bold stroke
    crossing the picture (white-black-white is a parabola) and erase it.
    """
    h, w = lum.shape
    if h < 8 or w < 8:
        return lum
    step = max(1, int(np.sqrt(h * w / 4096)))  # ~4k samples are plenty for 3 coefficients
    ys, xs = np.linspace(-1, 1, h), np.linspace(-1, 1, w)
    # least squares of lum ≈ c0 + c1·x + c2·y over the sampled grid, by its 3×3 normal equations:
    # on a grid every sum separates into row and column sums, so nothing of size h×w is built
    ys_s, xs_s = ys[::step], xs[::step]
    sample = lum[::step, ::step].astype(np.float64)
    ny, nx = ys_s.size, xs_s.size
    sx, sy = xs_s.sum(), ys_s.sum()
    gram = np.array([[ny * nx, ny * sx, nx * sy],
                     [ny * sx, ny * (xs_s @ xs_s), sx * sy],
                     [nx * sy, sx * sy, nx * (ys_s @ ys_s)]])
    rhs = np.array([sample.sum(), sample.sum(axis=0) @ xs_s, sample.sum(axis=1) @ ys_s])
    coef = np.linalg.solve(gram, rhs)
    plane = (coef[0] + coef[1] * xs[None, :] + coef[2] * ys[:, None]).astype(np.float32)
    out = lum - plane
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def _implausibility(ink: np.ndarray) -> float:
    """How little ``ink`` looks like pen strokes on paper (lower is more plausible).

    Strokes are thin for their extent while paper regions are fat blobs, and ink
    rarely runs along the picture's edge: relative stroke width + edge coverage.
    """
    mask = ink > 0.5
    box = _bbox(mask)
    if box is None:
        return 3.0  # no ink at all is the least plausible reading of a picture with contrast
    extent = max(box[1] - box[0], box[3] - box[2])
    return float(_stroke_width(mask) / extent + _border(mask).mean())


def _ink_for(lum: np.ndarray, light: np.ndarray, invert: bool, speck_strokes: float = 0.0) -> np.ndarray:
    """The ink map for one polarity (``invert``: dark ink on light paper)."""
    paper_px = lum[light] if invert else lum[~light]
    paper = float(np.median(paper_px)) if paper_px.size else (1.0 if invert else 0.0)
    x = np.clip((paper - lum) if invert else (lum - paper), 0.0, 1.0)  # one paper level
    t = _otsu(x)
    on_paper = lum[x <= t]
    if on_paper.size and float(np.subtract(*np.percentile(on_paper, [95, 5]))) > 0.1:
        # the paper itself is uneven (shading, a desk around the sheet): level it locally.
        # Not otherwise: the local estimate would hollow out strokes wider than its window.
        flat = _flat_field(lum, invert)
        if flat is not None:
            x = np.clip(flat, 0.0, 1.0)
            t = _otsu(x)
    if x.size == 0 or _peak_contrast(x) < MIN_CONTRAST:
        return np.zeros_like(x)
    # typical stroke intensity = median of the Otsu "ink" class; normalise it to 1 and
    # drop the faint floor (paper texture, JPEG ringing)
    strong = x > t
    level = float(np.median(x[strong])) if strong.any() else float(x.max())
    floor = 0.1 * level
    x = np.clip((x - floor) / max(level - floor, 1e-6), 0.0, 1.0)
    return _remove_specks(x, speck_strokes=speck_strokes)


def _peak_contrast(x: np.ndarray) -> float:
    """The strongest ink contrast that survives a small blur: a stroke does, pixel noise does not."""
    if min(x.shape) < 8:
        return float(x.max())
    # The blur is an average, so away from every pixel above MIN_CONTRAST it stays below it: blur
    # only the window around those pixels (padded by twice the kernel radius, so the borders of the
    # window do not change the values that decide) — the same answer for much less work.
    box = _bbox(x >= MIN_CONTRAST)
    if box is None:
        return float(x.max())
    pad = 2 * int(2.0 * BLANK_BLUR + 0.5) + 1
    r0, r1, c0, c1 = box
    win = x[max(0, r0 - pad):r1 + pad, max(0, c0 - pad):c1 + pad]
    return float(imageops.gaussian_filter(win, BLANK_BLUR, truncate=2.0).max())


def _remove_specks(x: np.ndarray, rel_area: float = 0.05, speck_strokes: float = 0.0) -> np.ndarray:
    """Zero everything but the neighbourhood of sizeable connected ink components: at least ``rel_area`` of
    the largest one, and at least ``speck_strokes`` squares of its stroke width."""
    mask = x > 0.5
    labels, n = imageops.label(mask, connectivity=8)
    if n == 0:
        return np.zeros_like(x)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    # dark regions lying along the picture's edge (the desk around a photographed sheet, a
    # shadow, the page edge) cover half a side or more; a pen stroke touches it over its width
    h, w = x.shape
    frame = np.zeros(n, bool)
    for side, length in ((labels[0], w), (labels[-1], w), (labels[:, 0], h), (labels[:, -1], h)):
        frame |= np.bincount(side, minlength=n + 1)[1:] >= 0.5 * length
    if frame.any() and not frame.all():
        areas = np.where(frame, 0, areas)
    kept = areas >= max(2, rel_area * areas.max())
    if kept.any() and speck_strokes > 0:
        # relative to the stroke width too: a component holding less ink than a stroke piece
        # SPECK_STROKES widths long (a dot, a texture speck) is no stroke, however small the largest
        # blob is; measured on the largest component's own window
        largest = int(np.argmax(areas))
        window = imageops.find_objects(labels, max_label=largest + 1)[largest]
        if window is not None:
            width = _stroke_width(labels[window] == largest + 1)
            kept &= areas >= speck_strokes * width * width
    if not kept.any():  # only isolated pixels: noise
        return np.zeros_like(x)
    # a lookup table per label instead of np.isin: one gather over the image
    keep = mask if kept.all() else np.concatenate([[False], kept])[labels]
    # grow by half a stroke width + 1 so the anti-aliased rims of kept strokes survive; work in
    # the window around the kept strokes only (everything outside is zeroed anyway)
    r0, r1, c0, c1 = _bbox(keep)  # type: ignore[misc]
    keep_win = keep[max(0, r0 - 1):r1 + 1, max(0, c0 - 1):c1 + 1]
    radius = _stroke_width(keep_win) / 2 + 1.5
    m = int(np.ceil(radius)) + 1
    win = (slice(max(0, r0 - m), r1 + m), slice(max(0, c0 - m), c1 + m))
    sub = x[win] * imageops.disk_dilation(keep[win], radius)  # within radius of a kept pixel
    # ...but only the faint pixels attached to a kept stroke, not a speck that happens to be close
    faint, n_faint = imageops.label(sub > 0, connectivity=8)
    attached = np.zeros(n_faint + 1, bool)
    attached[faint[keep[win]]] = True
    attached[0] = False
    out = np.zeros_like(x)
    out[win] = sub * attached[faint]
    return out


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: 2·area / perimeter (a stroke of length L, width w has area Lw)."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    perimeter = int((mask & ~imageops.binary_erosion(mask)).sum())
    return 2.0 * area / max(perimeter, 1)


def _bbox(x: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(x.any(axis=1))
    cols = np.flatnonzero(x.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _thicken(crop: np.ndarray) -> np.ndarray:
    """Dilate hair-line strokes so that, scaled to the 20×20 box, they are MNIST-thick."""
    side = max(crop.shape)
    width = _stroke_width(crop > 0.5) * BOX / side
    if width <= 0 or width >= MIN_STROKE:
        return crop
    radius = (TARGET_STROKE - width) / 2 * side / BOX  # in crop pixels
    r = int(np.ceil(radius))
    if r < 1:
        return crop
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (yy ** 2 + xx ** 2) <= radius ** 2 + 0.5
    padded = np.pad(crop, r)
    return imageops.grey_dilation(padded, disk)


def _fit_and_centre(ink: np.ndarray) -> np.ndarray:
    """Crop to the bounding box, fit into 20×20 (aspect kept), centre of mass at (14, 14)."""
    box = _bbox(ink > 0)
    if box is None:
        return np.zeros((SIDE, SIDE), np.uint8)
    r0, r1, c0, c1 = box
    crop = _thicken(ink[r0:r1, c0:c1])
    box = _bbox(crop > 0)
    r0, r1, c0, c1 = box  # type: ignore[misc]
    crop = crop[r0:r1, c0:c1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = Image.fromarray(crop.astype(np.float32), "F").resize(
        size, Image.Resampling.LANCZOS, reducing_gap=3.0)  # anti-aliased (kernel widened on reduce)
    small = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    peak = float(small.max())
    if peak <= 0:
        return np.zeros((SIDE, SIDE), np.uint8)
    small = small / peak  # MNIST strokes always reach 255
    sh, sw = small.shape
    total = float(small.sum())
    cy = float((small.sum(axis=1) * np.arange(sh)).sum()) / total
    cx = float((small.sum(axis=0) * np.arange(sw)).sum()) / total
    # integer shift, as MNIST (its centres of mass spread ±0.29 ≈ uniform rounding error)
    oy = int(np.clip(round(CENTRE - cy), 0, SIDE - sh))
    ox = int(np.clip(round(CENTRE - cx), 0, SIDE - sw))
    out = np.zeros((SIDE, SIDE), np.float32)
    out[oy:oy + sh, ox:ox + sw] = small
    return np.rint(out * 255.0).astype(np.uint8)


def to_mnist(image: ImageSource, *, invert: bool | None = None, max_pixels: int = MAX_IMAGE_PIXELS
             ) -> np.ndarray:
    """Preprocess one picture of a single digit into MNIST form: ``uint8`` 28×28, white on black.

    ``image``: path, bytes, file object, PIL image or numpy array (see :func:`load_image`).
    ``invert``: ``None`` detects polarity (dark ink on light paper is inverted); ``True`` /
    ``False`` force it. A blank picture gives an all-zero array.
    """
    return _fit_and_centre(ink_map(image, invert=invert, max_pixels=max_pixels, speck_strokes=SPECK_STROKES))


TOUCHING_WIDTH = 1.15
"""A digit group wider than this × the page's digit height holds touching digits and is cut. The
height is the tallest group's (digits on a page are written at about one size, and a wide, flat
digit such as an MNIST 0 can be 1.4× as wide as it is tall, but not wider than the tallest digit)."""
DIGIT_WIDTH = 0.7
"""Expected width of one digit, × the page's digit height, when deciding how many touching digits
a group holds."""


def _cut_touching(ink: np.ndarray, x0: int, x1: int, height: int) -> list[int]:
    """Columns where a group spanning ``[x0, x1)`` of ``ink`` is cut into touching digits.

    ``height``: the page's digit height. The number of digits follows from the group's width; each
    cut is the column of least ink (vertical-projection minimum) within the middle 60% around its
    evenly spaced position.
    """
    width = x1 - x0
    if height <= 0 or width <= TOUCHING_WIDTH * height:
        return []
    k = max(2, round(width / (DIGIT_WIDTH * height)))
    projection = ink[:, x0:x1].sum(axis=0)
    projection = np.convolve(projection, np.ones(3) / 3, mode="same")  # a one-column gap is not a cut
    cuts = []
    for i in range(1, k):
        centre, half = i * width / k, 0.3 * width / k
        lo, hi = int(centre - half), int(np.ceil(centre + half)) + 1
        cuts.append(x0 + lo + int(np.argmin(projection[lo:hi])))
    return cuts


def split_digit_boxes(image: ImageSource, *, invert: bool | None = None, max_pixels: int = MAX_IMAGE_PIXELS
                      ) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Split a picture of a multi-digit number into MNIST-form digits, left to right, each with
    its box ``(left, top, right, bottom)`` in the picture's pixels.

    Digits are connected ink components; components whose horizontal extents overlap by more
    than half of the narrower one (a detached bar of a 5, the two strokes of a 4) are merged
    into one digit. A group much wider than the page's tallest digit holds touching digits and is
    cut at the vertical-projection minima (:func:`_cut_touching`).
    """
    img = image if isinstance(image, Image.Image) else load_image(image, max_pixels=max_pixels)
    ink = ink_map(img, invert=invert, max_pixels=max_pixels)
    labels, n = imageops.label(ink > 0, connectivity=8)
    if n == 0:
        return []
    slices = cast("list[tuple[slice, ...]]", imageops.find_objects(labels))  # labels 1..n all occur
    mass = imageops.sum_labels(ink, labels, np.arange(1, n + 1))
    # ignore faint fragments (well below the biggest digit's ink mass)
    order = [i for i in np.argsort([s[1].start for s in slices]) if mass[i] >= 0.03 * mass.max()]
    groups: list[tuple[int, int, list[int]]] = []  # (x0, x1, component ids)
    for i in order:
        x0, x1 = slices[i][1].start, slices[i][1].stop
        if groups:
            g0, g1, ids = groups[-1]
            overlap = min(g1, x1) - max(g0, x0)
            if overlap > 0.5 * min(g1 - g0, x1 - x0):
                groups[-1] = (min(g0, x0), max(g1, x1), ids + [i + 1])
                continue
        groups.append((x0, x1, [i + 1]))
    sx, sy = img.size[0] / ink.shape[1], img.size[1] / ink.shape[0]  # working resolution -> picture
    masks = [np.isin(labels, ids) for _, _, ids in groups]
    height = max(int(np.ptp(np.flatnonzero(m.any(axis=1)))) + 1 for m in masks)
    out = []
    for (x0, x1, _), mask in zip(groups, masks, strict=True):
        group = ink * mask
        edges = [x0, *_cut_touching(group, x0, x1, height), x1]
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            piece = np.zeros_like(group)
            piece[:, a:b] = group[:, a:b]
            box = _bbox(piece > 0)
            if box is None:
                continue
            r0, r1, c0, c1 = box
            out.append((_fit_and_centre(piece), (int(c0 * sx), int(r0 * sy), int(np.ceil(c1 * sx)),
                                                 int(np.ceil(r1 * sy)))))
    return out


def split_digits(image: ImageSource, *, invert: bool | None = None, max_pixels: int = MAX_IMAGE_PIXELS
                 ) -> list[np.ndarray]:
    """The digits of :func:`split_digit_boxes`, without their boxes."""
    return [digit for digit, _ in split_digit_boxes(image, invert=invert, max_pixels=max_pixels)]


FIT_TRIM_LEVEL = 0.05
"""Pixels within this of the background level (0..1) count as background when trimming."""


def fit_picture(image: ImageSource, *, invert: bool | None = None, max_pixels: int = MAX_IMAGE_PIXELS
                ) -> np.ndarray:
    """Fit a picture of an object (not a digit) into 28×28 the way Fashion-MNIST was made.

    1. decode and flatten transparency onto white (a cut-out product photo);
    2. polarity: the background is the picture's border; a light background is
       inverted (``invert=None``), so the background is dark as in Fashion-MNIST;
    3. subtract the background level and trim the uniform background around the object;
    4. resize the longest side to 28 (aspect kept) and centre the object in 28×28.

    No thresholding, thickening or centre-of-mass shift: the object's own shading is kept.
    Returns ``uint8`` 28×28; a picture with nothing on its background gives all zeros.
    """
    img = image if isinstance(image, Image.Image) else load_image(image, max_pixels=max_pixels)
    lum, alpha = _luminance_alpha(img)
    if alpha is not None:
        lum = alpha * lum + (1.0 - alpha) * 1.0
    border = float(np.median(_border(lum)))
    if invert is None:
        invert = border > 0.5
    x = 1.0 - lum if invert else lum
    bg = 1.0 - border if invert else border
    x = np.clip((x - bg) / max(1.0 - bg, 1e-6), 0.0, 1.0).astype(np.float32)
    box = _bbox(x > FIT_TRIM_LEVEL)
    if box is None:
        return np.zeros((SIDE, SIDE), np.uint8)
    r0, r1, c0, c1 = box
    crop = x[r0:r1, c0:c1]
    h, w = crop.shape
    scale = SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = Image.fromarray(crop, "F").resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    small_a = np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0)
    sh, sw = small_a.shape
    out = np.zeros((SIDE, SIDE), np.float32)
    oy, ox = (SIDE - sh) // 2, (SIDE - sw) // 2
    out[oy:oy + sh, ox:ox + sw] = small_a
    return np.rint(out * 255.0).astype(np.uint8)
