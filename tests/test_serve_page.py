"""The service's page (GET /) in a real browser (tests/browser.py: headless Chromium) against `cfa serve`
subprocesses: the model card, uploads scored with their overlays, the threshold slider re-deciding, and the
token asked for where the service wants one. Screenshots: test-artefacts/serve-page-*.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from browser import browser, console_errors, screenshot  # noqa: F401  (browser: the fixture)
from serving import SERVE_MISSING, SERVE_TESTS, running_server, trained_model  # noqa: F401  (a fixture)

pytestmark = SERVE_TESTS
if not SERVE_MISSING:
    from cfa_anomaly.serve.auth import TOKEN_ENV

WAIT_S = 60
TOKEN = "page-test-token"


@pytest.fixture(scope="module")
def open_server(trained, tmp_path_factory):
    with running_server(trained[0], tmp_path_factory.mktemp("page_open") / "server.log") as server:
        yield server


def test_the_page_is_self_contained_and_shipped(open_server):
    """GET / needs no token and loads nothing from elsewhere; a non-editable install carries the file."""
    import fnmatch
    import re

    import httpx

    tomllib = pytest.importorskip("tomllib")
    from cfa_anomaly.serve.page import PAGE_FILE, page_html

    page = httpx.get(open_server.base_url + "/", timeout=30.0)
    assert page.status_code == 200 and page.text == page_html()
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=[\"'](https?:)?//", page.text)  # no other host
    assert "fetch(path" in page.text and "https://" not in page.text and "http://" not in page.text
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["cfa_anomaly.serve"]
    assert any(fnmatch.fnmatch(PAGE_FILE, pattern) for pattern in patterns)


def wait_for(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message)


def element(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def results(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#results .result")


def badges(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [badge.text for badge in driver.find_elements(By.CSS_SELECTOR, "#results .result .badge")]


def upload(driver, paths) -> None:
    """Pick files as a user would: their paths typed into the <input type=file>."""
    element(driver, "files").send_keys("\n".join(str(path) for path in paths))
    wait_for(driver, lambda d: len(results(d)) >= len(paths), "the results did not appear")


def overlays_loaded(driver) -> bool:
    return driver.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")


def test_page_scores_uploads_and_the_slider_redecides(browser, open_server, trained):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _, paths, predictor, reference = trained
    browser.get(open_server.base_url + "/")
    wait_for(browser, lambda d: element(d, "model-id").text.startswith("synth-"), "no model card")
    assert "mobilenet_v2" in element(browser, "card-fields").text
    assert element(browser, "model-mark").is_displayed()
    screenshot(browser, "serve-page-empty")
    upload(browser, paths)
    wait_for(browser, overlays_loaded, "the overlays did not load")
    cards = results(browser)
    assert len(cards) == len(paths) and not console_errors(browser)
    for index, (path, card) in enumerate(zip(paths, cards)):  # in upload order
        assert card.find_element(By.CSS_SELECTOR, ".name").text == path.name
        assert float(card.find_element(By.CSS_SELECTOR, ".score").text) == pytest.approx(
            float(reference.scores[index]), rel=1e-3)
        expected = "defective" if reference.decisions[index] else "good"
        assert card.find_element(By.CSS_SELECTOR, ".badge").text == expected
    screenshot(browser, "serve-page-results")
    slider = element(browser, "threshold")
    slider.send_keys(Keys.END)  # the top of the scale, above every score: every image good
    wait_for(browser, lambda d: set(badges(d)) == {"good"}, "the slider at its top did not pass every image")
    assert element(browser, "summary").text == f"0 of {len(paths)} defective"
    if reference.decisions.any():
        assert "the model's threshold says defective" in element(browser, "results").text
    slider.send_keys(Keys.HOME)  # threshold 0: every image defective
    wait_for(browser, lambda d: set(badges(d)) == {"defective"}, "the slider at 0 did not flag every image")
    ordered = np.sort(reference.scores)
    middle = float(ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2  # between two scores
    browser.execute_script("const s = document.getElementById('threshold'); s.value = arguments[0]; "
                           "s.dispatchEvent(new Event('input'));", middle)
    expected = ["defective" if score >= middle else "good" for score in reference.scores]
    wait_for(browser, lambda d: badges(d) == expected, "the slider did not re-decide at the median score")
    assert element(browser, "summary").text == f"{expected.count('defective')} of {len(paths)} defective"
    screenshot(browser, "serve-page-slider")
    element(browser, "reset").click()
    model = ["defective" if decided else "good" for decided in reference.decisions]
    wait_for(browser, lambda d: badges(d) == model, "reset did not restore the model's decisions")
    assert float(element(browser, "threshold-value").text) == pytest.approx(predictor.threshold, rel=1e-3)
    assert not console_errors(browser)


def test_page_shows_a_refused_file_beside_the_others(browser, open_server, trained, tmp_path):  # noqa: F811
    """A file the service cannot read gets its own card with the error; the good one is scored."""
    from selenium.webdriver.common.by import By

    broken = tmp_path / "notes.png"
    broken.write_bytes(b"not an image at all")
    browser.get(open_server.base_url + "/")
    wait_for(browser, lambda d: element(d, "model-id").text.startswith("synth-"), "no model card")
    upload(browser, [broken, trained[1][0]])
    failed = browser.find_element(By.CSS_SELECTOR, "#results .result.failed")
    assert "415 not_an_image" in failed.text and "notes.png" in failed.text
    assert badges(browser) == ["defective" if trained[3].decisions[0] else "good"]
    assert element(browser, "status").text == "1 image scored, 1 refused (see below)"
    screenshot(browser, "serve-page-refused-file")
    assert not console_errors(browser)


def test_page_asks_for_the_token(browser, trained, tmp_path):  # noqa: F811
    with running_server(trained[0], tmp_path / "server.log", env={TOKEN_ENV: TOKEN}) as server:
        browser.get(server.base_url + "/")
        wait_for(browser, lambda d: element(d, "token-panel").is_displayed(), "the page asked for no token")
        screenshot(browser, "serve-page-token")
        element(browser, "token").send_keys("wrong-token")
        element(browser, "token-submit").click()
        wait_for(browser, lambda d: "refused" in element(d, "token-error").text, "a wrong token passed")
        element(browser, "token").clear()
        element(browser, "token").send_keys(TOKEN)
        element(browser, "token-submit").click()
        wait_for(browser, lambda d: element(d, "model-id").text.startswith("synth-"), "no model card")
        assert not element(browser, "token-panel").is_displayed()
        upload(browser, trained[1][:2])
        wait_for(browser, overlays_loaded, "the overlays did not load")
        assert set(badges(browser)) <= {"good", "defective"}
        screenshot(browser, "serve-page-token-results")
        errors = console_errors(browser)
        assert all("401" in message for message in errors), errors  # the browser reports the answered 401s
        assert browser.execute_script("return sessionStorage.getItem('cfa-serve-token')") == TOKEN
