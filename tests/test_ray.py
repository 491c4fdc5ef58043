"""The Ray executors on a local Ray instance: the same metrics and predictions as in process, retries of a
killed or failing task, failing cells reported. Manifests and the missing-Ray message need no Ray."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_config, small_overrides

from cfa_anomaly import cli
from cfa_anomaly.benchmark import run_benchmark
from cfa_anomaly.cells import Cell, CellOutcome
from cfa_anomaly.data.samples import DatasetError, list_images
from cfa_anomaly.inference import Predictor
from cfa_anomaly.inference.spec import PredictorSpec
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.predict import PredictOptions, collect_images, predict_images

RAY_MISSING = "Ray is not installed: pip install 'cfa-anomaly[ray]' (make test installs it)"
FAKE_METRICS = {"image_auroc": 0.5, "pixel_auroc": 0.5, "pixel_f1_max": 0.5, "aupro": 0.5}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module: two CPUs, no dashboard."""
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    pytest.importorskip("ray.data", reason=RAY_MISSING)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_overrides(root: Path) -> list[str]:
    """One epoch at 64 px: the benchmark's cells in a few seconds each."""
    overrides = [o for o in small_overrides(root, **{"train.epochs": "1"}) if not o.startswith("data.")]
    return [*overrides, "data.resize=72", "data.crop=64", "data.holdout_fraction=0.2"]


@pytest.fixture(scope="module")
def grid_root(synth_root, tmp_path_factory) -> Path:
    """A root with the synthetic category and "broken": the same images, one of its test files corrupt."""
    root = tmp_path_factory.mktemp("ray_data")
    (root / SYNTH_CATEGORY).symlink_to(synth_root / SYNTH_CATEGORY, target_is_directory=True)
    shutil.copytree(synth_root / SYNTH_CATEGORY, root / "broken")
    victim = min((root / "broken" / "test" / "good").glob("*.png"))
    victim.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def tables(output: Path) -> str:
    """The tables of results.md (without the notes, the cells that did not finish and the GIFs after them)."""
    return (output / "results.md").read_text().split("'-' is a category")[0]


@requires_mobilenet_weights
def test_the_ray_grid_gives_the_local_metrics_and_reports_a_failing_cell(local_ray, grid_root, tmp_path,
                                                                          capsys):
    overrides = tiny_overrides(grid_root)
    local = run_benchmark(grid_root, tmp_path / "local", [SYNTH_CATEGORY, "broken"], overrides, config_dir=None,
                          seeds=[0, 1])
    sets = [arg for item in overrides for arg in ("--set", item)]
    code = cli.main(["benchmark", "--executor", "ray", "--root", str(grid_root), "--output",
                     str(tmp_path / "ray"), "--config-dir", str(tmp_path), "--categories", SYNTH_CATEGORY,
                     "broken", "--seeds", "0", "1", *sets])
    assert code == cli.EXIT_CATEGORIES_FAILED
    assert "2 of 4 cells" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    keys = [f"mobilenet_v2/seed-{seed}/{SYNTH_CATEGORY}" for seed in (0, 1)]
    assert summary["executor"] == "ray" and local["executor"] == "local"
    assert summary["results"] == local["results"]  # exactly: same seeds, same threads
    assert summary["results"][keys[0]] != summary["results"][keys[1]]  # the seeds do change the result
    for seed in (0, 1):
        broken = f"mobilenet_v2/seed-{seed}/broken"
        assert summary["status"][broken] == "failed"
        assert "unreadable test file" in summary["problems"][broken]
        assert (tmp_path / "ray" / broken / "error.txt").is_file()
    # the same tables and CSV as the local run; the failed cells listed under them
    assert tables(tmp_path / "ray") == tables(tmp_path / "local")
    assert "± " in tables(tmp_path / "ray")
    assert (tmp_path / "ray" / "results.csv").read_text() == (tmp_path / "local" / "results.csv").read_text()
    listed = (tmp_path / "ray" / "results.md").read_text()
    assert "- mobilenet_v2/seed-0/broken: failed: DatasetError" in listed
    assert (tmp_path / "ray" / "assets" / f"mobilenet_v2-{SYNTH_CATEGORY}.gif").is_file()

    again = run_benchmark(grid_root, tmp_path / "ray", [SYNTH_CATEGORY], overrides, config_dir=None,
                          seeds=[0, 1], executor=ray_executor())
    assert again["status"] == dict.fromkeys(keys, "reused")  # the resume rules hold on Ray too


