"""The generated picture sets: deterministic, decodable, with the right answers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digitlab.data.pictures import SET_NAMES, make_picture_sets


@pytest.fixture(scope="module")
def digits():
    rng = np.random.default_rng(0)
    images = np.zeros((30, 28, 28), np.uint8)
    for i in range(30):  # a bar of ink in a different place per image: enough to render
        r = int(rng.integers(6, 20))
        images[i, 4:24, r:r + 4] = 255
    return images, np.arange(30) % 10


def test_every_set_is_built_with_n_decodable_pictures(digits):
    sets = make_picture_sets(*digits, n=5, seed=1)
    assert list(sets) == list(SET_NAMES)
    for name, ps in sets.items():
        assert len(ps) == 5 == len(ps.answers)
        for b in ps.images:
            img = Image.open(io.BytesIO(b))
            img.load()
            assert min(img.size) >= 28, (name, img.size)


def test_answers_match_the_kind_of_set(digits):
    images, labels = digits
    sets = make_picture_sets(images, labels, n=6, seed=2)
    assert all(isinstance(a, int) and 0 <= a <= 9 for a in sets["photo"].answers)
    assert all(a is None for a in sets["blank"].answers + sets["not-a-digit"].answers)
    assert all(isinstance(a, str) and 2 <= len(a) <= 4 and a.isdigit() for a in sets["number"].answers)


def test_same_seed_same_bytes_other_seed_other_bytes(digits):
    a = make_picture_sets(*digits, n=3, seed=5, names=("photo", "blank"))
    b = make_picture_sets(*digits, n=3, seed=5, names=("photo", "blank"))
    c = make_picture_sets(*digits, n=3, seed=6, names=("photo", "blank"))
    assert a["photo"].images == b["photo"].images and a["blank"].images == b["blank"].images
    assert a["photo"].images != c["photo"].images


def test_photo_pictures_are_not_clean_paper(digits):
    ps = make_picture_sets(*digits, n=4, seed=3, names=("photo",))["photo"]
    for b in ps.images:
        lum = np.asarray(Image.open(io.BytesIO(b)).convert("L"), np.float32)
        paper = lum[lum > np.percentile(lum, 50)]
        assert paper.std() > 1.0 and paper.mean() < 250  # tinted, lit unevenly and noisy


def test_unknown_set_is_refused(digits):
    with pytest.raises(ValueError, match="unknown picture sets"):
        make_picture_sets(*digits, n=1, names=("selfies",))


def test_no_digit_sets_record_what_each_picture_shows(digits):
    from digitlab.data.pictures import BLANK_KINDS, NOT_A_DIGIT_KINDS, blank_picture, not_a_digit_picture

    sets = make_picture_sets(*digits, n=30, seed=4, names=("blank", "not-a-digit", "user"))
    assert set(sets["not-a-digit"].kinds) == set(NOT_A_DIGIT_KINDS)  # 30 draws cover all three kinds
    assert set(sets["blank"].kinds) <= set(BLANK_KINDS) and len(sets["blank"].kinds) == 30
    assert sets["user"].kinds == []
    # the public one-picture generators give the same bytes from the same generator state
    k = SET_NAMES.index("not-a-digit")
    rng = np.random.default_rng([4, k])
    assert [not_a_digit_picture(rng) for _ in range(30)] == sets["not-a-digit"].images
    rng = np.random.default_rng([4, SET_NAMES.index("blank")])
    assert [blank_picture(rng) for _ in range(30)] == sets["blank"].images


def test_typical_picture_is_a_112_px_grey_png(digits):
    from digitlab.data.pictures import typical_picture

    img = Image.open(io.BytesIO(typical_picture(digits[0][0], np.random.default_rng(0))))
    assert img.format == "PNG" and img.mode == "L" and img.size == (112, 112)
    a = np.asarray(img)
    assert a.max() == 255 and a.min() < 64  # dark ink on white
