"""Experiment tracking (train.log): a run's config, per-epoch loss and validation figures, final metrics and
files in TensorBoard or MLflow, beside the run's own files (which stay the record).

- tensorboard: event files in train.log_uri (default <run>/tensorboard): the config as text, train/loss and
  validation/<metric> per epoch, test/<metric> at the end, the run's plots as images. TensorBoard keeps no
  files: the checkpoint stays in the run folder.
- mlflow: a run in the experiment named after data.category, at the tracking URI train.log_uri (default a
  local SQLite store, <output_dir>/mlflow.db, with artefacts in <output_dir>/mlartifacts; MLflow 3 keeps
  its plain file store for old data only): the config as params, the same metrics (step = epoch), and
  metrics.json, the plots and the checkpoint as artefacts. `mlflow ui --backend-store-uri
  sqlite:///<output_dir>/mlflow.db` (the full mlflow package) shows them.

Both are optional extras ([tensorboard], [mlflow]); asking for one that is not installed is an error that
says what to install, before training starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cfa_anomaly.config import Config
from cfa_anomaly.errors import CfaError
from cfa_anomaly.train import EpochObserver

log = logging.getLogger(__name__)
PLOTS = (".png",)
SQLITE = "sqlite:///"


class TrackingError(CfaError, RuntimeError):
    """A tracker that cannot be used (not installed, unreachable); the message says what to do."""


class RunTracker(Protocol):
    def epoch(self, epoch: int, figures: dict[str, float | None]) -> None: ...
    def finish(self, metrics: dict[str, float | None], files: list[Path]) -> None: ...


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"data": {"resize": 224}} -> {"data.resize": "224"}."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _defined(figures: dict[str, float | None]) -> dict[str, float]:
    return {key: float(value) for key, value in figures.items() if value is not None}


class TensorBoardTracker:
    """Event files written with torch's SummaryWriter."""

    def __init__(self, folder: Path, cfg: Config) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise TrackingError("train.log=tensorboard needs tensorboard: pip install "
                                "'cfa-anomaly[tensorboard]'") from err
        self.writer = SummaryWriter(log_dir=str(folder))
        config = "\n".join(f"    {key}: {value}" for key, value in _flat(cfg.to_dict()).items())
        self.writer.add_text("config", config)

    def epoch(self, epoch: int, figures: dict[str, float | None]) -> None:
        for key, value in _defined(figures).items():
            self.writer.add_scalar(key, value, epoch)

    def finish(self, metrics: dict[str, float | None], files: list[Path]) -> None:
        for key, value in _defined(metrics).items():
            self.writer.add_scalar(f"test/{key}", value, 0)
        from PIL import Image

        for path in files:
            if path.suffix in PLOTS:
                image = np.asarray(Image.open(path).convert("RGB"))
                self.writer.add_image(f"plots/{path.stem}", image, 0, dataformats="HWC")
        self.writer.close()


class MlflowTracker:
    """A run in an MLflow tracking store, through MlflowClient (no process-wide active run)."""

    def __init__(self, uri: str, cfg: Config, run_name: str, artefacts: Path | None = None) -> None:
        """artefacts: where a new experiment keeps its files (default: the store's own choice)."""
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise TrackingError("train.log=mlflow needs mlflow: pip install 'cfa-anomaly[mlflow]'") from err
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(cfg.data.category)
        location = artefacts.absolute().as_uri() if artefacts is not None else None
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(cfg.data.category, artifact_location=location))
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        for key, value in _flat(cfg.to_dict()).items():
            self.client.log_param(self.run_id, key, value[:500])
        log.info("tracking this run in MLflow at %s (run %s)", uri, self.run_id)

    def epoch(self, epoch: int, figures: dict[str, float | None]) -> None:
        for key, value in _defined(figures).items():
            self.client.log_metric(self.run_id, key, value, step=epoch)

    def finish(self, metrics: dict[str, float | None], files: list[Path]) -> None:
        for key, value in _defined(metrics).items():
            self.client.log_metric(self.run_id, f"test/{key}", value)
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id)


def open_tracker(cfg: Config, output: Path) -> RunTracker | None:
    """The tracker train.log asks for (None without one), opened before training starts."""
    if cfg.train.log == "tensorboard":
        return TensorBoardTracker(Path(cfg.train.log_uri or output / "tensorboard"), cfg)
    if cfg.train.log == "mlflow":
        base = Path(cfg.output_dir).absolute()
        uri = cfg.train.log_uri or f"sqlite:///{base / 'mlflow.db'}"
        if uri.startswith(SQLITE):  # a local store: its files beside the database, not in the current folder
            database = Path(uri[len(SQLITE):])
            database.parent.mkdir(parents=True, exist_ok=True)
            return MlflowTracker(uri, cfg, output.name, database.parent / "mlartifacts")
        return MlflowTracker(uri, cfg, output.name)  # a server: its own artefact store
    return None


class TrackedEpochs:
    """fit's epoch observer when a run is tracked: the validation tracker's work (if any), then the epoch's
    loss and validation figures to the run tracker. Its state is the validation tracker's."""

    def __init__(self, run: RunTracker, validation: EpochObserver | None) -> None:
        self.run, self.validation = run, validation

    def __call__(self, epoch: int, loss: float) -> None:
        figures: dict[str, float | None] = {"train/loss": loss}
        if self.validation is not None:
            self.validation(epoch, loss)
            history = getattr(self.validation, "history", [])
            if history and history[-1]["epoch"] == epoch:
                figures.update({f"validation/{k}": v for k, v in history[-1].items() if k not in ("epoch",
                                                                                               "loss")})
        self.run.epoch(epoch, figures)

    def state_dict(self) -> dict[str, Any]:
        return self.validation.state_dict() if self.validation is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.validation is not None:
            self.validation.load_state_dict(state)