def ray_executor(**options):
    from cfa_anomaly.distributed.grid import RayExecutor

    return RayExecutor(**options)


def attempts_of(folder: Path) -> int:
    return len(list(folder.glob("attempt-*")))


def crashing_once(attempts: Path):
    """A cell runner whose worker process dies on the first attempt (as if killed), then succeeds."""
    def run(cell: Cell) -> CellOutcome:
        (attempts / f"attempt-{os.getpid()}-{time.monotonic_ns()}").touch()
        if len(list(attempts.glob("attempt-*"))) == 1:
            os._exit(1)
        return CellOutcome(cell.key, "done", metrics=dict(FAKE_METRICS))

    return run


def always_failing(attempts: Path):
    """A cell runner that raises on every attempt."""
    def run(cell: Cell) -> CellOutcome:
        (attempts / f"attempt-{os.getpid()}-{time.monotonic_ns()}").touch()
        raise RuntimeError("the machine is on fire")

    return run


def one_cell_on_ray(runner_of: Callable[[Path], Callable[[Cell], CellOutcome]], synth_root: Path,
                    tmp_path: Path) -> tuple[dict, int]:
    """A one-cell benchmark whose Ray task runs runner_of(<a folder of attempts>): the summary and the
    number of attempts the task made."""
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    summary = run_benchmark(synth_root, tmp_path / "out", [SYNTH_CATEGORY], tiny_overrides(synth_root),
                            config_dir=None, executor=ray_executor(runner=runner_of(attempts)))
    return summary, attempts_of(attempts)


def test_a_killed_task_is_retried(local_ray, synth_root, tmp_path):
    summary, attempts = one_cell_on_ray(crashing_once, synth_root, tmp_path)
    assert attempts == 2
    assert summary["status"] == {SYNTH_CATEGORY: "done"}
    assert summary["results"][SYNTH_CATEGORY] == FAKE_METRICS


def test_a_failing_task_is_retried_once_then_listed_as_failed(local_ray, synth_root, tmp_path):
    summary, attempts = one_cell_on_ray(always_failing, synth_root, tmp_path)
    assert attempts == 2
    assert summary["status"] == {SYNTH_CATEGORY: "failed"}
    problem = summary["problems"][SYNTH_CATEGORY]
    assert "RuntimeError: the machine is on fire" in problem and "after 2 attempts" in problem
    assert f"- {SYNTH_CATEGORY}: failed: RuntimeError" in (tmp_path / "out" / "results.md").read_text()


