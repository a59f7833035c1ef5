"""sparsepipe's imports point one way: down this table of layers, with no cycle.

    python -m pytest tests/test_layers.py -q
    python tests/layer_check.py        # the same problems, printed

A module imports only modules of its own layer or of the layers below it, at module level or
inside a function (both count: a lazy import is still a dependency). In the steps layer a step
imports another step only where ALLOWED_CALLS says why. An import inside a function is only
for a heavy or optional dependency and says so (``# heavy: torch``). docs/architecture.md
explains the layers; move a helper down (or split it out of a step) rather than adding an
exception.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from layer_check import Layer, check, cycles, scan

REPO = Path(__file__).resolve().parents[1]
ROOTS = [(REPO / "src", "sparsepipe"), (REPO, "components")]

# Top to bottom. A module belongs to the first layer whose pattern matches it.
LAYERS = [
    # what a user or Kubeflow calls: argument parsing and adapters, one call into a step each
    # (config_flags: the flags of a step config, shared by the argument parsers)
    Layer("front ends", ("components", "components.*", "sparsepipe.__main__", "sparsepipe.cli",
                         "sparsepipe.kfp_support", "sparsepipe.serving_cli", "sparsepipe.recipe_cli",
                         "sparsepipe.config_flags")),
    # runs every step in order (make demo): the one module allowed to call them all
    Layer("orchestration", ("sparsepipe.demo",)),
    # one module per verb: a config and one function; see ALLOWED_CALLS for steps that run others
    Layer("steps", ("sparsepipe.training", "sparsepipe.sparsify", "sparsepipe.qat", "sparsepipe.quantize",
                    "sparsepipe.export", "sparsepipe.evaluate", "sparsepipe.benchmark", "sparsepipe.report",
                    "sparsepipe.predict", "sparsepipe.serve", "sparsepipe.deploy", "sparsepipe.champion"),
          independent=True),
    # what the steps are made of: the controller protocol + registry, pruning masks, channel pruning,
    # distillation, QAT, PTQ, the recipe session that drives them in training; data sources (the data
    # step lives with them until data.py is split); statistics; the engines package (every
    # onnxruntime session, OpenVINO model and DeepSparse worker is opened there), benchmarking
    # hardware probes and serving helpers
    Layer("algorithms / data / engines / serving", (
        "sparsepipe.controllers", "sparsepipe.masks", "sparsepipe.channel_pruning", "sparsepipe.splitfree", "sparsepipe.distillation",
        "sparsepipe.qat_modules", "sparsepipe.qat_export", "sparsepipe.ptq", "sparsepipe.recipe_session",
        "sparsepipe.bootstrap", "sparsepipe.data", "sparsepipe.synthetic", "sparsepipe.hardware",
        "sparsepipe.engines", "sparsepipe.engines.*", "sparsepipe.image_input",
        "sparsepipe.letterbox", "sparsepipe.nms", "sparsepipe.oip")),
    # the only code that loads ultralytics models and wraps its trainer
    Layer("ultralytics integration", ("sparsepipe.models", "sparsepipe.ultralytics_hooks")),
    # S3, MLflow tracking and the MLflow model registry (below the integration: a model reference
    # may be s3:// or models:/, resolved before ultralytics loads it); a recipe named by path, shipped
    # name or s3:// URI found as a local file (recipe_lookup: it downloads through storage)
    Layer("storage / tracking", ("sparsepipe.storage", "sparsepipe.tracking", "sparsepipe.registry",
                                 "sparsepipe.mlflow_model", "sparsepipe.recipe_lookup")),
    # parse, evaluate, validate and schedule recipes
    Layer("recipe", ("sparsepipe.recipe", "sparsepipe.recipe.*")),
    # typed, validated modifier models and their tag registry
    Layer("modifiers", ("sparsepipe.modifiers", "sparsepipe.modifiers.*")),
    # read and inspect ONNX files
    Layer("onnx", ("sparsepipe.onnx_utils",)),
    # results (result.json), atomic files, errors, limits, checkpoint trust, step cache, sizes; the
    # core package: replace_dir (with rollback), the URL redactor, the $SPARSEPIPE_CACHE root
    Layer("core", ("sparsepipe", "sparsepipe.errors", "sparsepipe.results", "sparsepipe.limits",
                   "sparsepipe.trust", "sparsepipe.step_cache", "sparsepipe.sizes", "sparsepipe.torch_utils",
                   "sparsepipe.core", "sparsepipe.core.*")),
]

# Steps that run another step, and why (anything else a step shares goes to a lower layer).
ALLOWED_CALLS = {
    ("sparsepipe.qat", "sparsepipe.sparsify"): "QAT trains as a sparsify run under the QAT recipe",
    ("sparsepipe.qat", "sparsepipe.evaluate"): "QAT scores its INT8 ONNX like the evaluate step",
    ("sparsepipe.sparsify", "sparsepipe.evaluate"): "sparsify scores the checkpoint it publishes",
    ("sparsepipe.quantize", "sparsepipe.export"): "PTQ of a .pt exports it to FP32 ONNX first",
    ("sparsepipe.quantize", "sparsepipe.evaluate"): "PTQ scores the INT8 ONNX it writes",
    ("sparsepipe.serve", "sparsepipe.predict"): "the server answers each request with predict's Predictor",
    ("sparsepipe.champion", "sparsepipe.report"): "the champion is chosen from the report's variant table",
}

# Kubeflow components import inside their function bodies: KFP ships a component's source alone.
FUNCTION_IMPORTS_OK = ("components",)


def test_imports_follow_the_layers():
    problems = check(scan(ROOTS), LAYERS, ALLOWED_CALLS, FUNCTION_IMPORTS_OK, REPO, function_rule=False)
    assert not problems, "imports that break the layer table (tests/test_layers.py):\n" + "\n".join(problems)


def test_imports_inside_functions_say_why():
    problems = check(scan(ROOTS), LAYERS, ALLOWED_CALLS, FUNCTION_IMPORTS_OK, REPO)
    assert not problems, "imports inside functions without a reason:\n" + "\n".join(problems)


def test_every_allowed_call_is_between_steps():
    steps = next(layer for layer in LAYERS if layer.name == "steps").modules
    assert all(a in steps and b in steps for a, b in ALLOWED_CALLS)


def test_help_does_not_import_heavy_dependencies():
    """``sparsepipe --help`` and ``import sparsepipe`` stay fast: no torch, ultralytics, onnx, MLflow..."""
    code = textwrap.dedent("""
        import contextlib, io, sys
        import sparsepipe
        import sparsepipe.cli as cli
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main(["--help"])
            except SystemExit:
                pass
        print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "PATH": ""}).stdout.split()
    heavy = {"torch", "torchvision", "ultralytics", "onnx", "onnxruntime", "openvino", "mlflow", "kfp", "boto3",
             "botocore", "matplotlib", "cv2", "torch_pruning", "deepsparse", "pandas", "scipy"}
    assert not heavy & set(out), f"sparsepipe --help imports {sorted(heavy & set(out))}"


