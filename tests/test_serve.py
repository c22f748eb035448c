"""The REST API (``digitlab serve``) with FastAPI's TestClient: happy paths and hostile input."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from digitlab.serve import create_app
from digitlab.serve.app import settle_heap
from inference_support import bomb_png, digit_png

MAX_UPLOAD = 200_000


@pytest.fixture(autouse=True)
def _no_heap_freeze(monkeypatch):
    """The server start-up freezes the GC heap (:func:`settle_heap`): not in the test process."""
    import digitlab.serve.app as serve_app

    monkeypatch.setattr(serve_app, "settle_heap", lambda: None)


def test_settle_heap_exempts_loaded_objects_from_the_gc():
    import gc

    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000  # the libraries' objects, not scanned by full collections
    finally:
        gc.unfreeze()


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, max_upload_bytes=MAX_UPLOAD)) as c:
        yield c


@pytest.fixture(scope="module")
def sample(predictor, mnist):
    """A test digit the model gets right, as pixels and as a dark-on-light PNG."""
    ds = mnist
    labels, probs = predictor.predict(ds.test_images[:100].numpy())
    i = int(np.flatnonzero((labels == ds.test_labels[:100].numpy()) & (probs.max(1) > 0.99))[0])
    return ds.test_images[i].numpy(), int(ds.test_labels[i]), digit_png(ds.test_images[i].numpy(), size=160)


def _check_result(body: dict, label: int) -> None:
    assert body["label"] == label
    assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-4
    assert body["confidence"] == pytest.approx(max(body["probabilities"]))
    pre = np.asarray(body["preprocessed"])
    assert pre.shape == (28, 28) and pre.min() >= 0 and pre.max() <= 255
    assert body["model"] == "cnn-simple" and body["blank"] is False


def _assert_error(r, status: int, words: str = "") -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body["detail"], str) and words in body["detail"], body


def test_health_models_openapi_page(client):
    assert client.get("/api/health").json()["status"] == "ok"
    models = client.get("/api/models").json()
    assert models["models"][0]["model"] == "cnn-simple"
    assert models["limits"]["max_upload_bytes"] == MAX_UPLOAD
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(body)
    page = client.get("/")
    assert page.status_code == 200 and 'id="pad"' in page.text and 'id="bars"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: works offline
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_predict_upload_raw_and_base64(client, predictor, sample):
    pixels, label, png = sample
    r = client.post("/api/predict", files={"file": ("digit.png", png, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    _check_result(body, label)
    direct = predictor.predict_image(png)
    np.testing.assert_allclose(body["probabilities"], direct["probabilities"], atol=1e-6)
    assert body["preprocessed"] == direct["preprocessed"].tolist()
    r2 = client.post("/api/predict", content=png, headers={"content-type": "image/png"})
    assert r2.json()["probabilities"] == body["probabilities"]
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    for image in (url, base64.b64encode(png).decode()):
        r3 = client.post("/api/predict", json={"image": image})
        assert r3.status_code == 200 and r3.json()["probabilities"] == body["probabilities"]


def test_predict_pixels(client, predictor, sample):
    pixels, label, _ = sample
    r = client.post("/api/predict", json={"pixels": pixels.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    _check_result(body, label)
    assert body["preprocessed"] == pixels.tolist()  # already MNIST form: used as given
    np.testing.assert_allclose(body["probabilities"], predictor.predict(pixels)[1][0], atol=1e-6)
    floats = (pixels.astype(float) * 0.999).tolist()
    assert client.post("/api/predict", json={"pixels": floats}).json()["label"] == label
    shifted = np.roll(pixels, 5, axis=1)  # off-centre: preprocess=true re-centres it
    body2 = client.post("/api/predict", json={"pixels": shifted.tolist(), "preprocess": True}).json()
    assert body2["label"] == label and body2["preprocessed"] != shifted.tolist()


@pytest.mark.parametrize("payload, status, words", [
    ({"pixels": [[0] * 28] * 27}, 422, "28×28"),
    ({"pixels": [[0] * 27] * 28}, 422, "28×28"),
    ({"pixels": [[0] * 28] * 27 + [[0] * 27 + [256]]}, 422, "0..255"),
    ({"pixels": [[0] * 28] * 27 + [[0] * 27 + [-1]]}, 422, "0..255"),
    ({"pixels": [[0] * 28] * 27 + [[0] * 27 + ["7"]]}, 422, "numbers"),
    ({"pixels": [[0] * 28] * 27 + [[0] * 27 + [True]]}, 422, "numbers"),
    ({"pixels": [[0] * 28] * 27 + [[0] * 27 + [None]]}, 422, "numbers"),
    ({"pixels": 5}, 422, "28×28"),
    ({"pixels": [[0] * 28] * 28, "preprocess": "yes"}, 422, "preprocess"),
    ({"pixels": [[0] * 28] * 28, "image": "x"}, 422, "exactly one"),
    ({}, 422, "exactly one"),
    ([1, 2, 3], 422, "exactly one"),
    ({"image": 42}, 422, "string"),
    ({"image": "data:image/png,rawdata"}, 422, "base64"),
    ({"image": "!!!! not base64 !!!!"}, 400, "base64"),
    ({"image": base64.b64encode(b"plain text, not an image").decode()}, 400, "not an image"),
])
def test_bad_json(client, payload, status, words):
    _assert_error(client.post("/api/predict", json=payload), status, words)


def test_bad_bodies(client, sample):
    _, _, png = sample
    post = client.post
    _assert_error(post("/api/predict", files={"file": ("x.png", b"not an image", "image/png")}), 400,
                  "not an image")
    _assert_error(post("/api/predict", files={"file": ("x.png", b"", "image/png")}), 400, "empty")
    _assert_error(post("/api/predict", files={"file": ("x.png", png[:200], "image/png")}), 400, "corrupt")
    _assert_error(post("/api/predict", files={"other": ("x.png", png, "image/png")}), 422, "'file'")
    _assert_error(post("/api/predict", content=b"", headers={"content-type": "image/png"}), 400, "empty")
    _assert_error(post("/api/predict", content=b"", headers={"content-type": "application/json"}), 400, "empty")
    _assert_error(post("/api/predict", content=b"{not json", headers={"content-type": "application/json"}),
                  400, "invalid JSON")
    _assert_error(post("/api/predict", content=b"\xff\xfe\x00", headers={"content-type": "application/json"}),
                  400, "invalid JSON")
    _assert_error(post("/api/predict", content=png, headers={"content-type": "text/plain"}), 415, "Content-Type")
    _assert_error(post("/api/predict", content=b"--x\r\nbroken", headers={
        "content-type": "multipart/form-data; boundary=x"}), 422, "'file'")
    _assert_error(post("/api/predict", content=b"abc", headers={"content-type": "multipart/form-data"}), 400,
                  "boundary")
    assert client.get("/api/predict").status_code == 405
    assert client.get("/api/health").status_code == 200


def test_size_limits_and_bombs(client):
    big = b"\x89PNG" + bytes(MAX_UPLOAD * 2)
    _assert_error(client.post("/api/predict", files={"file": ("big.png", big, "image/png")}), 413, "limit")
    _assert_error(client.post("/api/predict", content=big, headers={"content-type": "image/png"}), 413, "limit")

    def chunks():  # no Content-Length: the server must count what actually arrives
        for _ in range(40):
            yield bytes(10_000)

    _assert_error(client.post("/api/predict", content=chunks(), headers={"content-type": "image/png"}),
                  413, "limit")
    # a declared size over the limit is refused before the body is read; a malformed one is a 400
    _assert_error(client.post("/api/predict", content=bytes(100), headers={
        "content-type": "image/png", "content-length": str(10 * MAX_UPLOAD)}), 413, "exceeds")
    _assert_error(client.post("/api/predict", content=bytes(100), headers={
        "content-type": "image/png", "content-length": "abc"}), 400, "Content-Length")
    # base64 JSON gets a body allowance for the encoding, but the decoded image has the upload limit
    raw = b"\x89PNG" + bytes(MAX_UPLOAD + 10)
    _assert_error(client.post("/api/predict", json={"image": base64.b64encode(raw).decode()}), 413, "limit")
    # decompression bombs: tiny files declaring huge images
    for bomb in (bomb_png(100_000, 100_000), bomb_png(20_000, 20_000)):
        _assert_error(client.post("/api/predict", files={"file": ("bomb.png", bomb, "image/png")}), 413,
                      "decompression-bomb")
    assert client.get("/api/health").json()["status"] == "ok"


def test_small_pixel_limit(predictor, mnist):
    """max_image_pixels is the app's own limit, independent of the global default."""
    app = create_app(predictor, max_image_pixels=10_000)
    with TestClient(app) as c:
        png = digit_png(np.zeros((28, 28), np.uint8), size=200)  # 40 000 pixels
        _assert_error(c.post("/api/predict", files={"file": ("x.png", png, "image/png")}), 413, "exceeds")
        ok = digit_png(mnist.test_images[0].numpy(), size=90)
        assert c.post("/api/predict", files={"file": ("x.png", ok, "image/png")}).status_code == 200