@pytest.fixture(scope="module")
def checkpoint(synth_root, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("ray_trained")
    train_and_test(small_config(synth_root, **{"data.holdout_fraction": "0.2"}), output, run_test=False)
    return output / runfiles.CHECKPOINT


@pytest.fixture
def images(synth_root, tmp_path) -> list[Path]:
    """The 7 synthetic test images in one folder, and a corrupt file sorting among them."""
    folder = tmp_path / "in"
    folder.mkdir()
    test = synth_root / SYNTH_CATEGORY / "test"
    for source in [p for sub in sorted(test.iterdir()) for p in list_images(sub)]:
        shutil.copyfile(source, folder / f"{source.parent.name}_{source.name}")
    (folder / "good_000z-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return sorted(folder.iterdir())


def same_npz(left: Path, right: Path) -> None:
    with np.load(left) as a, np.load(right) as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{left.name}: {key}")


@requires_mobilenet_weights
def test_ray_predict_writes_what_local_predict_writes(local_ray, checkpoint, images, tmp_path):
    common = ["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--format", "both", "--panels",
              "all", str(images[0].parent)]
    assert cli.main([*common, "--output", str(tmp_path / "local")]) == 0
    assert cli.main([*common, "--executor", "ray", "--actors", "1", "--output", str(tmp_path / "ray")]) == 0
    for name in ("scores.csv", "scores.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    assert "not really a png" not in (tmp_path / "ray" / "scores.csv").read_text()
    assert "good_000z-corrupt.png" in (tmp_path / "ray" / "scores.csv").read_text()  # listed, with its error
    same_npz(tmp_path / "local" / "maps.npz", tmp_path / "ray" / "maps.npz")
    panels = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / "panels").rglob("*.png"))
    assert len(panels) == len(images) - 1
    for panel in panels:
        assert (tmp_path / "ray" / panel).read_bytes() == (tmp_path / "local" / panel).read_bytes()


@requires_mobilenet_weights
def test_ray_predict_shards_from_a_manifest(local_ray, checkpoint, images, tmp_path):
    from cfa_anomaly.distributed.predict import RayPredictSettings, predict_images_ray

    manifest = tmp_path / "manifest.csv"
    manifest.write_text("line,path\n" + "".join(f"{i % 3},{p}\n" for i, p in enumerate(reversed(images))))
    spec = PredictorSpec(checkpoint=str(checkpoint), device="cpu")
    predictor = spec.build()
    options = PredictOptions(shard_size=3, panels="none")
    local = predict_images(predictor, [manifest], tmp_path / "local", options)
    distributed = predict_images_ray(spec, predictor, [manifest], tmp_path / "ray", options,
                                     RayPredictSettings(actors=1))
    assert [p.relative_to(tmp_path / "ray") for p in distributed.map_files] == \
        [p.relative_to(tmp_path / "local") for p in local.map_files] == \
        [Path("maps") / f"shard-0000{i}.npz" for i in range(3)]
    for left, right in zip(local.map_files, distributed.map_files):
        same_npz(left, right)
    assert distributed.scored == local.scored == 7
    assert distributed.skipped == local.skipped and len(local.skipped) == 1
    assert (tmp_path / "ray" / "scores.csv").read_text() == (tmp_path / "local" / "scores.csv").read_text()


def test_manifests_list_their_path_column(tmp_path):
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    (tmp_path / "m.csv").write_text(f"camera,path\n1,{images[0]}\n2,{images[1]}\n")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"path": str(p), "line": 3}) + "\n" for p in images))
    assert collect_images([tmp_path / "m.csv"]) == images
    assert collect_images([tmp_path / "m.jsonl"]) == images
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    with pytest.raises(DatasetError, match="no 'path' column"):
        collect_images([tmp_path / "bad.csv"])
    (tmp_path / "bad.jsonl").write_text('{"file": "x.png"}\n')
    with pytest.raises(DatasetError, match="line 1"):
        collect_images([tmp_path / "bad.jsonl"])


def test_without_ray_the_command_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    assert cli.main(["benchmark", "--executor", "ray", "--root", str(tmp_path), "--output",
                     str(tmp_path / "b"), "--categories", "bottle"]) == cli.EXIT_USER_ERROR
    assert "pip install 'cfa-anomaly[ray]'" in capsys.readouterr().err
    assert cli.main(["predict", "--executor", "ray", "--checkpoint", str(tmp_path / "x.pt"), str(tmp_path),
                     "--output", str(tmp_path / "p")]) == cli.EXIT_USER_ERROR
    assert "pip install 'cfa-anomaly[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and not (tmp_path / "b").exists()


@requires_mobilenet_weights
def test_predictor_spec_loads_the_checkpoint_with_its_overrides(checkpoint):
    spec = PredictorSpec(checkpoint=str(checkpoint), device="cpu", threshold=0.25, pixel_threshold=0.5)
    predictor = spec.build()
    assert isinstance(predictor, Predictor)
    assert (predictor.threshold, predictor.pixel_threshold) == (0.25, 0.5)
    relative = PredictorSpec(checkpoint="run/checkpoint.pt").absolute()
    assert relative.checkpoint == str(Path.cwd() / "run" / "checkpoint.pt")
