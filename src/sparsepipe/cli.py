"""The ``sparsepipe`` command line: argument parsing only, one call into the library per step.

    sparsepipe --help
    sparsepipe <step> --help

Every step takes ``--out DIR`` and ends by writing ``DIR/result.json``. User mistakes print one
paragraph to stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from sparsepipe import __version__
from sparsepipe.champion import register_report_champion
from sparsepipe.config_flags import DeferredParser, Flag, add_config_flags, config_from_args
from sparsepipe.demo import DemoConfig, run_demo
from sparsepipe.errors import ConfigError, SparsepipeError, describe_os_error
from sparsepipe.evaluate import EvaluateConfig, evaluate
from sparsepipe.export import ExportConfig, export_onnx
from sparsepipe.quantize import ACTIVATION_TYPES, CALIBRATION_METHODS, METHODS, WEIGHT_TYPES, QuantizeConfig, quantize
from sparsepipe.recipe_cli import add_recipe_commands
from sparsepipe.registry import ChampionPolicy
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


def _tracking_args(parser: argparse.ArgumentParser, local_store: bool = True) -> None:
    group = parser.add_argument_group("tracking")
    group.add_argument(
        "--experiment", default="sparsepipe", help="MLflow experiment (MLFLOW_EXPERIMENT_NAME wins when set)"
    )
    group.add_argument("--run-name", default=None, help="MLflow run name (default: the step name)")
    group.add_argument(
        "--no-track",
        action="store_true",
        help="log nothing to MLflow (default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)" if local_store else
        "log nothing to MLflow (default: tracked when MLFLOW_TRACKING_URI or MLFLOW_RUN_ID is set, as in the "
        "Kubeflow pipeline; no local ./mlruns run per dataset)",
    )
    parser.set_defaults(track_local_store=local_store)


def _out_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", default=default, help="folder the step writes to, ending with result.json (default: %(default)s)")


def _trust_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-checkpoint", action="store_true",
        help="load .pt files that fail sparsepipe's checkpoint policy (foreign pickle globals, remote without a "
        "recorded SHA-256); loading a .pt runs code, see SECURITY.md (env: SPARSEPIPE_TRUST_CHECKPOINT=1)",
    )


def _add(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help_text: str, doc: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def _tracker(args: argparse.Namespace, step: str):
    configured = any(os.environ.get(name, "").strip() for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"))
    return resolve_tracker(
        args.experiment,
        args.run_name or step,
        enabled=not args.no_track and (configured or getattr(args, "track_local_store", True)),
        tags={"sparsepipe.step": step, "sparsepipe.version": __version__},
    )


def _finish(result) -> int:
    print(f"{result.step}: wrote {Path(result.out_dir) / 'result.json'}")
    if result.metrics:
        print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


def _flags(parser: argparse.ArgumentParser, cls: type, **kwargs: Any) -> list[str]:
    """The flags of a step config (sparsepipe.config_flags): every field, named after it, its comment as help."""
    return add_config_flags(parser, cls, **kwargs)


def _config(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    return config_from_args(cls, args, **fixed)


#: Flags common to several steps: ``--variant ""`` means the step's default variant, ``extra`` is
#: ``--ultralytics-arg KEY=VALUE`` (repeatable, values read as YAML).
def _common_flags() -> dict[str, Any]:
    return {"variant": Flag(empty_is_default=True),
            "extra": Flag(name="--ultralytics-arg", metavar="KEY=VALUE",
                          help="any other ultralytics train argument, e.g. --ultralytics-arg mosaic=0.5")}


#: Config fields that have no flag of their own, and why (tests/test_cli_config_flags.py reads this).
EXCLUDED_FIELDS: dict[str, dict[str, str]] = {
    "BenchmarkConfig": {
        "batch": "--batch takes one size or a comma list (1,4,8) and fills batch and batches",
        "batches": "--batch takes one size or a comma list (1,4,8) and fills batch and batches",
    },
}


def cmd_data(args: argparse.Namespace) -> int:
    from sparsepipe.data import DataConfig, prepare_data  # heavy: cv2 (via sparsepipe.data)

    config = _config(DataConfig, args)
    with _tracker(args, "data") as tracker:
        return _finish(prepare_data(args.source, args.out, config, tracker))


def cmd_train(args: argparse.Namespace) -> int:
    config = _config(TrainConfig, args)
    with _tracker(args, "train") as tracker:
        return _finish(train(args.model, args.data, args.out, config, tracker))


def cmd_sparsify(args: argparse.Namespace) -> int:
    config = _config(SparsifyConfig, args)
    with _tracker(args, "sparsify") as tracker:
        result = sparsify(args.model, args.data, args.recipe, args.out, config, recipe_args=args.recipe_args,
                          teacher=args.teacher, resume=args.resume, tracker=tracker)
    return _finish(result)


def cmd_export(args: argparse.Namespace) -> int:
    config = _config(ExportConfig, args)
    with _tracker(args, "export") as tracker:
        return _finish(export_onnx(args.model, args.out, config, tracker))


def cmd_quantize(args: argparse.Namespace) -> int:
    method = getattr(args, "method", "ptq")
    if method == "qat":
        from sparsepipe.qat import QATConfig, qat  # heavy: onnx, pydantic, torch (via sparsepipe.qat)

        config = _config(QATConfig, args)
        with _tracker(args, "quantize") as tracker:
            return _finish(qat(args.model, args.data, args.recipe, args.out, config, recipe_args=args.recipe_args,
                               tracker=tracker, teacher=args.teacher, resume=args.resume))
    if args.recipe:
        raise SparsepipeError(
            f"--recipe {args.recipe} is for --method qat (a recipe's QuantizationModifier); PTQ takes no recipe. "
            f"Drop --recipe, or use --method qat."
        )
    config = _config(QuantizeConfig, args)
    with _tracker(args, "quantize") as tracker:
        return _finish(quantize(args.model, args.data, args.out, config, tracker))


def cmd_evaluate(args: argparse.Namespace) -> int:
    config = _config(EvaluateConfig, args)
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
    config = _config(BenchmarkConfig, args, batch=batches[0], batches=tuple(batches) if len(batches) > 1 else ())
    with _tracker(args, "benchmark") as tracker:
        return _finish(benchmark(args.model, args.out, config, baseline=args.baseline, tracker=tracker))


def cmd_report(args: argparse.Namespace) -> int:
    register = None
    if args.register_model:
        if args.no_track:
            raise SparsepipeError(
                f"--register-model {args.register_model} registers the champion in MLflow, which --no-track turns "
                f"off. Drop --no-track (MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db), or drop --register-model."
            )
        register = _config(ChampionPolicy, args)  # checked before the report is written
    config = _config(ReportConfig, args)
    with _tracker(args, "report") as tracker:
        result = report(args.results, args.out, config, tracker)
        if register is not None:
            registered = register_report_champion(result, args.register_model, alias=args.alias, policy=register,
                                                   tracker=tracker)
    print(result.extra["table"])
    print(f"report: {result.path('markdown')}, {result.path('html')}")
    if register is not None:
        print(f"registered: {registered['uri']} = version {registered['version']} ({registered['variant']}): "
              f"{registered['reason']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(args.out, _config(DemoConfig, args), experiment=args.experiment, track=not args.no_track)
    print(result.extra["table"])
    for row in result.extra.get("predict_sample", []):
        print(f"predict {row['image']}: {row['objects']} objects found ({row['labelled']} labelled) "
              f"{', '.join(row['classes'])}")
    return 0


RECIPE_HELP = ("recipe: a file (.yaml/.yml/.md recipe card), a shipped recipe's name (yolov8n-pruned50, see "
               "recipes/) or an s3://bucket/key.yaml URI")


def build_parser() -> argparse.ArgumentParser:
    common = _common_flags()
    parser = argparse.ArgumentParser(
        prog="sparsepipe",
        description="Make ultralytics YOLO models small and fast on CPUs, and prove it: "
        "data -> train -> export -> evaluate -> benchmark -> report.",
    )
    parser.add_argument("--version", action="version", version=f"sparsepipe {__version__}")
    # DeferredParser: a verb whose config module is heavy to import (data: cv2, benchmark: openvino, quantize's
    # QAT flags: torch) adds those flags when it is used, so `sparsepipe --help` imports none of them
    sub = parser.add_subparsers(dest="command", metavar="<step>", parser_class=DeferredParser)
    sub.required = True

    p = _add(sub, "data", cmd_data, "make/validate an ultralytics dataset", "Produce a validated, relocatable ultralytics dataset in --out.")
    p.add_argument("--source", default="synthetic", help=DATA_HELP)

    def data_flags(parser: argparse.ArgumentParser) -> None:
        from sparsepipe.data import DataConfig  # heavy: cv2 (via sparsepipe.data)

        _flags(parser, DataConfig, flags={"sha256": Flag(name="--data-sha256")})
        _out_arg(parser, "runs/data")
        _tracking_args(parser, local_store=False)

    p.defer(data_flags)

    p = _add(sub, "train", cmd_train, "train a baseline model", "Train an ultralytics model from a config or checkpoint, offline.")
    p.add_argument("--model", default="yolov8n.yaml", help="model config (yolov8n.yaml, yolo11n.yaml, yolov8n-seg.yaml...) or checkpoint")
    p.add_argument("--data", default="synthetic", help=DATA_HELP)
    _flags(p, TrainConfig, flags=common)
    _trust_arg(p)
    _out_arg(p, "runs/train")
    _tracking_args(p)

    p = _add(sub, "sparsify", cmd_sparsify, "train under a sparsification recipe",
             "Train a model under a SparseML-format recipe (pruning, LR schedule, distillation) and publish a sparse checkpoint.")
    p.add_argument("--model", default="yolov8n.yaml", help="checkpoint to start from (a train step's --out folder or .pt), or a model config")
    p.add_argument("--data", default="synthetic", help=DATA_HELP)
    p.add_argument("--recipe", default=None, help=RECIPE_HELP)
    p.add_argument("--recipe-args", default=None, help="override recipe variables: JSON '{\"num_epochs\": 3}' or k=v,k2=v2")
    p.add_argument("--teacher", default=None, help="distillation teacher: checkpoint path, or 'self' (frozen copy of --model)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out folder")
    _flags(p, SparsifyConfig, flags=common)
    _trust_arg(p)
    _out_arg(p, "runs/sparsify")
    _tracking_args(p)

    p = _add(sub, "export", cmd_export, "export a checkpoint to ONNX", "Export a .pt checkpoint to ONNX with ultralytics metadata.")
    p.add_argument("--model", required=True, help="checkpoint .pt or the --out folder of train/sparsify")
    _flags(p, ExportConfig, flags=common)
    _trust_arg(p)
    _out_arg(p, "runs/export")
    _tracking_args(p)

    p = _add(sub, "quantize", cmd_quantize, "INT8 ONNX by PTQ or recipe QAT",
             "Quantize to a QDQ INT8 ONNX that onnxruntime runs with integer kernels: PTQ calibrates a checkpoint or "
             "FP32 ONNX on a sample of the train split; QAT trains a checkpoint under a recipe's QuantizationModifier. "
             "Writes model_int8.onnx and its mAP. See docs/quantize.md and docs/qat.md.")
    p.add_argument("--model", required=True, help=".pt / FP32 .onnx, or the --out folder of train, sparsify or export")
    p.add_argument("--data", default="synthetic", help=DATA_HELP + " (its train split calibrates)")
    p.add_argument("--recipe", default=None, help="QAT (--method qat): " + RECIPE_HELP + ", with a QuantizationModifier")
    p.add_argument("--recipe-args", default=None, help="QAT: override recipe variables (JSON or k=v,k2=v2)")
    p.add_argument("--teacher", default=None, help="QAT: distillation teacher (checkpoint, models:/..., or self)")
    p.add_argument("--resume", action="store_true", help="QAT: continue an interrupted run in the same --out folder")
    ptq = p.add_argument_group("PTQ (--method ptq) and shared options")
    _flags(p, QuantizeConfig, group=ptq, flags={
        **common,
        "method": Flag(choices=METHODS, help="ptq (calibrated static INT8) or qat (recipe training)"),
        "calibration_method": Flag(choices=CALIBRATION_METHODS),
        "per_channel": Flag(name="--per-tensor", help="one weight scale per tensor instead of per output channel"),
        "exclude_head": Flag(name="--quantize-head",
                             help="also quantize the Detect head's output convs and the DFL conv"),
        "activation_type": Flag(choices=ACTIVATION_TYPES),
        "weight_type": Flag(choices=WEIGHT_TYPES),
        "imgsz": Flag(help="input size in pixels (default: PTQ: the ONNX's static size, 320 when exporting a .pt; "
                           "QAT: 320)"),
        "opset": Flag(help="ONNX opset of the FP32 export of a .pt (PTQ) or of the INT8 export (QAT) (default: 17)"),
        "seed": Flag(help="seed of the calibration sample (PTQ) or of training (QAT) (default: 0)"),
        "variant": Flag(empty_is_default=True,
                        help="variant name in MLflow and the report (default: PTQ: 'ptq', or '<source variant>-ptq'; "
                             "QAT: 'qat_int8')"),
    })
    qat_group = p.add_argument_group("QAT (--method qat) options")

    def qat_flags(parser: argparse.ArgumentParser) -> None:
        from sparsepipe.qat import EXPORT_LAYOUTS, QATConfig  # heavy: onnx, pydantic, torch (via sparsepipe.qat)

        _flags(parser, QATConfig, group=qat_group, help_prefix="QAT: ",
               flags={**common, "export_layout": Flag(choices=EXPORT_LAYOUTS)})

    p.defer(qat_flags)
    _trust_arg(p)
    _out_arg(p, "runs/quantize")
    _tracking_args(p)

    p = _add(sub, "evaluate", cmd_evaluate, "mAP of a .pt or .onnx on val", "Measure mAP50 / mAP50-95 (overall and per class).")
    p.add_argument("--model", required=True, help=".pt, .onnx, or the --out folder of a step that made one")
    p.add_argument("--data", default="synthetic", help=DATA_HELP)
    p.add_argument("--baseline", default=None,
                   help="evaluate --out folder of the reference model (same data): adds the paired ratio "
                        "map50_95_ratio with its 95%% interval")
    _flags(p, EvaluateConfig, flags=common)
    _trust_arg(p)
    _out_arg(p, "runs/evaluate")
    _tracking_args(p)

    p = _add(sub, "benchmark", cmd_benchmark, "CPU latency/throughput of an ONNX", "Time an ONNX model on CPU (optionally against a baseline, interleaved).")
    p.add_argument("--model", required=True, help=".onnx or the --out folder of export/quantize")
    p.add_argument("--baseline", default=None, help="another .onnx timed in the same run for speedup_vs_baseline")
    p.add_argument("--batch", default="1", help="batch size, or a comma list to sweep (1,4,8: dynamic-batch ONNX), one row per batch")

    def benchmark_flags(parser: argparse.ArgumentParser) -> None:
        from sparsepipe.benchmark import BenchmarkConfig  # heavy: openvino (via sparsepipe.benchmark)

        _flags(parser, BenchmarkConfig, exclude=EXCLUDED_FIELDS["BenchmarkConfig"], flags={
            **common, "scenario": Flag(choices=("sync", "async")),
            "duration_s": Flag(name="--duration", metavar="SECONDS"),
        })
        _out_arg(parser, "runs/benchmark")
        _tracking_args(parser)

    p.defer(benchmark_flags)

    p = _add(sub, "report", cmd_report, "compare variants", "Merge step results by variant into Markdown/HTML tables and a plot.")
    p.add_argument("--results", nargs="+", required=True, help="out folders (or result.json files) of earlier steps")
    _flags(p, ReportConfig)
    champion = p.add_argument_group(
        "champion registration", "--register-model NAME registers the ONNX of the fastest variant within the accuracy "
        "budget in the MLflow model registry and points --alias at it (what the Kubeflow pipeline's report step does)")
    champion.add_argument("--register-model", default="", metavar="NAME",
                          help="registered model name ('' = register nothing); needs MLflow tracking")
    champion.add_argument("--alias", default="champion", help="alias pointed at the registered version")
    _flags(p, ChampionPolicy, group=champion)
    _out_arg(p, "runs/report")
    _tracking_args(p)

    p = _add(sub, "demo", cmd_demo, "run the whole flow on generated data", "data -> train -> export -> evaluate -> benchmark -> report, tracked in MLflow.")
    _flags(p, DemoConfig)
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
