"""The `cfa` command's manners: user errors, exit codes and how much it says (-v / -q). Fast: no training."""

from __future__ import annotations

import pytest

import cfa_anomaly
from cfa_anomaly import cli
from cfa_anomaly.backbones import BackboneError
from cfa_anomaly.checkpoint import CheckpointError
from cfa_anomaly.config import ConfigError
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.errors import CfaError
from cfa_anomaly.evaluate import EvaluationError
from cfa_anomaly.inference.errors import ExportError
from cfa_anomaly.model.factory import DeviceError
from cfa_anomaly.outputs import OutputExistsError
from cfa_anomaly.train import TrainingError

# each user error and the built-in base it keeps, so `except ValueError` elsewhere still catches it
USER_ERRORS = {
    BackboneError: RuntimeError, CheckpointError: ValueError, ConfigError: ValueError, DatasetError: ValueError,
    DeviceError: ValueError, EvaluationError: ValueError, ExportError: ValueError,
    OutputExistsError: FileExistsError, TrainingError: RuntimeError,
}


@pytest.mark.parametrize("error", list(USER_ERRORS), ids=lambda e: e.__name__)
def test_every_user_error_is_a_cfa_error_and_keeps_its_builtin_base(error):
    assert issubclass(error, CfaError) and issubclass(error, USER_ERRORS[error])
    assert cfa_anomaly.CfaError is CfaError
    assert str(error("names the file")) == "names the file"


def test_a_user_error_exits_2_with_one_error_line(tmp_path, capsys):
    assert cli.main(["train", "--set", "model.bogus_key=3", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.bogus_key" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
