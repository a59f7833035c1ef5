"""HTTP server for an exported YOLO ONNX model: FastAPI on uvicorn, a bounded queue, Prometheus metrics.

    sparsepipe serve runs/export/model.onnx --host 127.0.0.1 --port 8080 --threads 2 --queue-size 8
    curl -F files=@img.jpg http://127.0.0.1:8080/predict/from_files

Endpoints: ``POST /predict/from_files`` (multipart, field ``files``, one or more images; DeepSparse
clients' field ``request`` gets DeepSparse's YOLO answer ``{boxes, scores, labels}``),
``POST /predict`` (JSON ``{"images": [{"data": "<base64>", "name": "a.jpg"}]}``), ``GET /health``
(the process answers), ``GET /ready`` (the model is loaded and warmed up), ``GET /metrics``
(Prometheus text) and ``GET /openapi.json``; beside them the Open Inference Protocol v2 that
KServe clients speak (``/v2/health/live|ready``, ``/v2/models/{name}``, ``POST
/v2/models/{name}/infer``: :mod:`sparsepipe.oip`).

Inference runs off the event loop on a fixed pool of ``threads`` worker threads. At most
``threads + queue_size`` predict requests are admitted at once (running + waiting); one more gets
an immediate ``503`` with ``Retry-After`` instead of waiting for a timeout. Input limits are
checked before work is queued: body size (``413``), image pixels from the header before decoding
(``413``), wrong content type (``415``), non-image or truncated file, bad base64, empty request
(``422``). Docs: docs/serving.md.
"""

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import errno
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from sparsepipe import __version__, oip
from sparsepipe.errors import ConfigError
from sparsepipe.image_input import (
    DEFAULT_MAX_PIXELS,
    ImageInputError,
    decode_image_bytes,
    image_size,
)
from sparsepipe.limits import check_threads
from sparsepipe.predict import PredictConfig, Predictor, resolve_onnx

STATUS_OF_KIND = {"too_large": 413, "not_image": 422, "truncated": 422, "bad_array": 422, "bad_shape": 422}


@dataclasses.dataclass
class ServeConfig:
    """Settings of ``sparsepipe serve``."""

    host: str = "127.0.0.1"  # bind address; 0.0.0.0 inside a container
    port: int = 8080  # TCP port (KServe's default container port)
    threads: int = 1  # inference worker threads (each runs one request at a time)
    engine_threads: int = 1  # intra-op threads of the engine per inference
    queue_size: int = 8  # predict requests allowed to wait beyond the running ones; more get 503
    max_images: int = 16  # images per request
    max_request_mb: float = 32.0  # request body limit in MiB (413 above)
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, width*height from the header (413 above)
    max_request_pixels: int = 2 * DEFAULT_MAX_PIXELS  # all images of one request together (413 above): ~240 MB decoded
    retry_after_s: int = 1  # Retry-After header of a 503

    def __post_init__(self) -> None:
        for name in ("threads", "engine_threads", "max_images", "max_pixels", "max_request_pixels", "retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer (e.g. --{name.replace('_', '-')} 2).")
        check_threads("threads", self.threads)
        check_threads("engine_threads", self.engine_threads)
        if not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ConfigError(f"queue_size={self.queue_size!r} must be 0 or more (--queue-size 8).")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port={self.port!r} must be between 0 and 65535.")
        if not self.max_request_mb > 0:
            raise ConfigError(f"max_request_mb={self.max_request_mb!r} must be positive.")

    @property
    def capacity(self) -> int:
        """Predict requests admitted at once: running plus waiting."""
        return self.threads + self.queue_size


class _Metrics:
    """Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # heavy: prometheus_client

        self.registry = CollectorRegistry()
        self.requests = Counter("sparsepipe_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("sparsepipe_request_latency_seconds", "request latency by endpoint and status",
                                 ["endpoint", "status"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.errors = Counter("sparsepipe_errors", "answers with status >= 400 by endpoint and reason",
                              ["endpoint", "reason"], registry=self.registry)
        self.rejected = Counter("sparsepipe_rejected", "predict requests refused with 503 (queue full)",
                                registry=self.registry)
        self.in_flight = Gauge("sparsepipe_in_flight", "predict requests admitted (running + waiting)",
                               registry=self.registry)
        self.queue_depth = Gauge("sparsepipe_queue_depth", "predict requests waiting for a worker thread",
                                 registry=self.registry)
        self.images = Counter("sparsepipe_images", "images predicted", registry=self.registry)
        self.inference = Histogram("sparsepipe_inference_seconds", "time of one predict call on a worker thread",
                                   buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                   registry=self.registry)


class ImagePayload(BaseModel):
    """One image of a JSON predict request."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="the image file (JPEG, PNG, ...) encoded as base64")
    name: str = Field("image", max_length=256, description="a name echoed back as `source`")


