"""Schemathesis against the app's own OpenAPI schema, in process (ASGI transport, no network).

Every operation in ``/openapi.json`` gets generated requests, valid ones (positive) and
ones that break the schema (negative), each media type of the request body included; every
response must not be a server error and must match the schema (status code documented,
body of the documented shape, content type). Deterministic: Hypothesis is derandomized,
with no example database, and a fixed number of examples per operation and mode. The
count of examples run is printed (``pytest -s``) and written to
``$DIGITLAB_SCHEMATHESIS_REPORT`` when that is set (JSON), for the README.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from digitlab.serve import create_app

EXAMPLES = 30
"""Examples per operation, media type and generation mode."""
MAX_UPLOAD = 100_000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
REPORT_ENV = "DIGITLAB_SCHEMATHESIS_REPORT"


@pytest.fixture(scope="module")
def schema(predictor):
    app = create_app(predictor, max_upload_bytes=MAX_UPLOAD, max_image_pixels=2_000_000)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations(schema) -> list:
    ops = [result.ok() for result in schema.get_all_operations()]
    assert ops, "the schema has no operations"
    return ops


def test_every_endpoint_is_in_the_schema(schema):
    labels = {op.label for op in _operations(schema)}
    assert labels == {"GET /api/health", "GET /api/models", "POST /api/predict", "POST /api/number"}


def _fuzz(strategy, key: str, runs: Counter[str], statuses: Counter[int]) -> None:
    """Run :data:`EXAMPLES` derandomized cases of ``strategy`` through the checks, counting them."""

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case) -> None:
        response = case.call()
        case.validate_response(response, checks=CHECKS)
        runs[key] += 1
        statuses[response.status_code] += 1

    run()


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(schema, capsys):
    runs: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for op in _operations(schema):
        media_types = op.get_request_payload_content_types() or [None]
        # a request without parameters or body cannot break the schema: positive only
        modes = [mode for mode in schemathesis.GenerationMode
                 if media_types != [None] or mode is schemathesis.GenerationMode.POSITIVE]
        for mode in modes:
            for media_type in media_types:
                key = f"{op.label} [{mode.value}{', ' + media_type if media_type else ''}]"
                _fuzz(op.as_strategy(generation_mode=mode, media_type=media_type), key, runs, statuses)
    total = sum(runs.values())
    report = {"examples": total, "failures": 0, "by_operation": dict(sorted(runs.items())),
              "status_codes": {str(k): v for k, v in sorted(statuses.items())},
              "schemathesis": schemathesis.SCHEMATHESIS_VERSION, "examples_per_operation_and_mode": EXAMPLES}
    with capsys.disabled():
        print(f"\nschemathesis: {total} examples over {len(runs)} operation/mode/media-type groups, 0 failures; "
              f"status codes {report['status_codes']}")
    if os.environ.get(REPORT_ENV):
        Path(os.environ[REPORT_ENV]).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    # every operation was exercised, and the valid requests were not all refused
    assert all(n > 0 for n in runs.values()) and total >= 10 * len(runs)
    assert any(200 <= code < 300 for code in statuses) and any(400 <= code < 500 for code in statuses)


def test_the_checks_do_catch_a_mismatch_and_a_server_error():
    """Control: the same checks fail on an app that breaks its own schema or crashes."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel

    class Out(BaseModel):
        status: str

    bad = FastAPI()

    @bad.get("/wrong", response_model=Out)
    async def wrong() -> JSONResponse:
        return JSONResponse({"status": 5})  # a number where the schema says string

    @bad.get("/crash", response_model=Out)
    async def crash() -> Out:
        raise RuntimeError("boom")

    schema = schemathesis.openapi.from_asgi("/openapi.json", bad)
    failures: dict[str, str] = {}
    for op in _operations(schema):

        @settings(max_examples=1, derandomize=True, database=None, deadline=None)
        @given(case=op.as_strategy())
        def one(case) -> None:
            try:
                case.validate_response(case.call(), checks=CHECKS)
            except BaseException as exc:  # noqa: BLE001 - schemathesis' FailureGroup, or the server's own error
                failures[case.operation.label] = type(exc).__name__

        one()
    assert set(failures) == {"GET /wrong", "GET /crash"}, failures
