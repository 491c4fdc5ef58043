"""cfa serve: the HTTP service's command and its options (the service itself: cfa_anomaly.serve)."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from cfa_anomaly.cli.common import add_model_arguments, predictor_from_args
from cfa_anomaly.config import ConfigError

if TYPE_CHECKING:
    from cfa_anomaly.cli.common import Commands

SERVE_LIMITS = {  # ServeSettings field: (type, help of its --option)
    "max_upload_mb": (float, "largest image file accepted (413 above)"),
    "max_pixels": (int, "largest width x height accepted, read from the header before decoding (413 above)"),
    "timeout_s": (float, "seconds an image may wait for its result (504)"),
    "max_batch": (int, "images scored together in one model call"),
    "max_files": (int, "files per /predict/batch request (413 above)"),
}

def serve_limit_defaults() -> dict[str, Any]:
    """ServeSettings' defaults of the SERVE_LIMITS options; none without the [serve] extra (then
    cmd_serve says what to install)."""
    try:
        from cfa_anomaly.serve import ServeSettings
    except ImportError:
        return {}
    return {field.name: field.default for field in fields(ServeSettings) if field.name in SERVE_LIMITS}


def cmd_serve(args: argparse.Namespace) -> None:
    """Load the model once, then answer HTTP requests until interrupted (see docs/deployment.md, "HTTP
    service")."""
    try:
        from cfa_anomaly.serve import ServeSettings, checked_tls, describe_model, resolve_access, run_server
    except ImportError as err:
        raise ConfigError("cfa serve needs FastAPI and uvicorn: pip install 'cfa-anomaly[serve]' "
                          f"({err})") from err

    settings = ServeSettings(**{name: getattr(args, name) for name in SERVE_LIMITS})
    tls = checked_tls(args.ssl_certfile, args.ssl_keyfile)  # before the model loads: a bad file fails fast
    access = resolve_access(args.host, args.token_file, os.environ)
    predictor = predictor_from_args(args)
    info = describe_model(args.checkpoint or args.model, predictor,
                          "checkpoint" if args.checkpoint else "export")
    run_server(predictor, settings, info, host=args.host, port=args.port, access_log=not args.no_access_log,
               access=access, tls=tls)


def add_serve_parser(commands: Commands) -> None:
    serve = commands.add_parser("serve",
                                help="score images sent over HTTP (FastAPI + uvicorn; extra [serve])")
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default %(default)s: this machine; any address outside "
                            "127.0.0.0/8, ::1 and localhost asks for a bearer token)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token-file", metavar="PATH",
                       help="a file holding the bearer token clients must send (Authorization: Bearer "
                            "<token>) to every endpoint but /health and the page, on loopback too; default: "
                            "$CFA_SERVE_TOKEN, else, off loopback, one made at start and printed to stderr")
    serve.add_argument("--ssl-certfile", metavar="PATH", help="serve HTTPS with this PEM certificate (chain)")
    serve.add_argument("--ssl-keyfile", metavar="PATH",
                       help="the certificate's private key (PEM, unencrypted)")
    for name, (kind, help_text) in SERVE_LIMITS.items():
        serve.add_argument(f"--{name.replace('_', '-')}", type=kind, help=help_text)
    serve.add_argument("--no-access-log", action="store_true", help="do not log every request")
    serve.deferred_defaults = serve_limit_defaults  # the SERVE_LIMITS options' defaults
    serve.set_defaults(func=cmd_serve, log_timestamps=True)  # a long-running service: time, level, logger
