"""The HTTP service: POST /predict, POST /predict/batch, GET /health, GET /model and the page, GET /
(FastAPI; uvicorn runs it: server.py).

The model is loaded once, before the server starts. Request handlers read, check and decode uploads and
preprocess them in the thread pool; one InferenceWorker thread scores them, micro-batched. When the model
computes on the CPU, a CpuGate keeps that request work between model calls (see worker.py). Every refusal
is a JSON error {"error": code, "status": ..., "reason": ...} with the status of errors.STATUS_OF_CODE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cfa_anomaly import __version__
from cfa_anomaly.config import ConfigError
from cfa_anomaly.data.images import tensor_to_rgb
from cfa_anomaly.heatmap import PREDICTED_COLOUR, MapScale, draw_outline, heat_overlay
from cfa_anomaly.inference import Predictor
from cfa_anomaly.serve.auth import BearerAuth
from cfa_anomaly.serve.errors import ServeError
from cfa_anomaly.serve.limits import BodyLimit
from cfa_anomaly.serve.page import PAGE_HEADERS, page_html
from cfa_anomaly.serve.uploads import decode_image, png_base64
from cfa_anomaly.serve.worker import CpuGate, InferenceWorker, Scored
from cfa_anomaly.thresholds import DEFECTIVE, GOOD

log = logging.getLogger("cfa_anomaly.serve")
FORM_OVERHEAD = 64 << 10  # multipart boundaries and headers allowed beyond the file limit
MAP_GRID = "the model's input grid: resize, then centre crop (as the overlay)"
MapFlag = Annotated[bool, Query(alias="map", description="add the anomaly map as a base64 PNG")]
OverlayFlag = Annotated[bool, Query(alias="overlay", description="add a heat overlay as a base64 PNG")]


@dataclass(frozen=True)
class ServeSettings:
    """The service's limits; an impossible value is a ConfigError naming the option."""

    max_upload_mb: float = 20.0  # one image file; a /predict body (plus multipart overhead)
    max_pixels: int = 50_000_000  # width x height of one image, checked from its header
    timeout_s: float = 30.0  # from queueing an image to its result
    max_batch: int = 8  # images per score_batch call of the worker
    max_files: int = 16  # files per /predict/batch request
    max_queue: int = 256  # images waiting for the worker before new ones get 503

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_pixels", "timeout_s", "max_batch", "max_files", "max_queue"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} = {getattr(self, name)} is invalid: "
                                  "it must be > 0")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    def body_limit(self, path: str) -> int:
        """The largest request body accepted on a path."""
        if path == "/predict":
            return self.max_upload_bytes + FORM_OVERHEAD
        if path == "/predict/batch":
            return self.max_files * self.max_upload_bytes + FORM_OVERHEAD
        return FORM_OVERHEAD


@dataclass(frozen=True)
class ModelInfo:
    """Where the served model came from and its short id (category-backbone-first 12 of a SHA-256)."""

    model_id: str
    source: str  # "checkpoint" or "export"
    path: str
    sha256: str  # the checkpoint file's, or the exported model file's


def describe_model(path: str | Path, predictor: Predictor, source: str) -> ModelInfo:
    """The id of a checkpoint (source "checkpoint": its file's SHA-256) or of an exported model ("export": its
    model file's, from model.json)."""
    from cfa_anomaly.inference.runtimes import MODEL_FILES, read_metadata
    from cfa_anomaly.io_utils import file_sha256

    path = Path(path)
    if source == "checkpoint":
        sha = file_sha256(path)
    else:
        metadata = read_metadata(path, verify=False)  # verified when the Predictor opened it
        sha = metadata["files"][MODEL_FILES[metadata["runtime"]]]
    card = predictor.card
    return ModelInfo(f"{card.category}-{card.backbone}-{sha[:12]}", source, str(path), sha)


def model_on_cpu(predictor: Predictor) -> bool:
    """Whether the model computes on the CPU (torch on cpu, ONNX Runtime's CPU provider, OpenVINO CPU)."""
    device = getattr(predictor.backend, "device", None)
    if device is not None:
        return torch.device(device).type == "cpu"
    return "CUDA" not in predictor.name


@dataclass
class Prepared:
    """A decoded, checked upload: its size and the model's input tensor."""

    name: str
    width: int
    height: int
    image: torch.Tensor  # (3, crop, crop) in 0..1


def error_response(error: ServeError) -> JSONResponse:
    return JSONResponse(error.to_dict(), status_code=error.status)


async def guarded(work: Awaitable[dict[str, Any]]) -> JSONResponse:
    """Run a handler: a ServeError becomes its JSON error; anything else is logged and a short 500."""
    try:
        return JSONResponse(await work)
    except ServeError as err:
        return error_response(err)
    except ClientDisconnect:  # nobody is left to read an answer; nothing to log
        return error_response(ServeError("bad_request",
                                         "the client disconnected before sending the whole body"))
    except Exception as err:  # the server keeps serving
        log.exception("unexpected error while answering a request")
        return error_response(ServeError("internal_error", f"unexpected server error ({type(err).__name__}); "
                                                           "see the server log"))


