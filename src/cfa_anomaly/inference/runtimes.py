"""Running an exported model (cfa export) with ONNX Runtime, OpenVINO or TorchScript.

Nothing of the torch model's code is imported here: an inspection station needs the runtime, the
preprocessing (data/images.py) and the model folder that `cfa export` wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfa_anomaly import runfiles
from cfa_anomaly.inference.card import ModelCard
from cfa_anomaly.inference.errors import ExportError
from cfa_anomaly.io_utils import file_sha256

EXPORT_FORMAT = "cfa-anomaly-export-v1"
METADATA_NAME = runfiles.MODEL_METADATA
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.pt"}
INPUT_NAME, OUTPUT_NAMES = "images", ("maps", "scores")
# What an exported OpenVINO model computes in: float32 (equal to the checkpoint's float32 graph) or bfloat16,
# the names model.precision uses, mapped to OpenVINO's hints (its own names, f32 and bf16, are accepted too)
INFERENCE_PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}
_OPENVINO_NAMES = {hint: name for name, hint in INFERENCE_PRECISIONS.items()}


def inference_precision_name(value: str) -> str:
    """float32 or bfloat16, from either name (f32 and bf16 are OpenVINO's)."""
    name = _OPENVINO_NAMES.get(value, value)
    if name not in INFERENCE_PRECISIONS:
        raise ExportError(f"inference precision {value!r} is invalid: use float32 or bfloat16")
    return name


def _metadata_path(path: Path) -> Path:
    if path.is_dir():
        return path / METADATA_NAME
    if path.is_file():
        return path.parent / METADATA_NAME
    raise ExportError(f"exported model not found: {path} (give the folder `cfa export` wrote, or its model file)")


def read_metadata(path: Path, verify: bool = True) -> dict[str, Any]:
    """The model.json of an exported model (folder or model file), checked: its format, its files and,
    with verify, their SHA-256 against the ones recorded at export."""
    meta_path = _metadata_path(path)
    if not meta_path.is_file():
        raise ExportError(f"{meta_path} is missing: {path} is not a folder written by `cfa export`; export the "
                          "checkpoint again (cfa export --checkpoint C --format onnx|openvino --output DIR)")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"cannot read {meta_path}: {err}") from err
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{meta_path} is not cfa-anomaly export metadata (format {EXPORT_FORMAT})")
    runtime = metadata.get("runtime")
    if runtime not in MODEL_FILES or not isinstance(metadata.get("files"), dict):
        raise ExportError(f"{meta_path}: unknown runtime {runtime!r} or no file list; export again")
    if path.is_file() and path.name not in metadata["files"]:
        raise ExportError(f"{path} is not listed in {meta_path} (files: {', '.join(metadata['files'])})")
    for name, expected in metadata["files"].items():
        file = meta_path.parent / name
        if not file.is_file():
            raise ExportError(f"{file} is missing (listed in {meta_path}); export the checkpoint again")
        if verify and file_sha256(file) != expected:
            raise ExportError(f"{file} does not match {meta_path}: its SHA-256 differs from the one recorded at "
                              "export (the file was changed or replaced); export the checkpoint again")
    return metadata


class OnnxRuntimeBackend:
    """An ONNX model in ONNX Runtime (CPU; CUDA first when onnxruntime-gpu sees a GPU)."""

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ExportError("running an ONNX model needs onnxruntime: pip install 'cfa-anomaly[export]'") from err
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ExportError(f"ONNX Runtime cannot load {path}: {err}") from err
        self.name = f"onnxruntime {ort.__version__} ({self.session.get_providers()[0]})"

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        feed = {INPUT_NAME: np.ascontiguousarray(images.numpy(), dtype=np.float32)}
        maps, scores = self.session.run(list(OUTPUT_NAMES), feed)
        return maps, scores


class OpenVinoBackend:
    """An OpenVINO IR model on the CPU; inference precision float32 (equal to the checkpoint's float32 graph)
    unless bfloat16 is asked for (OpenVINO would pick bfloat16 by itself on CPUs with bf16 units)."""

    def __init__(self, path: Path, inference_precision: str = "float32") -> None:
        hint = INFERENCE_PRECISIONS[inference_precision_name(inference_precision)]
        try:
            import openvino as ov
        except ImportError as err:
            raise ExportError("running an OpenVINO model needs openvino: pip install 'cfa-anomaly[export]'") from err
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
            raise ExportError(f"OpenVINO cannot load {path}: {err}") from err
        self.request = self.compiled.create_infer_request()
        self.name = f"openvino {ov.get_version().split('-')[0]} (CPU, {hint})"

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        results = self.request.infer({INPUT_NAME: np.ascontiguousarray(images.numpy(), dtype=np.float32)})
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return np.array(by_name[OUTPUT_NAMES[0]]), np.array(by_name[OUTPUT_NAMES[1]])


class TorchScriptBackend:
    """A TorchScript module (torch.jit), on the CPU."""

    def __init__(self, path: Path) -> None:
        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as err:  # noqa: BLE001 - torch.jit raises many types for a bad file
            raise ExportError(f"cannot load TorchScript model {path}: {err}") from err
        self.name = f"torchscript (torch {torch.__version__}, cpu)"

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            maps, scores = self.module(images.float())
        return maps.numpy(), scores.numpy()


def open_export(path: Path, inference_precision: str = "float32", verify: bool = True
                ) -> tuple[Any, ModelCard]:
    """The runtime backend and model card of an exported model (folder or model file)."""
    inference_precision = inference_precision_name(inference_precision)
    metadata = read_metadata(path, verify)
    folder = _metadata_path(path).parent
    runtime = metadata["runtime"]
    try:
        card = ModelCard.from_dict(metadata.get("card"), str(folder / METADATA_NAME))
    except (TypeError, ValueError) as err:
        raise ExportError(str(err)) from err
    model_file = folder / MODEL_FILES[runtime]
    if inference_precision != "float32" and runtime != "openvino":
        raise ExportError(f"inference precision {inference_precision} is for OpenVINO models; {model_file} "
                          f"is {runtime}: run it in float32 or export with --format openvino")
    if runtime == "onnx":
        return OnnxRuntimeBackend(model_file), card
    if runtime == "openvino":
        return OpenVinoBackend(model_file, inference_precision), card
    return TorchScriptBackend(model_file), card
