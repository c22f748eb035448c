"""Seeded picture sets that look like what users photograph, built from dataset digits.

Real users do not send 28×28 white-on-black arrays: they send phone photos of paper, scans,
drawings, pages holding a whole number, and sometimes pictures with no digit at all. These
generators turn MNIST test digits into such pictures, deterministically for a seed, so the
reading pipeline (``digitlab.inference``) can be measured and tested on them:

- ``user``: dark ink on white, 100–300 px, off-centre, as RGB/gray/palette/transparent PNG, JPEG, WebP;
- ``photo``: tinted paper, a lighting gradient, a hot spot, paper texture, sensor noise, slight blur, JPEG;
- ``thin`` / ``thick``: the same digit with thinned or thickened strokes;
- ``small-corner``: a small digit in a corner of a large page;
- ``number``: a page holding a 2–4 digit number written left to right;
- ``number-touching``: the same, written so close that wide neighbours touch;
- ``blank``: empty paper with noise, texture or a lighting gradient (no digit);
- ``not-a-digit``: letters, scribbles and textures (no digit).

Every set is a :class:`PictureSet` of encoded image files (bytes) with the expected answer:
a class index, a number string, or ``None`` for "no digit here".
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SET_NAMES = ("user", "photo", "thin", "thick", "small-corner", "number", "blank", "not-a-digit", "number-touching")
"""Every generated set, in the order :func:`make_picture_sets` builds them."""


@dataclass
class PictureSet:
    """Encoded pictures and what a correct reader answers for each."""

    name: str
    """One of :data:`SET_NAMES`."""
    images: list[bytes] = field(default_factory=list)
    """Encoded image files (PNG, JPEG, WebP …)."""
    answers: list[int | str | None] = field(default_factory=list)
    """Class index (single digits), the number as a string (``number``), or ``None`` (no digit)."""
    kinds: list[str] = field(default_factory=list)
    """What each picture of the ``blank`` and ``not-a-digit`` sets shows (``noise``, ``photo-paper``,
    ``gradient``; ``letter``, ``scribble``, ``texture``), for per-kind figures; empty for the other sets."""

    def __len__(self) -> int:
        return len(self.images)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _ink_image(digit: np.ndarray, size: int) -> np.ndarray:
    """The digit's ink (0..1 float, white-on-black) upscaled to ``size``×``size``."""
    big = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0


def _paste_ink(page: np.ndarray, ink: np.ndarray, top: int, left: int, ink_level: float) -> None:
    """Darken ``page`` (0..255 float) where ``ink`` is, towards ``ink_level``."""
    h, w = ink.shape
    region = page[top:top + h, left:left + w]
    region[...] = region * (1 - ink) + ink_level * ink


