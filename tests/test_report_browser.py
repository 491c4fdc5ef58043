"""report.html in a real browser (headless Chromium, tests/browser.py): it opens from the disk with no
console error and no request other than file://, its slider recomputes the counts as scores.csv does, sorting
and filters change the cards shown, and a click on a thumbnail shows the panel. Screenshots go to
test-artefacts/report-*.png."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from browser import browser, console_errors, screenshot  # noqa: F401 (browser: the fixture)
from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_config

from cfa_anomaly import runfiles
from cfa_anomaly.html_report import write_report
from cfa_anomaly.inference import Predictor
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.predict import PredictOptions, predict_images
from cfa_anomaly.report_data import HeldOut

pytestmark = requires_mobilenet_weights


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def run(synth_root, tmp_path_factory) -> Path:
    """A tiny trained and tested run with its report."""
    output = tmp_path_factory.mktemp("browser_run")
    train_and_test(small_config(synth_root), output)
    write_report(output)
    return output


@pytest.fixture(scope="module")
def predicted(run, synth_root, tmp_path_factory) -> Path:
    """cfa predict of the test images and an unreadable file at the median score, panels for the defective
    ones only, with its report."""
    inputs = tmp_path_factory.mktemp("browser_inputs")
    shutil.copytree(synth_root / SYNTH_CATEGORY / "test", inputs, dirs_exist_ok=True)
    (inputs / "good" / "broken.png").write_bytes(b"not an image")
    scores = sorted(float(r["score"]) for r in read_rows(run / runfiles.scores_file()))
    predictor = Predictor.from_checkpoint(run / runfiles.CHECKPOINT, device="cpu")
    predictor = predictor.with_thresholds(predictor.thresholds.with_image(scores[len(scores) // 2], "median"))
    output = tmp_path_factory.mktemp("browser_predict")
    predict_images(predictor, [inputs], output, PredictOptions(panels="defects", recursive=True))
    write_report(output, HeldOut.of(predictor.thresholds))
    return output


def open_page(driver, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")


def requested(driver) -> list[str]:
    """Every URL the page asked for: Chromium's network log and the page's resource timing."""
    log = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    sent = [m["params"]["request"]["url"] for m in log if m["method"] == "Network.requestWillBeSent"]
    return sent + driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")


def wait_for_thumbnails(driver) -> None:
    """Until every card drawn has its thumbnail (the page asks for a few per frame)."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = ("return [...document.querySelectorAll('#gallery img')].every(i => !i.dataset.src && i.complete"
              " && i.naturalWidth > 0)")
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(script))


def assert_offline_and_clean(driver) -> None:
    wait_for_thumbnails(driver)
    urls = requested(driver)
    assert any(f"/{runfiles.REPORT_FILES}/" in url for url in urls), urls  # the log does see the thumbnails
    assert [url for url in urls if not url.startswith("file://")] == []
    assert console_errors(driver) == []


def text(driver, css: str) -> str:
    return driver.find_element("css selector", css).text


def threshold(driver) -> float:
    return float(driver.find_element("css selector", "#threshold-value").get_attribute("data-threshold"))


def wait_for(driver, condition) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(lambda d: condition())


def expected_counts(rows: list[dict[str, str]], at: float) -> dict[str, str]:
    """The page's counts at threshold `at`, computed here from scores.csv (score >= threshold)."""
    scored = [r for r in rows if r["score"]]
    flagged = [float(r["score"]) >= at for r in scored]
    counts = {"#count-flagged": f"{sum(flagged)} of {len(scored)}"}
    if scored and scored[0]["label"]:
        defective = [r["label"] == "1" for r in scored]
        caught = sum(f and d for f, d in zip(flagged, defective))
        counts["#count-defective-flagged"] = f"{caught}/{sum(defective)}"
        counts["#count-good-flagged"] = f"{sum(flagged) - caught}/{defective.count(False)}"
    return counts


