"""The `cfa` command's manners: user errors, exit codes and how much it says (-v / -q); one tiny training."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_overrides

import cfa_anomaly
from cfa_anomaly import cli, console
from cfa_anomaly.backbones import BackboneError
from cfa_anomaly.checkpoint import CheckpointError
from cfa_anomaly.config import ConfigError, load_config
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.errors import CfaError
from cfa_anomaly.evaluate import EvaluationError
from cfa_anomaly.inference.errors import ExportError
from cfa_anomaly.model.factory import DeviceError
from cfa_anomaly.outputs import OutputExistsError
from cfa_anomaly.report import column_title
from cfa_anomaly.train import TrainingError

# each user error and the built-in base it keeps, so `except ValueError` elsewhere still catches it
USER_ERRORS = {
    BackboneError: RuntimeError, CheckpointError: ValueError, ConfigError: ValueError,
    DatasetError: ValueError, DeviceError: ValueError, EvaluationError: ValueError, ExportError: ValueError,
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


@pytest.fixture(autouse=True)
def _restore_logging():
    """The cfa command sets the package logger's level and a stderr handler; later tests start anew."""
    package = logging.getLogger(console.PACKAGE_LOGGER)
    level = package.level
    yield
    package.setLevel(level)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == console.HANDLER_NAME]:
        root.removeHandler(handler)


METRICS = {"image_auroc": 0.9, "pixel_auroc": 0.8, "pixel_f1_max": 0.5, "aupro": 0.7}


def finished_category(root: Path, output: Path, category: str) -> None:
    """A category an earlier benchmark finished (its metrics.json): `cfa benchmark` reuses it, no training."""
    cfg = load_config(None, [f"data.root={root}", f"data.category={category}"])
    (output / category).mkdir(parents=True)
    (output / category / "metrics.json").write_text(json.dumps({"config": cfg.to_dict(), "metrics": METRICS}))


def benchmark(tmp_path: Path, before: tuple[str, ...] = (), after: tuple[str, ...] = (),
              categories: tuple[str, ...] = ("done_part",)) -> int:
    """`cfa [before] benchmark ... [after]` over tmp_path/data into tmp_path/bench."""
    paths = ["--root", str(tmp_path / "data"), "--output", str(tmp_path / "bench"),
             "--config-dir", str(tmp_path)]
    return cli.main([*before, "benchmark", *paths, "--categories", *categories, *after])


@pytest.fixture
def reusable(tmp_path: Path) -> Path:
    finished_category(tmp_path / "data", tmp_path / "bench", "done_part")
    return tmp_path


def test_progress_messages_go_to_stderr_and_results_to_stdout(reusable, capsys):
    assert benchmark(reusable) == 0
    out, err = capsys.readouterr()
    assert "[done_part] finished earlier: reusing" in err
    assert "1 of 1 categories" in out and "finished earlier" not in out


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_shows_no_progress_messages(reusable, capsys, where):
    quiet = {"before": {"before": ("-q",)}, "after": {"after": ("--quiet",)}}[where]
    assert benchmark(reusable, **quiet) == 0
    out, err = capsys.readouterr()
    assert err == "" and "1 of 1 categories" in out


def test_verbose_shows_debug_messages(reusable, caplog):
    caplog.set_level(logging.DEBUG)
    assert benchmark(reusable, before=("-v",)) == 0
    assert logging.getLogger("cfa_anomaly.benchmark").isEnabledFor(logging.DEBUG)
    assert any(r.levelno == logging.DEBUG and r.name.startswith("cfa_anomaly") for r in caplog.records)


