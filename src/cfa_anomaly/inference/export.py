"""`cfa export`: a checkpoint as one float32 graph for ONNX Runtime, OpenVINO or TorchScript.

The graph is model/plain.py's exact forward pass: a float image batch (N, 3, crop, crop) in 0..1, with the
backbone's normalisation inside, to (maps (N, crop, crop), scores (N,)), with a dynamic batch size. Next
to it, model.json holds what a runtime needs (resize, crop, threshold, backbone, versions) and the SHA-256
of every file. Everything is written in a temporary folder beside the output and moved into place at the
end, metadata last, so a failed export leaves no half-written model behind.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from cfa_anomaly import __version__
from cfa_anomaly.checkpoint import restore_model, saved_thresholds
from cfa_anomaly.inference.card import ModelCard
from cfa_anomaly.inference.errors import ExportError
from cfa_anomaly.inference.runtimes import (
    EXPORT_FORMAT,
    INPUT_NAME,
    METADATA_NAME,
    MODEL_FILES,
    OUTPUT_NAMES,
)
from cfa_anomaly.io_utils import atomic_write_text, file_sha256
from cfa_anomaly.model.plain import PlainCFA

FORMATS = tuple(MODEL_FILES)
EXAMPLE_BATCH = 2  # traced with 2 images so that no size-1 batch gets specialised into the graph


def _write_onnx(graph: PlainCFA, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401 - torch.onnx's exporter needs onnx and onnxscript
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError("ONNX export needs onnx and onnxscript: pip install 'cfa-anomaly[export]'") from err
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_shapes={"images": {0: batch}}, dynamo=True, external_data=False,
                          verbose=False)


def _write_openvino(graph: PlainCFA, example: torch.Tensor, path: Path) -> None:
    try:
        import openvino as ov
    except ImportError as err:
        raise ExportError("OpenVINO export needs openvino: pip install 'cfa-anomaly[export]'") from err
    onnx_path = path.with_suffix(".onnx")
    _write_onnx(graph, example, onnx_path)  # through ONNX: the path both runtimes share
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(path), compress_to_fp16=False)  # the default would halve the weights to float16
    onnx_path.unlink()


def _write_torchscript(graph: PlainCFA, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, (example,), check_trace=False)
    traced.save(str(path))


WRITERS = {"onnx": _write_onnx, "openvino": _write_openvino, "torchscript": _write_torchscript}


def _metadata(fmt: str, card: ModelCard, files: dict[str, str], checkpoint: Path) -> dict[str, Any]:
    crop, size = card.crop, card.input_size
    tiling = "" if card.grid is None else (f"; then cut into tiles as model.json's card says ({card.grid.describe()}), "
                                           "each scored alone and their maps blended (cfa_anomaly.tiling)")
    return {
        "format": EXPORT_FORMAT,
        "runtime": fmt,
        "files": files,
        "input": {"name": INPUT_NAME, "shape": ["N", 3, size, size], "dtype": "float32", "layout": "NCHW, RGB",
                  "range": [0.0, 1.0],
                  "preprocessing": (f"resize the short side to {card.resize} keeping the aspect ratio"
                                    if card.keep_aspect else f"resize to {card.resize}x{card.resize}")
                                   + f" (bilinear, antialiased), centre crop {crop}x{crop}; the backbone's "
                                     "normalisation is inside the graph" + tiling},
        "outputs": {OUTPUT_NAMES[0]: ["N", size, size], OUTPUT_NAMES[1]: ["N"]},
        "card": card.to_dict(),
        "checkpoint": {"file": str(checkpoint), "sha256": file_sha256(checkpoint)},
        "exported_with": {"package_version": __version__, "torch": torch.__version__,
                          "python": platform.python_version()},
    }


def _target_folder(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ExportError(f"--output {output} is a file; give a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"--output {output} is not empty; choose another folder or pass --overwrite")


def _previous_files(output: Path) -> set[str]:
    """The model files an earlier export in output lists (none when there is none or it is unreadable)."""
    try:
        listed = json.loads((output / METADATA_NAME).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in listed if isinstance(name, str) and Path(name).name == name}


def export_checkpoint(checkpoint: Path, fmt: str, output: Path, overwrite: bool = False) -> Path:
    """Export a checkpoint's plain float32 graph to output/ (model file(s) and model.json); returns the
    metadata path. The export is run on the CPU."""
    if fmt not in WRITERS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    _target_folder(output, overwrite)
    model, cfg, payload = restore_model(checkpoint, "cpu", precision="float32")
    card = ModelCard.of(cfg, saved_thresholds(payload), payload.get("precision") or cfg.model.precision,
                        model.extractor.weights_hash(), __version__)
    graph = PlainCFA(model, cfg.data.input_size).eval()
    size = cfg.data.input_size
    example = torch.rand(EXAMPLE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        try:
            WRITERS[fmt](graph, example, staging / MODEL_FILES[fmt])
        except ExportError:
            raise
        except Exception as err:  # noqa: BLE001 - exporters raise many types; say which step failed
            raise ExportError(f"exporting {checkpoint} to {fmt} failed: {type(err).__name__}: {err}") from err
        files = {p.name: file_sha256(p) for p in sorted(staging.iterdir())}
        metadata = _metadata(fmt, card, files, checkpoint)
        output.mkdir(parents=True, exist_ok=True)
        previous = _previous_files(output)
        (output / METADATA_NAME).unlink(missing_ok=True)  # an old export's metadata must never describe new files
        for name in files:
            (staging / name).replace(output / name)
        for name in previous - set(files):  # --overwrite: the replaced export's other files (e.g. another format)
            (output / name).unlink(missing_ok=True)
        atomic_write_text(output / METADATA_NAME, json.dumps(metadata, indent=2) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output / METADATA_NAME
