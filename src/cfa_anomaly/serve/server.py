"""Running the service: uvicorn on host:port, with the token and TLS it was given, said in the startup log."""

from __future__ import annotations

import logging
import os
import sys

from PIL import Image

from cfa_anomaly.inference import Predictor
from cfa_anomaly.serve.app import ModelInfo, ServeSettings, create_app
from cfa_anomaly.serve.auth import Access, is_loopback, resolve_access
from cfa_anomaly.serve.tls import Tls

log = logging.getLogger("cfa_anomaly.serve")


def base_url(host: str, port: int, tls: Tls | None) -> str:
    """The address to open, e.g. http://127.0.0.1:8000/ or https://[::]:8443/."""
    name = f"[{host.strip('[]')}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{name}:{port}/"


def log_startup(info: ModelInfo, engine: str, host: str, port: int, access: Access, tls: Tls | None) -> None:
    """Say where the service listens, what is protected and whether TLS is on; print a made token once."""
    log.info("serving %s (%s) on %s (the page; the JSON API under the same address)", info.model_id, engine,
             base_url(host, port, tls))
    log.info("access: %s", access.statement(host))
    if tls is not None:
        key = f", key {tls.keyfile}" if tls.keyfile else ""
        log.info("TLS on: certificate %s%s", tls.certfile, key)
    elif is_loopback(host):
        log.info("TLS off: plain HTTP on a loopback address")
    else:
        log.warning("TLS off: the token and the images cross the network unencrypted; give --ssl-certfile "
                    "and --ssl-keyfile, or put a TLS proxy in front")
    if access.generated:
        print(f"cfa serve: this run's token (send `Authorization: Bearer <token>`): {access.token}",
              file=sys.stderr, flush=True)


def run_server(predictor: Predictor, settings: ServeSettings, info: ModelInfo, host: str, port: int,
               access_log: bool = True, access: Access | None = None, tls: Tls | None = None) -> None:
    """Serve until interrupted on host:port (uvicorn, one process: the model is in this process's memory);
    cfa serve's --host and --port hold the defaults. Without `access`, the token is chosen as cfa serve
    chooses it (none on loopback, CFA_SERVE_TOKEN, else generated)."""
    import uvicorn

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if Image.MAX_IMAGE_PIXELS is not None and settings.max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = settings.max_pixels  # PIL must allow what --max-pixels allows
    access = access or resolve_access(host, None, os.environ)
    app = create_app(predictor, settings, info, token=access.token)
    log_startup(info, predictor.name, host, port, access, tls)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log,
                timeout_graceful_shutdown=5, **(tls.uvicorn_options() if tls else {}))
