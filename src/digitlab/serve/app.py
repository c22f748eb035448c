"""The REST API and draw-a-digit page: ``create_app(predictor)`` returns a FastAPI app.

Endpoints:
  * ``POST /api/predict`` — an image as multipart upload (field ``file``), as a raw
    ``image/*`` body, or JSON ``{"image": "<base64 or data: URL>"}``; or MNIST-form
    pixels as JSON ``{"pixels": 28×28 numbers 0..255}`` (add ``"preprocess": true``
    to run them through :func:`to_mnist` too). Returns the label, confidence, the
    10 probabilities and the 28×28 image the model saw.
  * ``POST /api/number`` — a picture of a number of several digits (the same image
    uploads as ``/api/predict``, no pixels): returns the number as a string (leading
    zeros kept; null when no digit is found), its confidence and each digit's label,
    confidence and box.
  * ``GET /api/health``, ``GET /api/models``, ``GET /openapi.json``, ``GET /`` (the page).

Bad input never causes a 500: the body is read with a size cap (Content-Length
checked first, then the bytes actually received: 413), images are decoded
with a pixel-count cap (decompression bombs: 413) and only in the allowed
formats (PNG, JPEG, GIF, BMP, TIFF, WebP), undecodable data is a 400,
malformed JSON shapes (too deep, huge numbers) a 400/422. Parsing the body,
decoding, preprocessing and the model run in a thread pool, so the event loop only
moves bytes; at most ``max_decodes`` pictures are decoded at once (bounding memory
under load).

Results carry the integer ``label`` and the class ``name`` of the model's
dataset (``"7"`` for MNIST, ``"Sneaker"`` for Fashion-MNIST); pictures are
prepared as that dataset was made (see :meth:`Predictor.preprocess`).

Several worker processes (``digitlab serve --workers N``) each build their app with
:func:`app_from_env`, from the :class:`ServeSettings` the command puts in the
environment variable :data:`SETTINGS_ENV`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import hmac
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from digitlab import __version__
from digitlab.cli.predict import number_reading
from digitlab.errors import ConfigError, DigitlabError
from digitlab.inference.predictor import Predictor
from digitlab.inference.preprocess import MAX_IMAGE_PIXELS, ImageTooLargeError, load_image

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "SETTINGS_ENV", "STATIC_DIR", "ServeSettings", "app_from_env",
           "create_app", "settle_heap"]

DEFAULT_MAX_UPLOAD_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_DECODES = 2
"""Pictures decoded and preprocessed at the same time (the rest wait): bounds memory under load."""
PROTECTED_PATHS = frozenset({"/api/predict", "/api/number", "/api/models"})
"""Paths that need the API token when one is set (health, the page and its files stay open)."""
DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds a client has to send the whole request body (then 408)."""
STATIC_DIR = Path(__file__).resolve().parent / "static"
SETTINGS_ENV = "DIGITLAB_SERVE_SETTINGS"
"""Environment variable holding the JSON :class:`ServeSettings` for :func:`app_from_env` (worker processes)."""
WORK_THREADS_EXTRA = 4
"""Work threads beyond ``max_decodes`` (for requests that carry 28×28 pixels and decode nothing)."""
MAX_MULTIPART_PARTS = 8
"""Parts (files and fields) accepted in one multipart body."""

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
    rejected: str | None = Field(None, description="why the picture got no label: 'blank' (nothing drawn), "
                                                   "'not-a-digit'; null when it got one")
    model: str | None = None
    elapsed_ms: float = Field(description="server-side time for decoding, preprocessing and inference")


class DigitResponse(BaseModel):
    label: int | None = Field(description="the digit; null when this mark was refused as not a digit")
    confidence: float | None = Field(description="probability of `label`")
    box: list[int] | None = Field(description="where the digit is in the picture: [left, top, right, bottom] "
                                              "in pixels (right and bottom exclusive)")


class NumberResponse(BaseModel):
    number: str | None = Field(description="the digits read left to right, as a string (leading zeros kept); "
                                           "null when no digit was found")
    digits: list[DigitResponse] = Field(description="each digit found, left to right")
    confidence: float | None = Field(description="product of the digits' confidences; null with `number`")
    model: str | None = None
    elapsed_ms: float = Field(description="server-side time for decoding, splitting and inference")


class HealthResponse(BaseModel):
    status: str
    model: str | None
    version: str


class ModelLimits(BaseModel):
    max_upload_bytes: int
    max_body_bytes: int
    max_image_pixels: int
    max_concurrent_decodes: int


