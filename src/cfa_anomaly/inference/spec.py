"""How to load a Predictor, as plain data: a worker process (a Ray actor) builds the same one from it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from cfa_anomaly.inference.errors import ExportError
from cfa_anomaly.inference.predictor import Predictor
from cfa_anomaly.inference.runtimes import inference_precision_name


@dataclass(frozen=True)
class PredictorSpec:
    """A checkpoint or an exported model, how to run it, and the decision overrides of `cfa predict`."""

    checkpoint: str | None = None  # a checkpoint (torch); or
    model: str | None = None  # an exported model's folder or file
    device: str = "auto"  # checkpoints
    graph: str = "fast"  # checkpoints: fast or plain
    inference_precision: str = "float32"  # exported OpenVINO models: float32 or bfloat16 (or f32, bf16)
    threshold: float | None = None  # decide at this image score instead of the stored threshold
    quantile: float | None = None  # or at this quantile of the stored held-out scores
    pixel_threshold: float | None = None  # outline and mask pixels from this map value

    def absolute(self) -> PredictorSpec:
        """The same with absolute model paths (a worker may run in another folder)."""
        def resolved(path: str | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().absolute())

        return replace(self, checkpoint=resolved(self.checkpoint), model=resolved(self.model))

    def build(self) -> Predictor:
        """Load the model and apply the overrides."""
        if self.checkpoint:
            if inference_precision_name(self.inference_precision) != "float32":
                raise ExportError("--inference-precision applies to exported models (--model); for a "
                                  "checkpoint use --graph plain (float32) or the precision it was trained "
                                  "with (default)")
            predictor = Predictor.from_checkpoint(self.checkpoint, device=self.device, graph=self.graph)
        elif self.model:
            predictor = Predictor.from_export(self.model, inference_precision=self.inference_precision)
        else:
            raise ExportError("no model given: pass --checkpoint or --model")
        if self.threshold is not None:
            predictor = predictor.with_threshold(self.threshold, "--threshold on the command line")
        elif self.quantile is not None:
            predictor = predictor.with_quantile(self.quantile)
        if self.pixel_threshold is not None:
            predictor = predictor.with_pixel_threshold(self.pixel_threshold,
                                                       "--pixel-threshold on the command line")
        return predictor