async def _call(function: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return function()


class Service:
    """The request logic, apart from the routing: read, decode, queue, answer."""

    def __init__(self, predictor: Predictor, settings: ServeSettings, info: ModelInfo) -> None:
        self.predictor = predictor
        self.settings = settings
        self.info = info
        self.worker = InferenceWorker(predictor, settings.max_batch, settings.max_queue,
                                      CpuGate(model_on_cpu(predictor)))

    # ------------------------------------------------------------------ reading uploads
    def _checked_size(self, data: bytes, name: str) -> bytes:
        if len(data) > self.settings.max_upload_bytes:
            most = self.settings.max_upload_bytes
            raise ServeError("upload_too_large", f"{name} is {len(data)} bytes; this service accepts files "
                                                 f"of at most {most} (--max-upload-mb)")
        return data

    async def _form(self, request: Request, max_files: int) -> FormData:
        try:
            return await request.form(max_files=max_files, max_fields=max_files + 8)
        except StarletteHTTPException as err:  # a malformed form, or too many parts
            if "Too many files" in str(err.detail):
                raise ServeError("too_many_files", f"{err.detail} (--max-files)") from err
            raise ServeError("bad_request", f"cannot read the multipart form: {err.detail}") from err

    async def _single_upload(self, request: Request) -> tuple[bytes, str]:
        """The one image of /predict: a multipart field `file`, or the raw body."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return self._checked_size(await request.body(), "the request body"), "the request body"
        form = await self._form(request, max_files=1)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ServeError("empty_upload",
                                 "the multipart form has no file field `file` (curl -F file=@a.png)")
            name = upload.filename or "file"
            return self._checked_size(await upload.read(), name), name
        finally:
            await form.close()

    def _prepare(self, data: bytes, name: str) -> tuple[Prepared, Future[Scored]]:
        """Decode, preprocess and queue for the model (thread pool, between model calls on a CPU)."""
        try:
            with self.worker.gate.request_turn(self.settings.timeout_s):
                rgb = decode_image(data, self.settings.max_pixels, name)
                height, width = rgb.shape[:2]
                prepared = Prepared(name, width, height, self.predictor.preprocess(rgb))
                return prepared, self.worker.submit(prepared.image)
        except TimeoutError as err:
            raise ServeError("inference_timeout", "the model did not free the CPU within "
                                                  f"{self.settings.timeout_s} s (--timeout-s); the service "
                                                  "is overloaded") from err

    # ------------------------------------------------------------------ scoring
    async def _score(self, future: Future[Scored]) -> Scored:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.timeout_s)
        except (asyncio.TimeoutError, TimeoutError) as err:
            future.cancel()
            raise ServeError("inference_timeout", f"no result within {self.settings.timeout_s} s "
                                                  "(--timeout-s); the service is overloaded or the model too "
                                                  "slow") from err
        except ServeError:
            raise
        except Exception as err:  # logged by the worker, which goes on
            raise ServeError("inference_failed", f"the model failed on this image ({type(err).__name__}); "
                                                 "see the server log") from err

    def _answer(self, prepared: Prepared, scored: Scored, with_map: bool, with_overlay: bool,
                started: float) -> dict[str, Any]:
        """The JSON of one scored image (thread pool: PNG encoding)."""
        thresholds = self.predictor.thresholds
        threshold, pixel_threshold = thresholds.image, thresholds.outline_level
        decision = thresholds.label(scored.score)
        anomaly_map = np.asarray(scored.anomaly_map, dtype=np.float32)
        defect = thresholds.defect_mask(anomaly_map, scored.score)
        answer: dict[str, Any] = {
            "score": scored.score,
            "decision": decision,
            "is_defective": None if decision is None else decision == DEFECTIVE,
            "threshold": threshold,
            "pixel_threshold": pixel_threshold,
            "outline_level": thresholds.pixel_level(scored.score) if decision != GOOD else None,
            "defect_area": None if defect is None else float(defect.mean()),
            "model_id": self.info.model_id,
            "width": prepared.width,
            "height": prepared.height,
            "batch_size": scored.batch_size,
        }
        if with_map or with_overlay:
            scale = MapScale.of(scored.anomaly_map, threshold)
            pixels = scale.to_uint8(anomaly_map)
            size = {"width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "grid": MAP_GRID}
            if with_map:
                answer["map"] = {"png_base64": png_base64(pixels), **size, "scaling": scale.method,
                                 "low": scale.low, "high": scale.high,
                                 "meaning": "pixel = 255 * clip((value - low) / (high - low), 0, 1)"}
            if with_overlay:
                overlay = heat_overlay(tensor_to_rgb(prepared.image), pixels)
                if defect is not None:  # the predicted defect's outline, as in the panels
                    overlay = draw_outline(overlay, defect, PREDICTED_COLOUR)
                answer["overlay"] = {"png_base64": png_base64(overlay), **size, "scaling": scale.method}
        answer["elapsed_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
        return answer

    # ------------------------------------------------------------------ endpoints
    async def predict(self, request: Request, with_map: bool, with_overlay: bool) -> dict[str, Any]:
        started = time.perf_counter()
        data, name = await self._single_upload(request)
        prepared, future = await run_in_threadpool(self._prepare, data, name)
        scored = await self._score(future)
        return await run_in_threadpool(self._answer, prepared, scored, with_map, with_overlay, started)

    async def _batch_item(self, index: int, item: Any, with_map: bool, with_overlay: bool,
                          started: float) -> dict[str, Any]:
        name = getattr(item, "filename", None) or f"files[{index}]"
        try:
            if not isinstance(item, UploadFile):
                raise ServeError("empty_upload", f"files[{index}] is a text field, not a file")
            data = self._checked_size(await item.read(), name)
            prepared, future = await run_in_threadpool(self._prepare, data, name)
            scored = await self._score(future)
            answer = await run_in_threadpool(self._answer, prepared, scored, with_map, with_overlay, started)
            return {"index": index, "filename": name, "ok": True, **answer}
        except ServeError as err:
            return {"index": index, "filename": name, "ok": False, **err.to_dict()}

    async def predict_batch(self, request: Request, with_map: bool, with_overlay: bool) -> dict[str, Any]:
        started = time.perf_counter()
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ServeError("bad_request", "send a multipart form with one or more `files` fields "
                                            "(curl -F files=@a.png -F files=@b.png)")
        form = await self._form(request, max_files=self.settings.max_files)
        try:
            items = form.getlist("files")
            if not items:
                raise ServeError("empty_upload", "the multipart form has no `files` field")
            results = await asyncio.gather(*(self._batch_item(i, item, with_map, with_overlay, started)
                                             for i, item in enumerate(items)))
        finally:
            await form.close()
        failed = sum(not result["ok"] for result in results)
        return {"model_id": self.info.model_id, "count": len(results), "failed": failed, "results": results,
                "elapsed_ms": round((time.perf_counter() - started) * 1000.0, 3)}

    def health(self) -> dict[str, Any]:
        self.worker.start()  # restarts the inference thread should it ever have ended
        return {"status": "ok", "model_loaded": True, "model_id": self.info.model_id,
                "worker_alive": self.worker.alive, "queued": self.worker.queued}

    def model(self) -> dict[str, Any]:
        return {"model_id": self.info.model_id, "engine": self.predictor.name, "source": self.info.source,
                "path": self.info.path, "sha256": self.info.sha256, **self.predictor.card.to_dict(),
                "threshold": self.predictor.threshold, "pixel_threshold": self.predictor.pixel_threshold,
                "served_by": f"cfa-anomaly {__version__}", "limits": asdict(self.settings),
                "scored": {"images": self.worker.images, "batches": self.worker.batches,
                           "busy_s": round(self.worker.busy_s, 3)}}


def create_app(predictor: Predictor, settings: ServeSettings, info: ModelInfo,
               token: str | None = None) -> FastAPI:
    """The FastAPI app around a loaded Predictor; the inference thread runs while the app does. With a token,
    every endpoint but /health and the page asks for `Authorization: Bearer <token>` (auth.py)."""
    service = Service(predictor, settings, info)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.worker.start()
        yield
        await run_in_threadpool(service.worker.stop)

    app = FastAPI(title="cfa-anomaly inspection service", version=__version__, lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyLimit, limit_for=settings.body_limit)
    app.add_middleware(BearerAuth, token=token)  # added last: runs first, before any body is read

    @app.exception_handler(ServeError)
    async def on_serve_error(_: Request, err: ServeError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "bad_request")
        return JSONResponse({"error": code, "status": err.status_code, "reason": str(err.detail)},
                            status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in err.errors())
        return error_response(ServeError("bad_request", reasons or "invalid request"))

    @app.post("/predict")
    async def predict(request: Request, with_map: MapFlag = False,
                      with_overlay: OverlayFlag = False) -> JSONResponse:
        """Score one image: multipart field `file`, or the raw body. ?map=true, ?overlay=true add PNGs."""
        return await guarded(service.predict(request, with_map, with_overlay))

    @app.post("/predict/batch")
    async def predict_batch(request: Request, with_map: MapFlag = False,
                            with_overlay: OverlayFlag = False) -> JSONResponse:
        """Score several images (multipart fields `files`); each bad file is reported in its own entry."""
        return await guarded(service.predict_batch(request, with_map, with_overlay))

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        """The page: the model card, an upload, each image's score, decision and overlay."""
        return HTMLResponse(page_html(), headers=PAGE_HEADERS)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness: the model is loaded and the inference thread runs."""
        return await guarded(_call(service.health))

    @app.get("/model")
    async def model() -> JSONResponse:
        """The model card: config, versions, weights hash, threshold, engine."""
        return await guarded(_call(service.model))

    return app
