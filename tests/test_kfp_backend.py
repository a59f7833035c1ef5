"""The compiled pipelines as a real KFP backend (2.14-2.17) runs them, not only as kfp.local does.

    .venv/bin/python -m pytest tests/test_kfp_backend.py -q

Every task of both pipelines is replayed through the driver's input resolution and the
launcher's placeholder substitution (``tests/kfp_launcher.py``) with parameter values that
break naive substitution: strings with quotes and backslashes, a list of recipes. The executor
input each component would parse must be valid JSON holding exactly the intended values.
"""

import json
import sys
from pathlib import Path

import pytest
import yaml
from kfp import dsl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(ROOT))

from pipelines import compile as compile_mod  # noqa: E402
from tests.kfp_launcher import compile_without_image_overrides, replay  # noqa: E402

NASTY = 'say "hi" \\ C:\\path\\ {"k": [1]}'
#: Values a KFP resource field accepts (Kubernetes validates them: no quotes possible).
RESOURCE_VALUES = {"accelerator": "nvidia.com/gpu", "accelerator_count": "1"}
RECIPES = [{"variant": "p\"50", "recipe": "s3://bucket/a \"b\".yaml", "recipe_args": '{"num_epochs": 2, "x": "a\\\\b"}'},
           {"variant": "p75", "recipe": "recipes/yolov8n-pruned75.yaml", "recipe_args": ""}]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    paths = compile_without_image_overrides(out)
    return {p.stem: next(yaml.safe_load_all(p.read_text())) for p in paths}


def nasty_inputs(spec: dict) -> dict:
    """Every pipeline parameter: strings with quotes and backslashes, the recipes list, numbers as defaults."""
    values = {}
    for name, definition in spec["root"]["inputDefinitions"]["parameters"].items():
        kind = definition["parameterType"]
        if name in RESOURCE_VALUES:
            values[name] = RESOURCE_VALUES[name]
        elif kind == "STRING":
            values[name] = f"{name}: {NASTY}"
        elif kind == "LIST":
            values[name] = RECIPES
        else:
            values[name] = definition["defaultValue"]
    return values


@pytest.mark.parametrize("pipeline", ["main", "sweep"])
def test_every_task_gets_valid_json_with_the_intended_values(specs, pipeline):
    spec = specs[pipeline]
    inputs = nasty_inputs(spec)
    tasks = replay(spec, inputs)
    assert len(tasks) >= (15 if pipeline == "main" else 12)
    for path, (intended, parsed) in tasks.items():
        assert parsed["inputs"]["parameterValues"] == intended, path
        assert "{{$" not in json.dumps(parsed), path
    opened = tasks["exit-handler-1/open-tracking-run"][1]["inputs"]["parameterValues"]
    assert opened["model"] == inputs["model"] and opened["epochs"] == inputs["epochs"]
    if pipeline == "main":
        assert opened["recipe_args"] == inputs["recipe_args"]
        sparsify = tasks["exit-handler-1/sparsify-model"][1]["inputs"]["parameterValues"]
        assert sparsify["recipe_args"] == inputs["recipe_args"]
    else:
        assert opened["recipes"] == RECIPES
        sparsify = tasks["exit-handler-1/for-loop-2/sparsify-model"][1]["inputs"]["parameterValues"]
        assert (sparsify["recipe"], sparsify["recipe_args"], sparsify["variant"]) == (
            RECIPES[0]["recipe"], RECIPES[0]["recipe_args"], RECIPES[0]["variant"])
    closer = tasks["close-tracking-run"][1]["inputs"]["parameterValues"]
    assert closer["status"]["state"] == "COMPLETE"


@dsl.component(base_image="python:3.11")
def _log_params(params: dict) -> str:
    return str(params)


@dsl.pipeline(name="nested-placeholders")
def _nested(note: str = "", items: list = []):  # noqa: B006 - KFP reads the default
    _log_params(params={"note": note, "items": items})


def test_compile_refuses_placeholders_nested_in_a_constant_and_replay_shows_why(tmp_path):
    with pytest.raises(ValueError, match=r"root/log-params/params.*own task input"):
        compile_mod.compile_pipeline(_nested, tmp_path / "nested.yaml")
    assert not (tmp_path / "nested.yaml").exists()

    from kfp import compiler

    raw = tmp_path / "raw.yaml"
    compiler.Compiler().compile(_nested, str(raw))
    spec = next(yaml.safe_load_all(raw.read_text()))
    assert compile_mod.launcher_substituted_constants(spec) == ["root/log-params/params"]
    with pytest.raises(json.JSONDecodeError):  # what the component's executor would hit on a cluster
        replay(spec, {"note": 'a "quoted" note', "items": []})
    with pytest.raises(json.JSONDecodeError):  # a list parameter becomes JSON text inside a JSON string
        replay(spec, {"note": "plain", "items": ["a"]})
    _, parsed = replay(spec, {"note": "plain", "items": []})["log-params"]  # only harmless values survive
    assert parsed["inputs"]["parameterValues"]["params"] == {"note": "plain", "items": "[]"}  # and a list is text


def test_golden_files_pass_the_backend_rules():
    for path in sorted(compile_mod.COMPILED_DIR.glob("*.yaml")):
        assert compile_mod.launcher_substituted_constants(next(yaml.safe_load_all(path.read_text()))) == [], path
