"""`cfa serve`: the Predictor as an HTTP service (FastAPI + uvicorn; pip install 'cfa-anomaly[serve]')."""

from cfa_anomaly.serve.app import ModelInfo, ServeSettings, create_app, describe_model, run_server
from cfa_anomaly.serve.errors import STATUS_OF_CODE, ServeError

__all__ = ["STATUS_OF_CODE", "ModelInfo", "ServeError", "ServeSettings", "create_app", "describe_model",
           "run_server"]