def test_python_m_shows_the_commands_own_messages(reusable):
    """Under `python -m cfa_anomaly.cli` the module is __main__; its messages must still be the package's."""
    command = [sys.executable, "-m", "cfa_anomaly.cli", "-v", "benchmark", "--root", str(reusable / "data"),
               "--output", str(reusable / "bench"), "--config-dir", str(reusable), "--categories",
               "done_part"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"cfa {cfa_anomaly.__version__}: " in done.stderr and "finished earlier" in done.stderr


def test_verbose_and_quiet_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["-v", "-q", "--version"])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_warnings_say_so_and_progress_lines_do_not(capsys):
    console.configure_logging(logging.INFO)
    logging.getLogger("cfa_anomaly.pipeline").info("[part] training")
    logging.getLogger("cfa_anomaly.pipeline").warning("2 images have no mask")
    assert capsys.readouterr().err == "[part] training\nWARNING: 2 images have no mask\n"


@pytest.mark.parametrize(("level", "disable"),
                         [(logging.INFO, None), (logging.DEBUG, None), (logging.WARNING, True)])
def test_progress_bars_hide_under_quiet(monkeypatch, level, disable):
    seen = {}
    monkeypatch.setattr(console, "tqdm", lambda items, **options: seen.update(options) or items)
    console.configure_logging(level)
    assert list(console.progress([1, 2], desc="train", unit="epoch")) == [1, 2]
    assert seen["disable"] is disable  # None: tqdm shows the bar on a terminal only


def test_benchmark_exits_1_naming_the_categories_without_results(reusable, capsys):
    (reusable / "bad_config.yaml").write_text("model:\n  bogus_key: 3\n")  # a config error: "failed"
    code = benchmark(reusable, categories=("done_part", "absent_part", "bad_config"))  # absent: "skipped"
    out, err = capsys.readouterr()
    assert code == cli.EXIT_CATEGORIES_FAILED
    assert "1 of 3 categories" in out
    assert "2 of 3 categories have no results: absent_part (skipped), bad_config (failed)" in err
    assert "[absent_part] skipped: dataset not found" in err and "[bad_config] config error" in err
    # each reason once, on one line (it was logged when it happened and listed again at the end)
    for reason in ("dataset not found", "config error"):
        assert err.count(reason) == 1 and len([line for line in err.splitlines() if reason in line]) == 1
    summary = json.loads((reusable / "bench" / "summary.json").read_text())
    assert summary["status"] == {"done_part": "reused", "absent_part": "skipped", "bad_config": "failed"}
    assert column_title("done_part") in (reusable / "bench" / "results.md").read_text()


@requires_mobilenet_weights
def test_benchmark_with_a_missing_category_trains_the_other_and_exits_1(synth_root, tmp_path, capsys):
    overrides = [o for o in small_overrides(synth_root, **{"train.epochs": "1"}) if not o.startswith("data.")]
    sets = [arg for item in [*overrides, "data.resize=72", "data.crop=64"] for arg in ("--set", item)]
    output = tmp_path / "bench"
    code = cli.main(["-q", "benchmark", "--root", str(synth_root), "--output", str(output), "--config-dir",
                     str(tmp_path), "--categories", SYNTH_CATEGORY, "absent_part", *sets])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_CATEGORIES_FAILED
    assert (output / SYNTH_CATEGORY / "metrics.json").is_file() and "1 of 2 categories" in out
    assert "[absent_part] skipped" in err and f"[{SYNTH_CATEGORY}]" not in err  # -q: no progress lines
    assert err.count("dataset not found") == 1


def test_demo_exits_1_when_a_category_failed(tmp_path, monkeypatch, capsys):
    import cfa_anomaly.benchmark
    import cfa_anomaly.data.synthetic

    def broken_benchmark(root, output, categories, overrides, config_dir):
        (output / "results.md").write_text("| tables |\n")
        return {"results": {}, "problems": {categories[0]: "failed: TrainingError: the loss became nan"},
                "status": {categories[0]: "failed"}}

    monkeypatch.setattr(cfa_anomaly.data.synthetic, "generate_dataset", lambda *args, **kwargs: None)
    monkeypatch.setattr(cfa_anomaly.benchmark, "run_benchmark", broken_benchmark)
    assert cli.main(["demo", "--kinds", "texture", "--output", str(tmp_path / "demo")]) == 1
    assert "1 of 1 categories have no results: synthetic_texture (failed)" in capsys.readouterr().err
