"""`cfa serve`: real HTTP on loopback against a server subprocess, plus in-process checks of its failure
paths (the token, TLS and the page: test_serve_auth.py, test_serve_page.py)."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from serving import SERVE_MISSING, SERVE_TESTS, running_server, trained_model  # noqa: F401  (a fixture)

from cfa_anomaly.inference import Predictor

pytestmark = SERVE_TESTS
if not SERVE_MISSING:
    import httpx

    from cfa_anomaly.heatmap import MapScale
    from cfa_anomaly.serve import ModelInfo, ServeError, ServeSettings, create_app

MAX_UPLOAD_MB = 1
RNG = np.random.default_rng(0)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A structurally valid PNG (correct CRCs) whose header declares width x height RGB, with a tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """`cfa serve` in a subprocess on a free loopback port, with its defaults (no token); always stopped."""
    log_path = tmp_path_factory.mktemp("serve_log") / "server.log"
    with running_server(trained[0], log_path, "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-batch", "4",
                        "--no-access-log") as running:
        yield running


@pytest.fixture(scope="module")
def server(served):
    """An httpx client of that server."""
    with httpx.Client(base_url=served.base_url, timeout=60.0) as client:
        yield client


def assert_matches(answer: dict, trained, index: int) -> None:
    _, _, predictor, reference = trained
    assert relative(answer["score"], float(reference.scores[index])) < 1e-5
    assert answer["threshold"] == pytest.approx(predictor.threshold)
    assert answer["is_defective"] == bool(reference.decisions[index])
    assert answer["decision"] == ("defective" if reference.decisions[index] else "good")
    assert answer["pixel_threshold"] == pytest.approx(predictor.pixel_threshold)
    area = float(predictor.thresholds.defect_mask(reference.maps[index], reference.scores[index]).mean())
    assert answer["defect_area"] == pytest.approx(area, abs=2.0 / reference.maps[index].size)


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["status"] == status
    assert isinstance(body["reason"], str) and body["reason"]


def test_health_and_model(server, trained):
    health = server.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["model_loaded"] is True
    card = server.get("/model").json()
    predictor = trained[2]
    assert card["model_id"].startswith("synth-mobilenet_v2-")
    assert card["model_id"] == health.json()["model_id"]
    assert card["engine"] == predictor.name
    assert card["threshold"] == pytest.approx(predictor.threshold)
    assert card["backbone_weights_sha256"] == predictor.card.backbone_weights_sha256
    assert card["config"]["data"]["crop"] == predictor.crop and card["package_version"]
    assert card["limits"]["max_upload_mb"] == MAX_UPLOAD_MB


def test_loopback_default_asks_no_token(served, server, trained):
    """On 127.0.0.1 without --token-file or CFA_SERVE_TOKEN every endpoint answers without a token."""
    assert server.get("/model").status_code == 200
    assert server.post("/predict", content=trained[1][0].read_bytes()).status_code == 200
    assert server.get("/model", headers={"Authorization": "Bearer anything"}).status_code == 200
    assert "no token: 127.0.0.1 is a loopback address" in served.log() and "TLS off" in served.log()


def test_predict_multipart_matches_predictor(server, trained):
    for index, path in enumerate(trained[1]):
        response = server.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert_matches(answer, trained, index)
        width, height = Image.open(path).size
        assert (answer["width"], answer["height"]) == (width, height)
        assert answer["model_id"].startswith("synth-mobilenet_v2-") and answer["elapsed_ms"] > 0


def test_predict_raw_body_matches_predictor(server, trained):
    path = trained[1][-1]
    for content_type in ("image/png", "application/octet-stream"):
        response = server.post("/predict", content=path.read_bytes(), headers={"content-type": content_type})
        assert response.status_code == 200, response.text
        assert_matches(response.json(), trained, len(trained[1]) - 1)


def test_map_and_overlay_are_pngs_of_the_crop(server, trained):
    _, paths, predictor, reference = trained
    response = server.post("/predict?map=true&overlay=true", content=paths[0].read_bytes())
    assert response.status_code == 200, response.text
    answer = response.json()
    crop = predictor.crop
    heat = Image.open(io.BytesIO(base64.b64decode(answer["map"]["png_base64"])))
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay"]["png_base64"])))
    assert heat.format == overlay.format == "PNG"
    assert heat.size == overlay.size == (crop, crop) and heat.mode == "L" and overlay.mode == "RGB"
    assert answer["map"]["scaling"] == "threshold"
    assert answer["map"]["high"] == pytest.approx(2 * predictor.threshold)
    expected = MapScale.of(reference.maps[0], predictor.threshold).to_uint8(reference.maps[0])
    assert np.abs(np.asarray(heat, dtype=int) - expected).max() <= 1
    plain = server.post("/predict", content=paths[0].read_bytes()).json()
    assert "map" not in plain and "overlay" not in plain


def test_batch_reports_a_bad_file_in_its_own_entry(server, trained):
    paths = trained[1]
    files = [("files", ("a.png", paths[0].read_bytes(), "image/png")),
             ("files", ("bad.png", RNG.bytes(4000), "image/png")),
             ("files", ("c.png", paths[2].read_bytes(), "image/png"))]
    response = server.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 3 and body["failed"] == 1
    first, bad, third = body["results"]
    assert [r["index"] for r in body["results"]] == [0, 1, 2] and bad["filename"] == "bad.png"
    assert bad["ok"] is False and bad["status"] == 415 and bad["error"] == "not_an_image" and bad["reason"]
    assert first["ok"] and third["ok"]
    assert_matches(first, trained, 0)
    assert_matches(third, trained, 2)


def truncated_png(trained) -> bytes:
    data = trained[1][0].read_bytes()
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "empty body": (lambda t: {"content": b""}, 400, "empty_upload"),
    "empty file": (lambda t: {"files": {"file": ("a.png", b"", "image/png")}}, 400, "empty_upload"),
    "no file field": (lambda t: {"files": {"other": ("a.png", b"x", "image/png")}}, 400, "empty_upload"),
    "random bytes": (lambda t: {"content": RNG.bytes(5000)}, 415, "not_an_image"),
    "truncated png": (lambda t: {"content": truncated_png(t)}, 422, "corrupt_image"),
    "40000x40000 header": (lambda t: {"content": png_declaring(40000, 40000)}, 413, "too_many_pixels"),
    "8000x8000 header": (lambda t: {"files": {"file": ("big.png", png_declaring(8000, 8000))}}, 413,
                         "too_many_pixels"),
    "body over the limit": (lambda t: {"content": RNG.bytes(MAX_UPLOAD_MB * (1 << 20) * 3 // 2)}, 413,
                            "upload_too_large"),
    "file over the limit": (lambda t: {"files": {"file": ("a.png", RNG.bytes((MAX_UPLOAD_MB << 20) + 100))}},
                            413, "upload_too_large"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_a_clear_4xx(server, trained, case):
    make, status, code = BAD_UPLOADS[case]
    assert_error(server.post("/predict", **make(trained)), status, code)


def test_bad_query_and_bad_batches(server, trained):
    good = trained[1][0].read_bytes()
    assert_error(server.post("/predict?map=maybe", content=good), 400, "bad_request")
    assert_error(server.post("/predict/batch", content=good), 400, "bad_request")
    assert_error(server.post("/predict/batch", files={"other": ("a.png", good)}), 400, "empty_upload")
    too_many = [("files", (f"{i}.png", good)) for i in range(17)]
    assert_error(server.post("/predict/batch", files=too_many), 413, "too_many_files")
    assert_error(server.get("/nowhere"), 404, "not_found")


def test_still_serving_after_bad_uploads(server, trained):
    """After every refusal above, the same server process answers /health and scores correctly."""
    assert server.get("/health").json()["worker_alive"] is True
    assert_matches(server.post("/predict", content=trained[1][1].read_bytes()).json(), trained, 1)


def test_sixteen_concurrent_requests(server, trained):
    paths = trained[1]
    base = str(server.base_url)

    def one(index: int) -> tuple[int, dict]:
        with httpx.Client(base_url=base, timeout=60.0) as client:
            response = client.post("/predict", content=paths[index % len(paths)].read_bytes())
            return index, response.json() if response.status_code == 200 else {"failed": response.text}

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    for index, answer in answers:
        assert "failed" not in answer, answer
        assert_matches(answer, trained, index % len(paths))


# ---------------------------------------------------------------------------------------- in process
def app_with_backend(trained, backend, **settings):
    predictor = Predictor(backend, trained[2].card)
    info = ModelInfo("test-model", "checkpoint", "-", "0" * 64)
    return create_app(predictor, ServeSettings(**settings), info)


def zeros_backend(crop: int):
    return lambda images: (np.zeros((len(images), crop, crop), np.float32), np.zeros(len(images), np.float32))


def test_inference_timeout_is_504_and_the_service_goes_on(trained):
    from fastapi.testclient import TestClient

    crop, calls = trained[2].crop, []

    def slow(images):
        calls.append(len(images))
        if len(calls) == 1:
            time.sleep(1.0)
        return zeros_backend(crop)(images)

    image = trained[1][0].read_bytes()
    with TestClient(app_with_backend(trained, slow, timeout_s=0.2)) as client:
        assert_error(client.post("/predict", content=image), 504, "inference_timeout")
        time.sleep(1.0)
        assert client.post("/predict", content=image).status_code == 200


def test_backend_failure_is_500_and_the_worker_survives(trained):
    from fastapi.testclient import TestClient

    crop, calls = trained[2].crop, []

    def flaky(images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("simulated backend failure")
        return zeros_backend(crop)(images)

    image = trained[1][0].read_bytes()
    with TestClient(app_with_backend(trained, flaky)) as client:
        assert_error(client.post("/predict", content=image), 500, "inference_failed")
        response = client.post("/predict", content=image)
        assert response.status_code == 200 and response.json()["score"] == 0.0
        assert client.get("/health").json()["worker_alive"] is True


def test_settings_are_checked(trained):
    from cfa_anomaly import cli
    from cfa_anomaly.config import ConfigError

    with pytest.raises(ConfigError, match="max-batch"):
        ServeSettings(max_batch=0)
    assert cli.main(["serve", "--checkpoint", str(trained[0]), "--max-pixels", "0"]) == 2
    assert ServeError("too_many_pixels", "x").status == 413


def test_cpu_gate_keeps_request_work_out_of_model_calls():
    import threading

    from cfa_anomaly.serve.worker import CpuGate

    gate, events = CpuGate(), []

    def model_call() -> None:
        with gate.model_turn():
            events.append("model")
            time.sleep(0.3)

    with gate.request_turn():
        model = threading.Thread(target=model_call)
        model.start()
        time.sleep(0.1)
        assert events == []  # the model waits for the request work under way
        events.append("request done")
    time.sleep(0.1)
    assert events == ["request done", "model"]
    with pytest.raises(TimeoutError), gate.request_turn(timeout=0.05):  # the model has the CPU: wait, give up
        pass
    model.join(5)
    with gate.request_turn(timeout=1.0):  # free again
        pass
