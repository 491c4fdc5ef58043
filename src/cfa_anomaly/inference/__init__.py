"""Inference: one Predictor from a checkpoint or an exported model, typed results, export."""

from cfa_anomaly.inference.card import ModelCard
from cfa_anomaly.inference.predictor import Predictor
from cfa_anomaly.inference.result import InferenceResult

__all__ = ["InferenceResult", "ModelCard", "Predictor"]
