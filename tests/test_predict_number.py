"""``digitlab predict FILE... --number``: whole numbers from generated pages of several digits."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from digitlab.cli import main
from digitlab.cli.predict import NumberReading, number_reading
from digitlab.data.pictures import number_picture


@pytest.fixture(scope="module")
def default_predictor():
    from digitlab.inference.predictor import load_predictor

    return load_predictor("default", prefer_onnx=True)


@pytest.fixture(scope="module")
def pages(tmp_path_factory, mnist, default_predictor):
    """Three number pages (one with a leading zero) built from test digits the shipped model reads surely."""
    images, labels = mnist.test_images[:400].numpy(), mnist.test_labels[:400].numpy()
    pred, probs = default_predictor.predict(images)
    sure = np.flatnonzero((pred == labels) & (probs.max(1) > 0.999))
    by_digit = {d: [int(i) for i in sure if labels[i] == d] for d in range(10)}
    folder = tmp_path_factory.mktemp("numbers")
    rng = np.random.default_rng(7)
    out = []
    for k, number in enumerate(("4721", "07", "385")):
        digits = [images[by_digit[int(c)][k % len(by_digit[int(c)])]] for c in number]
        path = folder / f"page{k}.png"
        path.write_bytes(number_picture(digits, rng))
        out.append((path, number))
    return out


def _run_json(argv, capsys) -> tuple[int, list[dict]]:
    code = main(argv)
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines()]


def test_number_json_reads_each_page(pages, capsys):
    code, records = _run_json(["predict", *(str(p) for p, _ in pages), "--number", "--json"], capsys)
    assert code == 0
    assert [r["file"] for r in records] == [str(p) for p, _ in pages]
    for r, (_, number) in zip(records, pages, strict=True):
        assert set(r) == {"file", "number", "digits", "confidence"}
        assert r["number"] == number  # a string: the leading zero of "07" is kept
        assert [d["label"] for d in r["digits"]] == [int(c) for c in number]
        for d in r["digits"]:
            assert set(d) == {"label", "confidence", "box"} and 0.5 < d["confidence"] <= 1.0
        assert r["confidence"] == pytest.approx(float(np.prod([d["confidence"] for d in r["digits"]])), rel=1e-6)


def test_number_boxes_are_left_to_right_inside_the_picture(pages, capsys):
    path, number = pages[0]
    _, (r,) = _run_json(["predict", str(path), "--number", "--json"], capsys)
    w, h = Image.open(path).size
    boxes = [d["box"] for d in r["digits"]]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
    assert [b[0] for b in boxes] == sorted(b[0] for b in boxes)
    assert all(a[2] <= b[0] + 2 for a, b in zip(boxes, boxes[1:], strict=False))  # separate digits


def test_number_text_output_in_words(pages, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("L", (300, 120), 255).save(blank)
    path, number = pages[0]
    assert main(["predict", str(path), str(blank), "--number"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{path}: {number}  (") and "whole number" in lines[0]
    assert lines[1] == f"{blank}: no number read (no digit found)"


def test_blank_page_reads_null_not_an_empty_string(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("L", (300, 120), 255).save(blank)
    code, (r,) = _run_json(["predict", str(blank), "--number", "--json"], capsys)
    assert code == 0
    assert r == {"file": str(blank), "number": None, "digits": [], "confidence": None}


def test_bad_files_are_one_line_each_and_the_batch_goes_on(pages, tmp_path, capsys):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a picture")
    missing = tmp_path / "missing.png"
    path, number = pages[1]
    code = main(["predict", str(junk), str(path), str(missing), "--number", "--json"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert [r["file"] for r in records] == [str(junk), str(path), str(missing)]
    assert "error" in records[0] and "accepted format" in records[0]["error"]
    assert records[1]["number"] == number
    assert "error" in records[2] and not records[2]["error"].startswith(str(missing))
    # text mode: one error line per bad file on stderr, the number on stdout
    assert main(["predict", str(junk), str(path), "--number"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{path}: {number}  (")
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith(f"{junk}: error: ")


def test_number_usage_errors(pages, capsys):
    path, _ = pages[0]
    assert main(["predict", str(path), "--number", "--top-k", "3"]) == 2
    assert "--top-k" in capsys.readouterr().err


def test_number_reading_from_a_raw_result():
    raw = {"number": "12", "confidence": 0.81,
           "digits": [{"label": 1, "confidence": 0.9, "box": (1, 2, 3, 4), "preprocessed": np.zeros((28, 28))},
                      {"label": 2, "confidence": 0.9, "box": np.array([5, 2, 9, 4])}]}
    reading = number_reading(raw)
    assert isinstance(reading, NumberReading)
    assert list(reading.to_dict()) == ["number", "digits", "confidence"]  # the order --json prints
    assert reading.to_dict() == {"number": "12", "confidence": 0.81, "digits": [
        {"label": 1, "confidence": 0.9, "box": [1, 2, 3, 4]}, {"label": 2, "confidence": 0.9, "box": [5, 2, 9, 4]}]}
    json.dumps(reading.to_dict())
    # nothing found, or a mark refused as not a digit: no number at all rather than a partial one
    assert number_reading({"number": "", "confidence": 0.0, "digits": []}).number is None
    refused = number_reading({"number": "1", "confidence": 0.9, "digits": [
        {"label": 1, "confidence": 0.9}, {"label": None, "confidence": None}]})
    assert refused.number is None and refused.confidence is None and len(refused.digits) == 2


def test_png_bytes_in_memory_match_the_file(pages, default_predictor):
    path, number = pages[2]
    reading = number_reading(default_predictor.read_number(io.BytesIO(path.read_bytes()).getvalue()))
    assert reading.number == number


def test_touching_digits_are_cut_at_the_projection_minimum(mnist, default_predictor):
    """Two wide digits written so close that their ink touches form one connected component;
    it is cut where the column projection is least, and both digits are read."""
    from digitlab.inference.preprocess import split_digit_boxes

    images, labels = mnist.test_images[:400].numpy(), mnist.test_labels[:400].numpy()
    zeros = [i for i in range(400) if labels[i] == 0][:2]
    a, b = images[zeros[0]].astype(np.float32), images[zeros[1]].astype(np.float32)
    ca, cb = np.flatnonzero(a.max(0) > 0), np.flatnonzero(b.max(0) > 0)
    a, b = a[:, ca[0]:ca[-1] + 1], b[:, cb[0]:cb[-1] + 1]
    ink = np.zeros((28, a.shape[1] + b.shape[1] - 1 + 8), np.float32)
    ink[:, 4:4 + a.shape[1]] = a
    start = 4 + a.shape[1] - 1  # one column of overlap: the two zeros touch
    ink[:, start:start + b.shape[1]] = np.maximum(ink[:, start:start + b.shape[1]], b)
    page = Image.fromarray(255 - ink.clip(0, 255).astype(np.uint8)).resize((ink.shape[1] * 4, 112))
    buf = io.BytesIO()
    page.save(buf, "PNG")
    found = split_digit_boxes(buf.getvalue())
    assert len(found) == 2
    (_, left), (_, right) = found
    assert left[2] <= right[0] + 8 and left[0] < right[0]  # side by side, cut near the touching point
    assert default_predictor.read_number(buf.getvalue())["number"] == "00"