class PredictRequest(BaseModel):
    """Body of ``POST /predict``."""

    model_config = ConfigDict(extra="forbid")
    images: list[ImagePayload] = Field(min_length=1, description="one or more images")
    conf: float | None = Field(None, ge=0.0, le=1.0, description="score threshold (default: the server's)")
    iou: float | None = Field(None, ge=0.0, le=1.0, description="NMS IoU threshold (default: the server's)")


class DetectionOut(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in original image pixels")
    class_id: int
    label: str
    score: float
    mask: dict[str, Any] | None = None


class PredictionOut(BaseModel):
    source: str
    width: int
    height: int
    detections: list[DetectionOut]


class PredictResponse(BaseModel):
    model: str
    engine: str
    task: str
    inference_ms: float = Field(description="time on the worker thread: decode + inference + NMS")
    predictions: list[PredictionOut]


class Status(BaseModel):
    status: str
    detail: str = ""


def _check_request_pixels(blobs: list[tuple[str, bytes]], config: ServeConfig) -> None:
    """Refuse a request whose images together declare more than ``max_request_pixels`` (headers only)."""
    # encoded bytes: from the image header; a decoded RGB array (v2 UINT8 tensor): from its shape
    sizes = [image_size(data, name, config.max_pixels) if isinstance(data, bytes) else (data.shape[1], data.shape[0])
             for name, data in blobs]
    total = sum(width * height for width, height in sizes)
    if total > config.max_request_pixels:
        raise ImageInputError(
            f"The {len(blobs)} images of this request hold {total} pixels together, above the limit of "
            f"{config.max_request_pixels} per request (--max-request-pixels); send fewer or smaller images per "
            f"request.",
            "too_large",
        )


def create_app(load_predictor: Callable[[], Any], config: ServeConfig | None = None, model_name: str = "model",
               v2_name: str = "") -> Any:
    """The FastAPI app. ``load_predictor()`` runs in a background thread at start-up (``/ready`` says
    when it is done) and returns an object with ``predict(arrays, conf=, iou=)`` like
    :class:`sparsepipe.predict.Predictor`. ``v2_name`` is the model's name in the v2 routes
    (KServe: the InferenceService name); "" = :func:`v2_model_name` of ``model_name``."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # heavy: prometheus_client

    config = config or ServeConfig()
    metrics = _Metrics()
    state: dict[str, Any] = {"predictor": None, "error": None, "admitted": 0, "running": 0}
    running_lock = threading.Lock()  # "running" changes on worker threads; "admitted" only on the event loop
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="sparsepipe-infer")
    max_bytes = int(config.max_request_mb * 1024 * 1024)

    def load() -> None:
        try:
            predictor = load_predictor()

            predictor.predict([np.full((64, 64, 3), 114, np.uint8)])  # warm-up before /ready says yes
            state["predictor"] = predictor
        except Exception as exc:  # noqa: BLE001 - reported by /ready and the logs
            state["error"] = f"{type(exc).__name__}: {exc}"
            print(f"sparsepipe serve: the model did not load: {state['error']}", flush=True)

    @asynccontextmanager
    async def lifespan(app: Any):
        loader = threading.Thread(target=load, name="sparsepipe-load", daemon=True)
        loader.start()
        yield
        pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(state["predictor"], "close", None)
        if close is not None:
            close()

    app = FastAPI(title="sparsepipe serve", version=_version(), lifespan=lifespan,
                  description=f"Object detection with {model_name}. Docs: docs/serving.md")
    app.state.metrics = metrics
    app.state.serve_state = state

    def error(status: int, detail: str, endpoint: str, reason: str, headers: dict[str, str] | None = None) -> Any:
        metrics.errors.labels(endpoint, reason).inc()
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    v2_name = v2_name or v2_model_name(model_name)
    v2_infer = f"/v2/models/{v2_name}/infer"
    routes_of = {"/predict": "application/json", "/predict/from_files": "multipart/form-data",
                 v2_infer: "application/json"}

    known = (*routes_of, "/health", "/ready", "/metrics", "/openapi.json", "/docs", "/v2", "/v2/health/live",
             "/v2/health/ready", f"/v2/models/{v2_name}", f"/v2/models/{v2_name}/ready")

    def busy_response(endpoint: str) -> Any:
        metrics.rejected.inc()
        return error(503, f"The server is busy: {state['admitted']} requests are running or queued (limit "
                     f"{config.capacity} = {config.threads} threads + queue of {config.queue_size}); retry later.",
                     endpoint, "queue_full", {"Retry-After": str(config.retry_after_s)})

    def early_answer(method: str, endpoint: str, headers: dict[str, str]) -> Any:
        """Refusals decided from the headers alone, before the body is read or parsed."""
        if method != "POST" or endpoint not in routes_of:
            return None
        wanted = routes_of[endpoint]
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        length = headers.get("content-length")
        if ctype != wanted:
            return error(415, f"{endpoint} takes Content-Type {wanted}, not '{ctype or 'none'}'.", endpoint,
                         "content_type")
        if length is not None and (not length.isdigit() or int(length) > max_bytes):
            return error(413, f"The request body ({length} bytes) is above the {max_bytes}-byte limit; "
                         f"send fewer or smaller images.", endpoint, "body_too_large")
        if state["predictor"] is not None and state["admitted"] >= config.capacity:
            return busy_response(endpoint)  # full: answer now instead of parsing an upload first
        return None

    class Observe:
        """ASGI middleware: early refusals, then request count and latency by endpoint and status."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                await self.inner(scope, receive, send)
                return
            path = scope.get("path", "")
            endpoint = path if path in known else "other"
            started = time.perf_counter()
            status = {"code": 500}
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            early = early_answer(scope.get("method", ""), endpoint, headers)

            async def sending(message: dict) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                if early is not None:
                    await early(scope, receive, sending)
                else:
                    await self.inner(scope, receive, sending)
            finally:
                metrics.requests.labels(endpoint, str(status["code"])).inc()
                metrics.latency.labels(endpoint, str(status["code"])).observe(time.perf_counter() - started)

    app.add_middleware(Observe)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg')}")
        return error(422, "Invalid request: " + "; ".join(parts) + ". See /docs for the expected body.",
                     request.url.path, "validation")

    def run(blobs: list[tuple[str, bytes]], conf: float | None, iou: float | None) -> dict[str, Any]:
        with running_lock:
            state["running"] += 1
        metrics.queue_depth.set(max(state["admitted"] - state["running"], 0))
        try:
            started = time.perf_counter()
            _check_request_pixels(blobs, config)
            arrays = []
            for name, data in blobs:  # encoded image bytes, or an RGB array (v2 UINT8 tensors)
                if isinstance(data, bytes):
                    data = decode_image_bytes(data, name, config.max_pixels)
                elif data.shape[0] * data.shape[1] > config.max_pixels:
                    raise ImageInputError(f"{name}: {data.shape[1]}x{data.shape[0]} pixels is above the "
                                          f"{config.max_pixels}-pixel limit.", "too_large")
                arrays.append((name, data))
            predictor = state["predictor"]
            predictions = predictor.predict([a for _, a in arrays], conf=conf, iou=iou)
            elapsed = time.perf_counter() - started
            metrics.inference.observe(elapsed)
            metrics.images.inc(len(arrays))
            out = []
            for (name, _), prediction in zip(arrays, predictions):
                item = prediction.to_dict()
                item["source"] = name
                out.append(item)
            return {"model": model_name, "engine": getattr(getattr(predictor, "config", None), "engine", ""),
                    "task": getattr(getattr(predictor, "info", None), "task", "detect"),
                    "inference_ms": round(elapsed * 1000, 3), "predictions": out}
        finally:
            with running_lock:
                state["running"] -= 1

    async def admit_and_run(endpoint: str, blobs: list[tuple[str, bytes]], conf: float | None,
                            iou: float | None) -> Any:
        if state["predictor"] is None:
            detail = f"The model failed to load: {state['error']}" if state["error"] else "The model is still loading."
            return error(503, detail, endpoint, "not_ready", {"Retry-After": str(config.retry_after_s)})
        if state["admitted"] >= config.capacity:  # filled up while the body was read
            return busy_response(endpoint)
        state["admitted"] += 1
        metrics.in_flight.set(state["admitted"])
        metrics.queue_depth.set(max(state["admitted"] - state["running"], 0))
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(pool, run, blobs, conf, iou)
        except ImageInputError as exc:
            return error(STATUS_OF_KIND.get(exc.kind, 422), str(exc), endpoint, exc.kind)
        finally:
            state["admitted"] -= 1
            metrics.in_flight.set(state["admitted"])
            metrics.queue_depth.set(max(state["admitted"] - state["running"], 0))
        return result

    too_many = {413: {"description": "body, image or image count above the limits", "model": Status},
                415: {"description": "wrong Content-Type", "model": Status},
                422: {"description": "not an image, truncated image, bad base64 or empty request", "model": Status},
                503: {"description": "queue full or model not loaded yet (see Retry-After)", "model": Status}}

    @app.post("/predict/from_files", response_model=PredictResponse, responses=too_many, response_model_exclude_none=True,
              summary="Predict on uploaded image files (multipart field `files`; DeepSparse's field `request` "
                      "answers in DeepSparse's YOLO shape)")
    async def predict_from_files(
        files: list[UploadFile] | None = File(None, description="one or more image files"),  # noqa: B008
        request: list[UploadFile] | None = File(  # noqa: B008
            None, description="DeepSparse server's field name: the answer is DeepSparse's YOLO output "
                              "{boxes, scores, labels}, one list per image"),
    ) -> Any:
        endpoint = "/predict/from_files"
        if files and request:
            return error(422, "Send the images either as 'files' (sparsepipe's answer) or as 'request' "
                         "(DeepSparse's field and answer shape), not both.", endpoint, "validation")
        uploads = files or request or []
        if not uploads:
            return error(422, "No files in the request; send one or more multipart fields named 'files' "
                         "(or 'request', as DeepSparse clients do).", endpoint, "empty")
        if len(uploads) > config.max_images:
            return error(413, f"{len(uploads)} images in one request; the limit is {config.max_images}.", endpoint,
                         "too_many_images")
        blobs, total = [], 0
        for i, upload in enumerate(uploads):
            data = await upload.read(max_bytes + 1)
            total += len(data)
            if total > max_bytes:
                return error(413, f"The uploaded files exceed the {max_bytes}-byte limit.", endpoint, "body_too_large")
            blobs.append((upload.filename or f"file{i}", data))
        result = await admit_and_run(endpoint, blobs, None, None)
        if files or not isinstance(result, dict):
            return result
        return JSONResponse(deepsparse_yolo_output(result))

    @app.post("/predict", response_model=PredictResponse, responses=too_many, response_model_exclude_none=True,
              summary="Predict on base64-encoded images in a JSON body")
    async def predict_json(body: PredictRequest) -> Any:
        endpoint = "/predict"
        if len(body.images) > config.max_images:
            return error(413, f"{len(body.images)} images in one request; the limit is {config.max_images}.",
                         endpoint, "too_many_images")
        blobs = []
        for i, item in enumerate(body.images):
            try:
                data = base64.b64decode(item.data, validate=True)
            except (binascii.Error, ValueError):
                return error(422, f"images[{i}].data is not valid base64; encode the image file bytes with base64.",
                             endpoint, "bad_base64")
            blobs.append((item.name, data))
        return await admit_and_run(endpoint, blobs, body.conf, body.iou)

    @app.get("/health", response_model=Status, summary="Liveness: the process answers")
    async def health() -> Any:
        return {"status": "ok", "detail": ""}

    @app.get("/ready", response_model=Status, responses={503: {"model": Status}},
             summary="Readiness: the model is loaded and warmed up")
    async def ready() -> Any:
        if state["predictor"] is not None:
            return {"status": "ready", "detail": model_name}
        detail = f"failed: {state['error']}" if state["error"] else "loading"
        return JSONResponse({"status": "not_ready", "detail": detail}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Any:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _add_v2_routes(app, v2_name, state, admit_and_run, error, config)
    return app


def v2_model_name(model: str) -> str:
    """A URL-safe model name for the v2 routes: ``models:/yolo@champion`` -> ``yolo``, ``runs/x/model.onnx`` -> ``model``."""
    text = str(model)
    if text.startswith("models:/"):
        text = re.split(r"[@/]", text[len("models:/"):])[0]
    else:
        text = PurePosixPath(text.rstrip("/")).stem or "model"
    return re.sub(r"[^A-Za-z0-9._-]", "-", text) or "model"


def _add_v2_routes(app: Any, name: str, state: dict[str, Any], admit_and_run: Callable, error: Callable,
                   config: ServeConfig) -> None:
    """The Open Inference Protocol v2 routes (bodies in :mod:`sparsepipe.oip`); errors are ``{"error": ...}``."""
    version = _version()
    infer_path = f"/v2/models/{name}/infer"

    def v2_error(response: Any) -> Any:
        detail = json.loads(bytes(response.body)).get("detail", "")
        headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
        return JSONResponse({"error": detail}, status_code=response.status_code, headers=headers)

    @app.get("/v2", summary="v2 server metadata")
    async def v2_server() -> Any:
        return {"name": "sparsepipe", "version": version, "extensions": []}

    @app.get("/v2/health/live", summary="v2 liveness")
    async def v2_live() -> Any:
        return {"live": True}

    @app.get("/v2/health/ready", summary="v2 readiness: the model is loaded and warmed up")
    @app.get(f"/v2/models/{name}/ready", summary="v2 model readiness")
    async def v2_ready() -> Any:
        ready = state["predictor"] is not None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get(f"/v2/models/{name}", summary="v2 model metadata")
    async def v2_metadata() -> Any:
        return oip.model_metadata(name, version)

    @app.post(infer_path, summary="v2 inference: BYTES (base64 images) or UINT8 [N, H, W, 3] in, detections out")
    async def v2_infer(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return v2_error(error(400, "The body is not JSON.", infer_path, "validation"))
        try:
            blobs, conf, iou, request_id = oip.decode_request(body, config.max_images)
        except oip.OipError as exc:
            return v2_error(error(exc.status, str(exc), infer_path, "validation"))
        result = await admit_and_run(infer_path, blobs, conf, iou)
        if isinstance(result, Response):
            return v2_error(result)
        return oip.encode_response(result["predictions"], name, version, request_id)


def deepsparse_yolo_output(result: dict[str, Any]) -> dict[str, Any]:
    """DeepSparse's YOLO pipeline output from a sparsepipe answer: per image, a list of boxes
    ``[x1, y1, x2, y2]`` in original pixels, a list of scores and a list of labels (class names,
    as DeepSparse returns them when it knows the class names), plus ``class_ids``."""
    out: dict[str, Any] = {"boxes": [], "scores": [], "labels": [], "class_ids": []}
    for prediction in result["predictions"]:
        detections = prediction["detections"]
        out["boxes"].append([list(d["box"]) for d in detections])
        out["scores"].append([d["score"] for d in detections])
        out["labels"].append([d["label"] for d in detections])
        out["class_ids"].append([d["class_id"] for d in detections])
    return out


def _version() -> str:
    return __version__


def _check_port_free(host: str, port: int) -> None:
    """Refuse a host/port another process listens on (uvicorn only logs one line and exits 1)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"--host {host} cannot be resolved ({exc.strerror or exc}); use an address such as 127.0.0.1.") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use by another program; stop it or pick "
                                  f"another port (--port {port + 1}).") from None
            raise ConfigError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --host or "
                              f"--port (ports below 1024 need privileges).") from None


def serve(model: str, config: ServeConfig, engine: str = "onnxruntime", conf: float = 0.25,
          iou: float = 0.7, model_name: str = "") -> None:
    """``sparsepipe serve``: load the model (local path, s3:// or models:/name@alias) and run uvicorn."""
    import uvicorn  # heavy: uvicorn
    from PIL import Image  # heavy: PIL

    predict_config = PredictConfig(engine=engine, conf=conf, iou=iou, threads=config.engine_threads,
                                   max_pixels=config.max_pixels)  # validates before the server starts

    if not str(model).startswith(("s3://", "models:/")):
        model = str(resolve_onnx(model))  # a wrong local path fails here, before the server starts
    Image.MAX_IMAGE_PIXELS = config.max_pixels  # PIL's own bomb guard at the same limit
    _check_port_free(config.host, config.port)
    app = create_app(lambda: Predictor(model, config=predict_config), config, model_name=str(model),
                     v2_name=model_name)
    print(f"sparsepipe serve: {model} on http://{config.host}:{config.port} ({config.threads} threads, queue "
          f"{config.queue_size}); /ready turns 200 once the model is loaded", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
