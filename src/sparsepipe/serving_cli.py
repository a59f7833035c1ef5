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

from sparsepipe.config_flags import DeferredParser, Flag, add_config_flags, config_from_args
from sparsepipe.deploy import DeployConfig, deploy
from sparsepipe.predict import PREDICT_ENGINES, PredictConfig, predict_files


#: Config fields without a flag of their own, and why (tests/test_cli_config_flags.py reads this).
EXCLUDED_FIELDS: dict[str, dict[str, str]] = {
    "DeployConfig": {"secret_keys": "--secret-keys ACCESS,SECRET: two key names in one flag"},
}


def cmd_predict(args: argparse.Namespace) -> int:
    path = predict_files(args.model, args.images, args.out, config_from_args(PredictConfig, args),
                         save_images=args.save_images)
    print(f"predictions: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from sparsepipe.serve import ServeConfig, serve  # heavy: fastapi, pydantic (via sparsepipe.serve)

    serve(args.model, config_from_args(ServeConfig, args), engine=args.engine, conf=args.conf, iou=args.iou,
          model_name=args.model_name)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    config = config_from_args(DeployConfig, args, secret_keys=_pair(args.secret_keys))
    path = deploy(args.model, args.out, config, apply=args.apply)
    print(f"InferenceService: {path}" + (" (applied)" if args.apply else ""))
    return 0


def _pair(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    parts = tuple(part.strip() for part in text.split(","))
    return parts if len(parts) == 2 else ("", "")  # DeployConfig names the bad value


def _common_model_args(p: argparse.ArgumentParser) -> None:
    """serve's engine options (serve() takes them beside ServeConfig; the same as PredictConfig's)."""
    d = PredictConfig()
    p.add_argument("--engine", default=d.engine, choices=PREDICT_ENGINES,
                   help="inference engine (deepsparse needs make deepsparse-env)")
    p.add_argument("--conf", type=float, default=d.conf, help="minimum class score of a kept box")
    p.add_argument("--iou", type=float, default=d.iou, help="NMS IoU threshold (same-class boxes overlapping more are dropped)")


def add_serving_commands(sub: Any, add: Any) -> None:
    """Register predict, serve and deploy on the ``sparsepipe`` subparsers (``add`` = cli._add)."""
    p = add(sub, "predict", cmd_predict, "boxes for images with an ONNX model",
            "Letterbox, run the engine, NMS; write predictions.json (and annotated images) into --out.")
    p.add_argument("model", help="model.onnx, an export/quantize out folder, s3://... or models:/name@alias")
    p.add_argument("images", nargs="+", help="image files")
    add_config_flags(p, PredictConfig, flags={"engine": Flag(choices=PREDICT_ENGINES)})
    p.add_argument("--save-images", action="store_true", help="also write annotated JPEGs")
    p.add_argument("--out", default="runs/predict", help="folder for predictions.json")

    p = add(sub, "serve", cmd_serve, "HTTP server for an ONNX model",
            "FastAPI + uvicorn: /predict/from_files, /predict, /health, /ready, /metrics, /openapi.json.")
    p.add_argument("model", help="model.onnx, an export/quantize out folder, s3://... or models:/name@alias")
    _common_model_args(p)
    p.add_argument("--model-name", default="", help="name in the v2 routes /v2/models/NAME (default: from MODEL)")

    def serve_flags(parser: argparse.ArgumentParser) -> None:
        from sparsepipe.serve import ServeConfig  # heavy: fastapi, pydantic (via sparsepipe.serve)

        add_config_flags(parser, ServeConfig, flags={"threads": Flag(aliases=("--workers",))})

    if isinstance(p, DeferredParser):  # cli's subparsers: added when `serve` is used, so --help skips fastapi
        p.defer(serve_flags)
    else:
        serve_flags(p)

    p = add(sub, "deploy", cmd_deploy, "KServe InferenceService YAML for a model",
            "Write a KServe InferenceService running `sparsepipe serve` in the CPU image; --apply runs kubectl apply.")
    p.add_argument("model", help="models:/name@alias (MLflow registry) or s3://bucket/key/model.onnx")
    add_config_flags(p, DeployConfig, exclude=EXCLUDED_FIELDS["DeployConfig"],
                     flags={"engine": Flag(choices=("onnxruntime", "openvino"))})
    p.add_argument("--secret-keys", default=None,
                   help="ACCESS,SECRET key names inside --secret (e.g. accesskey,secretkey of KFP's mlpipeline-minio-artifact) instead of envFrom")
    p.add_argument("--apply", action="store_true", help="also run kubectl apply -f on the written YAML")
    p.add_argument("--out", default="runs/deploy", help="folder for inferenceservice.yaml")
