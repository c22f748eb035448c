"""The REST API and draw-a-digit page: ``create_app(predictor)`` returns a FastAPI app.

Endpoints:
  * ``POST /api/predict`` — an image as multipart upload (field ``file``), as a raw
    ``image/*`` body, or JSON ``{"image": "<base64 or data: URL>"}``; or MNIST-form
    pixels as JSON ``{"pixels": 28×28 numbers 0..255}`` (add ``"preprocess": true``
    to run them through :func:`to_mnist` too). Returns the label, confidence, the
    10 probabilities and the 28×28 image the model saw.
  * ``GET /api/health``, ``GET /api/models``, ``GET /openapi.json``, ``GET /`` (the page).

Bad input never causes a 500: the body is read with a size cap (Content-Length
checked first, then the bytes actually received: 413), images are decoded
with a pixel-count cap (decompression bombs: 413) and only in the allowed
formats (PNG, JPEG, GIF, BMP, TIFF, WebP), undecodable data is a 400,
malformed JSON shapes (too deep, huge numbers) a 400/422. Work runs in a thread
pool, so one slow request doesn't block the event loop, and at most
``max_decodes`` pictures are decoded at once (bounding memory under load).

Results carry the integer ``label`` and the class ``name`` of the model's
dataset (``"7"`` for MNIST, ``"Sneaker"`` for Fashion-MNIST); pictures are
prepared as that dataset was made (see :meth:`Predictor.preprocess`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from digitlab import __version__
from digitlab.errors import DigitlabError
from digitlab.inference.predictor import Predictor
from digitlab.inference.preprocess import MAX_IMAGE_PIXELS, ImageTooLargeError

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "STATIC_DIR", "create_app"]

DEFAULT_MAX_UPLOAD_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_DECODES = 2
PROTECTED_PATHS = frozenset({"/api/predict", "/api/models"})
"""Paths that need the API token when one is set (health, the page and its files stay open)."""
DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds a client has to send the whole request body (then 408)."""
"""Pictures decoded and preprocessed at the same time (the rest wait): bounds memory under load."""
STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page loads only same-origin files (no CDN: it must work offline).
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class PredictResponse(BaseModel):
    label: int | None = Field(description="predicted class index (the digit, for MNIST); null when the "
                                          "picture holds no digit (see `rejected`)")
    name: str | None = Field(description="name of the predicted class in the model's dataset ('7', 'Sneaker'); "
                                         "null with `label`")
    confidence: float | None = Field(description="probability of the predicted class; null with `label`")
    probabilities: list[float] | None = Field(description="softmax probabilities of the classes, by index; null "
                                                          "with `label`")
    preprocessed: list[list[int]] = Field(description="the 28×28 image (0..255) the model saw")
    blank: bool = Field(False, description="true when no ink was found (`label` is then null)")
    rejected: str | None = Field(None, description="why the picture got no label: 'blank' (nothing drawn); "
                                                   "null when it got one")
    model: str | None = None
    elapsed_ms: float = Field(description="server-side time for decoding, preprocessing and inference")


class HealthResponse(BaseModel):
    status: str
    model: str | None
    version: str


class ErrorResponse(BaseModel):
    detail: str


_IMAGE_BINARY = {"type": "string", "format": "binary"}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": _IMAGE_BINARY}}},
        "application/json": {"schema": {"oneOf": [
            {"type": "object", "title": "Pixels", "required": ["pixels"], "properties": {
                "pixels": {"type": "array", "minItems": 28, "maxItems": 28, "items": {
                    "type": "array", "minItems": 28, "maxItems": 28,
                    "items": {"type": "number", "minimum": 0, "maximum": 255}}},
                "preprocess": {"type": "boolean", "default": False}}},
            {"type": "object", "title": "Image", "required": ["image"], "properties": {
                "image": {"type": "string", "description": "base64 image data or a data: URL"}}},
        ]}},
        "image/*": {"schema": _IMAGE_BINARY},
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse, "description": text} for code, text in (
    (400, "not an image, corrupt or empty data, invalid JSON"),
    (413, "body or image larger than the limits"),
    (401, "missing or wrong API token (only when the server has one)"),
    (408, "request body not received in time"),
    (415, "unsupported Content-Type"),
    (422, "JSON of the wrong shape or values"),
)}