def user_picture(digit: np.ndarray, rng: np.random.Generator, kind: int | None = None) -> bytes:
    """Dark ink on white paper, 100–300 px, off-centre on a larger canvas, in one of six file styles
    (``kind`` 0–5: RGB PNG, JPEG, transparent RGBA, palette PNG, grey PNG, WebP; None: drawn at random)."""
    s = int(rng.integers(100, 301))
    ink = _ink_image(digit, s)
    w, h = s + int(rng.integers(20, 200)), s + int(rng.integers(20, 200))
    page = np.full((h, w), 255.0, np.float32)
    left, top = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
    _paste_ink(page, ink, top, left, 0.0)
    canvas = Image.fromarray(page.clip(0, 255).astype(np.uint8))
    if kind is None:
        kind = int(rng.integers(0, 6))
    if kind == 0:
        return _encode(canvas.convert("RGB"), "PNG")
    if kind == 1:
        return _encode(canvas.convert("RGB"), "JPEG", quality=80)
    if kind == 2:  # black strokes on a transparent layer
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., 3] = 255 - np.asarray(canvas)
        return _encode(Image.fromarray(rgba, "RGBA"), "PNG")
    if kind == 3:
        return _encode(canvas.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG")
    if kind == 4:
        return _encode(canvas, "PNG")
    return _encode(canvas.convert("RGB"), "WEBP", quality=80)


def typical_picture(digit: np.ndarray, rng: np.random.Generator, side: int = 112) -> bytes:
    """The typical picture of the preprocessing speed budget: a ``side``×``side`` grey PNG, the digit
    dark on white at three quarters of the side, off-centre."""
    s = side * 3 // 4
    page = np.full((side, side), 255.0, np.float32)
    top, left = (int(v) for v in rng.integers(0, side - s, 2))
    _paste_ink(page, _ink_image(digit, s), top, left, 0.0)
    return _encode(Image.fromarray(page.clip(0, 255).astype(np.uint8)), "PNG")


def _paper(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB photo of paper, 0..255 float: tint, lighting gradient, a hot spot, texture and noise."""
    tint = np.array([rng.uniform(215, 250), rng.uniform(205, 245), rng.uniform(190, 235)], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    light = 1.0 - rng.uniform(0.1, 0.35) * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.2, 0.6) * max(h, w)
    light = light + rng.uniform(0.05, 0.15) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    texture = rng.normal(0, 1, (h // 4 + 1, w // 4 + 1)).astype(np.float32)
    texture = np.kron(texture, np.ones((4, 4), np.float32))[:h, :w] * rng.uniform(2, 6)
    noise = rng.normal(0, rng.uniform(2, 6), (h, w, 3)).astype(np.float32)
    return tint * light[..., None] + texture[..., None] + noise


def photo_picture(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone photo of a digit on paper: tinted, unevenly lit, textured, noisy, slightly blurred, JPEG."""
    s = int(rng.integers(90, 200))
    h, w = s + int(rng.integers(40, 220)), s + int(rng.integers(40, 220))
    page = _paper(h, w, rng)
    ink = _ink_image(digit, s) * rng.uniform(0.75, 1.0)
    top, left = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
    pen = np.array([rng.uniform(10, 60), rng.uniform(10, 60), rng.uniform(20, 90)], np.float32)
    region = page[top:top + s, left:left + s]
    region[...] = region * (1 - ink[..., None]) + pen * ink[..., None]
    img = Image.fromarray(page.clip(0, 255).astype(np.uint8), "RGB")
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return _encode(img, "JPEG", quality=int(rng.integers(60, 92)))


def stroke_picture(digit: np.ndarray, rng: np.random.Generator, thick: bool) -> bytes:
    """The digit with thickened (max filter) or thinned (min filter) strokes, dark on white."""
    s = int(rng.integers(112, 224))
    img = Image.fromarray(digit).resize((s, s), Image.Resampling.BICUBIC)
    k = 2 * int(s / 40) + 1
    img = img.filter(ImageFilter.MaxFilter(k) if thick else ImageFilter.MinFilter(max(3, k // 2 * 2 + 1)))
    page = np.full((s + 40, s + 40), 255.0, np.float32)
    _paste_ink(page, np.asarray(img, np.float32) / 255.0, 20, 20, 0.0)
    return _encode(Image.fromarray(page.clip(0, 255).astype(np.uint8)), "PNG")


def small_corner_picture(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A small digit (30–60 px) near a corner of a 300–500 px page."""
    s = int(rng.integers(30, 61))
    h, w = int(rng.integers(300, 501)), int(rng.integers(300, 501))
    page = np.full((h, w), 255.0, np.float32)
    top = int(rng.integers(5, 40)) if rng.random() < 0.5 else h - s - int(rng.integers(5, 40))
    left = int(rng.integers(5, 40)) if rng.random() < 0.5 else w - s - int(rng.integers(5, 40))
    _paste_ink(page, _ink_image(digit, s), top, left, 0.0)
    return _encode(Image.fromarray(page.clip(0, 255).astype(np.uint8)).convert("RGB"), "PNG")


def number_picture(digits: list[np.ndarray], rng: np.random.Generator, touching: bool = False) -> bytes:
    """Several digits written left to right with gaps, as one page.

    ``touching``: written close together, so that wide neighbours touch or overlap by a stroke's
    width (an MNIST digit's ink fills at most 20 of its 28-pixel box: 0.71 of the step ``s``).
    """
    s = int(rng.integers(60, 120))
    gap = int(s * (rng.uniform(-0.38, -0.30) if touching else rng.uniform(0.1, 0.4)))
    w = len(digits) * s + (len(digits) - 1) * gap + int(rng.integers(40, 160))
    h = s + int(rng.integers(40, 160))
    page = np.full((h, w), 255.0, np.float32)
    left = int(rng.integers(10, w - len(digits) * s - (len(digits) - 1) * gap))
    top = int(rng.integers(5, h - s - 5))
    for d in digits:
        jitter = int(rng.integers(-4, 5)) if 4 < top < h - s - 4 else 0  # handwriting is not on a ruler
        _paste_ink(page, _ink_image(d, s), top + jitter, left, 0.0)
        left += s + gap
    return _encode(Image.fromarray(page.clip(0, 255).astype(np.uint8)).convert("RGB"), "PNG")


BLANK_KINDS = ("noise", "photo-paper", "gradient")
"""What a ``blank`` picture shows (:attr:`PictureSet.kinds`)."""
NOT_A_DIGIT_KINDS = ("letter", "scribble", "texture")
"""What a ``not-a-digit`` picture shows (:attr:`PictureSet.kinds`)."""


def blank_picture(rng: np.random.Generator) -> bytes:
    """Paper with no digit: plain with sensor noise, textured photo paper, or a lighting gradient."""
    return _blank(rng)[0]


def _blank(rng: np.random.Generator) -> tuple[bytes, str]:
    h, w = int(rng.integers(100, 400)), int(rng.integers(100, 400))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        page = 230 + rng.normal(0, 6, (h, w))
        return _encode(Image.fromarray(page.clip(0, 255).astype(np.uint8)), "PNG"), BLANK_KINDS[kind]
    if kind == 1:
        return (_encode(Image.fromarray(_paper(h, w, rng).clip(0, 255).astype(np.uint8), "RGB"), "JPEG",
                        quality=85), BLANK_KINDS[kind])
    yy = np.linspace(rng.uniform(150, 200), rng.uniform(220, 255), h)[:, None]
    page = np.broadcast_to(yy, (h, w)) + rng.normal(0, 3, (h, w))
    return _encode(Image.fromarray(page.clip(0, 255).astype(np.uint8)), "PNG"), BLANK_KINDS[kind]


LETTERS = "ABCDEFHKMNPRTUVWXYZ"
"""Letters used as non-digits. G, I, J, L, O, Q and S, often written like digits, are left out; B, D and Z
are kept although typeset they resemble 8, 0 and 2 (the shipped model reads them as those digits)."""


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def not_a_digit_picture(rng: np.random.Generator) -> bytes:
    """A letter, a scribble or a texture, dark on white."""
    return _not_a_digit(rng)[0]


def _not_a_digit(rng: np.random.Generator) -> tuple[bytes, str]:
    s = int(rng.integers(120, 260))
    img = Image.new("L", (s, s), 255)
    draw = ImageDraw.Draw(img)
    kind = int(rng.integers(0, 3))
    width = max(3, s // 18)
    if kind == 0:
        letter = LETTERS[int(rng.integers(0, len(LETTERS)))]
        draw.text((s * 0.2, s * 0.05), letter, fill=0, font=_font(int(s * 0.7)))
    elif kind == 1:  # a scribble: a random closed-ish polyline of many segments
        pts = rng.uniform(0.1 * s, 0.9 * s, (int(rng.integers(8, 16)), 2))
        draw.line([tuple(p) for p in pts], fill=0, width=width, joint="curve")
    else:  # a texture: hatching or a grid or dots
        step = int(rng.integers(8, 20))
        if rng.random() < 0.5:
            for k in range(-s, s, step):
                draw.line([(k, 0), (k + s, s)], fill=0, width=max(1, width // 2))
        else:
            for y in range(step // 2, s, step):
                for x in range(step // 2, s, step):
                    r = step // 4
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=0)
    return _encode(img, "PNG"), NOT_A_DIGIT_KINDS[kind]


def make_picture_sets(images: np.ndarray, labels: np.ndarray, n: int = 200, seed: int = 0,
                      names: tuple[str, ...] = SET_NAMES) -> dict[str, PictureSet]:
    """Build the named sets from test digits ``images`` (uint8 N×28×28) and their ``labels``.

    Each set has ``n`` pictures; digits are drawn without replacement per set, the same
    ``seed`` gives the same bytes. The measured sets (``scripts/measure_pictures.py``) use seed 0;
    thresholds (the not-a-digit test) are chosen on other seeds.
    """
    unknown = sorted(set(names) - set(SET_NAMES))
    if unknown:
        raise ValueError(f"unknown picture sets {unknown}; known: {', '.join(SET_NAMES)}")
    singles: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
        "user": user_picture, "photo": photo_picture,
        "thin": lambda d, r: stroke_picture(d, r, thick=False),
        "thick": lambda d, r: stroke_picture(d, r, thick=True),
        "small-corner": small_corner_picture,
    }
    out: dict[str, PictureSet] = {}
    for k, name in enumerate(SET_NAMES):
        if name not in names:
            continue
        rng = np.random.default_rng([seed, k])
        ps = PictureSet(name)
        if name in singles:
            idx = rng.choice(images.shape[0], n, replace=False)
            for i in idx:
                ps.images.append(singles[name](images[i], rng))
                ps.answers.append(int(labels[i]))
        elif name in ("number", "number-touching"):
            for _ in range(n):
                idx = rng.choice(images.shape[0], int(rng.integers(2, 5)), replace=False)
                ps.images.append(number_picture([images[i] for i in idx], rng, touching=name != "number"))
                ps.answers.append("".join(str(int(labels[i])) for i in idx))
        elif name == "blank":
            for _ in range(n):
                image, kind = _blank(rng)
                ps.images.append(image)
                ps.answers.append(None)
                ps.kinds.append(kind)
        else:
            for _ in range(n):
                image, kind = _not_a_digit(rng)
                ps.images.append(image)
                ps.answers.append(None)
                ps.kinds.append(kind)
        out[name] = ps
    return out
