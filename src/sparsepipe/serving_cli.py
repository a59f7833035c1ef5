"""Argument parsing of ``sparsepipe predict``, ``sparsepipe serve`` and ``sparsepipe deploy``.

    sparsepipe predict --help
    sparsepipe serve --help
    sparsepipe deploy --help

Kept apart from :mod:`sparsepipe.cli` (which only registers these three) so the serving
commands are one concern; the logic lives in predict.py, serve.py and deploy.py.
"""

from __future__ import annotations

import argparse
from typing import Any

from sparsepipe.deploy import DeployConfig, deploy
from sparsepipe.image_input import DEFAULT_MAX_PIXELS
from sparsepipe.predict import PREDICT_ENGINES, PredictConfig, predict_files


def cmd_predict(args: argparse.Namespace) -> int:
    config = PredictConfig(engine=args.engine, conf=args.conf, iou=args.iou, max_det=args.max_det,
                           threads=args.threads, batch_size=args.batch_size, masks=args.masks)
    path = predict_files(args.model, args.images, args.out, config, save_images=args.save_images)
    print(f"predictions: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from sparsepipe.serve import ServeConfig, serve  # heavy: fastapi, pydantic (via sparsepipe.serve)

    config = ServeConfig(host=args.host, port=args.port, threads=args.threads, engine_threads=args.engine_threads,
                         queue_size=args.queue_size, max_images=args.max_images, max_request_mb=args.max_request_mb,
                         max_pixels=args.max_pixels, max_request_pixels=args.max_request_pixels)
    serve(args.model, config, engine=args.engine, conf=args.conf, iou=args.iou, model_name=args.model_name)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    config = DeployConfig(name=args.name, namespace=args.namespace, image=args.image, cpu=args.cpu,
                          memory=args.memory, cpu_limit=args.cpu_limit, memory_limit=args.memory_limit,
                          threads=args.threads, queue_size=args.queue_size, engine=args.engine,
                          secret=args.secret, secret_keys=_pair(args.secret_keys), tracking_uri=args.tracking_uri, s3_endpoint=args.s3_endpoint,
                          min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                          service_account=args.service_account)
    path = deploy(args.model, args.out, config, apply=args.apply)
    print(f"InferenceService: {path}" + (" (applied)" if args.apply else ""))
    return 0


def _pair(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    parts = tuple(part.strip() for part in text.split(","))
    return parts if len(parts) == 2 else ("", "")  # DeployConfig names the bad value


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="onnxruntime", choices=PREDICT_ENGINES,
                   help="inference engine (deepsparse needs make deepsparse-env)")
    p.add_argument("--conf", type=float, default=0.25, help="minimum class score of a kept box")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (same-class boxes overlapping more are dropped)")


def add_serving_commands(sub: Any, add: Any) -> None:
    """Register predict, serve and deploy on the ``sparsepipe`` subparsers (``add`` = cli._add)."""
    p = add(sub, "predict", cmd_predict, "boxes for images with an ONNX model",
            "Letterbox, run the engine, NMS; write predictions.json (and annotated images) into --out.")
    p.add_argument("model", help="model.onnx, an export/quantize out folder, s3://... or models:/name@alias")
    p.add_argument("images", nargs="+", help="image files")
    _common_model_args(p)
    p.add_argument("--max-det", type=int, default=300, help="boxes kept per image at most")
    p.add_argument("--threads", type=int, default=1, help="engine intra-op threads")
    p.add_argument("--batch-size", type=int, default=8, help="images per engine call (dynamic-batch models)")
    p.add_argument("--masks", action="store_true", help="segment models: run-length encoded masks per box")
    p.add_argument("--save-images", action="store_true", help="also write annotated JPEGs")
    p.add_argument("--out", default="runs/predict", help="folder for predictions.json")

    p = add(sub, "serve", cmd_serve, "HTTP server for an ONNX model",
            "FastAPI + uvicorn: /predict/from_files, /predict, /health, /ready, /metrics, /openapi.json.")
    p.add_argument("model", help="model.onnx, an export/quantize out folder, s3://... or models:/name@alias")
    _common_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8080, help="TCP port")
    p.add_argument("--threads", "--workers", dest="threads", type=int, default=1,
                   help="inference worker threads (requests run in parallel)")
    p.add_argument("--engine-threads", type=int, default=1, help="intra-op threads of the engine per request")
    p.add_argument("--queue-size", type=int, default=8, help="requests that may wait beyond the running ones; more get 503")
    p.add_argument("--max-images", type=int, default=16, help="images per request")
    p.add_argument("--max-request-mb", type=float, default=32.0, help="request body limit (413 above)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixels per image (413 above)")
    p.add_argument("--model-name", default="", help="name in the v2 routes /v2/models/NAME (default: from MODEL)")
    p.add_argument("--max-request-pixels", type=int, default=2 * DEFAULT_MAX_PIXELS,
                   help="pixels of all images of one request together, from their headers (413 above)")

    d = DeployConfig(name="x")
    p = add(sub, "deploy", cmd_deploy, "KServe InferenceService YAML for a model",
            "Write a KServe InferenceService running `sparsepipe serve` in the CPU image; --apply runs kubectl apply.")
    p.add_argument("model", help="models:/name@alias (MLflow registry) or s3://bucket/key/model.onnx")
    p.add_argument("--name", required=True, help="InferenceService name (DNS-1123: lower case, digits, '-')")
    p.add_argument("--namespace", default=d.namespace, help="Kubernetes namespace")
    p.add_argument("--image", default=d.image, help="predictor image")
    p.add_argument("--engine", default=d.engine, choices=("onnxruntime", "openvino"), help="engine in the container")
    p.add_argument("--cpu", default=d.cpu, help="CPU request")
    p.add_argument("--memory", default=d.memory, help="memory request")
    p.add_argument("--cpu-limit", default=d.cpu_limit, help="CPU limit")
    p.add_argument("--memory-limit", default=d.memory_limit, help="memory limit")
    p.add_argument("--threads", type=int, default=d.threads, help="inference threads in the server")
    p.add_argument("--queue-size", type=int, default=d.queue_size, help="server queue bound")
    p.add_argument("--secret", default=d.secret, help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (envFrom)")
    p.add_argument("--secret-keys", default=None,
                   help="ACCESS,SECRET key names inside --secret (e.g. accesskey,secretkey of KFP's mlpipeline-minio-artifact) instead of envFrom")
    p.add_argument("--tracking-uri", default=d.tracking_uri, help="MLFLOW_TRACKING_URI inside the cluster (models:/ URIs)")
    p.add_argument("--s3-endpoint", default=d.s3_endpoint, help="AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL inside the cluster")
    p.add_argument("--min-replicas", type=int, default=d.min_replicas, help="KServe minReplicas")
    p.add_argument("--max-replicas", type=int, default=d.max_replicas, help="KServe maxReplicas")
    p.add_argument("--service-account", default=d.service_account, help="service account of the predictor pod ('' = default)")
    p.add_argument("--apply", action="store_true", help="also run kubectl apply -f on the written YAML")
    p.add_argument("--out", default="runs/deploy", help="folder for inferenceservice.yaml")