def cards(driver) -> list:
    return driver.find_elements("css selector", "#gallery .card")


def test_the_run_page_opens_offline_with_the_counts_of_metrics_json(browser, run):
    open_page(browser, run / runfiles.REPORT)
    assert_offline_and_clean(browser)
    at = json.loads((run / runfiles.METRICS).read_text())["at_threshold"]
    assert threshold(browser) == at["threshold"]
    assert text(browser, "#count-defective-flagged") == at["defective_flagged"]
    assert text(browser, "#count-good-flagged") == at["good_flagged"]
    assert browser.find_elements("css selector", "#roc-chart polyline")
    assert browser.find_elements("css selector", "#histogram-chart .held-line")
    assert len(cards(browser)) == len(read_rows(run / runfiles.scores_file()))
    screenshot(browser, "report-run")


def test_the_slider_recomputes_decisions_and_counts_as_scores_csv_does(browser, run):
    from selenium.webdriver.common.keys import Keys

    rows = read_rows(run / runfiles.scores_file())
    open_page(browser, run / runfiles.REPORT)
    slider = browser.find_element("css selector", "#threshold-slider")
    held = threshold(browser)
    slider.send_keys(Keys.END, Keys.ARROW_LEFT, Keys.ARROW_LEFT, Keys.ARROW_LEFT)  # the 3rd-highest score
    wait_for(browser, lambda: threshold(browser) != held)
    at = threshold(browser)
    assert at == sorted({float(r["score"]) for r in rows})[-3]
    for css, value in expected_counts(rows, at).items():
        assert text(browser, css) == value, css
    flagged = [c for c in cards(browser) if {"caught", "false-alarm"} & set(c.get_attribute("class").split())]
    assert len(flagged) == 3
    true_positives = sum(float(r["score"]) >= at and r["label"] == "1" for r in rows)
    assert text(browser, "#cm-tp") == str(true_positives)
    screenshot(browser, "report-run-slider")
    browser.find_element("css selector", "#held-out-button").click()
    wait_for(browser, lambda: threshold(browser) == held)
    metrics = json.loads((run / runfiles.METRICS).read_text())["at_threshold"]
    assert text(browser, "#count-good-flagged") == metrics["good_flagged"]


def test_sorting_and_filtering_change_the_cards_shown(browser, run):
    from selenium.webdriver.support.ui import Select

    rows = read_rows(run / runfiles.scores_file())
    open_page(browser, run / runfiles.REPORT)
    Select(browser.find_element("css selector", "#sort")).select_by_value("score-asc")
    shown = [float(c.get_attribute("data-score")) for c in cards(browser)]
    assert shown == sorted(float(r["score"]) for r in rows)
    Select(browser.find_element("css selector", "#filter-kind")).select_by_value("good")
    good = [r for r in rows if Path(r["path"]).parent.name == "good"]
    assert [c.find_element("css selector", ".kind").text for c in cards(browser)] == ["good"] * len(good)
    assert text(browser, "#shown-count") == f"{len(good)} of {len(rows)} images"
    Select(browser.find_element("css selector", "#filter-kind")).select_by_value("")
    Select(browser.find_element("css selector", "#filter-outcome")).select_by_value("false-alarm")
    alarms = [r for r in rows if r["label"] == "0" and r["decision"] == "defective"]
    assert len(cards(browser)) == len(alarms)
    assert all("false-alarm" in c.get_attribute("class") for c in cards(browser))


