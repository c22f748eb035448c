"""``digitlab serve``: the REST API and the draw-a-digit page."""

from __future__ import annotations

import argparse
import sys

from digitlab.cli import HelpFormatter

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="REST API + draw-a-digit web page", formatter_class=HelpFormatter,
        description="Serve a model over HTTP: POST /api/predict, GET /api/health, GET /api/models, "
                    "the OpenAPI schema at /openapi.json and a page at / to draw digits on.",
        epilog="examples:\n  digitlab serve                       # http://127.0.0.1:8000/\n"
               "  digitlab serve --model runs/a --port 8080\n"
               "  digitlab serve --model model.onnx --max-upload-mb 2\n"
               "  curl -F file=@seven.png http://127.0.0.1:8000/api/predict")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (anything but localhost exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--model", default="default",
                   help="'default' (shipped model), a run directory, a .safetensors or an .onnx file")
    p.add_argument("--device", default="cpu", help="torch device for checkpoint models (cpu, cuda, auto)")
    p.add_argument("--max-upload-mb", type=float, default=5.0, help="largest accepted image upload, in MiB")
    p.add_argument("--max-image-megapixels", type=float, default=40.0,
                   help="largest accepted decoded image size (decompression-bomb guard)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from digitlab.errors import ConfigError
    from digitlab.inference import load_predictor
    from digitlab.serve import create_app

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be between 1 and 65535")
    if args.max_upload_mb <= 0 or args.max_image_megapixels <= 0:
        raise ConfigError("--max-upload-mb and --max-image-megapixels must be positive")
    predictor = load_predictor(args.model, device=args.device)
    app = create_app(predictor, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                     max_image_pixels=int(args.max_image_megapixels * 1_000_000))
    if args.host not in LOCAL_HOSTS:
        print(f"digitlab: warning: binding to {args.host} makes the server reachable from other machines; "
              "it has no authentication", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"digitlab: serving {predictor.info.get('model')} from {predictor.info.get('source')} "
          f"at http://{host}:{args.port}/  (Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