def create_app(predictor: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_image_pixels: int = MAX_IMAGE_PIXELS, max_decodes: int = DEFAULT_MAX_DECODES,
               body_timeout: float = DEFAULT_BODY_TIMEOUT, api_token: str | None = None,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The API + page around ``predictor``.

    ``max_upload_bytes`` caps an uploaded image (the request body may be a
    third larger, for base64 and multipart framing); ``max_image_pixels`` caps
    the decoded image size; ``max_decodes`` bounds the pictures decoded at once;
    a body not fully received within ``body_timeout`` seconds is answered with 408.
    ``api_token``: when set, ``/api/predict`` and ``/api/models`` need the header
    ``Authorization: Bearer TOKEN`` (401 otherwise; the page reads the token from its
    URL fragment, ``/#token=TOKEN``). ``allowed_hosts``: accepted ``Host`` header names
    (against DNS rebinding; 400 otherwise); None accepts any.
    """
    decode_slots = threading.BoundedSemaphore(max(1, max_decodes))
    max_body = max_upload_bytes * 4 // 3 + 64 * 1024
    app = FastAPI(title="digitlab", version=__version__,
                  description="Handwritten-digit recognition: upload a picture of a digit, get the digit.")
    app.state.predictor = predictor
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    model_name = predictor.info.get("model")

    @app.exception_handler(DigitlabError)
    async def _user_error(request: Request, exc: DigitlabError) -> JSONResponse:
        status = 413 if isinstance(exc, ImageTooLargeError) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    hosts = {h.lower() for h in allowed_hosts} if allowed_hosts is not None else None
    token = api_token.encode() if api_token else None

    @app.middleware("http")
    async def _headers(request: Request, call_next):  # noqa: ANN202
        if hosts is not None and "*" not in hosts and _host_name(request.headers.get("host", "")) not in hosts:
            return JSONResponse({"detail": "Host header not allowed"}, status_code=400)
        if token is not None and request.url.path in PROTECTED_PATHS:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
                return JSONResponse({"detail": "missing or wrong API token (Authorization: Bearer TOKEN)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/api/health", response_model=HealthResponse, summary="liveness check")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "version": __version__}

    @app.get("/api/models", summary="the loaded model and the server's limits")
    async def models() -> dict[str, Any]:
        return {"models": [predictor.info],
                "limits": {"max_upload_bytes": max_upload_bytes, "max_body_bytes": max_body,
                           "max_image_pixels": max_image_pixels, "max_concurrent_decodes": max_decodes}}

    @app.post("/api/predict", response_model=PredictResponse, responses=_ERRORS,
              openapi_extra={"requestBody": _REQUEST_BODY}, summary="classify one digit")
    async def predict(request: Request) -> dict[str, Any]:
        t0 = time.perf_counter()
        body = await _read_body(request, max_body, body_timeout)
        if not body:
            raise HTTPException(400, "empty request body: send an image (multipart field 'file', "
                                     "image/* body) or JSON {'pixels': ...} / {'image': ...}")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        data: bytes | None
        if ctype == "multipart/form-data":
            data, pixels, prep = await _multipart_file(request, body), None, True
        elif ctype == "application/json" or ctype.endswith("+json"):
            data, pixels, prep = _parse_json(body)
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            data, pixels, prep = body, None, True
        else:
            raise HTTPException(415, f"unsupported Content-Type {ctype or '(none)'!r}; "
                                     "use multipart/form-data, application/json or image/*")
        if data is not None and len(data) > max_upload_bytes:
            raise HTTPException(413, f"image is {len(data)} bytes; the limit is {max_upload_bytes}")
        result = await run_in_threadpool(_predict, predictor, data, pixels, prep, max_image_pixels, decode_slots)
        result["model"] = model_name
        result["elapsed_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
        return result

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header: ``[::1]:8000`` → ``::1``, ``localhost:8000`` → ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _read_body(request: Request, limit: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``limit``.

    A client that stops sending (a half-sent body) gets 408 after ``timeout`` seconds in
    all; one that disconnects mid-body ends the request quietly (no traceback in the log).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(400, "invalid Content-Length header") from None
        if size > limit:
            raise HTTPException(413, f"request body of {size} bytes exceeds the limit of {limit}")
    body = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise HTTPException(408, f"request body not received within {timeout:g} s") from None
        except ClientDisconnect:
            raise HTTPException(400, "client disconnected before sending the whole body") from None
        body += chunk  # chunked or lying clients: count what really arrives
        if len(body) > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    sent = False

    async def replay() -> dict[str, Any]:  # hand the already-read body to Starlette's parser
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8, max_part_size=64 * 1024)
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "multipart body has no file field named 'file'")
        return await upload.read()
    finally:
        await form.close()


def _parse_json(body: bytes) -> tuple[bytes | None, np.ndarray | None, bool]:
    """``(image bytes, None, True)`` or ``(None, pixels, preprocess?)``."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"invalid JSON: {exc}") from None
    except RecursionError:  # e.g. [[[[...]]]] thousands deep
        raise HTTPException(400, "invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict) or ("pixels" in obj) == ("image" in obj):
        raise HTTPException(422, "JSON body must be an object with exactly one of 'pixels' or 'image'")
    if "image" in obj:
        return _decode_base64(obj["image"]), None, True
    preprocess = obj.get("preprocess", False)
    if not isinstance(preprocess, bool):
        raise HTTPException(422, "'preprocess' must be true or false")
    return None, _parse_pixels(obj["pixels"]), preprocess


def _decode_base64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise HTTPException(422, "'image' must be a string (base64 or a data: URL)")
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise HTTPException(422, "'image' data URL must be base64-encoded (data:image/...;base64,...)")
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, "'image' is not valid base64") from None


def _parse_pixels(value: Any) -> np.ndarray:
    shape_msg = "'pixels' must be a 28×28 array (28 rows of 28 numbers in 0..255)"
    if not isinstance(value, list) or len(value) != 28 or not all(isinstance(r, list) and len(r) == 28
                                                                  for r in value):
        raise HTTPException(422, shape_msg)
    if not all(type(v) in (int, float) for row in value for v in row):  # rejects bool, str, null
        raise HTTPException(422, "'pixels' values must be numbers")
    # compare in Python first: an integer like 10**400 overflows a float64 conversion,
    # and NaN fails every comparison
    if not all(0 <= v <= 255 for row in value for v in row):
        raise HTTPException(422, "'pixels' values must be finite numbers in 0..255")
    arr = np.asarray(value, dtype=np.float64)
    return np.rint(arr).astype(np.uint8)


def _predict(predictor: Predictor, data: bytes | None, pixels: np.ndarray | None, preprocess: bool,
             max_pixels: int, slots: threading.BoundedSemaphore) -> dict[str, Any]:
    if pixels is None or preprocess:
        with slots:  # decoding is where memory goes: a bounded number at once
            source: bytes | np.ndarray = data if pixels is None else pixels  # type: ignore[assignment]
            pre = predictor.preprocess(source, max_pixels=max_pixels)
    else:
        pre = pixels
    labels, probs = predictor.predict(pre[None])
    res = predictor.result(pre[None], labels, probs)[0]
    res["preprocessed"] = res["preprocessed"].tolist()
    res.setdefault("blank", False)
    return res