class ModelsResponse(BaseModel):
    models: list[dict[str, Any]] = Field(description="the loaded model: name, source, backend, dataset, "
                                                     "class names, parameters, metrics")
    limits: ModelLimits


class ErrorResponse(BaseModel):
    detail: str


_IMAGE_BINARY = {"type": "string", "format": "binary"}
_MULTIPART = {"schema": {"type": "object", "required": ["file"], "properties": {"file": _IMAGE_BINARY}}}
_IMAGE_JSON = {"type": "object", "title": "Image", "required": ["image"], "properties": {
    "image": {"type": "string", "description": "base64 image data or a data: URL"}}}
_PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": _MULTIPART,
        "application/json": {"schema": {"oneOf": [
            {"type": "object", "title": "Pixels", "required": ["pixels"], "properties": {
                "pixels": {"type": "array", "minItems": 28, "maxItems": 28, "items": {
                    "type": "array", "minItems": 28, "maxItems": 28,
                    "items": {"type": "number", "minimum": 0, "maximum": 255}}},
                "preprocess": {"type": "boolean", "default": False}}},
            _IMAGE_JSON,
        ]}},
        "image/*": {"schema": _IMAGE_BINARY},
    },
}
_NUMBER_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": _MULTIPART,
        "application/json": {"schema": _IMAGE_JSON},
        "image/*": {"schema": _IMAGE_BINARY},
    },
}
_ERROR_TEXTS = (
    (400, "not an image, corrupt or empty data, invalid JSON, Host header not allowed"),
    (401, "missing or wrong API token (only when the server has one)"),
    (408, "request body not received in time"),
    (413, "body or image larger than the limits"),
    (415, "unsupported Content-Type"),
    (422, "JSON of the wrong shape or values"),
)
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse, "description": text}
                                            for code, text in _ERROR_TEXTS}
_OPEN_ERRORS: dict[int | str, dict[str, Any]] = {400: _ERRORS[400]}  # Host allow-list only


@dataclass(frozen=True)
class ServeSettings:
    """Everything needed to build the app in a worker process (``digitlab serve --workers N``)."""

    model: str = "default"
    device: str = "auto"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_decodes: int = DEFAULT_MAX_DECODES
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    api_token: str | None = None
    allowed_hosts: tuple[str, ...] | None = None
    header_timeout: float = 10.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        try:
            raw = json.loads(text)
            hosts = raw.pop("allowed_hosts", None)
            return cls(**raw, allowed_hosts=None if hosts is None else tuple(hosts))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"${SETTINGS_ENV} does not hold serve settings ({exc})") from None


def load_serving_predictor(model: str, device: str = "auto") -> Predictor:
    """The predictor a server uses: ONNX Runtime for the shipped model when it is installed, one
    non-spinning thread per worker process (requests run in parallel across threads and workers)."""
    from digitlab.inference.predictor import load_predictor

    return load_predictor(model, device=device, prefer_onnx=True, threads=1)


