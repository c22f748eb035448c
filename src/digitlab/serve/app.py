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
with a pixel-count cap (decompression bombs: 413), undecodable data is a 400,
malformed JSON shapes a 422. Work runs in a thread pool, so one slow request
doesn't block the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
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

from digitlab import __version__
from digitlab.errors import DigitlabError
from digitlab.inference.predictor import Predictor
from digitlab.inference.preprocess import MAX_IMAGE_PIXELS, ImageTooLargeError, to_mnist

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "STATIC_DIR", "create_app"]

DEFAULT_MAX_UPLOAD_BYTES = 5 * 1024 * 1024
STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page loads only same-origin files (no CDN: it must work offline).
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class PredictResponse(BaseModel):
    label: int = Field(description="predicted digit")
    confidence: float = Field(description="probability of the predicted digit")
    probabilities: list[float] = Field(description="softmax probabilities for digits 0..9")
    preprocessed: list[list[int]] = Field(description="the 28×28 MNIST-form image (0..255) the model saw")
    blank: bool = Field(False, description="true when no ink was found (the label is then meaningless)")
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
_ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in (
    (400, "not an image, corrupt or empty data, invalid JSON"),
    (413, "body or image larger than the limits"),
    (415, "unsupported Content-Type"),
    (422, "JSON of the wrong shape or values"),
)}


def create_app(predictor: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_image_pixels: int = MAX_IMAGE_PIXELS) -> FastAPI:
    """The API + page around ``predictor``.

    ``max_upload_bytes`` caps an uploaded image (the request body may be a
    third larger, for base64 and multipart framing); ``max_image_pixels`` caps
    the decoded image size.
    """
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

    @app.middleware("http")
    async def _headers(request: Request, call_next):  # noqa: ANN202
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
                           "max_image_pixels": max_image_pixels}}

    @app.post("/api/predict", response_model=PredictResponse, responses=_ERRORS,
              openapi_extra={"requestBody": _REQUEST_BODY}, summary="classify one digit")
    async def predict(request: Request) -> dict[str, Any]:
        t0 = time.perf_counter()
        body = await _read_body(request, max_body)
        if not body:
            raise HTTPException(400, "empty request body: send an image (multipart field 'file', "
                                     "image/* body) or JSON {'pixels': ...} / {'image': ...}")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
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
        result = await run_in_threadpool(_predict, predictor, data, pixels, prep, max_image_pixels)
        result["model"] = model_name
        result["elapsed_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
        return result

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(400, "invalid Content-Length header") from None
        if size > limit:
            raise HTTPException(413, f"request body of {size} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():  # chunked or lying clients: count what really arrives
        body += chunk
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
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        raise HTTPException(422, "'pixels' values must be finite numbers in 0..255")
    return np.rint(arr).astype(np.uint8)


def _predict(predictor: Predictor, data: bytes | None, pixels: np.ndarray | None, preprocess: bool,
             max_pixels: int) -> dict[str, Any]:
    if pixels is None:
        pre = to_mnist(data, max_pixels=max_pixels)
    else:
        pre = to_mnist(pixels) if preprocess else pixels
    labels, probs = predictor.predict(pre[None])
    res = Predictor.result(pre[None], labels, probs)[0]
    res["preprocessed"] = res["preprocessed"].tolist()
    res.setdefault("blank", False)
    return res

