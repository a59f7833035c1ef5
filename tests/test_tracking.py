"""sparsepipe.tracking against a real MLflow server (SQLite + artifacts in SeaweedFS) and a
local SQLite store; checked through a fresh MlflowClient (no mocks).

    .venv/bin/python -m pytest tests/test_tracking.py -q
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sparsepipe.errors import SparsepipeError
from sparsepipe.tracking import (
    MlflowTracker,
    NullTracker,
    Tracker,
    TrackingError,
    default_local_tracking_uri,
    resolve_tracker,
    sanitize_metric_name,
)
from service_fixtures import MlflowServer, S3Server, free_port

_MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_RUN_ID",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


@pytest.fixture(autouse=True)
def _clean_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def test_sanitize_metric_name() -> None:
    assert sanitize_metric_name("map50") == "map50"
    assert sanitize_metric_name("metrics/mAP50(B)") == "metrics/mAP50_B_"
    assert sanitize_metric_name("/lead//double/") == "lead/double"
    assert sanitize_metric_name("a/../b") == "a/__/b"
    assert sanitize_metric_name("latency ms p50") == "latency ms p50"
    assert sanitize_metric_name("x" * 300) == "x" * 250


def test_null_tracker_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert NullTracker is Tracker
    tracker = resolve_tracker("anything", "run", enabled=False)
    assert type(tracker) is Tracker and tracker.run_id is None
    with tracker as t:
        child = t.start_child("train", tags={"a": 1})
        assert type(child) is Tracker and child.run_id is None
        assert t.log_params({"epochs": 3}) is None
        assert t.log_metrics({"map50": 0.1}, step=2) is None
        assert t.log_artifact(tmp_path / "does-not-matter") is None
        assert t.log_text("x", "a.txt") is None
        assert t.set_tags({"k": "v"}) is None
        child.end("FAILED")
    assert "off" in tracker.ui_hint()
    assert list(tmp_path.iterdir()) == []  # no store was created


def test_parent_and_children_on_the_server(
    mlflow_server: MlflowServer, s3_server: S3Server, tmp_path: Path
) -> None:
    experiment = f"exp-{_uid()}"
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "best.pt").write_bytes(bytes(range(256)) * 8)
    (weights / "last.pt").write_bytes(b"last")
    report = tmp_path / "report.json"
    report.write_text('{"map50": 0.5}\n')

    parent = resolve_tracker(
        experiment, "pipeline", tracking_uri=mlflow_server.tracking_uri, tags={"variant": "dense"}
    )
    assert isinstance(parent, MlflowTracker) and parent.owns_run
    parent.log_params(
        {
            "epochs": 3,
            "recipe": {"sparsity": 0.8, "modifiers": ["prune", "quant"]},
            "aws_secret_access_key": "should-never-be-logged",
            "db_password": "hunter2-hunter2",
            "notes": "n" * 7000,
        }
    )
    parent.log_metrics({"map50": 0.5, "metrics/mAP50(B)": 0.4}, step=1)
    with parent.start_child("train", tags={"step": "train"}) as child:
        child.log_metrics({"map50": 0.61, "sparsity": 0.8}, step=0)
        child.log_metrics({"map50": 0.63}, step=1)
        child.log_artifact(report)
        child.log_artifact(weights, artifact_path="checkpoints")
        child.log_text("# summary\nok\n", "reports/summary.md")
    second = parent.start_child("export")
    second.end()
    parent.end()
    hint = parent.ui_hint()
    assert mlflow_server.tracking_uri in hint and parent.run_id in hint

    fresh = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp = fresh.get_experiment_by_name(experiment)
    assert exp is not None and exp.experiment_id == parent.experiment_id
    runs = fresh.search_runs([exp.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"pipeline", "train", "export"}
    for name in ("train", "export"):
        assert by_name[name].data.tags["mlflow.parentRunId"] == parent.run_id
        assert by_name[name].info.experiment_id == exp.experiment_id
        assert by_name[name].info.status == "FINISHED"
    assert by_name["train"].data.tags["step"] == "train"

    top = fresh.get_run(parent.run_id)
    assert top.info.status == "FINISHED"
    assert top.data.tags["variant"] == "dense"
    params = top.data.params
    assert params["epochs"] == "3"
    assert params["recipe.sparsity"] == "0.8"
    assert params["recipe.modifiers"] == "[prune, quant]"
    assert len(params["notes"]) == 6000 and params["notes"].endswith("...")
    assert not any("secret" in k or "password" in k for k in params)
    assert "should-never-be-logged" not in str(params)
    assert top.data.metrics == {"map50": 0.5, "metrics/mAP50_B_": 0.4}

    train = by_name["train"]
    history = fresh.get_metric_history(train.info.run_id, "map50")
    assert [(m.step, m.value) for m in history] == [(0, 0.61), (1, 0.63)]

    # artifacts went through the server into SeaweedFS; read them back byte for byte
    out = Path(fresh.download_artifacts(train.info.run_id, "", str(tmp_path / "dl")))
    assert (out / "report.json").read_bytes() == report.read_bytes()
    assert (out / "checkpoints" / "weights" / "best.pt").read_bytes() == (
        weights / "best.pt"
    ).read_bytes()
    assert (out / "checkpoints" / "weights" / "last.pt").read_bytes() == b"last"
    assert (out / "reports" / "summary.md").read_text() == "# summary\nok\n"
    keys = [
        o["Key"]
        for o in s3_server.client().list_objects_v2(
            Bucket=s3_server.bucket, Prefix="mlflow/"
        ).get("Contents", [])
    ]
    assert any(train.info.run_id in k and k.endswith("checkpoints/weights/best.pt") for k in keys)


def test_exception_in_block_marks_run_failed(mlflow_server: MlflowServer) -> None:
    with pytest.raises(RuntimeError):
        with resolve_tracker(
            f"exp-{_uid()}", "boom", tracking_uri=mlflow_server.tracking_uri
        ) as tracker:
            run_id = tracker.run_id
            raise RuntimeError("training diverged")
    run = MlflowClient(tracking_uri=mlflow_server.tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED"


def test_attach_to_injected_run_without_ending_it(
    mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Kubeflow does: it creates the run and injects its id; the step logs into it."""
    kfp = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp_id = kfp.create_experiment(f"kfp-{_uid()}")
    injected = kfp.create_run(exp_id, run_name="pipeline-task")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", injected.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp_id)

    with resolve_tracker("ignored-experiment", "ignored-name", tags={"component": "train"}) as t:
        assert t.run_id == injected.info.run_id and not t.owns_run
        assert t.experiment_id == exp_id
        t.log_params({"imgsz": 160})
        t.log_metrics({"map50": 0.3})
        child = t.start_child("epoch-sweep")
        child.log_metrics({"map50": 0.31})
        child.end()
    t.end()  # ending twice is harmless, and still leaves the injected run open

    run = kfp.get_run(injected.info.run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"imgsz": "160"}
    assert run.data.metrics == {"map50": 0.3}
    assert run.data.tags["component"] == "train"
    child_run = kfp.get_run(child.run_id)
    assert child_run.info.experiment_id == exp_id
    assert child_run.data.tags["mlflow.parentRunId"] == injected.info.run_id
    assert kfp.get_experiment_by_name("ignored-experiment") is None


