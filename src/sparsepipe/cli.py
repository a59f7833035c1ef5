"""The ``sparsepipe`` command line: argument parsing only, one call into the library per step.

    sparsepipe --help
    sparsepipe <step> --help

Every step takes ``--out DIR`` and ends by writing ``DIR/result.json``. User mistakes print one
paragraph to stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from sparsepipe import __version__
from sparsepipe.demo import DemoConfig, run_demo
from sparsepipe.errors import ConfigError, SparsepipeError, describe_os_error
from sparsepipe.evaluate import EvaluateConfig, evaluate
from sparsepipe.export import ExportConfig, export_onnx
from sparsepipe.quantize import QuantizeConfig, quantize
from sparsepipe.recipe_cli import add_recipe_commands
from sparsepipe.report import ReportConfig, report
from sparsepipe.serving_cli import add_serving_commands
from sparsepipe.sparsify import SparsifyConfig, sparsify
from sparsepipe.tracking import resolve_tracker
from sparsepipe.training import TrainConfig, train
from sparsepipe.trust import checkpoint_trust

DATA_HELP = (
    "dataset SOURCE: 'synthetic[:train=N,val=N,seed=S,size=PX,classes=K,task=detect|segment]', "
    "a local folder or data YAML, an http(s) .zip/.tar.gz archive, or an s3://bucket/prefix"
)


def _tracking_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracking")
    group.add_argument(
        "--experiment", default="sparsepipe", help="MLflow experiment (MLFLOW_EXPERIMENT_NAME wins when set)"
    )
    group.add_argument("--run-name", default=None, help="MLflow run name (default: the step name)")
    group.add_argument(
        "--no-track",
        action="store_true",
        help="log nothing to MLflow (default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)",
    )


def _out_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", default=default, help=f"folder the step writes to, ending with result.json (default: {default})")


def _trust_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-checkpoint", action="store_true",
        help="load .pt files that fail sparsepipe's checkpoint policy (foreign pickle globals, remote without a "
        "recorded SHA-256); loading a .pt runs code, see SECURITY.md (env: SPARSEPIPE_TRUST_CHECKPOINT=1)",
    )


def _variant_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", default="", help="variant name in MLflow and the report (default: inherited)")


def _add(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help_text: str, doc: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def _tracker(args: argparse.Namespace, step: str):
    return resolve_tracker(
        args.experiment,
        args.run_name or step,
        enabled=not args.no_track,
        tags={"sparsepipe.step": step, "sparsepipe.version": __version__},
    )


def _finish(result) -> int:
    print(f"{result.step}: wrote {Path(result.out_dir) / 'result.json'}")
    if result.metrics:
        print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from sparsepipe.data import DataConfig, prepare_data  # heavy: cv2 (via sparsepipe.data)

    result = prepare_data(args.source, args.out, DataConfig(validate=not args.no_validate, sha256=args.data_sha256))
    return _finish(result)


def cmd_train(args: argparse.Namespace) -> int:
    extra = _parse_extra(args.ultralytics_arg)
    config = TrainConfig(
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        workers=args.workers,
        seed=args.seed,
        optimizer=args.optimizer,
        lr0=args.lr0,
        patience=args.patience,
        plots=not args.no_plots,
        variant=args.variant or "baseline",
        extra=extra,
    )
    with _tracker(args, "train") as tracker:
        return _finish(train(args.model, args.data, args.out, config, tracker))


def cmd_sparsify(args: argparse.Namespace) -> int:
    config = SparsifyConfig(
        imgsz=args.imgsz, batch=args.batch, device=args.device, workers=args.workers, seed=args.seed,
        optimizer=args.optimizer, max_epochs=args.max_epochs, plots=not args.no_plots,
        variant=args.variant or "pruned", extra=_parse_extra(args.ultralytics_arg),
    )
    with _tracker(args, "sparsify") as tracker:
        result = sparsify(args.model, args.data, args.recipe, args.out, config, recipe_args=args.recipe_args,
                          teacher=args.teacher, resume=args.resume, tracker=tracker)
    return _finish(result)


def cmd_export(args: argparse.Namespace) -> int:
    config = ExportConfig(
        imgsz=args.imgsz, batch=args.batch, dynamic=args.dynamic, opset=args.opset,
        simplify=not args.no_simplify, variant=args.variant,
    )
    with _tracker(args, "export") as tracker:
        return _finish(export_onnx(args.model, args.out, config, tracker))


def cmd_quantize(args: argparse.Namespace) -> int:
    if args.method == "qat":
        from sparsepipe.qat import QATConfig, qat  # heavy: onnx, pydantic, torch (via sparsepipe.qat)

        config = QATConfig(
            imgsz=args.imgsz or 320, batch=args.batch, device=args.device, workers=args.workers, seed=args.seed,
            max_epochs=args.max_epochs, opset=args.opset, variant=args.variant or "qat_int8",
        )
        with _tracker(args, "quantize") as tracker:
            return _finish(qat(args.model, args.data, args.recipe, args.out, config, recipe_args=args.recipe_args,
                               tracker=tracker, teacher=args.teacher, resume=args.resume))
    if args.recipe and args.method == "ptq":
        raise SparsepipeError(
            f"--recipe {args.recipe} is for --method qat (a recipe's QuantizationModifier); PTQ takes no recipe. "
            f"Drop --recipe, or use --method qat."
        )
    config = QuantizeConfig(
        method=args.method, calibration_images=args.calibration_images, calibration_method=args.calibration_method,
        percentile=args.percentile, per_channel=not args.per_tensor, op_types=args.op_types,
        exclude_head=not args.quantize_head, exclude_nodes=args.exclude_nodes or (),
        activation_type=args.activation_type, weight_type=args.weight_type, imgsz=args.imgsz, opset=args.opset,
        seed=args.seed, evaluate=not args.no_evaluate, variant=args.variant,
    )
    with _tracker(args, "quantize") as tracker:
        return _finish(quantize(args.model, args.data, args.out, config, tracker))


def cmd_evaluate(args: argparse.Namespace) -> int:
    config = EvaluateConfig(imgsz=args.imgsz, batch=args.batch, split=args.split, device=args.device,
                            plots=args.plots, variant=args.variant, bootstrap=args.bootstrap)
    with _tracker(args, "evaluate") as tracker:
        result = evaluate(args.model, args.data, args.out, config, tracker, baseline=args.baseline)
    return _finish(result)


def _int_list(text: str, flag: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]``; anything else is a ConfigError naming the flag."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"{flag} {text!r} must be a positive integer or a comma list of them, e.g. {flag} 1,4,8.")
    return values


def cmd_benchmark(args: argparse.Namespace) -> int:
    from sparsepipe.benchmark import BenchmarkConfig, benchmark  # heavy: openvino (via sparsepipe.benchmark)

    batches = _int_list(args.batch, "--batch")
    config = BenchmarkConfig(
        engine=args.engine, batch=batches[0], batches=tuple(batches) if len(batches) > 1 else (), imgsz=args.imgsz,
        threads=args.threads, warmup=args.warmup, iterations=args.iterations, duration_s=args.duration,
        rounds=args.rounds, variant=args.variant, scenario=args.scenario, streams=args.streams, pin=args.pin,
        floor=args.floor,
    )
    with _tracker(args, "benchmark") as tracker:
        return _finish(benchmark(args.model, args.out, config, baseline=args.baseline, tracker=tracker))


def cmd_report(args: argparse.Namespace) -> int:
    with _tracker(args, "report") as tracker:
        result = report(args.results, args.out, ReportConfig(baseline=args.baseline, title=args.title), tracker)
    print(result.extra["table"])
    print(f"report: {result.path('markdown')}, {result.path('html')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    config = DemoConfig(model=args.model, data=args.data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                        nbs=args.nbs, iterations=args.iterations, threads=args.threads, recipe=args.recipe,
                        recipe_args=args.recipe_args)
    result = run_demo(args.out, config, experiment=args.experiment, track=not args.no_track)
    print(result.extra["table"])
    for row in result.extra.get("predict_sample", []):
        print(f"predict {row['image']}: {row['objects']} objects found ({row['labelled']} labelled) "
              f"{', '.join(row['classes'])}")
    return 0


def _parse_extra(items: list[str] | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SparsepipeError(f"--ultralytics-arg '{item}' must look like key=value, e.g. --ultralytics-arg mosaic=0.5.")
        try:
            extra[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SparsepipeError(
                f"--ultralytics-arg {item[:200]!r}: the value is not valid YAML ({problem}). Quote it, e.g. "
                f"--ultralytics-arg 'name=\"text\"'."
            ) from None
    return extra


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsepipe",
        description="Make ultralytics YOLO models small and fast on CPUs, and prove it: "
        "data -> train -> export -> evaluate -> benchmark -> report.",
    )
    parser.add_argument("--version", action="version", version=f"sparsepipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<step>")
    sub.required = True

    p = _add(sub, "data", cmd_data, "make/validate an ultralytics dataset", "Produce a validated, relocatable ultralytics dataset in --out.")
    p.add_argument("--source", default="synthetic", help=DATA_HELP)
    p.add_argument("--no-validate", action="store_true", help="skip image/label validation (large trusted datasets)")
    p.add_argument("--data-sha256", default=None, help="expected SHA-256 of an archive SOURCE; refused (nothing extracted) on mismatch")
    _out_arg(p, "runs/data")

    p = _add(sub, "train", cmd_train, "train a baseline model", "Train an ultralytics model from a config or checkpoint, offline.")
    p.add_argument("--model", default="yolov8n.yaml", help="model config (yolov8n.yaml, yolo11n.yaml, yolov8n-seg.yaml...) or checkpoint")
    p.add_argument("--data", default="synthetic", help=DATA_HELP)
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--imgsz", type=int, default=320, help="image size in pixels (multiple of 32)")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--device", default="cpu", help="cpu, 0, or 0,1 (GPU DDP)")
    p.add_argument("--workers", type=int, default=2, help="data-loader workers")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--optimizer", default="auto", help="ultralytics optimizer (auto, SGD, AdamW...)")
    p.add_argument("--lr0", type=float, default=None, help="initial learning rate (default: ultralytics' choice)")
    p.add_argument("--patience", type=int, default=100, help="early-stopping patience in epochs")
    p.add_argument("--no-plots", action="store_true", help="skip ultralytics' plots")
    p.add_argument("--ultralytics-arg", action="append", metavar="KEY=VALUE", help="any other ultralytics train argument (repeatable)")
    _variant_arg(p)
    _trust_arg(p)
    _out_arg(p, "runs/train")
    _tracking_args(p)

    p = _add(sub, "sparsify", cmd_sparsify, "train under a sparsification recipe",
             "Train a model under a SparseML-format recipe (pruning, LR schedule, distillation) and publish a sparse checkpoint.")
    p.add_argument("--model", default="yolov8n.yaml", help="checkpoint to start from (a train step's --out folder or .pt), or a model config")
    p.add_argument("--data", default="synthetic", help=DATA_HELP)
    p.add_argument("--recipe", default=None, help="recipe file (.yaml/.yml/.md recipe card); see recipes/")
    p.add_argument("--recipe-args", default=None, help="override recipe variables: JSON '{\"num_epochs\": 3}' or k=v,k2=v2")
    p.add_argument("--teacher", default=None, help="distillation teacher: checkpoint path, or 'self' (frozen copy of --model)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out folder")
    p.add_argument("--max-epochs", type=int, default=None, help="refuse recipes needing more epochs than this budget")
    p.add_argument("--imgsz", type=int, default=320, help="image size in pixels (multiple of 32)")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--device", default="cpu", help="cpu, 0, or 0,1")
    p.add_argument("--workers", type=int, default=2, help="data-loader workers")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--optimizer", default="auto", help="ultralytics optimizer")
    p.add_argument("--no-plots", action="store_true", help="skip ultralytics' plots")
    p.add_argument("--ultralytics-arg", action="append", metavar="KEY=VALUE", help="other ultralytics train argument (repeatable)")
    _variant_arg(p)
    _trust_arg(p)
    _out_arg(p, "runs/sparsify")
    _tracking_args(p)

    p = _add(sub, "export", cmd_export, "export a checkpoint to ONNX", "Export a .pt checkpoint to ONNX with ultralytics metadata.")
    p.add_argument("--model", required=True, help="checkpoint .pt or the --out folder of train/sparsify")
    p.add_argument("--imgsz", type=int, default=320, help="input size in pixels")
    p.add_argument("--batch", type=int, default=1, help="static batch size")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch/size axes")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (13-21)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    _variant_arg(p)
    _trust_arg(p)
    _out_arg(p, "runs/export")
    _tracking_args(p)

    p = _add(sub, "quantize", cmd_quantize, "INT8 ONNX by PTQ or recipe QAT",
             "Quantize to a QDQ INT8 ONNX that onnxruntime runs with integer kernels: PTQ calibrates a checkpoint or "
             "FP32 ONNX on a sample of the train split; QAT trains a checkpoint under a recipe's QuantizationModifier. "
             "Writes model_int8.onnx and its mAP. See docs/quantize.md and docs/qat.md.")

    qdefaults = QuantizeConfig()
    p.add_argument("--method", default="ptq", choices=["ptq", "qat"], help="ptq (calibrated static INT8) or qat (recipe training)")
    p.add_argument("--model", required=True, help=".pt / FP32 .onnx, or the --out folder of train, sparsify or export")
    p.add_argument("--data", default="synthetic", help=DATA_HELP + " (its train split calibrates)")
    p.add_argument("--recipe", default=None, help="QAT recipe with a QuantizationModifier (--method qat)")
    p.add_argument("--recipe-args", default=None, help="QAT: override recipe variables (JSON or k=v,k2=v2)")
    p.add_argument("--teacher", default=None, help="QAT: distillation teacher (checkpoint, models:/..., or self)")
    p.add_argument("--resume", action="store_true", help="QAT: continue an interrupted run in the same --out folder")
    p.add_argument("--max-epochs", type=int, default=None, help="QAT: refuse recipes needing more epochs")
    p.add_argument("--batch", type=int, default=16, help="QAT: training batch size")
    p.add_argument("--device", default="cpu", help="QAT: cpu, 0, or 0,1")
    p.add_argument("--workers", type=int, default=2, help="QAT: data-loader workers")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the ONNX's static size; 320 when exporting a .pt)")
    p.add_argument("--calibration-images", type=int, default=qdefaults.calibration_images, help="train images sampled for calibration")
    p.add_argument("--calibration-method", default=qdefaults.calibration_method, choices=["minmax", "entropy", "percentile"],
                   help="how activation ranges are chosen")
    p.add_argument("--percentile", type=float, default=qdefaults.percentile, help="kept percentile for --calibration-method percentile")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per output channel")
    p.add_argument("--op-types", default=",".join(qdefaults.op_types), help="comma-separated op types to quantize where present")
    p.add_argument("--quantize-head", action="store_true", help="also quantize the Detect head's output convs and the DFL conv")
    p.add_argument("--exclude-nodes", default=None, help="comma-separated ONNX node names to keep in float")
    p.add_argument("--activation-type", default=qdefaults.activation_type, choices=["uint8", "int8"], help="activation type")
    p.add_argument("--weight-type", default=qdefaults.weight_type, choices=["int8"], help="weight type (symmetric)")
    p.add_argument("--opset", type=int, default=qdefaults.opset, help="opset of the FP32 export of a .pt")
    p.add_argument("--seed", type=int, default=qdefaults.seed, help="seed of the calibration sample")
    p.add_argument("--no-evaluate", action="store_true", help="skip the mAP of the INT8 file on val")
    _variant_arg(p)
    _trust_arg(p)
    _out_arg(p, "runs/quantize")
    _tracking_args(p)

    p = _add(sub, "evaluate", cmd_evaluate, "mAP of a .pt or .onnx on val", "Measure mAP50 / mAP50-95 (overall and per class).")
    p.add_argument("--model", required=True, help=".pt, .onnx, or the --out folder of a step that made one")
    p.add_argument("--data", default="synthetic", help=DATA_HELP)
    p.add_argument("--imgsz", type=int, default=None, help="image size (default: the ONNX's, else 320)")
    p.add_argument("--batch", type=int, default=16, help="batch size (.pt / dynamic ONNX)")
    p.add_argument("--split", default="val", help="val or test")
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index")
    p.add_argument("--plots", action="store_true", help="write PR curves and confusion matrix")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="resamples of the val images for the 95%% interval of mAP50-95 (0 = none)")
    p.add_argument("--baseline", default=None,
                   help="evaluate --out folder of the reference model (same data): adds the paired ratio "
                        "map50_95_ratio with its 95%% interval")
    _variant_arg(p)
    _trust_arg(p)
    _out_arg(p, "runs/evaluate")
    _tracking_args(p)

    p = _add(sub, "benchmark", cmd_benchmark, "CPU latency/throughput of an ONNX", "Time an ONNX model on CPU (optionally against a baseline, interleaved).")
    p.add_argument("--model", required=True, help=".onnx or the --out folder of export/quantize")
    p.add_argument("--baseline", default=None, help="another .onnx timed in the same run for speedup_vs_baseline")
    p.add_argument("--engine", default="onnxruntime", help="inference engine: onnxruntime, openvino (reads the same ONNX, INT8 QDQ included; f32 as predict/serve run it), openvino-bf16, deepsparse; a comma list times each")
    p.add_argument("--batch", default="1", help="batch size, or a comma list to sweep (1,4,8: dynamic-batch ONNX), one row per batch")
    p.add_argument("--imgsz", type=int, default=None, help="image size for dynamic ONNX axes")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--scenario", choices=("sync", "async"), default="sync", help="sync: latency, one request at a time; async: --streams requests in flight (throughput)")
    p.add_argument("--streams", type=int, default=1, help="concurrent requests in the async scenario")
    p.add_argument("--pin", action="store_true", help="pin to the first --threads CPUs (OpenVINO: ENABLE_CPU_PINNING)")
    p.add_argument("--floor", action="store_true", help="measure the INT8 peak and report floor_ms = FLOPs / peak and latency_vs_floor")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up iterations")
    p.add_argument("--iterations", type=int, default=100, help="timed iterations")
    p.add_argument("--duration", type=float, default=None, help="seconds to run instead of --iterations")
    p.add_argument("--rounds", type=int, default=5, help="interleaving rounds with --baseline")
    _variant_arg(p)
    _out_arg(p, "runs/benchmark")
    _tracking_args(p)

    p = _add(sub, "report", cmd_report, "compare variants", "Merge step results by variant into Markdown/HTML tables and a plot.")
    p.add_argument("--results", nargs="+", required=True, help="out folders (or result.json files) of earlier steps")
    p.add_argument("--baseline", default="baseline", help="variant the speedups are relative to")
    p.add_argument("--title", default="sparsepipe variant comparison", help="report heading")
    _out_arg(p, "runs/report")
    _tracking_args(p)

    p = _add(sub, "demo", cmd_demo, "run the whole flow on generated data", "data -> train -> export -> evaluate -> benchmark -> report, tracked in MLflow.")

    defaults = DemoConfig()
    p.add_argument("--model", default=defaults.model, help="model config")
    p.add_argument("--data", default=defaults.data, help=DATA_HELP)
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="baseline training epochs")
    p.add_argument("--imgsz", type=int, default=defaults.imgsz, help="image size for training, export and benchmark")
    p.add_argument("--batch", type=int, default=defaults.batch, help="training batch")
    p.add_argument("--nbs", type=int, default=defaults.nbs, help="ultralytics' nominal batch size (= batch: a step per batch)")
    p.add_argument("--iterations", type=int, default=defaults.iterations, help="benchmark iterations")
    p.add_argument("--threads", type=int, default=defaults.threads, help="benchmark threads")
    p.add_argument("--recipe", default=defaults.recipe, help="pruning recipe of the second variant ('' skips it)")
    p.add_argument("--recipe-args", default=defaults.recipe_args, help="recipe overrides for the demo")
    _out_arg(p, "runs/demo")
    _tracking_args(p)

    add_serving_commands(sub, _add)  # predict, serve, deploy (issue 9)

    add_recipe_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        with checkpoint_trust(getattr(args, "trust_checkpoint", False)):
            return int(args.func(args) or 0)
    except SparsepipeError as exc:
        print(f"sparsepipe {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a full disk, a read-only mount, a name too long: the user's to fix
        message = describe_os_error(exc)
        if message is None:
            raise
        print(f"sparsepipe {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparsepipe {args.command}: interrupted; outputs of the unfinished step have no result.json.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
