"""``digitlab serve``: the REST API and the draw-a-digit page (needs the ``digitlab[serve]`` extra)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from digitlab.cli import HelpFormatter, add_device_arg, add_model_arg

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
TOKEN_ENV = "DIGITLAB_API_TOKEN"

SERVE_MODULES = ("fastapi", "uvicorn", "python_multipart")
"""What ``digitlab[serve]`` installs (python-multipart imports as ``python_multipart``)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="REST API + draw-a-digit web page (needs digitlab[serve])", formatter_class=HelpFormatter,
        description="Serve a model over HTTP: POST /api/predict (one digit), POST /api/number (a number of "
                    "several digits), GET /api/health, GET /api/models, the OpenAPI schema at /openapi.json "
                    "and a page at / to draw a digit or a number on. Results carry the integer label and the "
                    "class name of the model's dataset. The shipped default model runs on ONNX Runtime when "
                    "onnxruntime is installed. --workers N starts N server processes on the port, each loading "
                    "the model and, on Linux, listening on a socket of its own (SO_REUSEPORT: the kernel "
                    "spreads the connections over the workers). Needs the digitlab[serve] extra.",
        epilog="examples:\n  digitlab serve                       # http://127.0.0.1:8000/\n"
               "  digitlab serve --model runs/a --port 8080\n"
               "  digitlab serve --workers 2                 # two processes: more requests/s on 2+ cores\n"
               "  digitlab serve --model model.onnx --max-upload-mb 2   # .onnx needs digitlab[onnx] too\n"
               "  DIGITLAB_API_TOKEN=s3cret digitlab serve --host 0.0.0.0 --allowed-host digits.example.org\n"
               "  curl -F file=@seven.png http://127.0.0.1:8000/api/predict\n"
               "  curl -F file=@page.png http://127.0.0.1:8000/api/number")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (anything but localhost exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    add_model_arg(p, positional=False, onnx=True)
    add_device_arg(p)
    p.add_argument("--max-upload-mb", type=float, default=5.0, help="largest accepted image upload, in MiB")
    p.add_argument("--max-image-megapixels", type=float, default=40.0,
                   help="largest accepted decoded image size (decompression-bomb guard)")
    p.add_argument("--max-decodes", type=int, default=2,
                   help="pictures decoded at the same time (the others wait): bounds memory under load")
    p.add_argument("--token", default=None, metavar="TOKEN",
                   help=f"API token: /api/predict and /api/models then need 'Authorization: Bearer TOKEN' "
                        f"(default: ${TOKEN_ENV}; required when --host is not a loopback address)")
    p.add_argument("--no-token", action="store_true",
                   help="serve a non-loopback address without an API token (anyone who can reach it may use it)")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="a Host header name to accept (repeatable; against DNS rebinding). Default: "
                        "127.0.0.1, localhost and ::1 on a loopback address, any name otherwise")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a client has to send a request body (then 408)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection has to send a request's headers (then it is closed)")
    p.add_argument("--keep-alive", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes on the port (each loads the model and has its own --max-decodes; on Linux "
                        "each has its own socket, so connections spread over them); use the number of cores")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level")
    p.set_defaults(handler=_serve)


def check_port_free(host: str, port: int) -> None:
    """A one-line error now, instead of uvicorn's log line and exit status 3, when the port is taken."""
    import errno
    import socket

    from digitlab.errors import ConfigError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use; choose another --port") from None
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def _serve(args: argparse.Namespace) -> int:
    from digitlab.cli import require_extra
    from digitlab.errors import ConfigError

    for module in SERVE_MODULES:
        require_extra(module, "serve")
    if args.model.lower().endswith(".onnx"):
        require_extra("onnxruntime", "onnx")
    import uvicorn

    from digitlab.serve.app import (
        SETTINGS_ENV,
        ServeSettings,
        app_from_env,
        create_app,
        load_serving_predictor,
        settle_heap,
    )
    from digitlab.serve.protocol import HTTPProtocol, set_header_timeout
    from digitlab.serve.workers import WorkerPool, bind_reuseport_sockets, reuse_port_supported

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be between 1 and 65535")
    if min(args.max_upload_mb, args.max_image_megapixels, args.max_decodes, args.body_timeout,
           args.header_timeout, args.keep_alive) <= 0:
        raise ConfigError("--max-upload-mb, --max-image-megapixels, --max-decodes, --body-timeout, "
                          "--header-timeout and --keep-alive must be positive")
    if not 1 <= args.workers <= 64:
        raise ConfigError(f"--workers {args.workers}: must be between 1 and 64")
    local = args.host in LOCAL_HOSTS
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if args.no_token:
        token = None
    elif not local and not token:
        raise ConfigError(f"--host {args.host} exposes the server to other machines: give an API token "
                          f"(--token or ${TOKEN_ENV}), or --no-token to serve without one")
    hosts = list(args.allowed_host or [])
    allowed = (sorted(LOCAL_HOSTS) + hosts) if local else (hosts or None)
    check_port_free(args.host, args.port)
    settings = ServeSettings(model=args.model, device=args.device,
                             max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                             max_image_pixels=int(args.max_image_megapixels * 1_000_000),
                             max_decodes=args.max_decodes, body_timeout=args.body_timeout, api_token=token,
                             allowed_hosts=None if allowed is None else tuple(allowed),
                             header_timeout=args.header_timeout)
    # loaded here even with --workers: a bad model is a one-line error before any process starts
    predictor = load_serving_predictor(args.model, args.device)
    if not local and not token:
        print(f"digitlab: warning: binding to {args.host} makes the server reachable from other machines; "
              "it has no authentication (--no-token)", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    backend = predictor.info.get("backend")
    workers = f", {args.workers} workers" if args.workers > 1 else ""
    print(f"digitlab: serving {predictor.info.get('model')} ({predictor.dataset}, {backend}{workers}) from "
          f"{predictor.info.get('source')} at http://{host}:{args.port}/  (Ctrl-C to stop)", file=sys.stderr)
    if token:
        print("digitlab: API token required; open the page as http://HOST:PORT/#token=TOKEN", file=sys.stderr)
    options: dict[str, Any] = {"host": args.host, "port": args.port, "log_level": args.log_level,
                               "timeout_keep_alive": max(1, round(args.keep_alive))}
    if args.workers == 1:
        set_header_timeout(args.header_timeout)
        app = create_app(predictor, max_upload_bytes=settings.max_upload_bytes,
                         max_image_pixels=settings.max_image_pixels, max_decodes=settings.max_decodes,
                         body_timeout=settings.body_timeout, api_token=token, allowed_hosts=allowed)
        settle_heap()
        uvicorn.run(app, http=HTTPProtocol, **options)  # loop "auto": uvloop when installed
        return 0
    del predictor  # each worker process loads its own
    # worker processes build their app from the settings in their (inherited) environment
    os.environ[SETTINGS_ENV] = settings.to_json()
    factory = {"app": f"{app_from_env.__module__}:{app_from_env.__name__}", "factory": True,
               "http": f"{HTTPProtocol.__module__}:{HTTPProtocol.__name__}", **options}
    if not reuse_port_supported():  # one shared socket (connections may gather on one worker)
        uvicorn.run(factory.pop("app"), workers=args.workers, **factory)
        return 0
    # a socket per worker (SO_REUSEPORT): the kernel spreads the connections over the workers
    try:
        sockets = bind_reuseport_sockets(args.host, args.port, args.workers)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    if WorkerPool(sockets, factory).run() != 0:
        raise ConfigError("a server worker failed to start (see its message above)")
    return 0
