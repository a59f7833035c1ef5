"""CLI flags come from the step configs: every field has a flag (or a stated reason not to), old flags keep working.

    .venv/bin/python -m pytest tests/test_cli_config_flags.py -q
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from sparsepipe import cli, serving_cli
from sparsepipe.benchmark import BenchmarkConfig
from sparsepipe.config_flags import config_fields, config_from_args, flag_registry
from sparsepipe.data import DataConfig
from sparsepipe.demo import DemoConfig
from sparsepipe.deploy import DeployConfig
from sparsepipe.errors import SparsepipeError
from sparsepipe.evaluate import EvaluateConfig
from sparsepipe.export import ExportConfig
from sparsepipe.predict import PredictConfig
from sparsepipe.qat import QATConfig
from sparsepipe.quantize import QuantizeConfig
from sparsepipe.registry import ChampionPolicy
from sparsepipe.report import ReportConfig
from sparsepipe.serve import ServeConfig
from sparsepipe.sparsify import SparsifyConfig
from sparsepipe.training import TrainConfig

#: Every verb and the configs its flags must cover. A new config (or verb) belongs here.
VERB_CONFIGS = {
    "data": [DataConfig], "train": [TrainConfig], "sparsify": [SparsifyConfig], "export": [ExportConfig],
    "quantize": [QuantizeConfig, QATConfig], "evaluate": [EvaluateConfig], "benchmark": [BenchmarkConfig],
    "report": [ReportConfig, ChampionPolicy], "demo": [DemoConfig], "predict": [PredictConfig],
    "serve": [ServeConfig], "deploy": [DeployConfig],
}
EXCLUDED = {**cli.EXCLUDED_FIELDS, **serving_cli.EXCLUDED_FIELDS}

#: The option strings (and defaults) of every verb before the flags were derived (v0.1.0): all still work.
OLD_FLAGS = {
    "data": {"--source": "synthetic", "--no-validate": False, "--data-sha256": None, "--out": "runs/data"},
    "train": {"--model": "yolov8n.yaml", "--data": "synthetic", "--epochs": 30, "--imgsz": 320, "--batch": 16,
              "--device": "cpu", "--workers": 2, "--seed": 0, "--optimizer": "auto", "--lr0": None,
              "--patience": 100, "--no-plots": False, "--ultralytics-arg": None, "--variant": "",
              "--trust-checkpoint": False, "--out": "runs/train", "--experiment": "sparsepipe", "--run-name": None,
              "--no-track": False},
    "sparsify": {"--model": "yolov8n.yaml", "--data": "synthetic", "--recipe": None, "--recipe-args": None,
                 "--teacher": None, "--resume": False, "--max-epochs": None, "--imgsz": 320, "--batch": 16,
                 "--device": "cpu", "--workers": 2, "--seed": 0, "--optimizer": "auto", "--no-plots": False,
                 "--ultralytics-arg": None, "--variant": "", "--trust-checkpoint": False, "--out": "runs/sparsify",
                 "--experiment": "sparsepipe", "--run-name": None, "--no-track": False},
    "export": {"--model": None, "--imgsz": 320, "--batch": 1, "--dynamic": False, "--opset": 17,
               "--no-simplify": False, "--variant": "", "--trust-checkpoint": False, "--out": "runs/export",
               "--experiment": "sparsepipe", "--run-name": None, "--no-track": False},
    "quantize": {"--method": "ptq", "--model": None, "--data": "synthetic", "--recipe": None, "--recipe-args": None,
                 "--teacher": None, "--resume": False, "--max-epochs": None, "--batch": 16, "--device": "cpu",
                 "--workers": 2, "--imgsz": None, "--calibration-images": 64, "--calibration-method": "percentile",
                 "--percentile": 99.999, "--per-tensor": False,
                 "--op-types": "Conv,MatMul,Gemm,Sigmoid,Mul,Add,Concat,MaxPool,Resize,Split",
                 "--quantize-head": False, "--exclude-nodes": None, "--activation-type": "uint8",
                 "--weight-type": "int8", "--opset": 17, "--seed": 0, "--no-evaluate": False, "--variant": "",
                 "--trust-checkpoint": False, "--out": "runs/quantize", "--experiment": "sparsepipe",
                 "--run-name": None, "--no-track": False},
    "evaluate": {"--model": None, "--data": "synthetic", "--imgsz": None, "--batch": 16, "--split": "val",
                 "--device": "cpu", "--plots": False, "--bootstrap": 1000, "--baseline": None, "--variant": "",
                 "--trust-checkpoint": False, "--out": "runs/evaluate", "--experiment": "sparsepipe",
                 "--run-name": None, "--no-track": False},
    "benchmark": {"--model": None, "--baseline": None, "--engine": "onnxruntime", "--batch": "1", "--imgsz": None,
                  "--threads": 1, "--scenario": "sync", "--streams": 1, "--pin": False, "--floor": False,
                  "--warmup": 10, "--iterations": 100, "--duration": None, "--rounds": 5, "--variant": "",
                  "--out": "runs/benchmark", "--experiment": "sparsepipe", "--run-name": None, "--no-track": False},
    "report": {"--results": None, "--baseline": "baseline", "--title": "sparsepipe variant comparison",
               "--out": "runs/report", "--experiment": "sparsepipe", "--run-name": None, "--no-track": False},
    "demo": {"--model": "yolov8n.yaml", "--data": "synthetic:preset=demo", "--epochs": 30, "--imgsz": 160,
             "--batch": 8, "--nbs": 8, "--iterations": 200, "--threads": 2, "--recipe": "recipes/yolov8n-pruned50.yaml",
             "--recipe-args": "num_epochs=8,pruning_start_epoch=0,pruning_end_epoch=5", "--out": "runs/demo",
             "--experiment": "sparsepipe", "--run-name": None, "--no-track": False},
    "predict": {"--engine": "onnxruntime", "--conf": 0.25, "--iou": 0.7, "--max-det": 300, "--threads": 1,
                "--batch-size": 8, "--masks": False, "--save-images": False, "--out": "runs/predict"},
    "serve": {"--engine": "onnxruntime", "--conf": 0.25, "--iou": 0.7, "--host": "127.0.0.1", "--port": 8080,
              "--threads": 1, "--workers": 1, "--engine-threads": 1, "--queue-size": 8, "--max-images": 16,
              "--max-request-mb": 32.0, "--max-pixels": 40000000, "--model-name": "",
              "--max-request-pixels": 80000000},
    "deploy": {"--name": None, "--namespace": "kubeflow-user-example-com", "--engine": "onnxruntime", "--cpu": "2",
               "--memory": "2Gi", "--cpu-limit": "2", "--memory-limit": "4Gi", "--threads": 2, "--queue-size": 8,
               "--secret": "sparsepipe-s3", "--secret-keys": None, "--tracking-uri": "http://mlflow.kubeflow:5000",
               "--s3-endpoint": "http://seaweedfs.kubeflow:8333", "--min-replicas": 1, "--max-replicas": 1,
               "--service-account": "", "--apply": False, "--out": "runs/deploy"},
}
#: Old defaults that the config now gives instead (the value the step ended up with was the same).
SAME_EFFECT = {
    ("train", "--variant"): "baseline", ("sparsify", "--variant"): "pruned",  # '' meant the step's default
    ("quantize", "--op-types"): QuantizeConfig().op_types, ("quantize", "--exclude-nodes"): (),
    ("quantize", "--data-sha256"): None,
}


@pytest.fixture(scope="module")
def verbs() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for verb in sub.choices.values():
        getattr(verb, "build", lambda: None)()  # deferred flags (data, benchmark, serve, quantize's QAT ones)
    return dict(sub.choices)


def _parse(verbs, verb: str, *argv: str) -> argparse.Namespace:
    required = {"export": ["--model", "m"], "quantize": ["--model", "m"], "evaluate": ["--model", "m"],
                "benchmark": ["--model", "m"], "report": ["--results", "r"], "predict": ["m", "i.jpg"],
                "serve": ["m"], "deploy": ["m", "--name", "n"]}.get(verb, [])
    return verbs[verb].parse_args([*required, *argv])


def _leaf_fields(cls: type, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every init field of ``cls`` as a path, nested configs (QATConfig.train) opened up."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if not field.init:
            continue
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            out += _leaf_fields(kind, (*path, field.name))
        else:
            out.append((*path, field.name))
    return out


@pytest.mark.parametrize("verb", list(VERB_CONFIGS))
def test_every_config_field_has_a_flag_or_a_reason(verbs, verb):
    registry = flag_registry(verbs[verb])
    for cls in VERB_CONFIGS[verb]:
        outer = {path[0] for path in _leaf_fields(cls) if len(path) == 1}
        for path in _leaf_fields(cls):
            name = path[-1]
            if EXCLUDED.get(cls.__name__, {}).get(name, ""):
                continue
            if len(path) > 1 and name in outer:
                continue  # QATConfig.train.variant: QATConfig.variant's flag sets it (config_flags docstring)
            entry = registry.get(name)
            assert entry is not None and cls.__name__ in entry["configs"], (
                f"{cls.__name__}.{'.'.join(path)} has no flag on `sparsepipe {verb}`: derive it (config_flags) or "
                f"add it to EXCLUDED_FIELDS with the reason")


def test_qat_flags_reach_the_training_run_it_holds(verbs):
    """QATConfig holds a SparsifyConfig (train): its fields are QAT flags, the v0.1.0 ones with their defaults."""
    names = {info.qualname for info in config_fields(QATConfig)}
    assert {"train.lr0", "train.optimizer", "train.plots", "train.extra", "train.imgsz", "variant", "opset",
            "export_layout"} <= names
    assert "train.variant" not in names  # QATConfig.variant names the training run too
    qat = config_from_args(QATConfig, _parse(verbs, "quantize", "--method", "qat", "--lr0", "0.004",
                                             "--batch", "8", "--variant", "q8"))
    assert (qat.train.lr0, qat.train.batch, qat.variant, qat.train.variant) == (0.004, 8, "q8", "q8")
    assert qat == QATConfig(lr0=0.004, batch=8, variant="q8")
    assert config_from_args(QATConfig, _parse(verbs, "quantize", "--method", "qat", "--imgsz", "160")) == QATConfig(
        imgsz=160)  # the training run keeps the variant QATConfig gives it
    assert config_from_args(QATConfig, _parse(verbs, "quantize", "--method", "qat")).imgsz == 320  # v0.1.0 default


@dataclasses.dataclass
class _Inner:
    size: int = 1  # inner size
    name: str = "inner"  # shadowed by the outer name


@dataclasses.dataclass
class _Middle:
    inner: _Inner = dataclasses.field(default_factory=_Inner)  # the inner settings
    depth: int = 2  # middle depth


@dataclasses.dataclass
class _Outer:
    middle: _Middle = dataclasses.field(default_factory=_Middle)  # the middle settings
    name: str = "outer"  # outer name

    def __post_init__(self) -> None:
        self.middle.inner.name = self.name  # the outer config derives the shadowed field


@dataclasses.dataclass
class _Clash:
    a: _Inner = dataclasses.field(default_factory=_Inner)  # one
    b: _Inner = dataclasses.field(default_factory=_Inner)  # two


def test_nested_configs_at_any_depth():
    from sparsepipe.config_flags import add_config_flags

    assert [(i.qualname, i.help) for i in config_fields(_Outer)] == [
        ("middle.inner.size", "inner size"), ("middle.depth", "middle depth"), ("name", "outer name")]
    parser = argparse.ArgumentParser()
    add_config_flags(parser, _Outer)
    assert config_from_args(_Outer, parser.parse_args([])) == _Outer()
    built = config_from_args(_Outer, parser.parse_args(["--size", "5", "--name", "x"]))
    assert (built.middle.inner.size, built.middle.depth, built.name, built.middle.inner.name) == (5, 2, "x", "x")
    with pytest.raises(TypeError, match="a.size and b.size would share the flag --size"):
        config_fields(_Clash)


def test_every_field_documents_itself():
    for classes in VERB_CONFIGS.values():
        for cls in classes:
            for info in config_fields(cls):
                assert len(info.help) > 5, f"{cls.__name__}.{info.name} needs a comment (it is the flag's help)"


@pytest.mark.parametrize("verb", list(OLD_FLAGS))
def test_old_flags_and_defaults_still_work(verbs, verb):
    parser = verbs[verb]
    options = {o: a for a in parser._actions for o in a.option_strings}
    registry = flag_registry(parser)
    for option, old_default in OLD_FLAGS[verb].items():
        assert option in options, f"`sparsepipe {verb} {option}` is gone"
        action = options[option]
        if action.dest not in registry:
            assert action.default == old_default, (verb, option)
            continue
        if action.nargs == 0 or registry[action.dest]["kind"] == "dict":  # switches, --ultralytics-arg
            continue
        if action.required:
            continue
        expected = SAME_EFFECT.get((verb, option), old_default)
        for cls in VERB_CONFIGS[verb][:1] if action.dest in registry and len(
                registry[action.dest]["configs"]) > 1 else VERB_CONFIGS[verb]:  # shared flag: the first config's
            names = {f.name: f for f in config_fields(cls)}
            if action.dest in names:
                default = names[action.dest].default
                if option == "--variant" and old_default == "" and default:
                    continue  # '' meant the config's default variant, which it still does
                assert default == expected, f"{verb} {option}: config default {default!r}, CLI had {expected!r}"


def test_defaults_give_the_config_defaults(verbs):
    assert config_from_args(TrainConfig, _parse(verbs, "train")) == TrainConfig()
    assert config_from_args(SparsifyConfig, _parse(verbs, "sparsify")) == SparsifyConfig()
    assert config_from_args(QuantizeConfig, _parse(verbs, "quantize")) == QuantizeConfig()
    assert config_from_args(QATConfig, _parse(verbs, "quantize", "--method", "qat")) == QATConfig()
    assert config_from_args(DataConfig, _parse(verbs, "data")) == DataConfig()
    assert config_from_args(ExportConfig, _parse(verbs, "export")) == ExportConfig()
    assert config_from_args(EvaluateConfig, _parse(verbs, "evaluate")) == EvaluateConfig()
    assert config_from_args(DemoConfig, _parse(verbs, "demo")) == DemoConfig()
    assert config_from_args(PredictConfig, _parse(verbs, "predict")) == PredictConfig()
    assert config_from_args(ServeConfig, _parse(verbs, "serve")) == ServeConfig()
    assert config_from_args(DeployConfig, _parse(verbs, "deploy")) == DeployConfig(name="n")


def test_flags_reach_the_config(verbs):
    train = config_from_args(TrainConfig, _parse(verbs, "train", "--no-plots", "--variant", "", "--lr0", "0.02",
                                                 "--ultralytics-arg", "mosaic=0.5", "--no-amp", "--cache"))
    assert (train.plots, train.variant, train.lr0, train.extra, train.amp, train.cache) == (
        False, "baseline", 0.02, {"mosaic": 0.5}, False, True)
    assert config_from_args(SparsifyConfig, _parse(verbs, "sparsify", "--lr0", "0.005")).lr0 == 0.005  # new
    qat = config_from_args(QATConfig, _parse(verbs, "quantize", "--method", "qat", "--optimizer", "AdamW",
                                             "--no-plots", "--ultralytics-arg", "nbs=8", "--export-layout", "qat",
                                             "--max-epochs", "3", "--imgsz", "160", "--variant", ""))
    assert (qat.optimizer, qat.plots, qat.extra, qat.export_layout, qat.max_epochs, qat.imgsz, qat.variant) == (
        "AdamW", False, {"nbs": 8}, "qat", 3, 160, "qat_int8")
    ptq = config_from_args(QuantizeConfig, _parse(verbs, "quantize", "--per-tensor", "--quantize-head",
                                                  "--op-types", "Conv,Add", "--exclude-nodes", "a,b", "--no-evaluate"))
    assert (ptq.per_channel, ptq.exclude_head, ptq.op_types, ptq.exclude_nodes, ptq.evaluate) == (
        False, False, ("Conv", "Add"), ("a", "b"), False)
    data = config_from_args(DataConfig, _parse(verbs, "data", "--no-validate", "--data-sha256", "A" * 64))
    assert (data.validate, data.sha256) == (False, "a" * 64)
    bench = config_from_args(BenchmarkConfig, _parse(verbs, "benchmark", "--duration", "2", "--seed", "3"),
                             batch=1, batches=())
    assert (bench.duration_s, bench.seed) == (2.0, 3)
    assert config_from_args(ServeConfig, _parse(verbs, "serve", "--workers", "3")).threads == 3
    report = _parse(verbs, "report", "--baseline", "dense", "--max-accuracy-drop", "0.1")
    assert config_from_args(ChampionPolicy, report) == ChampionPolicy(baseline="dense", max_accuracy_drop=0.1)
    assert config_from_args(ReportConfig, report).baseline == "dense"  # one flag, both configs


def test_bad_key_value_is_a_clear_error(verbs):
    with pytest.raises(SparsepipeError, match="--ultralytics-arg 'mosaic' must look like key=value"):
        config_from_args(TrainConfig, _parse(verbs, "train", "--ultralytics-arg", "mosaic"))


def test_help_is_derived_and_useful(verbs):
    text = " ".join(verbs["sparsify"].format_help().split())
    for needle in ("--lr0", "initial LR when the recipe has no LR modifier", "(default: 320)", "--ultralytics-arg",
                   "shipped recipe's name", "s3://"):
        assert needle in text, needle
    quantize = verbs["quantize"].format_help()
    assert "QAT (--method qat) options" in quantize and "--export-layout" in quantize
