"""Compile every pipeline to ``pipelines/compiled/<name>.yaml`` (the golden files).

    .venv/bin/python -m pipelines.compile            # (re)write the golden files
    .venv/bin/python -m pipelines.compile --check    # exit 1 if they differ from the code

Image references come from ``SPARSEPIPE_IMAGE``/``SPARSEPIPE_TRAIN_IMAGE`` (see
``components/images.py``); the golden files are compiled with both unset.
"""

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import yaml

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


def pipelines() -> dict:
    """``{file stem: pipeline function}`` of every pipeline in the project."""
    from pipelines.main import main_pipeline
    from pipelines.sweep import sweep_pipeline

    return {"main": main_pipeline, "sweep": sweep_pipeline}


#: Placeholders the KFP driver resolves itself, and only when a task input's constant is exactly one
#: of them (backend/src/v2/driver/resolve.go, 2.14-2.17: ``switch valStr``).
DRIVER_PLACEHOLDERS = frozenset({
    "{{$.pipeline_job_name}}", "{{$.pipeline_job_resource_name}}", "{{$.pipeline_job_uuid}}",
    "{{$.pipeline_task_name}}", "{{$.pipeline_task_uuid}}",
})
#: Task inputs the SDK adds for pod resources set from a pipeline parameter (``set_accelerator_type``,
#: ``set_accelerator_limit``, ...): the driver reads them for the pod spec; their values are Kubernetes
#: resource names and quantities, which never hold ``"`` or ``\\``. Allowed as one whole placeholder.
RESOURCE_INPUTS = frozenset({"accelerator_type", "accelerator_count", "cpu_request", "cpu_limit",
                             "memory_request", "memory_limit"})
_WHOLE_PARAMETER = re.compile(r"\{\{\$\.inputs\.parameters\['[^'\]]+'\]\}\}")


def launcher_substituted_constants(spec: dict) -> list[str]:
    """``component/task/input`` of every task input whose constant holds a placeholder the launcher would fill.

    The KFP launcher (backend/src/v2/component/launcher_v2.go, ``compileCmdAndArgs``) replaces
    ``{{$.inputs.parameters['x']}}`` by raw text inside the task's executor-input JSON: a value
    with ``"`` or ``\\``, or a list (JSON text), makes that JSON invalid, and on 2.0-2.5 the
    order of the replacements is random. A pipeline parameter must reach a task as its own input
    (``componentInputParameter``), never inside a dict, list or formatted string constant.
    """
    found = []
    dags = {"root": spec.get("root", {})} | {k: v for k, v in spec.get("components", {}).items() if "dag" in v}
    for name, component in dags.items():
        for task_name, task in component.get("dag", {}).get("tasks", {}).items():
            for input_name, value in task.get("inputs", {}).get("parameters", {}).items():
                constant = value.get("runtimeValue", {}).get("constant")
                if constant is None or (isinstance(constant, str) and constant in DRIVER_PLACEHOLDERS):
                    continue
                if input_name in RESOURCE_INPUTS and isinstance(constant, str) and _WHOLE_PARAMETER.fullmatch(constant):
                    continue
                if "{{$" in json.dumps(constant):
                    found.append(f"{name}/{task_name}/{input_name}")
    return found


def compile_pipeline(pipeline, path: Path) -> Path:
    """Compile to ``path``; refuse a pipeline the KFP launcher would break (see :func:`launcher_substituted_constants`)."""
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        compiled = Path(tmp) / path.name
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(compiled))
        unsafe = launcher_substituted_constants(next(yaml.safe_load_all(compiled.read_text())))
        if unsafe:
            raise ValueError(
                f"{pipeline.name}: task inputs {unsafe} hold pipeline parameters inside a constant (a dict, list or "
                "f-string); a KFP backend substitutes them without escaping. Pass each parameter as its own task input."
            )
        os.replace(compiled, path)
    return path


def normalized(text: str) -> str:
    """Compiled YAML without the kfp SDK version line and the ``#`` header comment.

    The header repeats the parameter defaults with dict keys in an unstable order; the spec
    below it holds the same information in a stable one.
    """
    lines = text.splitlines()
    return "\n".join(line for line in lines if not line.startswith(("sdkVersion:", "#"))) + "\n"


def compile_all(out_dir: Path = COMPILED_DIR) -> list[Path]:
    return [compile_pipeline(func, out_dir / f"{name}.yaml") for name, func in pipelines().items()]


def check(out_dir: Path = COMPILED_DIR) -> list[str]:
    """Names of the pipelines whose compiled YAML differs from the golden file."""
    drifted = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in compile_all(Path(tmp)):
            golden = out_dir / path.name
            if not golden.is_file() or normalized(golden.read_text()) != normalized(path.read_text()):
                drifted.append(path.stem)
    return drifted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the golden files, write nothing")
    parser.add_argument("--out", type=Path, default=COMPILED_DIR, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        drifted = check(args.out)
        if drifted:
            print(f"compiled pipelines differ from {args.out}: {', '.join(drifted)}. "
                  "Regenerate with `.venv/bin/python -m pipelines.compile` (make compile) and review the diff.")
            return 1
        print("compiled pipelines match the golden files")
        return 0
    for path in compile_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