def app_from_env() -> FastAPI:
    """The app built from the :class:`ServeSettings` in ``$DIGITLAB_SERVE_SETTINGS`` (uvicorn app factory)."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise ConfigError(f"${SETTINGS_ENV} is not set: start the server with `digitlab serve`")
    s = ServeSettings.from_json(text)
    app = create_app(load_serving_predictor(s.model, s.device), max_upload_bytes=s.max_upload_bytes,
                     max_image_pixels=s.max_image_pixels, max_decodes=s.max_decodes,
                     body_timeout=s.body_timeout, api_token=s.api_token, allowed_hosts=s.allowed_hosts)
    settle_heap()
    return app


def settle_heap() -> None:
    """Once a server process has loaded everything: exempt what it holds from Python's cyclic GC.

    The libraries and model (~75,000 objects) would otherwise be scanned by every full collection
    (one every few thousand requests): a pause of 30-100 ms for all requests in flight. Objects made
    later (the requests') are collected as usual.
    """
    gc.collect()
    gc.freeze()


ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


class _Guard:
    """Host allow-list, API token and ``X-Content-Type-Options`` as plain ASGI middleware.

    (Starlette's ``@app.middleware("http")`` wraps every request in extra tasks and streams;
    this costs nothing on the way through.)
    """

    def __init__(self, app: ASGIApp, hosts: set[str] | None, token: bytes | None) -> None:
        self.app, self.hosts, self.token = app, hosts, token

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.hosts is not None and _host_name(headers.get(b"host", b"").decode("latin-1")) not in self.hosts:
            await JSONResponse({"detail": "Host header not allowed"}, status_code=400)(scope, receive, send)
            return
        if self.token is not None and scope["path"] in PROTECTED_PATHS:
            scheme, _, value = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
                await JSONResponse({"detail": "missing or wrong API token (Authorization: Bearer TOKEN)"},
                                   status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return

        async def send_nosniff(message: Any) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                if not any(k.lower() == b"x-content-type-options" for k, _ in raw):
                    raw.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, receive, send_nosniff)


def create_app(predictor: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_image_pixels: int = MAX_IMAGE_PIXELS, max_decodes: int = DEFAULT_MAX_DECODES,
               body_timeout: float = DEFAULT_BODY_TIMEOUT, api_token: str | None = None,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The API + page around ``predictor``.

    ``max_upload_bytes`` caps an uploaded image (the request body may be a
    third larger, for base64 and multipart framing); ``max_image_pixels`` caps
    the decoded image size; ``max_decodes`` bounds the pictures decoded at once;
    a body not fully received within ``body_timeout`` seconds is answered with 408.
    ``api_token``: when set, ``/api/predict``, ``/api/number`` and ``/api/models`` need the header
    ``Authorization: Bearer TOKEN`` (401 otherwise; the page reads the token from its
    URL fragment, ``/#token=TOKEN``). ``allowed_hosts``: accepted ``Host`` header names
    (against DNS rebinding; 400 otherwise); None accepts any.
    """
    decode_slots = threading.BoundedSemaphore(max(1, max_decodes))
    # the work of a request (parsing, decoding, preprocessing, the model, JSON) runs on these threads
    workers = ThreadPoolExecutor(max_workers=max(1, max_decodes) + WORK_THREADS_EXTRA,
                                 thread_name_prefix="digitlab-work")
    max_body = max_upload_bytes * 4 // 3 + 64 * 1024
    app = FastAPI(title="digitlab", version=__version__,
                  description="Handwritten-digit recognition: upload a picture of a digit, get the digit; "
                              "upload a picture of a number, get the number.")
    app.state.predictor = predictor
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    model_name = predictor.info.get("model")
    limits = {"max_upload_bytes": max_upload_bytes, "max_body_bytes": max_body,
              "max_image_pixels": max_image_pixels, "max_concurrent_decodes": max_decodes}

    @app.exception_handler(DigitlabError)
    async def _user_error(request: Request, exc: DigitlabError) -> JSONResponse:
        status = 413 if isinstance(exc, ImageTooLargeError) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    hosts = {h.lower() for h in allowed_hosts} if allowed_hosts is not None else None
    if hosts is not None and "*" in hosts:
        hosts = None
    app.add_middleware(_Guard, hosts=hosts, token=api_token.encode() if api_token else None)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    async def _off_the_loop(request: Request, work: Callable[..., dict[str, Any]]) -> Response:
        """Read the body on the event loop, then decode, preprocess and predict in the thread pool."""
        t0 = time.perf_counter()
        ctype, body = await _receive(request, max_body, body_timeout)
        return await asyncio.get_running_loop().run_in_executor(
            workers, _answer, work, predictor, ctype, body, max_upload_bytes, max_image_pixels,
            decode_slots, model_name, t0)

    @app.get("/api/health", response_model=HealthResponse, responses=_OPEN_ERRORS, summary="liveness check")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "version": __version__}

    @app.get("/api/models", response_model=ModelsResponse, responses={k: _ERRORS[k] for k in (400, 401)},
             summary="the loaded model and the server's limits")
    async def models() -> dict[str, Any]:
        return {"models": [predictor.info], "limits": limits}

    @app.post("/api/predict", response_model=PredictResponse, responses=_ERRORS,
              openapi_extra={"requestBody": _PREDICT_BODY}, summary="classify one digit")
    async def predict(request: Request) -> Response:
        return await _off_the_loop(request, _predict_body)

    @app.post("/api/number", response_model=NumberResponse, responses=_ERRORS,
              openapi_extra={"requestBody": _NUMBER_BODY}, summary="read a number of several digits")
    async def number(request: Request) -> Response:
        return await _off_the_loop(request, _number_body)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header: ``[::1]:8000`` → ``::1``, ``localhost:8000`` → ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# --------------------------------------------------------------------------- request bodies


async def _receive(request: Request, limit: int, timeout: float) -> tuple[str, bytes]:
    """``(content type, body)``: the body read within its limits, a 400 when it is empty."""
    body = await _read_body(request, limit, timeout)
    if not body:
        raise HTTPException(400, "empty request body: send an image (multipart field 'file', "
                                 "image/* body) or JSON {'pixels': ...} / {'image': ...}")
    return request.headers.get("content-type", ""), body


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