def test_clicking_a_thumbnail_shows_its_panel(browser, run):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, run / runfiles.REPORT)
    first = cards(browser)[0]
    index = int(first.get_attribute("data-index"))
    path = Path(read_rows(run / runfiles.scores_file())[index]["path"])
    first.click()
    overlay = browser.find_element("css selector", "#overlay")
    assert overlay.is_displayed()
    image = browser.find_element("css selector", "#overlay-img")
    assert image.get_attribute("src").endswith(f"/{runfiles.PANELS}/{path.parent.name}/{path.stem}.png")
    wait_for(browser, lambda: browser.execute_script("return document.getElementById('overlay-img')"
                                                     ".naturalWidth") > 0)
    assert path.name in text(browser, "#overlay-note")
    screenshot(browser, "report-run-overlay")
    browser.find_element("css selector", "body").send_keys(Keys.ESCAPE)
    wait_for(browser, lambda: not overlay.is_displayed())
    assert console_errors(browser) == []


def test_the_predict_page_has_scores_decisions_and_the_slider_without_labels(browser, predicted):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    rows = read_rows(predicted / runfiles.scores_file())
    open_page(browser, predicted / runfiles.REPORT)
    assert_offline_and_clean(browser)
    assert not browser.find_elements("css selector", "#roc-chart, #confusion, #count-defective-flagged")
    decided = sum(r["decision"] == "defective" for r in rows)
    assert text(browser, "#count-flagged") == f"{decided} of {len(rows) - 1}"
    assert text(browser, "#count-unreadable") == "1"
    assert len(browser.find_elements("css selector", "#gallery .card .placeholder")) == 1
    outcomes = Select(browser.find_element("css selector", "#filter-outcome"))
    options = [o.get_attribute("value") for o in outcomes.options]
    assert "miss" not in options and "false-alarm" not in options
    screenshot(browser, "report-predict")
    held = threshold(browser)
    browser.find_element("css selector", "#threshold-slider").send_keys(Keys.HOME)
    wait_for(browser, lambda: threshold(browser) != held)
    assert text(browser, "#count-flagged") == expected_counts(rows, threshold(browser))["#count-flagged"]
    Select(browser.find_element("css selector", "#sort")).select_by_value("score-asc")
    cards(browser)[0].click()  # the lowest score: decided good, so no panel: the input image
    source = browser.find_element("css selector", "#overlay-img").get_attribute("src")
    assert f"/{runfiles.PANELS}/" not in source and source.endswith(".png")
    assert console_errors(browser) == []


def test_the_benchmark_page_links_each_cells_page(browser, run, tmp_path):
    bench = tmp_path / "bench"
    shutil.copytree(run, bench / SYNTH_CATEGORY, ignore=shutil.ignore_patterns(runfiles.REPORT_FILES,
                                                                               runfiles.REPORT))
    metrics = json.loads((run / runfiles.METRICS).read_text())
    cell = {"category": SYNTH_CATEGORY, "row": "mobilenet_v2", "setting": {}, "backbone": "mobilenet_v2",
            "seed": 0, "seconds": 5.0}
    (bench / runfiles.SUMMARY).write_text(json.dumps({
        "executor": "local", "results": {SYNTH_CATEGORY: metrics["metrics"]}, "problems": {},
        "status": {SYNTH_CATEGORY: "done"}, "cells": {SYNTH_CATEGORY: cell}}))
    open_page(browser, write_report(bench))
    assert console_errors(browser) == []
    assert browser.find_elements("css selector", "#roc-chart polyline")
    screenshot(browser, "report-benchmark")
    browser.find_element("css selector", "#cells-table a").click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    assert browser.current_url.endswith(f"/{SYNTH_CATEGORY}/{runfiles.REPORT}")
    assert_offline_and_clean(browser)


def test_a_run_without_scores_shows_its_training(browser, run, tmp_path):
    """cfa train --no-test leaves config.yaml and train.json: the page says so and shows the training."""
    for name in (runfiles.CONFIG, runfiles.TRAIN_SUMMARY):
        shutil.copyfile(run / name, tmp_path / name)
    open_page(browser, write_report(tmp_path))
    assert console_errors(browser) == []
    assert "No scored images" in text(browser, "#images")
    assert not browser.find_elements("css selector", "#threshold-slider, #gallery")
    assert "epochs" in text(browser, "#details")
