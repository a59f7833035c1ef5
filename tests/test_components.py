"""Components: typed signatures, thin bodies, and the sparsepipe.kfp_support functions they call.

    .venv/bin/python -m pytest tests/test_components.py -q
"""

import inspect
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import components  # noqa: E402
from sparsepipe.errors import ConfigError  # noqa: E402
from sparsepipe.kfp_support import RunContext, kfp_status_to_mlflow, train_device  # noqa: E402

STEP_COMPONENTS = {
    components.prepare_data: ({}, {"dataset": "system.Dataset", "metrics": "system.Metrics"}),
    components.train_model: ({"data": "system.Dataset"}, {"model": "system.Model", "metrics": "system.Metrics"}),
    components.export_onnx: ({"checkpoint": "system.Model"}, {"onnx_model": "system.Model", "metrics": "system.Metrics"}),
    components.evaluate_model: ({"onnx_model": "system.Model", "data": "system.Dataset"},
                                {"evaluation": "system.Artifact", "metrics": "system.Metrics"}),
    components.benchmark_model: ({"onnx_model": "system.Model", "baseline_onnx": "system.Model"},
                                 {"timing": "system.Artifact", "metrics": "system.Metrics"}),
    components.sparsify_model: ({"checkpoint": "system.Model", "data": "system.Dataset"},
                                {"model": "system.Model", "metrics": "system.Metrics"}),
    components.quantize_model: ({"onnx_model": "system.Model", "data": "system.Dataset"},
                                {"int8_model": "system.Model", "metrics": "system.Metrics"}),
    components.build_report: ({f"{v}_{k}": t for v in ("baseline", "pruned", "int8")
                               for k, t in (("onnx", "system.Model"), ("evaluation", "system.Artifact"),
                                            ("timing", "system.Artifact"))} | {"sparse_checkpoint": "system.Model"},
                              {"report": "system.Artifact", "markdown": "system.Markdown", "html": "system.HTML"}),
}


@pytest.mark.parametrize("component", list(STEP_COMPONENTS), ids=lambda c: c.name)
def test_typed_io_and_one_call(component):
    inputs, outputs = STEP_COMPONENTS[component]
    spec = component.component_spec
    assert {k: v.type.split("@")[0] for k, v in (spec.inputs or {}).items() if k in inputs} == inputs
    assert {k: v.type.split("@")[0] for k, v in spec.outputs.items()} == outputs
    assert "context" in spec.inputs
    body = inspect.getsource(component.python_func)
    calls = [line for line in body.splitlines() if "from sparsepipe" in line]
    assert calls == [calls[0]] and "sparsepipe.kfp_support import" in calls[0]  # one import, inside
    assert len([l for l in body.splitlines() if l.strip()]) < 40  # no logic in components


def test_images_pinned():
    import sparsepipe

    assert components.CPU_IMAGE.endswith(f"sparsepipe-cpu:{sparsepipe.__version__}")
    assert components.TRAIN_IMAGE.endswith(f"sparsepipe-cuda:{sparsepipe.__version__}")
    for c in STEP_COMPONENTS:
        image = c.component_spec.implementation.container.image
        assert not image.endswith(":latest")


def test_run_context_round_trip_and_errors():
    ctx = RunContext(tracking_uri="http://mlflow:5000", parent_run_id="abc", publish_root="s3://b/p/run1")
    assert RunContext.from_json(ctx.to_json()) == ctx
    assert RunContext.from_json("") == RunContext()
    assert ctx.publish_uri("baseline", "train") == "s3://b/p/run1/baseline/train"
    assert ctx.publish_uri("", "data") == "s3://b/p/run1/data"
    assert RunContext().publish_uri("baseline", "train") == ""
    with pytest.raises(ConfigError, match="not JSON"):
        RunContext.from_json("{nope")
    with pytest.raises(ConfigError, match="Unknown run context keys"):
        RunContext.from_json('{"secret": "x"}')


@pytest.mark.parametrize("state,expected", [
    ("COMPLETE", "FINISHED"),  # what a KFP backend passes on success (MLMD Execution.State)
    ("CACHED", "FINISHED"),
    ("SUCCEEDED", "FINISHED"),  # kfp.local
    ("FAILED", "FAILED"),
    ("CANCELED", "KILLED"),
    ("RUNNING", "FAILED"),  # body ended without recording its end: a pod killed, a run terminated
    ("UNKNOWN", "FAILED"),
    ("", "FAILED"),
    ("whatever", "FAILED"),
])
def test_status_mapping(state, expected):
    assert kfp_status_to_mlflow(state) == expected


def test_device_mapping():
    assert train_device("") == "cpu" and train_device("nvidia.com/gpu") == "0"
    assert train_device("nvidia.com/gpu", "1") == "0" and train_device("nvidia.com/gpu", 2.0) == "0"
    assert train_device("nvidia.com/gpu", "0") == "cpu"  # no GPU requested: the pod has none
    assert train_device("", "1") == "cpu"
    with pytest.raises(ConfigError, match="accelerator_count"):
        train_device("nvidia.com/gpu", "one")


