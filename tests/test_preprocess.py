"""Preprocessing real-world pictures into MNIST form (digitlab.inference.preprocess)."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from scipy import ndimage

from digitlab.errors import ImageError
from digitlab.inference import load_predictor
from digitlab.inference.preprocess import ImageTooLargeError, load_image, split_digits, to_mnist
from inference_support import bomb_png, digit_png, render_real_world, sample_test_digits
from inference_support import save_image as _save


@pytest.fixture(scope="module")
def digits(mnist):
    return sample_test_digits(mnist, 500, seed=0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def _corr_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation allowing a 1-pixel shift (centring rounds the centre of mass to whole pixels)."""
    return max(_corr(np.roll(a, (dy, dx), (0, 1)), b) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_real_world_renders_keep_model_accuracy(run_dir, digits):
    """The test that matters: a model is about as accurate on "photographed" digits as on MNIST itself."""
    x, y = digits
    predictor = load_predictor(run_dir)
    rng = np.random.default_rng(1)
    pre = np.stack([to_mnist(render_real_world(d, i % 6, rng)) for i, d in enumerate(x)])
    acc_orig = float((predictor.predict(x)[0] == y).mean())
    acc_pre = float((predictor.predict(pre)[0] == y).mean())
    assert acc_orig > 0.85, f"inline-trained model too weak to test with ({acc_orig:.3f})"
    assert abs(acc_pre - acc_orig) <= 0.02, (acc_orig, acc_pre)
    corr = np.array([_corr(a, b) for a, b in zip(pre, x, strict=True)])
    assert corr.mean() > 0.9 and np.median(corr) > 0.93, (corr.mean(), np.median(corr))


def test_mnist_digits_are_a_fixed_point(digits):
    x, _ = digits
    out = np.stack([to_mnist(d) for d in x[:100]])
    assert out.dtype == np.uint8 and out.shape == (100, 28, 28)
    assert np.mean([_corr(a, b) for a, b in zip(out, x[:100], strict=True)]) > 0.97


def _geometry(img: np.ndarray) -> tuple[tuple[float, float], tuple[int, int]]:
    com = ndimage.center_of_mass(img.astype(float))
    rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
    return com, (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)


def test_centre_of_mass_and_20px_box(digits):
    x, _ = digits
    rng = np.random.default_rng(2)
    for i in range(20):
        out = to_mnist(render_real_world(x[i], i % 6, rng))
        (cy, cx), (h, w) = _geometry(out)
        assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1, (i, cy, cx)
        assert max(h, w) in (19, 20, 21) and min(h, w) >= 3, (i, h, w)


def test_aspect_ratio_is_kept():
    canvas = Image.new("L", (600, 500), 255)
    canvas.paste(0, (350, 50, 450, 250))  # a 100 wide × 200 tall black block, off-centre
    out = to_mnist(canvas)
    (cy, cx), (h, w) = _geometry(out)
    assert h == 20 and w == 10, (h, w)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert out.max() == 255 and out[0].max() == 0 and out[:, 0].max() == 0


def test_polarity_is_detected(digits):
    d = digits[0][0]
    dark_on_light = to_mnist(digit_png(d, dark_on_light=True))
    light_on_dark = to_mnist(digit_png(d, dark_on_light=False))
    assert _corr(dark_on_light, light_on_dark) > 0.98
    assert _corr(dark_on_light, d) > 0.9
    # forcing the wrong polarity reads the paper, not the strokes
    wrong = to_mnist(digit_png(d), invert=False)
    assert not wrong.any() or _corr_shift(wrong, d) < 0.5


@pytest.mark.parametrize("stroke", ["black", "white"])
def test_transparent_background(digits, stroke):
    """Strokes on a transparent layer become white ink on black, whatever colour the strokes are."""
    d = digits[0][0]
    big = np.asarray(Image.fromarray(d).resize((200, 200), Image.Resampling.BICUBIC))
    rgba = np.zeros((260, 300, 4), np.uint8)  # transparent pixels are (0,0,0,0), as most editors save them
    rgba[30:230, 60:260, :3] = 0 if stroke == "black" else 255
    rgba[30:230, 60:260, 3] = big
    out = to_mnist(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert _corr(out, d) > 0.9
    # naive greyscale conversion would have lost the drawing entirely for black strokes
    assert out.max() == 255 and out[0].max() == 0


def test_palette_and_la_transparency(digits):
    d = digits[0][1]
    la = Image.merge("LA", [Image.new("L", (140, 140), 0),
                            Image.fromarray(d).resize((140, 140), Image.Resampling.BICUBIC)])
    p = Image.fromarray((d > 127).astype(np.uint8)).convert("P")
    p.putpalette([255, 255, 255, 0, 0, 0])
    p.info["transparency"] = 0  # white palette entry is transparent
    for img in (la, p):
        assert _corr(to_mnist(_save(img, "PNG")), d) > 0.85, img.mode


def test_many_formats_and_modes(digits, tmp_path):
    d = digits[0][2]
    ref = to_mnist(digit_png(d))
    paper = Image.fromarray(255 - d).resize((120, 120), Image.Resampling.BICUBIC)
    sixteen = Image.fromarray(np.asarray(paper).astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    gif_frames = [paper.convert("P"), Image.new("P", (120, 120), 0)]
    blobs = {
        "png-L": _save(paper, "PNG"), "jpeg": _save(paper.convert("RGB"), "JPEG"),
        "bmp": _save(paper.convert("RGB"), "BMP"), "webp": _save(paper.convert("RGB"), "WEBP"),
        "tiff": _save(paper, "TIFF"), "png-16bit": _save(sixteen, "PNG"),
        "gif-first-frame": _save(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:]),
        "cmyk-jpeg": _save(paper.convert("CMYK"), "JPEG"),
    }
    for name, blob in blobs.items():
        path = tmp_path / f"digit-{name}"
        path.write_bytes(blob)
        for src in (blob, path, io.BytesIO(blob)):
            out = to_mnist(src)
            assert out.shape == (28, 28) and out.dtype == np.uint8
            assert _corr(out, ref) > 0.95, name
    assert _corr(to_mnist(Image.open(io.BytesIO(blobs["png-L"]))), ref) > 0.95
    assert _corr(to_mnist(np.asarray(paper)), ref) > 0.95


def test_specks_and_noise_do_not_move_the_box(digits):
    d = digits[0][3]
    clean = Image.fromarray(255 - d).resize((200, 200), Image.Resampling.BICUBIC)
    canvas = np.full((500, 500), 235, np.uint8)  # grey paper
    canvas[150:350, 150:350] = np.asarray(clean) * (235 / 255)
    rng = np.random.default_rng(3)
    noisy = np.clip(canvas + rng.normal(0, 8, canvas.shape), 0, 255).astype(np.uint8)
    ys, xs = rng.integers(0, 500, 40), rng.integers(0, 500, 40)
    noisy[ys, xs] = 0  # dark specks all over the page
    noisy[10:13, 480:483] = 0
    out = to_mnist(noisy)
    assert _corr_shift(out, to_mnist(canvas)) > 0.95
    assert _corr_shift(out, d) > 0.9
    assert max(_geometry(out)[1]) == 20


def _shaded(digit: np.ndarray, strength: float, dark_on_light: bool, rng: np.random.Generator) -> Image.Image:
    """A digit photographed under uneven light: the paper brightness varies by ``strength`` across the page."""
    h, w, s = 360, 480, 200
    ink = np.zeros((h, w), np.float32)
    oy, ox = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
    ink[oy:oy + s, ox:ox + s] = np.asarray(Image.fromarray(digit).resize((s, s), Image.Resampling.BICUBIC)) / 255
    yy, xx = np.mgrid[0:h, 0:w]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    if dark_on_light:
        lum = (0.95 - strength * ramp) * (1 - 0.85 * ink)  # ink absorbs 85% of the light
    else:  # chalk on a board
        lum = 0.05 + strength * ramp + 0.5 * ink
    return Image.fromarray(np.clip(lum * 255, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("dark_on_light, strength", [(True, 0.6), (False, 0.35)])
def test_uneven_lighting(digits, dark_on_light, strength):
    x, _ = digits
    rng = np.random.default_rng(4)
    corr = [_corr_shift(to_mnist(_shaded(d, strength, dark_on_light, rng)), to_mnist(d)) for d in x[:20]]
    assert np.mean(corr) > 0.9 and np.min(corr) > 0.7, corr


def test_sheet_photographed_on_a_dark_desk(digits):
    """The desk around the sheet is dark and touches the picture's edge: it is not ink."""
    x, _ = digits
    rng = np.random.default_rng(5)
    corr = []
    for d in x[:10]:
        img = np.full((480, 640), 50, np.uint8)
        top, left = int(rng.integers(20, 60)), int(rng.integers(20, 80))
        img[top:480 - int(rng.integers(20, 60)), left:640 - int(rng.integers(20, 80))] = 230
        oy, ox = top + int(rng.integers(10, 150)), left + int(rng.integers(10, 300))
        digit = np.asarray(Image.fromarray(d).resize((180, 180), Image.Resampling.BICUBIC)) / 255
        img[oy:oy + 180, ox:ox + 180] = (230 * (1 - 0.85 * digit)).astype(np.uint8)
        corr.append(_corr_shift(to_mnist(img), to_mnist(d)))
    assert np.mean(corr) > 0.9 and np.min(corr) > 0.7, corr


def test_bold_tight_crops():
    """Ink covering half the picture (a tight crop of a marker digit) is still read as ink."""
    from PIL import ImageDraw

    one = Image.new("L", (60, 100), 255)
    ImageDraw.Draw(one).rectangle((15, 0, 45, 99), fill=0)  # a bar from edge to edge, 52% of the pixels
    out = to_mnist(one)
    (_, cx), (h, w) = _geometry(out)
    assert h == 20 and 4 <= w <= 8 and abs(cx - 14) <= 0.5  # one filled bar, not its two sides
    assert out[4:24, 13:16].min() > 200  # filled, not hollow
    zero = Image.new("L", (90, 120), 255)
    ImageDraw.Draw(zero).ellipse((4, 4, 86, 116), outline=0, width=22)  # ring = half the pixels
    out = to_mnist(zero)
    assert out[14, 14] == 0 and out[14].max() == 255  # a ring around a hole, not the hole as a blob
    assert _corr(to_mnist(ImageOps.invert(zero)), out) > 0.95  # and the same in chalk on a board


def test_thin_strokes_are_thickened(run_dir):
    from PIL import ImageDraw

    img = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(img).line([(80, 50), (220, 50), (130, 260)], fill=0, width=2)  # a hair-line 7
    out = to_mnist(img)
    assert (out > 128).sum() > 40  # not a faint 1-px trace
    assert load_predictor(run_dir).predict(out)[0][0] == 7


def test_blank_pictures_give_zeros():
    assert not to_mnist(Image.new("L", (100, 100), 255)).any()
    assert not to_mnist(Image.new("RGB", (50, 80), (128, 128, 128))).any()
    assert not to_mnist(Image.new("RGBA", (60, 60), (0, 0, 0, 0))).any()


def test_large_photo_is_reduced_quickly(digits):
    d = digits[0][4]
    canvas = Image.new("L", (4000, 3000), 250)
    canvas.paste(Image.fromarray(255 - d).resize((1200, 1200), Image.Resampling.BICUBIC), (2000, 900))
    t = time.perf_counter()
    out = to_mnist(canvas.convert("RGB"))
    assert time.perf_counter() - t < 10
    assert _corr(out, d) > 0.9


def test_load_image_errors(tmp_path, mnist):
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"this is not an image at all")
    png = digit_png(mnist.test_images[0].numpy())
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(png[: len(png) // 2])
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError):
        to_mnist(np.zeros((5, 5, 2)))


def test_decompression_bomb_guard():
    with pytest.raises(ImageTooLargeError, match="decompression-bomb"):
        load_image(bomb_png(100_000, 100_000))
    with pytest.raises(ImageTooLargeError):  # beyond PIL's own hard limit too
        load_image(bomb_png(60_000, 60_000), max_pixels=10**12)
    with pytest.raises(ImageTooLargeError):
        load_image(digit_png(np.zeros((28, 28), np.uint8), size=100), max_pixels=5000)
    with pytest.raises(ImageTooLargeError):
        load_image(b"x" * 100, max_bytes=50)
    assert issubclass(ImageTooLargeError, ImageError)


def test_split_digits_reads_a_number(run_dir, mnist):
    ds = mnist
    predictor = load_predictor(run_dir)
    labels, probs = predictor.predict(ds.test_images[:200].numpy())
    # three confidently recognised digits of different classes, written in a row with gaps
    chosen = []
    for i in np.flatnonzero((labels == ds.test_labels[:200].numpy()) & (probs.max(1) > 0.99)):
        if labels[i] not in [labels[c] for c in chosen]:
            chosen.append(int(i))
        if len(chosen) == 3:
            break
    strip = np.zeros((40, 3 * 36), np.uint8)
    for k, i in enumerate(chosen):
        strip[6:34, 4 + 36 * k: 32 + 36 * k] = ds.test_images[i].numpy()
    img = Image.fromarray(255 - strip).resize((strip.shape[1] * 5, 200), Image.Resampling.BICUBIC)
    parts = split_digits(img)
    assert len(parts) == 3
    for part, i in zip(parts, chosen, strict=True):
        assert _corr(part, ds.test_images[i].numpy()) > 0.85
    result = predictor.read_number(img)
    assert result["number"] == "".join(str(labels[i]) for i in chosen)
    assert split_digits(Image.new("L", (50, 50), 255)) == []


# ------------------------------------------------------------------ issue 15: hostile files


def test_only_allowed_formats_are_decoded(monkeypatch, tmp_path):
    from PIL import EpsImagePlugin

    from digitlab.inference.preprocess import ALLOWED_FORMATS

    def boom(*args, **kwargs):  # the EPS decoder (Ghostscript) must never be reached
        raise AssertionError("EPS decoder called")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", boom)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="accepted format"):
        load_image(eps)
    ppm = _save(Image.new("L", (30, 30), 255), "PPM")
    with pytest.raises(ImageError, match="PNG, JPEG, GIF, BMP, TIFF or WebP"):
        load_image(ppm)
    assert set(ALLOWED_FORMATS) == {"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"}
    # the content decides, not the name: a PNG called .eps is still read
    path = tmp_path / "digit.eps"
    path.write_bytes(_save(Image.new("L", (30, 30), 255), "PNG"))
    assert load_image(path).size == (30, 30)


def test_nan_in_a_float_tiff_is_an_image_error():
    pixels = np.zeros((40, 40), np.float32)
    pixels[10:30, 18:22] = 1.0
    pixels[5, 5] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        to_mnist(_save(Image.fromarray(pixels, "F"), "TIFF"))


def test_fifo_is_refused_without_blocking(tmp_path):
    import threading

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            load_image(fifo)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            outcome.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader so the test process can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert isinstance(outcome[0], ImageError) and "not a regular file (a FIFO)" in str(outcome[0])


def test_large_palette_png_with_transparency_costs_little_memory(tmp_path):
    """A ~40 KB palette PNG of 6300×6300 with transparency: at most 100 MB above an ordinary picture."""
    import subprocess
    import sys

    big = Image.new("P", (6300, 6300), 0)
    big.putpalette([255, 255, 255, 0, 0, 0] + [0] * (254 * 3))
    big.paste(1, (2900, 1000, 3400, 5300))  # a thick black "1" on a transparent layer
    big.info["transparency"] = 0
    (tmp_path / "big.png").write_bytes(_save(big, "PNG", transparency=0))
    del big
    small = Image.new("L", (300, 300), 255)
    small.paste(0, (140, 50, 160, 250))
    (tmp_path / "small.png").write_bytes(_save(small, "PNG"))
    assert (tmp_path / "big.png").stat().st_size < 1_000_000
    script = (
        "import resource, sys\n"
        "from digitlab.inference.preprocess import to_mnist\n"
        "small = to_mnist(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "big = to_mnist(sys.argv[2])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) / 1024, float((small > 0).mean()), float((big > 0).mean()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "small.png"), str(tmp_path / "big.png")],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    extra_mb, small_ink, big_ink = (float(v) for v in out)
    assert extra_mb < 100, f"{extra_mb:.0f} MB more than an ordinary picture"
    assert big_ink > 0.05 and small_ink > 0.05  # and the digit is still found


def test_palette_strip_reduction_matches_pillow(digits):
    """The strip-wise palette path gives the same picture as converting to RGBA and reducing."""
    from digitlab.inference.preprocess import _luminance_alpha

    d = digits[0][0]
    img = Image.fromarray(255 - d).resize((2100, 2050), Image.Resampling.BICUBIC).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.info["transparency"] = int(np.asarray(img)[0, 0])  # the paper becomes transparent
    lum, alpha = _luminance_alpha(img)
    ref = img.convert("RGBA").reduce(3)
    ref_alpha = np.asarray(ref, np.float32)[..., 3] / 255.0
    assert alpha is not None and lum.shape == ref_alpha.shape
    assert np.abs(alpha - ref_alpha).max() < 0.02
    assert _corr(to_mnist(img), to_mnist(img.convert("RGBA"))) > 0.98


# ------------------------------------------------------------------ property-based: only ImageError escapes


def _seed_files() -> list[bytes]:
    paper = Image.new("L", (48, 40), 255)
    paper.paste(0, (20, 5, 28, 35))
    rgba = paper.convert("RGBA")
    return [_save(paper, "PNG"), _save(paper.convert("RGB"), "JPEG"), _save(paper.convert("P"), "GIF"),
            _save(paper, "BMP"), _save(paper, "TIFF"), _save(paper.convert("RGB"), "WEBP"),
            _save(rgba, "PNG"), _save(Image.fromarray(np.asarray(paper, np.float32) / 255, "F"), "TIFF")]


SEEDS = _seed_files()


def _outcome(data: bytes) -> None:
    try:
        out = to_mnist(data, max_pixels=4_000_000)
    except ImageError:
        return
    assert out.shape == (28, 28) and out.dtype == np.uint8


_FUZZ = {"deadline": None, "derandomize": True, "database": None,
         "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "Corrupt EXIF data" on mutated TIFFs
@settings(max_examples=150, **_FUZZ)
@given(st.binary(max_size=2048))
def test_hypothesis_random_bytes(data: bytes) -> None:
    _outcome(data)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=250, **_FUZZ)
@given(st.sampled_from(range(len(SEEDS))),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 10_000))
def test_hypothesis_mutated_images(which: int, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SEEDS[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    _outcome(bytes(data[: max(8, len(data) - cut % len(data))]))


def test_fast_detrend_is_the_least_squares_plane():
    """The closed-form plane fit (normal equations over row/column sums) equals numpy's lstsq."""
    from digitlab.inference.preprocess import _detrend

    rng = np.random.default_rng(0)
    for h, w in ((112, 112), (300, 170), (9, 40), (700, 500)):
        lum = (rng.random((h, w)) * 0.3 + np.linspace(0.2, 0.6, w)[None, :]).astype(np.float32)
        step = max(1, int(np.sqrt(h * w / 4096)))
        ys, xs = np.linspace(-1, 1, h), np.linspace(-1, 1, w)
        yy, xx = np.meshgrid(ys[::step], xs[::step], indexing="ij")
        basis = np.stack([np.ones_like(yy), xx, yy], axis=-1).reshape(-1, 3)
        coef, *_ = np.linalg.lstsq(basis, lum[::step, ::step].reshape(-1).astype(np.float64), rcond=None)
        plane = coef[0] + coef[1] * xs[None, :] + coef[2] * ys[:, None]
        expected = np.clip(lum - plane + 0.5, 0.0, 1.0)
        np.testing.assert_allclose(_detrend(lum), expected, atol=1e-5)


def test_windowed_blank_test_decides_like_the_whole_picture_blur():
    from digitlab.inference.preprocess import BLANK_BLUR, MIN_CONTRAST, _peak_contrast

    rng = np.random.default_rng(1)
    for _ in range(200):
        x = np.clip(rng.normal(0, rng.uniform(0.01, 0.15), (60, 80)), 0, 1).astype(np.float32)
        if rng.random() < 0.5:  # a short stroke somewhere, sometimes at the edge
            r, c = rng.integers(0, 60), rng.integers(0, 80)
            x[r:r + 3, c:c + int(rng.integers(1, 12))] = rng.uniform(0.1, 1.0)
        full = float(ndimage.gaussian_filter(x, BLANK_BLUR, truncate=2.0).max())
        assert (_peak_contrast(x) < MIN_CONTRAST) == (full < MIN_CONTRAST)


def test_specks_are_judged_against_the_stroke_width_not_only_the_largest_blob(digits, monkeypatch):
    """A small digit with a speck of paper texture far away: the speck is over 5% of the digit's ink (the
    old rule kept it, so the box grew to hold it and the digit shrank) but smaller than SPECK_STROKES
    squares of the stroke width, so it is dropped."""
    from digitlab.inference import preprocess

    d = digits[0][5]
    small = 255 - np.asarray(Image.fromarray(d).resize((40, 40), Image.Resampling.BICUBIC))
    page = np.full((300, 300), 255, np.uint8)
    page[200:240, 200:240] = small
    clean = to_mnist(page)
    specked = page.copy()
    specked[20:24, 20:24] = 0  # 16 px of dark speck
    ink = small < 128
    assert 16 >= 0.05 * ink.sum()  # the largest-blob rule alone keeps it
    assert 16 < preprocess.SPECK_STROKES * preprocess._stroke_width(ink) ** 2
    assert _corr_shift(to_mnist(specked), clean) > 0.95
    monkeypatch.setattr(preprocess, "SPECK_STROKES", 0.0)  # without the stroke-width rule: the speck stays
    assert _corr_shift(to_mnist(specked), clean) < 0.8
