"""The draw-a-digit page in headless Chromium: draw with pointer events, compare with the API.

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian packages chromium,
chromium-driver; scripts/bootstrap.sh installs them). Missing browser = failure,
not a skip: CI must exercise the page.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from digitlab.inference import load_predictor
from digitlab.serve import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextlib.contextmanager
def _serving(app) -> Iterator[str]:
    """uvicorn serving ``app`` on 127.0.0.1 on a free port, in a thread of this process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(run_dir):
    with _serving(create_app(load_predictor(run_dir))) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(f"browser test needs {' and '.join(missing)}: install the Debian packages chromium and "
                    "chromium-driver (scripts/bootstrap.sh does)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1000,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    # an explicit driver path: selenium-manager must not try to download anything
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(opts.arguments[-1].split("=", 1)[1], ignore_errors=True)


def _open(browser, server, fragment: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/" + fragment)
    WebDriverWait(browser, 15, poll_frequency=0.05).until(lambda d: d.execute_script(
        "return !!window.digitlab && document.querySelectorAll('#bars li').length === 10"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]  # JS errors, 404s
    assert not errors, errors


def _model_name(browser, timeout: float = 15) -> str:
    """The model line of the page, once its /api/models request has answered."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout, poll_frequency=0.05).until(
        lambda d: d.find_element("id", "model-name").text.strip() != "")
    return str(browser.find_element("id", "model-name").text)


def _wait_for_prediction(browser, timeout: float = 20) -> dict:
    """Until the shown prediction belongs to the current drawing and nothing is pending."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(
        "const p = document.getElementById('prediction');"
        "return !window.digitlab.busy() && p.dataset.version === String(window.digitlab.version())"
        " && p.dataset.label !== '';"))
    return browser.execute_script("""
        const p = document.getElementById('prediction');
        const bars = [...document.querySelectorAll('#bars li')].map(li => Number(li.dataset.probability));
        const prev = document.getElementById('preview').getContext('2d').getImageData(0, 0, 28, 28).data;
        const fills = [...document.querySelectorAll('#bars li')].map(
            li => li.querySelector('.fill').offsetWidth / li.querySelector('.track').offsetWidth);
        const preview = [];
        for (let i = 0; i < prev.length; i += 4) preview.push(prev[i]);
        return {label: Number(p.dataset.label), text: p.textContent, bars: bars, fills: fills, preview: preview,
                canvas: document.getElementById('pad').toDataURL('image/png'),
                status: document.getElementById('status').textContent};
    """)


def _api_predict(server: str, data_url: str) -> dict:
    png = base64.b64decode(data_url.split(",", 1)[1])
    r = httpx.post(server + "/api/predict", files={"file": ("pad.png", png, "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _stroke(browser, points, kind: str = "mouse", pause: float = 0.0) -> None:
    """Press at points[0], move through the rest, release: real pointer input via WebDriver actions."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = browser.find_element("id", "pad")
    rect = browser.execute_script("const r = arguments[0].getBoundingClientRect();"
                                  "return [r.left, r.top, r.width / arguments[0].width];", pad)
    left, top, scale = rect
    kind_const = interaction.POINTER_TOUCH if kind == "touch" else interaction.POINTER_MOUSE
    actions = ActionBuilder(browser, mouse=PointerInput(kind_const, kind))
    ptr = actions.pointer_action
    x0, y0 = points[0]
    ptr.move_to_location(int(left + x0 * scale), int(top + y0 * scale)).pointer_down()
    for (xa, ya), (xb, yb) in zip(points, points[1:], strict=False):
        for t in np.linspace(0, 1, 8)[1:]:  # intermediate moves, like a real hand
            ptr.move_to_location(int(left + (xa + t * (xb - xa)) * scale), int(top + (ya + t * (yb - ya)) * scale))
        if pause:
            ptr.pause(pause)  # the pen rests at a corner, still down
    ptr.pointer_up()
    actions.perform()


def test_draw_a_one_and_a_seven(browser, server):
    _open(browser, server)
    assert "cnn-simple" in _model_name(browser)

    # a "1": one vertical stroke with the mouse
    _stroke(browser, [(140, 50), (140, 230)])
    shown = _wait_for_prediction(browser)
    api = _api_predict(server, shown["canvas"])
    assert shown["label"] == api["label"] and shown["text"] == str(api["label"])
    np.testing.assert_allclose(shown["bars"], api["probabilities"], atol=1e-6)
    np.testing.assert_allclose(shown["fills"], api["probabilities"], atol=0.02)  # drawn bar lengths
    assert shown["preview"] == np.asarray(api["preprocessed"]).ravel().tolist()
    assert shown["label"] == 1, shown
    top = browser.find_element("css selector", "#bars li.top").get_attribute("id")
    assert top == "bar-1"

    # clear: blank canvas, no prediction
    browser.find_element("id", "clear").click()
    state = browser.execute_script(
        "const d = document.getElementById('pad').getContext('2d').getImageData(0, 0, 280, 280).data;"
        "let lo = 255; for (const v of d) lo = Math.min(lo, v);"
        "return [document.getElementById('prediction').textContent, lo];")
    assert state == ["–", 255]

    # a "7" drawn with a finger (touch pointer): top bar, rest at the corner, then the diagonal
    before = browser.execute_script("return window.digitlab.requests()")
    _stroke(browser, [(70, 60), (210, 60), (120, 240)], kind="touch", pause=0.6)
    shown = _wait_for_prediction(browser)
    # predictions came while the finger was down (live), not only when it lifted
    assert browser.execute_script("return window.digitlab.requests()") - before >= 2
    api = _api_predict(server, shown["canvas"])
    assert shown["label"] == api["label"]
    np.testing.assert_allclose(shown["bars"], api["probabilities"], atol=1e-6)
    assert shown["label"] == 7, shown
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_page_survives_api_errors(browser, server):
    """Bad requests to the API (another client) leave the server and the page working."""
    assert httpx.post(server + "/api/predict", content=b"junk", headers={"content-type": "image/png"}
                      ).status_code == 400
    _open(browser, server)
    _stroke(browser, [(140, 60), (140, 220)])
    assert _wait_for_prediction(browser)["label"] == 1


def test_page_sends_the_api_token_from_its_url_fragment(browser, predictor):
    """A server with --token: the page opened as /#token=TOKEN works; the API without it is 401."""
    app = create_app(predictor, api_token="tok-123", allowed_hosts=["127.0.0.1"])
    with _serving(app) as url:
        assert httpx.post(url + "/api/predict", json={"pixels": [[0] * 28] * 28}).status_code == 401
        _open(browser, url, "#token=tok-123")
        _stroke(browser, [(140, 50), (140, 230)])
        shown = _wait_for_prediction(browser)
        assert shown["label"] == 1 and shown["text"] == "1", shown
        assert "cnn-simple" in _model_name(browser)  # /api/models with the token


def _wait_for_number(browser, timeout: float = 20) -> dict:
    """Until the number shown belongs to the current drawing and nothing is pending."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(
        "const p = document.getElementById('prediction');"
        "return !window.digitlab.busy() && p.dataset.version === String(window.digitlab.version())"
        " && p.dataset.number !== '';"))
    return browser.execute_script("""
        const p = document.getElementById('prediction');
        const digits = [...document.querySelectorAll('#digits li')].map(li => ({
            label: Number(li.dataset.label), confidence: Number(li.dataset.confidence),
            text: li.textContent,
            fill: li.querySelector('.fill').offsetWidth / li.querySelector('.track').offsetWidth}));
        const pad = document.getElementById('pad');
        return {number: p.dataset.number, text: p.textContent, digits: digits,
                confidence: document.getElementById('confidence').textContent,
                canvas: pad.toDataURL('image/png'), size: [pad.width, pad.height],
                shown: [pad.getBoundingClientRect().width, pad.getBoundingClientRect().height],
                barsHidden: document.getElementById('bars').hidden};
    """)


def test_write_a_number_on_the_wide_canvas(browser, server):
    """Number mode: a wide canvas; a 1 and a 7 written side by side read as "17", as /api/number reads it."""
    _open(browser, server)
    browser.find_element("id", "mode-number").click()
    assert browser.execute_script("return window.digitlab.mode()") == "number"
    _stroke(browser, [(160, 30), (160, 175)])                      # a "1"
    _stroke(browser, [(300, 40), (430, 40), (340, 178)])           # a "7", well to its right
    shown = _wait_for_number(browser)
    assert shown["size"] == [700, 200] and shown["shown"][0] > 2 * shown["shown"][1]  # wide on screen too
    assert shown["barsHidden"] is True
    png = base64.b64decode(shown["canvas"].split(",", 1)[1])
    api = httpx.post(server + "/api/number", files={"file": ("pad.png", png, "image/png")}, timeout=30)
    assert api.status_code == 200, api.text
    api_body = api.json()
    assert shown["number"] == api_body["number"] and shown["text"] == api_body["number"]
    assert [d["label"] for d in shown["digits"]] == [d["label"] for d in api_body["digits"]]
    np.testing.assert_allclose([d["confidence"] for d in shown["digits"]],
                               [d["confidence"] for d in api_body["digits"]], atol=1e-6)
    np.testing.assert_allclose([d["fill"] for d in shown["digits"]],
                               [d["confidence"] for d in api_body["digits"]], atol=0.02)  # drawn bars
    assert all(f"{100 * d['confidence']:.1f}%" in d["text"] for d in shown["digits"])  # per-digit confidence
    assert shown["number"] == "17", shown
    assert "sure of the whole number" in shown["confidence"]

    # back to one digit: the square canvas, empty, and the bars again
    browser.find_element("id", "mode-digit").click()
    state = browser.execute_script(
        "const pad = document.getElementById('pad');"
        "return [pad.width, pad.height, document.getElementById('prediction').textContent,"
        " document.getElementById('bars').hidden, document.querySelectorAll('#digits li').length];")
    assert state == [280, 280, "–", False, 0]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
