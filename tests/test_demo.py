"""The demo flow end to end, tracked in a real MLflow server whose artifacts live in real S3.

    .venv/bin/python -m pytest tests/test_demo.py
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from sparsepipe.demo import DemoConfig, run_demo

STANDARD_METRICS = {
    "map50", "map50_95", "params", "size_mb", "size_gz_mb",
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips",
}


def test_demo_runs_every_step_and_tracks_parent_and_variant(tmp_path, monkeypatch, mlflow_server, s3_env):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    config = DemoConfig(data="synthetic:train=16,val=8,size=128,seed=5", epochs=1, imgsz=64, batch=8, iterations=10)
    result = run_demo(tmp_path / "demo", config, experiment="demo-test")

    # Every step left its result; the report compares the baseline variant.
    for step in ("data", "train", "export", "evaluate", "benchmark", "report"):
        assert (tmp_path / "demo" / step / "result.json").is_file(), step
    assert "baseline" in result.extra["table"]
    assert result.path("plot").is_file()

    client = MlflowClient(mlflow_server.tracking_uri)
    experiment = client.get_experiment_by_name("demo-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 1
    parent, child = parents[0], children[0]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.run_name == "baseline"
    assert parent.info.status == child.info.status == "FINISHED"
    assert STANDARD_METRICS <= set(child.data.metrics), STANDARD_METRICS - set(child.data.metrics)
    # Per-epoch curves are logged by sparsepipe itself (ultralytics' MLflow callback is off).
    history = client.get_metric_history(child.info.run_id, "val/map50_95")
    assert [m.step for m in history] == [1]

    child_artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"onnx", "weights", "evaluate"} <= child_artifacts
    onnx_files = [a.path for a in client.list_artifacts(child.info.run_id, "onnx")]
    assert onnx_files == ["onnx/model.onnx"]
    report_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/accuracy_vs_latency.png"} <= report_files
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "data")] == ["data/data.yaml"]

    # The artifacts really are in the S3 bucket behind the server.
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith("onnx/model.onnx") for k in keys)
