"""Replay, in Python, how a KFP 2.14-2.17 backend hands each task its inputs (for tests/test_kfp_backend.py).

    .venv/bin/python -m pytest tests/test_kfp_backend.py -q

Read from the backend's source (kubeflow/pipelines, tags 2.14.0-2.17.0), not copied:
  * the driver (``backend/src/v2/driver/resolve.go``) resolves each task input: a pipeline or DAG
    input (``componentInputParameter``, optionally through a ``parameterExpressionSelector`` on a
    loop item), an upstream output, the exit handler's ``taskFinalStatus`` (whose ``state`` is
    the ML Metadata state, ``COMPLETE`` on success), or a constant, kept as it is unless it is
    exactly one of the run placeholders (``{{$.pipeline_job_uuid}}`` ...);
  * the launcher (``backend/src/v2/component/launcher_v2.go``, ``compileCmdAndArgs`` and
    ``getPlaceholders``) puts the executor input as JSON into the ``{{$}}`` argument and then
    replaces every ``{{$.inputs.parameters['NAME']}}`` in the arguments by the raw value (strings
    as they are, numbers ``%g``-like, lists and dicts as JSON text), with no JSON escaping.
"""

from __future__ import annotations

import json
import re
from typing import Any

RUN_PLACEHOLDERS = {
    "{{$.pipeline_job_name}}": "sparsepipe-run-name",
    "{{$.pipeline_job_resource_name}}": "sparsepipe-run-abcde",
    "{{$.pipeline_job_uuid}}": "3f0c7f7e-0000-4000-8000-000000000001",
    "{{$.pipeline_task_name}}": "task",
    "{{$.pipeline_task_uuid}}": "42",
}
_PARAMETER = re.compile(r"\{\{\$\.inputs\.parameters\['([^'\]]+)'\]\}\}")
#: What an upstream task's output parameter holds: the run context is JSON text with quotes.
UPSTREAM_OUTPUT = json.dumps({"tracking_uri": "http://mlflow:5000", "experiment": 'exp "q" \\ x'})


def _launcher_text(value: Any) -> str:
    """A parameter value as the launcher writes it in place of its placeholder (getPlaceholders)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):  # Go: strconv.FormatFloat(v, 'f', -1, 64)
        text = repr(float(value))
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _intended(value: Any, inputs: dict) -> Any:
    """What the pipeline author meant: placeholders inside a constant replaced by the typed value."""
    if isinstance(value, str):
        whole = _PARAMETER.fullmatch(value)
        if whole and whole.group(1) in inputs:
            return inputs[whole.group(1)]
        return _PARAMETER.sub(lambda m: _launcher_text(inputs.get(m.group(1), m.group(0))), value)
    if isinstance(value, list):
        return [_intended(v, inputs) for v in value]
    if isinstance(value, dict):
        return {k: _intended(v, inputs) for k, v in value.items()}
    return value


def _resolve(spec: dict, dag_inputs: dict) -> Any:
    """The driver's resolution of one task input parameter (resolveInputParameter)."""
    if "componentInputParameter" in spec:
        value = dag_inputs[spec["componentInputParameter"]]
        selector = spec.get("parameterExpressionSelector")
        if selector:
            key = re.fullmatch(r'parseJson\(string_value\)\["([^"]+)"\]', selector)
            assert key, f"selector {selector!r} not replayed"
            value = (json.loads(value) if isinstance(value, str) else value)[key.group(1)]
        return value
    if "taskOutputParameter" in spec:
        return UPSTREAM_OUTPUT
    if "taskFinalStatus" in spec:
        return {"state": "COMPLETE", "pipelineJobResourceName": RUN_PLACEHOLDERS["{{$.pipeline_job_resource_name}}"],
                "pipelineTaskName": spec["taskFinalStatus"]["producerTask"], "error": {}}
    constant = spec["runtimeValue"]["constant"]
    return RUN_PLACEHOLDERS.get(constant, constant) if isinstance(constant, str) else constant


def launch(executor: dict, parameter_values: dict) -> dict:
    """The executor input the component's Python process parses, after the launcher's substitution."""
    executor_input = {"inputs": {"parameterValues": parameter_values}, "outputs": {}}
    text = json.dumps(executor_input, ensure_ascii=False)
    args = [arg.replace("{{$}}", text) for arg in executor["container"]["args"]]
    for name, value in parameter_values.items():
        args = [arg.replace(f"{{{{$.inputs.parameters['{name}']}}}}", _launcher_text(value)) for arg in args]
    return json.loads(args[args.index("--executor_input") + 1])


def replay(spec: dict, pipeline_inputs: dict) -> dict[str, tuple[dict, dict]]:
    """``{task path: (intended parameter values, parsed executor input)}`` for every container task.

    Loops run their first item. Raises ``json.JSONDecodeError`` where the launcher's text is not JSON.
    """
    out: dict[str, tuple[dict, dict]] = {}
    executors = spec["deploymentSpec"]["executors"]

    def walk(component: dict, dag_inputs: dict, prefix: str) -> None:
        for name, task in component["dag"]["tasks"].items():
            resolved = {k: _resolve(v, dag_inputs) for k, v in task.get("inputs", {}).get("parameters", {}).items()}
            child = spec["components"][task["componentRef"]["name"]]
            if "dag" in child:
                iterator = task.get("parameterIterator")
                if iterator:
                    items = resolved[iterator["items"]["inputParameter"]]
                    items = json.loads(items) if isinstance(items, str) else items
                    resolved[iterator["itemInput"]] = items[0]
                walk(child, resolved, f"{prefix}{name}/")
                continue
            parsed = launch(executors[child["executorLabel"]], resolved)
            out[prefix + name] = ({k: _intended(v, resolved) for k, v in resolved.items()}, parsed)

    walk(spec["root"], dict(pipeline_inputs), "")
    return out


def compile_without_image_overrides(out):
    """Compile both pipelines into ``out`` with SPARSEPIPE_IMAGE/_TRAIN_IMAGE unset (the goldens'
    images); returns the written paths."""
    import os

    from pipelines import compile as compile_mod

    env_backup = {k: os.environ.pop(k, None) for k in ("SPARSEPIPE_IMAGE", "SPARSEPIPE_TRAIN_IMAGE")}
    try:
        return compile_mod.compile_all(out)
    finally:
        os.environ.update({k: v for k, v in env_backup.items() if v is not None})