def test_blank_drawing_is_not_an_error(client):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (280, 280), "white").save(buf, "PNG")
    r = client.post("/api/predict", files={"file": ("blank.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200 and not np.asarray(r.json()["preprocessed"]).any()
    body = r.json()
    assert body["blank"] is True and body["rejected"] == "blank"
    assert body["label"] is None and body["name"] is None and body["confidence"] is None
    json.dumps(body)


def test_cli_serve(run_dir, monkeypatch, capsys):
    import uvicorn

    import digitlab.cli.serve as serve_cli
    from digitlab.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setattr(serve_cli, "check_port_free", lambda host, port: None)  # tested below
    assert main(["serve", "--model", str(run_dir), "--port", "8123", "--max-upload-mb", "1"]) == 0
    app, kw = calls[-1]
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123  # local only by default
    assert "warning" not in capsys.readouterr().err
    with TestClient(app, base_url="http://127.0.0.1:8123") as c:
        assert c.get("/api/models").json()["limits"]["max_upload_bytes"] == 1024 * 1024
    # another address needs a token, or an explicit --no-token
    assert main(["serve", "--model", str(run_dir), "--host", "0.0.0.0"]) == 2
    assert "--no-token" in capsys.readouterr().err
    assert main(["serve", "--model", str(run_dir), "--host", "0.0.0.0", "--no-token"]) == 0
    assert calls[-1][1]["host"] == "0.0.0.0"
    assert "reachable from other machines" in capsys.readouterr().err
    monkeypatch.setenv("DIGITLAB_API_TOKEN", "s3cret")
    assert main(["serve", "--model", str(run_dir), "--host", "0.0.0.0", "--allowed-host", "digits.example"]) == 0
    with TestClient(calls[-1][0], base_url="http://digits.example") as c:
        assert c.post("/api/predict", json={"pixels": [[0] * 28] * 28}).status_code == 401
        ok = c.post("/api/predict", json={"pixels": [[0] * 28] * 28}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/api/health", headers={"host": "evil.example"}).status_code == 400
    assert "reachable" not in capsys.readouterr().err
    monkeypatch.delenv("DIGITLAB_API_TOKEN")
    # on loopback, the Host header must name the loopback (a DNS-rebinding page's Host is refused)
    assert main(["serve", "--model", str(run_dir)]) == 0
    with TestClient(calls[-1][0], base_url="http://localhost:8000") as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"host": "attacker.example:8000"}).status_code == 400
        assert c.get("/api/health", headers={"host": "[::1]:8000"}).status_code == 200
    n = len(calls)
    assert main(["serve", "--model", str(run_dir / "missing")]) == 2
    assert main(["serve", "--model", str(run_dir), "--port", "70000"]) == 2
    assert len(calls) == n


# ------------------------------------------------------------------ no 500s for hostile input


def _nan_tiff() -> bytes:
    import io

    from PIL import Image

    pixels = np.zeros((40, 40), np.float32)
    pixels[10:30, 18:22] = 1.0
    pixels[5, 5] = np.nan
    buf = io.BytesIO()
    Image.fromarray(pixels, "F").save(buf, "TIFF")
    return buf.getvalue()


def test_hostile_json_and_images_are_client_errors(client):
    huge = [[0] * 28 for _ in range(28)]
    huge[3][3] = 10**400  # a JSON integer no float can hold (was OverflowError -> 500)
    body = json.dumps({"pixels": huge}).encode()
    _assert_error(client.post("/api/predict", content=body, headers={"content-type": "application/json"}),
                  422, "0..255")
    nan = json.dumps({"pixels": [[0] * 28] * 27 + [[0] * 27 + [float("nan")]]}).encode()  # NaN literal
    _assert_error(client.post("/api/predict", content=nan, headers={"content-type": "application/json"}),
                  422, "0..255")
    deep = b"[" * 5000 + b"]" * 5000  # was RecursionError -> 500
    _assert_error(client.post("/api/predict", content=deep, headers={"content-type": "application/json"}),
                  400, "nested too deeply")
    deep_obj = b'{"pixels": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    _assert_error(client.post("/api/predict", content=deep_obj, headers={"content-type": "application/json"}),
                  400, "nested too deeply")
    # a float TIFF holding NaN (was ValueError in _otsu -> 500)
    _assert_error(client.post("/api/predict", files={"file": ("nan.tiff", _nan_tiff(), "image/tiff")}), 400, "NaN")
    # formats outside the allow-list are refused before any decoder runs (EPS would start Ghostscript)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    _assert_error(client.post("/api/predict", files={"file": ("x.eps", eps, "application/postscript")}), 400,
                  "accepted format")
    assert client.get("/api/health").json()["status"] == "ok"