def test_experiment_name_from_environment(
    mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"env-exp-{_uid()}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    tracker = resolve_tracker("argument-exp", "r", tracking_uri=mlflow_server.tracking_uri)
    tracker.end()
    exp = MlflowClient(tracking_uri=mlflow_server.tracking_uri).get_experiment_by_name(name)
    assert exp is not None and exp.experiment_id == tracker.experiment_id


def test_missing_injected_run_and_experiment_are_named(
    mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    with pytest.raises(TrackingError, match="MLFLOW_RUN_ID=0{32} names no run") as info:
        resolve_tracker(tracking_uri=mlflow_server.tracking_uri)
    assert mlflow_server.tracking_uri in str(info.value)
    monkeypatch.delenv("MLFLOW_RUN_ID")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "987654321")
    with pytest.raises(TrackingError, match="MLFLOW_EXPERIMENT_ID=987654321"):
        resolve_tracker(tracking_uri=mlflow_server.tracking_uri)


def test_secret_values_from_the_environment_never_reach_params(
    mlflow_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "S3cr3t-" + _uid()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    tracker = resolve_tracker(f"exp-{_uid()}", "r", tracking_uri=mlflow_server.tracking_uri)
    with caplog.at_level(logging.WARNING, logger="sparsepipe.tracking"):
        tracker.log_params(
            {"storage_options": f"key=AK,secret={secret}", "api_token": "t0ken-value", "lr": 0.01}
        )
        tracker.set_tags({"auth_token": "x" * 10, "owner": "ci"})
    tracker.end()
    run = MlflowClient(tracking_uri=mlflow_server.tracking_uri).get_run(tracker.run_id)
    assert run.data.params == {"lr": "0.01"}
    assert "auth_token" not in run.data.tags and run.data.tags["owner"] == "ci"
    assert "storage_options" in caplog.text and "api_token" in caplog.text
    assert secret not in caplog.text and "t0ken-value" not in caplog.text


def test_unreachable_server_fails_fast_with_the_uri() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(SparsepipeError, match="unreachable") as info:
        resolve_tracker("x", tracking_uri=uri)
    assert uri in str(info.value) and "MLFLOW_TRACKING_URI" in str(info.value)
    assert time.monotonic() - start < 10


def test_local_sqlite_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    artifact = project / "metrics.json"
    artifact.write_text('{"map50": 0.2}')

    tracker = resolve_tracker("local-exp", "local-run", tags={"variant": "pruned50"})
    assert isinstance(tracker, MlflowTracker)
    assert tracker.tracking_uri == default_local_tracking_uri(project)
    assert tracker.tracking_uri == f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    tracker.log_params({"epochs": 1})
    tracker.log_metrics({"map50": 0.2})
    tracker.log_artifact(artifact)
    child = tracker.start_child("quantize")
    child.log_text("int8", "notes.txt")
    child.end()
    tracker.end()
    assert "mlflow ui --backend-store-uri sqlite:///" in tracker.ui_hint()

    assert sorted(p.name for p in project.iterdir()) == ["metrics.json", "mlruns"]
    stored = list((project / "mlruns" / "artifacts").rglob("metrics.json"))
    assert len(stored) == 1 and stored[0].read_text() == '{"map50": 0.2}'

    fresh = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    exp = fresh.get_experiment_by_name("local-exp")
    assert exp.artifact_location == (project / "mlruns" / "artifacts").as_uri()
    runs = {r.info.run_name: r for r in fresh.search_runs([exp.experiment_id])}
    assert set(runs) == {"local-run", "quantize"}
    assert runs["local-run"].data.params == {"epochs": "1"}
    assert runs["quantize"].data.tags["mlflow.parentRunId"] == tracker.run_id

    again = resolve_tracker("local-exp", "second")  # same store, same experiment
    again.end()
    assert again.experiment_id == exp.experiment_id
