"""report.html's data, gathered from real run folders: a training run, a `cfa predict` output without labels,
a benchmark (and a grid's tables), and the errors for folders that are none of these."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_overrides

from cfa_anomaly import cli, runfiles
from cfa_anomaly.benchmark import run_benchmark
from cfa_anomaly.config import load_config
from cfa_anomaly.html_report import PAGE_FILES, render_page, script_json, write_report
from cfa_anomaly.report import TABLES
from cfa_anomaly.report_benchmark import benchmark_page
from cfa_anomaly.report_data import PREDICT, RUN, HeldOut, ReportError, folder_kind, run_page
from cfa_anomaly.thumbnails import THUMB_SIZE

pytestmark = requires_mobilenet_weights


def cfa(*argv: str) -> tuple[int, str]:
    """`cfa argv` in this process: its exit code and its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def page_data(html: str) -> dict:
    """The JSON data a written report.html carries."""
    start = html.index('<script id="report-data" type="application/json">') + len(
        '<script id="report-data" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory) -> tuple[Path, str]:
    """`cfa train` of a tiny model (its report written at the end) and what it printed."""
    output = tmp_path_factory.mktemp("report_run")
    sets = [arg for item in small_overrides(synth_root) for arg in ("--set", item)]
    code, printed = cfa("-q", "train", "--output", str(output), "--overwrite", *sets)
    assert code == 0
    return output, printed


@pytest.fixture(scope="module")
def predicted(trained, synth_root, tmp_path_factory) -> tuple[Path, str]:
    """`cfa predict` of the test images and an unreadable file, panels for the defective ones only."""
    run, _ = trained
    inputs = tmp_path_factory.mktemp("predict_inputs")
    shutil.copytree(synth_root / SYNTH_CATEGORY / "test", inputs, dirs_exist_ok=True)
    (inputs / "good" / "broken.png").write_bytes(b"not an image")
    output = tmp_path_factory.mktemp("report_predict") / "out"
    code, printed = cfa("-q", "predict", "--checkpoint", str(run / runfiles.CHECKPOINT), "--output",
                        str(output), "--recursive", "--panels", "defects", "--threshold", "0.5", "--device",
                        "cpu", str(inputs))
    assert code == 0
    return output, printed


def test_train_writes_the_report_and_prints_its_path_last(trained):
    run, printed = trained
    assert printed.rstrip().splitlines()[-1] == f"report: {run / runfiles.REPORT}"
    assert folder_kind(run) == RUN and (run / runfiles.REPORT_FILES).is_dir()


def test_counts_at_the_held_out_threshold_equal_metrics_json(trained):
    run, _ = trained
    metrics = json.loads((run / runfiles.METRICS).read_text())
    data = page_data((run / runfiles.REPORT).read_text())
    images, threshold = data["images"], data["threshold"]["value"]
    assert threshold == metrics["threshold"]["image"]["value"] == metrics["at_threshold"]["threshold"]
    assert data["labelled"] and data["at_threshold"] == metrics["at_threshold"]
    flagged = [d == "defective" for d in images["decision"]]
    defective = [label == 1 for label in images["label"]]
    assert f"{sum(f and d for f, d in zip(flagged, defective))}/{sum(defective)}" == \
        metrics["at_threshold"]["defective_flagged"]
    assert f"{sum(f and not d for f, d in zip(flagged, defective))}/{defective.count(False)}" == \
        metrics["at_threshold"]["good_flagged"]
    assert flagged == [score >= threshold for score in images["score"]]  # the slider's rule agrees
    rows = read_rows(run / runfiles.scores_file())
    assert images["path"] == [r["path"] for r in rows]
    assert images["kind"] == [Path(r["path"]).parent.name for r in rows]
    assert [t["title"] for t in data["tables"]] == ["Metrics", "Per defect kind"]


def test_every_image_has_a_small_thumbnail_and_its_panel(trained):
    from PIL import Image

    run, _ = trained
    images = page_data((run / runfiles.REPORT).read_text())["images"]
    for thumb, panel, kind, path in zip(images["thumb"], images["panel"], images["kind"], images["path"]):
        assert panel == f"{runfiles.PANELS}/{kind}/{Path(path).stem}.png" and (run / panel).is_file()
        with Image.open(run / thumb) as picture:
            assert max(picture.size) == THUMB_SIZE and picture.format == "JPEG"
    assert len(set(images["thumb"])) == len(images["thumb"])


def test_a_second_report_reuses_the_thumbnails_and_drops_stale_ones(trained):
    run, _ = trained
    folder = run / runfiles.REPORT_FILES
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    (folder / "0123456789abcdef0123.jpg").write_bytes(b"stale")
    code, printed = cfa("report", str(run))
    assert code == 0 and printed.strip() == f"report: {run / runfiles.REPORT}"
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_predict_output_without_labels(predicted, trained):
    output, printed = predicted
    run, _ = trained
    assert printed.rstrip().splitlines()[-1] == f"report: {output / runfiles.REPORT}"
    data = page_data((output / runfiles.REPORT).read_text())
    images = data["images"]
    assert data["kind"] == PREDICT and not data["labelled"] and data["tables"] == []
    assert data["threshold"]["value"] == 0.5 and "--threshold" in data["threshold"]["source"]
    assert set(images["label"]) == {None}
    broken = images["path"].index(str(next(Path(p) for p in images["path"] if p.endswith("broken.png"))))
    assert images["score"][broken] is None and images["thumb"][broken] is None and images["error"][broken]
    for index, decision in enumerate(images["decision"]):
        if index == broken:
            continue
        assert (images["panel"][index] is not None) == (decision == "defective")  # --panels defects
        assert images["thumb"][index] is not None and (output / images["thumb"][index]).is_file()
        assert decision == ("defective" if images["score"][index] >= 0.5 else "good")


def test_a_later_report_of_a_predict_output_takes_the_threshold_its_decisions_imply(predicted):
    output, _ = predicted
    data = run_page(output)
    images = data["images"]
    threshold = data["threshold"]["value"]
    assert threshold == min(s for s, d in zip(images["score"], images["decision"]) if d == "defective")
    assert all((d == "defective") == (s >= threshold) for s, d in zip(images["score"], images["decision"])
               if s is not None)
    assert run_page(output, HeldOut(0.5, "given"))["threshold"] == {"value": 0.5, "source": "given",
                                                                    "statement": None}


@pytest.fixture(scope="module")
def benchmarked(synth_root, tmp_path_factory) -> Path:
    """`cfa benchmark` of the synthetic category (its report written at the end)."""
    output = tmp_path_factory.mktemp("report_bench") / "bench"
    overrides = [o for o in small_overrides(synth_root, **{"train.epochs": "1"}) if not o.startswith("data.")]
    sets = [arg for item in [*overrides, "data.resize=72", "data.crop=64"] for arg in ("--set", item)]
    code, printed = cfa("-q", "benchmark", "--root", str(synth_root), "--output", str(output), "--config-dir",
                        str(output.parent), "--categories", SYNTH_CATEGORY, *sets)
    assert code == 0 and printed.rstrip().splitlines()[-1] == f"report: {output / runfiles.REPORT}"
    return output


def test_benchmark_page_has_the_four_tables_and_each_cells_page(benchmarked):
    data = page_data((benchmarked / runfiles.REPORT).read_text())
    results = {row["category"]: row for row in read_rows(benchmarked / runfiles.RESULTS_CSV)}
    assert [t["title"] for t in data["tables"]] == [*(title for _, title in TABLES), "Per defect kind"]
    for table, (metric, _) in zip(data["tables"], TABLES):  # the four of results.md (and any added since)
        assert table["header"] == ["setting", "Avg", "Synth"]
        average, value = (results[row][metric] for row in ("average", SYNTH_CATEGORY))
        assert table["rows"][0][1:] == (["-", "-"] if value == "" else [f"{float(average):.3f}",
                                                                      f"{float(value):.3f}"])
    (cell,) = data["cells"]
    metrics = json.loads((benchmarked / SYNTH_CATEGORY / runfiles.METRICS).read_text())
    assert cell["report"] == f"{SYNTH_CATEGORY}/{runfiles.REPORT}"
    assert (benchmarked / cell["report"]).is_file()
    assert cell["status"] == "done" and cell["at_threshold"] == metrics["at_threshold"]
    rows = read_rows(benchmarked / SYNTH_CATEGORY / runfiles.scores_file())
    assert cell["scores"] == [float(r["score"]) for r in rows]
    assert cell["labels"] == [int(r["label"]) for r in rows]


def test_a_grid_shows_mean_and_spread_over_seeds(benchmarked, tmp_path):
    summary = json.loads((benchmarked / runfiles.SUMMARY).read_text())
    grid = tmp_path / "grid"
    cells, results = {}, {}
    for seed in (0, 1):
        key = f"mobilenet_v2/seed-{seed}/{SYNTH_CATEGORY}"
        shutil.copytree(benchmarked / SYNTH_CATEGORY, grid / key)
        cells[key] = {**summary["cells"][SYNTH_CATEGORY], "seed": seed}
        results[key] = {k: v if v is None else v + 0.01 * seed
                        for k, v in summary["results"][SYNTH_CATEGORY].items()}
    (grid / runfiles.SUMMARY).write_text(json.dumps({**summary, "cells": cells, "results": results,
                                                     "status": dict.fromkeys(cells, "done")}))
    path = write_report(grid)
    data = page_data(path.read_text())
    assert " ± " in data["tables"][0]["rows"][0][2]
    assert [c["report"] for c in data["cells"]] == [f"{key}/{runfiles.REPORT}" for key in cells]
    assert all((grid / key / runfiles.REPORT).is_file() for key in cells)
    assert benchmark_page(grid, {})["cells"][0]["report"] is None


def test_a_benchmark_cell_without_scores_still_gets_a_page(tmp_path):
    """A cell an earlier benchmark finished, of which only metrics.json is left (cfa benchmark reuses it),
    and a category without data (skipped)."""
    output = tmp_path / "bench"
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", "data.category=part"])
    (output / "part").mkdir(parents=True)
    (output / "part" / runfiles.METRICS).write_text(json.dumps({"config": cfg.to_dict(),
                                                                "metrics": {"image_auroc": 0.9}}))
    run_benchmark(tmp_path / "data", output, ["part", "absent"], config_dir=None)
    data = page_data(write_report(output).read_text())
    assert [(c["key"], c["status"], c["scores"]) for c in data["cells"]] == [("part", "reused", []),
                                                                             ("absent", "skipped", [])]
    assert data["cells"][0]["report"] == f"part/{runfiles.REPORT}" and data["cells"][1]["report"] is None
    assert "absent" in data["problems"] and data["tables"][0]["rows"][0][1:] == ["0.900", "-", "0.900"]
    assert page_data((output / "part" / runfiles.REPORT).read_text())["images"]["path"] == []


@pytest.mark.parametrize("case", ["missing", "file", "empty", "damaged"])
def test_a_folder_that_is_no_run_is_a_named_error(tmp_path, capsys, case):
    folder = tmp_path / "folder"
    if case == "file":
        folder.write_text("x")
    elif case != "missing":
        folder.mkdir()
    if case == "damaged":
        (folder / runfiles.METRICS).write_text("{not json")
    with pytest.raises(ReportError) as error:
        write_report(folder)
    message = str(error.value)
    assert str(folder) in message
    assert (runfiles.METRICS in message) and (case == "damaged" or runfiles.SUMMARY in message)
    assert cli.main(["report", str(folder)]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(folder) in err and "Traceback" not in err
    assert not (folder / runfiles.REPORT).exists()


def test_no_report_skips_the_page(trained, tmp_path):
    run, _ = trained
    output = tmp_path / "test"
    code, printed = cfa("-q", "test", "--checkpoint", str(run / runfiles.CHECKPOINT), "--output", str(output),
                        "--device", "cpu", "--no-report")
    assert code == 0 and "report:" not in printed and not (output / runfiles.REPORT).exists()


def test_the_page_is_self_contained():
    folder = resources.files("cfa_anomaly") / "report_page"
    assert all(folder.joinpath(name).is_file() for name in PAGE_FILES)
    html = render_page({"kind": "run", "title": "</script><b>x", "images": {"path": []}})
    assert html.count("</script>") == 2 and "<b>x" not in html  # the data cannot close its element
    for external in ("http://", "https://", "//cdn", "@import", "<link"):
        assert external not in html.replace("http://www.w3.org/2000/svg", ""), external
    assert json.loads(script_json({"a": "</script>"})) == {"a": "</script>"}