def _image_of(ctype_header: str, body: bytes, max_upload: int, *, pixels_allowed: bool
              ) -> tuple[bytes | None, np.ndarray | None, bool]:
    """``(image bytes, None, True)`` or ``(None, 28×28 pixels, preprocess?)`` from a request body."""
    ctype = ctype_header.split(";")[0].strip().lower()
    data: bytes | None
    if ctype == "multipart/form-data":
        data, pixels, prep = _multipart_file(ctype_header, body), None, True
    elif ctype == "application/json" or ctype.endswith("+json"):
        data, pixels, prep = _parse_json(body, pixels_allowed=pixels_allowed)
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        data, pixels, prep = body, None, True
    else:
        raise HTTPException(415, f"unsupported Content-Type {ctype or '(none)'!r}; "
                                 "use multipart/form-data, application/json or image/*")
    if data is not None and len(data) > max_upload:
        raise HTTPException(413, f"image is {len(data)} bytes; the limit is {max_upload}")
    return data, pixels, prep


def _multipart_file(ctype_header: str, body: bytes) -> bytes:
    """The bytes of the part named ``file`` of a ``multipart/form-data`` body (parsed in one pass)."""
    _, params = parse_options_header(ctype_header)
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "malformed multipart body: Missing boundary in multipart.")
    parts: list[tuple[bytes, bytearray]] = []  # (content-disposition, data)
    header: list[bytes] = [b"", b""]  # current header name, value
    disposition = [b""]

    def on_part_begin() -> None:
        if len(parts) >= MAX_MULTIPART_PARTS:
            raise HTTPException(400, f"malformed multipart body: more than {MAX_MULTIPART_PARTS} parts")
        disposition[0] = b""
        parts.append((b"", bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        if header[0].lower() == b"content-disposition":
            disposition[0] = header[1]
        header[0], header[1] = b"", b""

    def on_headers_finished() -> None:
        parts[-1] = (disposition[0], parts[-1][1])

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
        parser.write(body)
        parser.finalize()
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors (and bad boundaries)
        raise HTTPException(400, f"malformed multipart body: {exc}") from None
    for disp, data in parts:
        _, options = parse_options_header(disp)
        if options.get(b"name") == b"file":
            return bytes(data)
    raise HTTPException(422, "multipart body has no file field named 'file'")


def _parse_json(body: bytes, *, pixels_allowed: bool = True) -> tuple[bytes | None, np.ndarray | None, bool]:
    """``(image bytes, None, True)`` or ``(None, pixels, preprocess?)``."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"invalid JSON: {exc}") from None
    except RecursionError:  # e.g. [[[[...]]]] thousands deep
        raise HTTPException(400, "invalid JSON: nested too deeply") from None
    if not pixels_allowed:
        if not isinstance(obj, dict) or "image" not in obj:
            raise HTTPException(422, "JSON body must be an object {'image': base64 or a data: URL}")
        return _decode_base64(obj["image"]), None, True
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


# --------------------------------------------------------------------------- work (in the thread pool)


def _answer(work: Callable[..., dict[str, Any]], predictor: Predictor, ctype: str, body: bytes, max_upload: int,
            max_pixels: int, slots: threading.BoundedSemaphore, model_name: str | None, t0: float) -> Response:
    """``work``'s result with the model name and the server-side time, encoded to JSON here (not on the loop)."""
    result = work(predictor, ctype, body, max_upload, max_pixels, slots)
    result["model"] = model_name
    result["elapsed_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
    return Response(json.dumps(result, allow_nan=False, separators=(",", ":")).encode(),
                    media_type="application/json")


def _predict_body(predictor: Predictor, ctype: str, body: bytes, max_upload: int, max_pixels: int,
                  slots: threading.BoundedSemaphore) -> dict[str, Any]:
    data, pixels, preprocess = _image_of(ctype, body, max_upload, pixels_allowed=True)
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
    res.setdefault("rejected", None)
    res.pop("top_k", None)
    return res


def _number_body(predictor: Predictor, ctype: str, body: bytes, max_upload: int, max_pixels: int,
                 slots: threading.BoundedSemaphore) -> dict[str, Any]:
    if not predictor.digits:
        raise HTTPException(400, f"this server's model reads {predictor.dataset}, not digits: no numbers")
    data, _, _ = _image_of(ctype, body, max_upload, pixels_allowed=False)
    assert data is not None
    with slots:
        picture = load_image(data, max_pixels=max_pixels)  # the server's own pixel limit
        return number_reading(predictor.read_number(picture)).to_dict()
