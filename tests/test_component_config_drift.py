"""Kubeflow component parameters cannot drift from the step configs (nor from the CLI).

    .venv/bin/python -m pytest tests/test_component_config_drift.py -q

KFP reads a component's Python signature, so each component keeps explicit typed parameters.
This test makes them unable to drift instead: every plain parameter of a step component is a
field of that step's config with the same type and default, or a flag of the same CLI verb, or
listed below as adapter-only with the reason; the ``sparsepipe.kfp_support.run_*`` function a
component calls takes the same parameters with the same defaults.
"""

from __future__ import annotations

import inspect
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import components  # noqa: E402
from sparsepipe import cli, kfp_support  # noqa: E402
from sparsepipe.benchmark import BenchmarkConfig  # noqa: E402
from sparsepipe.config_flags import config_fields, flag_registry  # noqa: E402
from sparsepipe.data import DataConfig  # noqa: E402
from sparsepipe.deploy import DeployConfig  # noqa: E402
from sparsepipe.evaluate import EvaluateConfig  # noqa: E402
from sparsepipe.export import ExportConfig  # noqa: E402
from sparsepipe.quantize import QuantizeConfig  # noqa: E402
from sparsepipe.registry import ChampionPolicy  # noqa: E402
from sparsepipe.report import ReportConfig  # noqa: E402
from sparsepipe.sparsify import SparsifyConfig  # noqa: E402
from sparsepipe.training import TrainConfig  # noqa: E402

#: component -> (CLI verb, configs, kfp_support function it calls or None)
STEPS = {
    components.prepare_data: ("data", [DataConfig], kfp_support.run_data),
    components.train_model: ("train", [TrainConfig], kfp_support.run_train),
    components.sparsify_model: ("sparsify", [SparsifyConfig], kfp_support.run_sparsify),
    components.export_onnx: ("export", [ExportConfig], kfp_support.run_export),
    components.evaluate_model: ("evaluate", [EvaluateConfig], kfp_support.run_evaluate),
    components.benchmark_model: ("benchmark", [BenchmarkConfig], kfp_support.run_benchmark),
    components.quantize_model: ("quantize", [QuantizeConfig], kfp_support.run_quantize),
    components.build_report: ("report", [ReportConfig, ChampionPolicy], kfp_support.run_report),
    components.build_sweep_report: ("report", [ReportConfig, ChampionPolicy], kfp_support.run_report),
    components.deploy_model: ("deploy", [DeployConfig], None),
}
#: Parameters only the adapter has, and why.
ADAPTER_ONLY = {
    "context": "the pipeline's run context (MLflow parent run, publish root): the CLI resolves tracking itself",
    "accelerator": "Kubernetes accelerator type of the task; the adapter turns it into the config's device",
    "accelerator_count": "Kubernetes accelerator count; with accelerator it gives the config's device",
    "model_config": "the train step's model (the CLI's --model)",
    "model_uri": "the deploy step's model (the CLI's positional MODEL)",
}
#: Where a component's default differs from the config's on purpose: (component, parameter) -> reason.
DIFFERENT_DEFAULTS = {
    ("sparsify-model", "max_epochs"): "KFP parameters cannot be None: 0 means no budget (the config's None)",
    ("build-sweep-report", "title"): "the sweep report has its own heading",
}


def _plain_parameters(component) -> dict[str, inspect.Parameter]:
    out = {}
    for name, param in inspect.signature(component.python_func).parameters.items():
        if param.annotation in (str, int, float, bool):
            out[name] = param
    return out


@pytest.fixture(scope="module")
def verbs():
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for verb in sub.choices.values():
        getattr(verb, "build", lambda: None)()  # deferred flags (data, benchmark, serve, quantize's QAT ones)
    return dict(sub.choices)


@pytest.mark.parametrize("component", list(STEPS), ids=lambda c: c.name)
def test_component_parameters_match_the_config(component, verbs):
    verb, configs, _ = STEPS[component]
    options = {o for a in verbs[verb]._actions for o in a.option_strings}
    registry = flag_registry(verbs[verb])
    for name, param in _plain_parameters(component).items():
        if name in ADAPTER_ONLY:
            continue
        fields = {f.name: f for cls in configs for f in config_fields(cls)}
        if name in fields:
            field = fields[name]
            hints = typing.get_type_hints(next(c for c in configs if name in {f.name for f in config_fields(c)}))
            kind = hints[name]
            base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
            assert param.annotation in base or (param.annotation is float and int in base), (
                f"{component.name}.{name}: {param.annotation.__name__}, the config says {kind}")
            if param.default is not inspect.Parameter.empty and (component.name, name) not in DIFFERENT_DEFAULTS:
                assert param.default == field.default, (
                    f"{component.name}.{name} defaults to {param.default!r}, the config to {field.default!r}: "
                    f"change both, or list the difference in DIFFERENT_DEFAULTS with its reason")
            excluded = any(cli.EXCLUDED_FIELDS.get(c.__name__, {}).get(name) for c in configs)  # by hand, e.g. --batch
            assert name in registry or excluded, (
                f"{component.name}.{name} is a config field without a `sparsepipe {verb}` flag")
        else:
            flag = "--" + name.replace("_", "-")
            assert flag in options or name in verbs[verb]._defaults or any(
                a.dest == name for a in verbs[verb]._actions), (
                f"{component.name}.{name} is neither a field of {[c.__name__ for c in configs]} nor a "
                f"`sparsepipe {verb}` option: add it to the config (then both get it) or to ADAPTER_ONLY")


@pytest.mark.parametrize("component", [c for c, (_, _, run) in STEPS.items() if run is not None],
                         ids=lambda c: c.name)
def test_adapter_function_takes_the_component_parameters(component):
    run = STEPS[component][2]
    accepted = inspect.signature(run).parameters
    for name, param in _plain_parameters(component).items():
        target = {"model_config": "model"}.get(name, name)
        assert target in accepted, f"{run.__name__} does not take {component.name}'s {name}"
        default = accepted[target].default
        if param.default is not inspect.Parameter.empty and default is not inspect.Parameter.empty and (
                component.name, name) not in DIFFERENT_DEFAULTS:
            assert default == param.default, f"{run.__name__}({target}={default!r}) vs component {param.default!r}"
