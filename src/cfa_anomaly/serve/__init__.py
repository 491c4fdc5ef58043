"""`cfa serve`: the Predictor as an HTTP service (FastAPI + uvicorn; pip install 'cfa-anomaly[serve]')."""

from cfa_anomaly.serve.app import ModelInfo, ServeSettings, create_app, describe_model
from cfa_anomaly.serve.auth import Access, resolve_access
from cfa_anomaly.serve.errors import STATUS_OF_CODE, ServeError
from cfa_anomaly.serve.server import run_server
from cfa_anomaly.serve.tls import Tls, checked_tls

__all__ = ["STATUS_OF_CODE", "Access", "ModelInfo", "ServeError", "ServeSettings", "Tls", "checked_tls",
           "create_app", "describe_model", "resolve_access", "run_server"]