def test_open_step_close_against_real_mlflow(mlflow_server, monkeypatch, tmp_path):
    """Parent run opened, a step logs into a child, the exit handler closes both with a status."""
    from mlflow.tracking import MlflowClient

    from sparsepipe.kfp_support import close_run, open_run, step_tracker

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    experiment = f"kfp-unit-{tmp_path.name}"
    context = RunContext.from_json(open_run(experiment=experiment, tracking_uri=mlflow_server.tracking_uri,
                                            kfp_run_id="run-1", params={"epochs": 3.0}))
    assert context.parent_run_id
    with step_tracker(context, "train", "baseline") as tracker:
        tracker.log_metrics({"map50": 0.5})
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    parent = client.get_run(context.parent_run_id)
    assert parent.info.status == "RUNNING" and parent.data.params["epochs"] == "3"
    assert close_run(kfp_run_id="run-1", status="FAILED", experiment=experiment,
                     tracking_uri=mlflow_server.tracking_uri) == "FAILED"
    assert client.get_run(context.parent_run_id).info.status == "FAILED"
    child = client.get_run(tracker.run_id)
    assert child.info.run_name == "baseline.train" and child.info.status == "FINISHED"
    assert child.data.metrics["map50"] == 0.5


@pytest.mark.parametrize("state,parent_status,child_status", [
    ("COMPLETE", "FINISHED", "KILLED"), ("CANCELED", "KILLED", "KILLED"), ("RUNNING", "FAILED", "FAILED"),
])
def test_close_run_with_backend_states(mlflow_server, monkeypatch, tmp_path, state, parent_status, child_status):
    """The exit handler on a real backend: ``COMPLETE`` finishes the parent; a child still running is killed."""
    from mlflow.tracking import MlflowClient

    from sparsepipe.kfp_support import close_run, open_run

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    experiment = f"kfp-state-{state}-{tmp_path.name}"
    kfp_run_id = f"run-{state}"
    context = RunContext.from_json(open_run(experiment=experiment, tracking_uri=mlflow_server.tracking_uri,
                                            kfp_run_id=kfp_run_id))
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    done = client.create_run(exp_id, tags={"mlflow.parentRunId": context.parent_run_id}, run_name="data")
    client.set_terminated(done.info.run_id, status="FINISHED")
    left = client.create_run(exp_id, tags={"mlflow.parentRunId": context.parent_run_id}, run_name="report")
    assert close_run(kfp_run_id=kfp_run_id, status=state, experiment=experiment,
                     tracking_uri=mlflow_server.tracking_uri) == parent_status
    parent = client.get_run(context.parent_run_id)
    assert parent.info.status == parent_status
    assert parent.data.tags["sparsepipe.kfp_final_status"] == state
    assert client.get_run(left.info.run_id).info.status == child_status
    assert client.get_run(done.info.run_id).info.status == "FINISHED"


def test_tracking_off_without_uri(monkeypatch):
    from sparsepipe.kfp_support import close_run, open_run, step_tracker
    from sparsepipe.tracking import Tracker

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    context = RunContext.from_json(open_run(kfp_run_id="r"))
    assert context.parent_run_id == "" and context.tracking_uri == ""
    with step_tracker(context, "data") as tracker:
        assert type(tracker) is Tracker
    assert close_run(kfp_run_id="r", status="SUCCEEDED") == ""


def test_benchmark_baseline_is_optional():
    spec = components.benchmark_model.component_spec
    assert spec.inputs["baseline_onnx"].optional and not spec.inputs["onnx_model"].optional


def test_sparsify_runs_on_the_training_image():
    assert components.sparsify_model.component_spec.implementation.container.image == components.TRAIN_IMAGE
    assert components.quantize_model.component_spec.implementation.container.image == components.CPU_IMAGE


def test_resolve_recipe(tmp_path, monkeypatch, s3_env):
    from sparsepipe.kfp_support import resolve_recipe

    monkeypatch.chdir(tmp_path)  # not the checkout: names are found in the recipe dirs
    shipped = resolve_recipe("recipes/yolov8n-pruned50.yaml")
    assert Path(shipped).is_file() and resolve_recipe("yolov8n-pruned50.yaml") == shipped
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "r.yaml").write_text("version: 1.1.0\n")
    monkeypatch.setenv("SPARSEPIPE_RECIPES_DIR", str(tmp_path / "own"))
    assert resolve_recipe("r.yaml") == str(tmp_path / "own" / "r.yaml")
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="recipes/quick.yaml", Body=b"version: 1.1.0\n")
    local = resolve_recipe(f"s3://{s3_env.bucket}/recipes/quick.yaml", tmp_path / "cache")
    assert Path(local).read_text() == "version: 1.1.0\n"
    with pytest.raises(ConfigError, match="not found"):
        resolve_recipe("recipes/nope.yaml")
