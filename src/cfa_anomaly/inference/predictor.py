"""One object for inference: a trained model (checkpoint or export), its preprocessing and its threshold.

`cfa test`, `cfa predict`, the panels and the exporter all score through a Predictor, built from a
checkpoint (the torch model), from a model in memory (right after training), or from an exported model
(ONNX Runtime, OpenVINO, TorchScript). The torch model's code is imported only for the first two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cfa_anomaly import runfiles
from cfa_anomaly.config import Config
from cfa_anomaly.data.images import array_to_rgb, map_to_input_size, pil_to_rgb, read_rgb
from cfa_anomaly.inference.card import ModelCard
from cfa_anomaly.inference.result import InferenceResult
from cfa_anomaly.thresholds import Thresholds

ImageInput = str | Path | Image.Image | np.ndarray
Backend = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]  # (N,3,c,c) 0..1 -> (maps, scores)


def _is_checkpoint(path: Path) -> bool:
    return path.is_file() and path.suffix in (".pt", ".pth", ".ckpt") and not (path.parent / runfiles.MODEL_METADATA).is_file()


class Predictor:
    """Scores images with a trained CFA: any size and mode in, typed scores, maps and decisions out.

    >>> predictor = Predictor.load("runs/grid/<time>/checkpoint.pt")   # or an exported model's folder
    >>> result = predictor.predict(["a.png", "b.png"])
    >>> result.scores, result.decisions, result.input_maps[0].shape
    """

    def __init__(self, backend: Backend, card: ModelCard, batch_size: int = 4) -> None:
        self.backend = backend
        self.card = card
        self.batch_size = batch_size
        self._config: Config | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | Path, **options: Any) -> Predictor:
        """A checkpoint file (.pt) or an exported model (its folder, or its model file)."""
        path = Path(path)
        return cls.from_checkpoint(path, **options) if _is_checkpoint(path) else cls.from_export(path, **options)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", graph: str = "fast",
                        precision: str | None = None) -> Predictor:
        """The torch model of a checkpoint. graph: fast (the trained precision) or plain (exact float32).
        precision: override the stored one (float32, mixed, bfloat16, int8-search, projected-search)."""
        from cfa_anomaly.checkpoint import restore_model, saved_thresholds

        model, cfg, payload = restore_model(Path(path), device, precision)
        return cls.from_model(model, cfg, saved_thresholds(payload), graph=graph)

    @classmethod
    def from_model(cls, model: Any, cfg: Config, thresholds: Thresholds | None,
                   graph: str = "fast") -> Predictor:
        """A CFA model in memory (e.g. just trained) with its config and held-out thresholds."""
        from cfa_anomaly import __version__
        from cfa_anomaly.inference.torch_backend import TorchBackend

        card = ModelCard.of(cfg, thresholds, model.precision, model.extractor.weights_hash(), __version__)
        predictor = cls(TorchBackend(model, cfg.data.input_size, graph), card, cfg.data.batch_size)
        predictor._config = cfg
        return predictor

    @classmethod
    def from_export(cls, path: str | Path, inference_precision: str = "float32",
                    verify: bool = True) -> Predictor:
        """An exported model (cfa export): its folder or model file; run by ONNX Runtime, OpenVINO or
        TorchScript as its format says. inference_precision: float32, or bfloat16 (OpenVINO on CPUs with bf16 units); f32 and bf16 (OpenVINO's names)
        are accepted too."""
        from cfa_anomaly.inference.runtimes import open_export

        backend, card = open_export(Path(path), inference_precision, verify)
        return cls(backend, card, int(card.config.get("data", {}).get("batch_size", 4)))

    def with_thresholds(self, thresholds: Thresholds) -> Predictor:
        """The same model deciding and outlining with other thresholds."""
        other = Predictor(self.backend, replace(self.card, thresholds=thresholds), self.batch_size)
        other._config = self._config
        return other

    def with_threshold(self, value: float, source: str) -> Predictor:
        """The same model deciding at another image-score threshold; `source` says where it came from."""
        return self.with_thresholds(self.thresholds.with_image(value, source))

    def with_quantile(self, quantile: float) -> Predictor:
        """The same model deciding at another (conformal) quantile of its held-out normal images' scores."""
        return self.with_thresholds(self.thresholds.with_quantile(quantile))

    def with_pixel_threshold(self, value: float, source: str) -> Predictor:
        """The same model outlining defects (and making defect masks) at another pixel-score threshold."""
        return self.with_thresholds(self.thresholds.with_pixel(value, source))

    # ------------------------------------------------------------------ properties
    @property
    def thresholds(self) -> Thresholds:
        return self.card.thresholds

    @property
    def threshold(self) -> float | None:
        """The image decision threshold; None: the model makes no decision."""
        return self.card.thresholds.image

    @property
    def pixel_threshold(self) -> float | None:
        """The pixel threshold (outlines, defect masks; Thresholds.pixel_level); the image threshold for
        models that store none."""
        return self.card.thresholds.outline_level

    @property
    def crop(self) -> int:
        return self.card.crop

    @property
    def name(self) -> str:
        """Which engine scores: e.g. "torch fast (mixed, cpu)", "onnxruntime (CPUExecutionProvider)"."""
        return str(getattr(self.backend, "name", type(self.backend).__name__))

    @property
    def config(self) -> Config:
        """The training config (panels and GIF settings come from its evaluation section)."""
        if self._config is None:
            self._config = self.card.training_config()
        return self._config

    # ------------------------------------------------------------------ scoring
    def read(self, image: ImageInput, index: int = 0) -> tuple[np.ndarray, str]:
        """Any accepted input -> (H, W, 3) uint8 RGB and a name for it."""
        if isinstance(image, (str, Path)):
            return read_rgb(Path(image)), str(image)
        if isinstance(image, Image.Image):
            return pil_to_rgb(image), f"<image {index}>"
        if isinstance(image, np.ndarray):
            return array_to_rgb(image, f"image {index} (array)"), f"<image {index}>"
        raise TypeError(f"image {index}: expected a path, a PIL image or a numpy array, got {type(image).__name__}")

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, crop, crop) float32 in 0..1, the geometry the model was trained with."""
        return self.card.preprocess(rgb)

    def score_batch(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed images (N, 3, crop, crop) in 0..1 -> (maps (N, crop, crop), scores (N,)) float32.
        A tiled model scores the tiles and blends their maps (tiling.py); a score is its map's maximum."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, self.crop, self.crop):
            raise ValueError(f"expected images of shape (N, 3, {self.crop}, {self.crop}), got {tuple(images.shape)}")
        grid = self.card.grid
        if grid is None:
            return self.backend(images.float())
        maps = grid.stitch(self.score_tiles(grid.cut(images.float())))
        return maps, maps.reshape(len(maps), -1).max(axis=1)

    def score_tiles(self, tiles: torch.Tensor) -> np.ndarray:
        """Model inputs (M, 3, s, s), s = card.input_size -> their maps (M, s, s), a few batches at a time."""
        step = max(self.batch_size, 1) * 4
        maps = [self.backend(tiles[i: i + step])[0] for i in range(0, len(tiles), step)]
        return np.concatenate(maps) if maps else np.zeros((0, *tiles.shape[-2:]), np.float32)

    def decide(self, scores: np.ndarray) -> np.ndarray | None:
        """score >= threshold (defective) per image; None when the model has no threshold."""
        return self.thresholds.decide(scores)

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> InferenceResult:
        """Score images given as paths, PIL images or uint8 arrays (any size, any mode); one or a list."""
        items = [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)
        sources, sizes, maps, scores = [], [], [], []
        for start in range(0, len(items), self.batch_size):
            batch = [self.read(item, start + i) for i, item in enumerate(items[start: start + self.batch_size])]
            tensors = torch.stack([self.preprocess(rgb) for rgb, _ in batch])
            batch_maps, batch_scores = self.score_batch(tensors)
            maps.append(batch_maps)
            scores.append(batch_scores)
            sources += [name for _, name in batch]
            sizes += [rgb.shape[:2] for rgb, _ in batch]
        crop = self.crop
        all_maps = np.concatenate(maps) if maps else np.zeros((0, crop, crop), np.float32)
        all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        input_maps = [map_to_input_size(m, size, self.card.resize, crop, self.card.keep_aspect)
                      for m, size in zip(all_maps, sizes)]
        return InferenceResult(sources=sources, scores=all_scores, maps=all_maps, input_maps=input_maps,
                               thresholds=self.thresholds)