# ------------------------------------------------------------------------------ the checker itself
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


TINY = [Layer("top", ("pkg.top",)), Layer("steps", ("pkg.step_a", "pkg.step_b"), independent=True),
        Layer("low", ("pkg", "pkg.low", "pkg.sub", "pkg.sub.*"))]


def test_checker_reports_a_cycle_and_an_upward_import(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "top.py": "from pkg import low\n",
        "step_a.py": "import pkg.low\n",
        "step_b.py": "",
        "low.py": "def f():\n    from pkg.top import x  # lazy: test\n    return x\n",
    })
    graph = scan([(root, "pkg")])
    assert cycles(graph) == [["pkg.low", "pkg.top"]]
    problems = check(graph, TINY, root=root)
    text = "\n".join(problems)
    assert "cycle of 2 modules: pkg.low, pkg.top" in text
    assert "pkg/low.py:2: pkg.low (low) -> pkg.top (top): upward import" in text
    assert "pkg/top.py:1: pkg.top (top) -> pkg.low (low) [module level]" in text


def test_checker_reports_steps_that_import_each_other_and_unjustified_lazy_imports(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "top.py": "",
        "step_a.py": "def run():\n    from pkg import step_b\n    import json\n    import numpy  # heavy: numpy\n",
        "step_b.py": "from . import low\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "",
        "stray.py": "import importlib\nimportlib.import_module('pkg.low')\n",
        "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import top\n",
    })
    graph = scan([(root, "pkg")])
    text = "\n".join(check(graph, TINY, root=root))
    assert "pkg/step_a.py:2: pkg.step_a (steps) -> pkg.step_b (steps): steps are independent" in text
    assert "pkg/step_a.py:2: pkg.step_a (steps) imports pkg.step_b inside a function without a reason" in text
    assert "pkg/step_a.py:3: pkg.step_a (steps) imports json inside a function: a standard-library" in text
    assert "numpy" not in text
    assert "pkg.stray is in no layer" in text
    assert "pkg/low.py:3: pkg.low (low) -> pkg.top (top): upward import" in text  # a type is a dependency
    assert any(i.source == "pkg.stray" and i.target == "pkg.low" for i in graph.imports)  # import_module("...")
    allowed = {("pkg.step_a", "pkg.step_b"): "a documented call", ("pkg.step_b", "pkg.step_a"): "stale"}
    text = "\n".join(check(graph, TINY, allowed, root=root))
    assert "steps are independent" not in text
    assert "allowed call pkg.step_b -> pkg.step_a is no longer made" in text


def test_checker_knows_shims(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "top.py": "from pkg import old\n",
        "step_a.py": "",
        "step_b.py": "",
        "low.py": "",
        "old.py": '"""Moved to pkg.low."""\nimport sys; from pkg import low as _m; sys.modules[__name__] = _m\n',
    })
    graph = scan([(root, "pkg")])
    assert graph.shims == {"pkg.old": "pkg.low"}
    text = "\n".join(check(graph, TINY, root=root))
    assert "pkg.old is in no layer" not in text
    assert "pkg/top.py:1: pkg.top (top) imports pkg.old, a shim left at an old path: import pkg.low instead" in text


def test_checker_counts_the_package_a_submodule_import_runs(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "top.py": "",
        "step_a.py": "",
        "step_b.py": "",
        "low.py": "from pkg.sub.leaf import x\n",
        "sub/__init__.py": "from pkg import top\n",
        "sub/leaf.py": "x = 1\n",
    })
    text = "\n".join(check(scan([(root, "pkg")]), TINY, root=root))
    assert "pkg/sub/__init__.py:1: pkg.sub (low) -> pkg.top (top): upward import" in text
    graph = scan([(root, "pkg")])
    assert any(i.source == "pkg.low" and i.target == "pkg.sub" and i.implicit for i in graph.imports)