def test_results_carry_class_names_and_limits(client, sample):
    pixels, label, _ = sample
    body = client.post("/api/predict", json={"pixels": pixels.tolist()}).json()
    assert body["label"] == label and body["name"] == str(label)
    models = client.get("/api/models").json()
    assert models["models"][0]["dataset"] == "mnist" and models["models"][0]["class_names"][7] == "7"
    assert models["limits"]["max_concurrent_decodes"] >= 1
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictResponse"]
    assert "name" in schema["properties"]


def test_half_sent_body_times_out(predictor):
    """A client that stops sending gets 408 instead of holding the request open forever."""
    import time

    app = create_app(predictor, body_timeout=0.5)

    def slow():
        yield b"\x89PNG"
        time.sleep(3)
        yield b"rest"

    with TestClient(app) as c:  # (the test client finishes sending before it reads the answer)
        r = c.post("/api/predict", content=slow(), headers={"content-type": "image/png"})
        _assert_error(r, 408, "not received within")
        assert c.get("/api/health").status_code == 200


def test_cli_serve_port_in_use_is_one_line(run_dir, monkeypatch, capsys):
    import socket

    import uvicorn

    from digitlab.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("uvicorn must not start"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(run_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"port {port} on 127.0.0.1 is already in use" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------ whole numbers over REST


@pytest.fixture(scope="module")
def number_page(predictor, mnist):
    """A generated page holding a 3-digit number of test digits the test model reads surely."""
    from digitlab.data.pictures import number_picture

    images, labels = mnist.test_images[:500].numpy(), mnist.test_labels[:500].numpy()
    pred, probs = predictor.predict(images)
    sure = np.flatnonzero((pred == labels) & (probs.max(1) > 0.99))
    wanted = "305"
    picks = [next(int(i) for i in sure if labels[i] == int(c)) for c in wanted]
    return number_picture([images[i] for i in picks], np.random.default_rng(3)), wanted


def test_number_endpoint_upload_raw_and_base64(client, predictor, number_page):
    from digitlab.cli.predict import number_reading

    png, number = number_page
    r = client.post("/api/number", files={"file": ("page.png", png, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"number", "confidence", "digits", "model", "elapsed_ms"}
    assert body["number"] == number and body["model"] == "cnn-simple"  # "305": a string, zero kept
    assert [d["label"] for d in body["digits"]] == [int(c) for c in number]
    assert all(set(d) == {"label", "confidence", "box"} for d in body["digits"])
    direct = number_reading(predictor.read_number(png)).to_dict()  # the same fields as predict --number
    assert body["number"] == direct["number"]
    assert [(d["label"], d["box"]) for d in body["digits"]] == [(d["label"], d["box"]) for d in direct["digits"]]
    assert [d["confidence"] for d in body["digits"]] == pytest.approx([d["confidence"] for d in direct["digits"]])
    assert body["confidence"] == pytest.approx(direct["confidence"], rel=1e-6)
    assert body["confidence"] == pytest.approx(float(np.prod([d["confidence"] for d in body["digits"]])), rel=1e-6)
    raw = client.post("/api/number", content=png, headers={"content-type": "image/png"}).json()
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    b64 = client.post("/api/number", json={"image": url}).json()
    for other in (raw, b64):
        assert other["number"] == number and other["digits"] == body["digits"]


def test_number_endpoint_blank_and_errors(client, number_page):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (400, 150), 255).save(buf, "PNG")
    blank = client.post("/api/number", files={"file": ("blank.png", buf.getvalue(), "image/png")})
    assert blank.status_code == 200
    assert blank.json()["number"] is None and blank.json()["digits"] == [] and blank.json()["confidence"] is None
    post = client.post
    _assert_error(post("/api/number", files={"file": ("x.png", b"not an image", "image/png")}), 400, "not an image")
    _assert_error(post("/api/number", content=b"", headers={"content-type": "image/png"}), 400, "empty")
    _assert_error(post("/api/number", json={"pixels": [[0] * 28] * 28}), 422, "'image'")
    _assert_error(post("/api/number", json={"image": "!!"}), 400, "base64")
    _assert_error(post("/api/number", content=b"x", headers={"content-type": "text/plain"}), 415, "Content-Type")
    _assert_error(post("/api/number", files={"other": ("x.png", number_page[0], "image/png")}), 422, "'file'")
    big = b"\x89PNG" + bytes(MAX_UPLOAD * 2)
    _assert_error(post("/api/number", content=big, headers={"content-type": "image/png"}), 413, "limit")
    _assert_error(post("/api/number", files={"file": ("bomb.png", bomb_png(20_000, 20_000), "image/png")}), 413,
                  "decompression-bomb")
    _assert_error(post("/api/number", files={"file": ("nan.tiff", _nan_tiff(), "image/tiff")}), 400, "NaN")
    assert client.get("/api/number").status_code == 405


def test_number_endpoint_in_the_schema_and_behind_the_token(client, predictor, number_page):
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/api/number"]["post"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(op["requestBody"]["content"])
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/NumberResponse")
    assert {"413", "415", "422"} <= set(op["responses"])
    props = schema["components"]["schemas"]["NumberResponse"]["properties"]
    assert {"number", "confidence", "digits"} <= set(props)
    with TestClient(create_app(predictor, api_token="t0k", max_image_pixels=10_000)) as c:
        png = number_page[0]
        assert c.post("/api/number", files={"file": ("p.png", png, "image/png")}).status_code == 401
        r = c.post("/api/number", files={"file": ("p.png", png, "image/png")}, headers={"Authorization": "Bearer t0k"})
        _assert_error(r, 413, "exceeds")  # the app's own pixel limit, not the predictor's


def test_multipart_edge_cases(client, sample):
    _, label, png = sample
    boundary = "b0und4ry"
    two_parts = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
                 f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
                 f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    r = client.post("/api/predict", content=two_parts,
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200 and r.json()["label"] == label
    many = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nx\r\n".encode()
                    for i in range(20)) + f"--{boundary}--\r\n".encode()
    _assert_error(client.post("/api/predict", content=many, headers={
        "content-type": f"multipart/form-data; boundary={boundary}"}), 400, "parts")
    _assert_error(client.post("/api/predict", content=b"--x\r\n\x00\x01 garbage", headers={
        "content-type": "multipart/form-data; boundary=x"}), 400, "malformed multipart")


def test_worker_app_factory_builds_the_same_app(run_dir, monkeypatch, sample):
    """``--workers N``: each worker builds its app from the settings in its environment."""
    from digitlab.errors import ConfigError
    from digitlab.serve.app import SETTINGS_ENV, ServeSettings, app_from_env

    _, label, png = sample
    settings = ServeSettings(model=str(run_dir), max_upload_bytes=123_456, api_token="w0rk",
                             allowed_hosts=("127.0.0.1", "localhost"))
    assert ServeSettings.from_json(settings.to_json()) == settings
    monkeypatch.setenv(SETTINGS_ENV, settings.to_json())
    with TestClient(app_from_env(), base_url="http://127.0.0.1:8000") as c:
        auth = {"Authorization": "Bearer w0rk"}
        assert c.get("/api/models", headers=auth).json()["limits"]["max_upload_bytes"] == 123_456
        ok = c.post("/api/predict", files={"file": ("d.png", png, "image/png")}, headers=auth)
        assert ok.json()["label"] == label
        assert c.post("/api/predict", files={"file": ("d.png", png, "image/png")}).status_code == 401
        assert c.get("/api/health", headers={"host": "evil.example"}).status_code == 400
    monkeypatch.setenv(SETTINGS_ENV, "{not json")
    with pytest.raises(ConfigError):
        app_from_env()
    monkeypatch.delenv(SETTINGS_ENV)
    with pytest.raises(ConfigError, match="digitlab serve"):
        app_from_env()


def test_cli_serve_workers_uses_the_app_factory(run_dir, monkeypatch, capsys):
    """``--workers N`` on Linux: N sockets on the port (SO_REUSEPORT), one per worker, each building its app."""
    import os
    import socket

    import uvicorn

    import digitlab.cli.serve as serve_cli
    from digitlab.cli import main
    from digitlab.serve import workers as serve_workers
    from digitlab.serve.app import SETTINGS_ENV, ServeSettings

    pools = []

    def fake_run(self) -> int:
        (mine,) = zip(*self.sockets, strict=True)  # 127.0.0.1: one socket for each worker
        pools.append((self.config, [s.getsockname() for s in mine],
                      [s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in mine]))
        for s in mine:
            s.close()
        return 0

    monkeypatch.setattr(serve_workers.WorkerPool, "run", fake_run)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("uvicorn.run with --workers on Linux"))
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["serve", "--model", str(run_dir), "--workers", "3", "--max-decodes", "4", "--port", str(port)]) == 0
    config, addresses, reuse = pools[-1]
    assert config["app"] == "digitlab.serve.app:app_from_env" and config["factory"] is True
    assert config["http"].startswith("digitlab.serve.protocol:")  # the header timeout in every worker
    assert addresses == [("127.0.0.1", port)] * 3 and all(reuse)  # one socket per worker, same port
    settings = ServeSettings.from_json(os.environ.pop(SETTINGS_ENV))
    assert settings.model == str(run_dir) and settings.max_decodes == 4
    assert settings.allowed_hosts is not None and "127.0.0.1" in settings.allowed_hosts
    assert "3 workers" in capsys.readouterr().err
    assert main(["serve", "--model", str(run_dir), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err

    # without SO_REUSEPORT (not Linux): uvicorn's own workers on one shared socket
    calls = []
    monkeypatch.setattr(serve_cli, "check_port_free", lambda host, port: None)
    monkeypatch.setattr(serve_workers, "reuse_port_supported", lambda: False)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert main(["serve", "--model", str(run_dir), "--workers", "2"]) == 0
    app, kw = calls[-1]
    assert app == "digitlab.serve.app:app_from_env" and kw["factory"] is True and kw["workers"] == 2
    os.environ.pop(SETTINGS_ENV)


@pytest.mark.parametrize("parser", ["h11", "fastest"])
def test_header_timeout_closes_silent_and_slowloris_connections(predictor, sample, parser):
    """A connection that sends nothing, or its headers too slowly, is closed; normal requests are served.

    Both with the h11 protocol and with the one ``digitlab serve`` picks (httptools when installed).
    """
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from digitlab.serve import protocol

    _, label, png = sample
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    protocol.set_header_timeout(0.5)
    server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", http=protocol.H11HeaderTimeoutProtocol
                                           if parser == "h11" else protocol.HTTPProtocol))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

        def closed_after(first: bytes, drip: bytes = b"") -> float:
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.settimeout(10)
                t0 = time.monotonic()
                c.sendall(first)
                for byte in drip:  # one header byte every 0.2 s: never done in time
                    time.sleep(0.2)
                    try:
                        c.sendall(bytes([byte]))
                    except OSError:
                        break
                assert c.recv(100) == b""  # closed, no answer
                return time.monotonic() - t0

        assert closed_after(b"") < 5
        assert closed_after(b"POST /api/predict HTTP/1.1\r\n", b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 40) < 5
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:  # keep-alive: reused
            for _ in range(2):
                r = client.post("/api/predict", files={"file": ("d.png", png, "image/png")})
                assert r.status_code == 200 and r.json()["label"] == label
                time.sleep(0.8)  # longer than the header timeout, shorter than keep-alive
    finally:
        protocol.set_header_timeout(protocol.DEFAULT_HEADER_TIMEOUT)
        server.should_exit = True
        thread.join(timeout=10)


def test_multipart_parser_fuzz():
    """Random bytes and mutations of a valid body: the multipart parser answers 400/422, never anything else."""
    from fastapi import HTTPException
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from digitlab.serve.app import _multipart_file

    boundary = "XyZ"
    valid = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
             b"Content-Type: image/png\r\n\r\n\x89PNG-data\r\n--XyZ--\r\n")
    assert _multipart_file(f"multipart/form-data; boundary={boundary}", valid) == b"\x89PNG-data"

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(cut=st.integers(0, len(valid)), pos=st.integers(0, len(valid) - 1), byte=st.integers(0, 255),
           junk=st.binary(max_size=64), header=st.sampled_from([
               "multipart/form-data; boundary=XyZ", "multipart/form-data; boundary=\"XyZ\"",
               "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=" + "x" * 200]))
    def fuzz(cut, pos, byte, junk, header):
        mutated = bytearray(valid)
        mutated[pos] = byte
        for body in (bytes(mutated), valid[:cut] + junk, junk):
            try:
                out = _multipart_file(header, body)
            except HTTPException as exc:
                assert exc.status_code in (400, 422)
            else:
                assert isinstance(out, bytes)

    fuzz()
