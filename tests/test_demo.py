"""The demo flow end to end, tracked in a real MLflow server whose artifacts live in real S3.

    .venv/bin/python -m pytest tests/test_demo.py
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from sparsepipe.demo import DemoConfig, run_demo

STANDARD_METRICS = {
    "map50", "map50_95", "params", "size_mb", "size_gz_mb",
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips",
}


def test_demo_runs_every_step_and_tracks_parent_and_variant(tmp_path, monkeypatch, mlflow_server, s3_env):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    config = DemoConfig(data="synthetic:train=16,val=8,size=128,seed=5", epochs=1, imgsz=64, batch=8, iterations=10,
                        recipe_args="num_epochs=2,pruning_start_epoch=0,pruning_end_epoch=1,pruning_update_frequency=0.5")
    result = run_demo(tmp_path / "demo", config, experiment="demo-test")

    # Every step left its result; the report compares the baseline variant.
    for step in ("data", "train", "export", "evaluate", "benchmark", "report", "pruned50", "pruned50-benchmark"):
        assert (tmp_path / "demo" / step / "result.json").is_file(), step
    assert "baseline" in result.extra["table"] and "pruned50" in result.extra["table"]
    assert result.extra["variants"]["pruned50"]["metrics"]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert result.path("plot").is_file()

    client = MlflowClient(mlflow_server.tracking_uri)
    experiment = client.get_experiment_by_name("demo-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and sorted(r.info.run_name for r in children) == ["baseline", "pruned50", "pruned50-int8"]
    parent = parents[0]
    child = next(r for r in children if r.info.run_name == "baseline")
    pruned = next(r for r in children if r.info.run_name == "pruned50")
    assert child.data.tags["mlflow.parentRunId"] == pruned.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == child.info.status == "FINISHED"
    assert STANDARD_METRICS <= set(child.data.metrics), STANDARD_METRICS - set(child.data.metrics)
    # Per-epoch curves are logged by sparsepipe itself (ultralytics' MLflow callback is off).
    history = client.get_metric_history(child.info.run_id, "val/map50_95")
    assert [m.step for m in history] == [1]

    # Error bars reach MLflow: the bootstrap interval of mAP50-95 for every evaluated variant.
    assert {"map50_95_ci_low", "map50_95_ci_high"} <= set(child.data.metrics) & set(pruned.data.metrics)
    assert child.data.metrics["map50_95_ci_low"] <= child.data.metrics["map50_95_ci_high"]
    assert "95% CI" in result.path("markdown").read_text()
    assert all(row["objects"] >= 0 and row["labelled"] >= 1 for row in result.extra["predict_sample"])
    # Same metric names for every variant, so the MLflow compare view lines up.
    assert STANDARD_METRICS | {"speedup_vs_baseline"} <= set(pruned.data.metrics)
    int8 = next(r for r in children if r.info.run_name == "pruned50-int8")
    assert STANDARD_METRICS | {"speedup_vs_baseline", "int8_conv_nodes"} <= set(int8.data.metrics)
    assert int8.data.metrics["size_mb"] < pruned.data.metrics["size_mb"] / 2
    assert "pruned50-int8" in result.extra["table"]
    # The pruned variant logs overall and per-layer sparsity and the LR every epoch.
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "sparsity")] == [1, 2]
    assert client.get_metric_history(pruned.info.run_id, "sparsity")[-1].value == pytest.approx(0.5, abs=1e-4)
    assert "sparsity/model.2.cv1.conv.weight" in pruned.data.metrics
    assert len(client.get_metric_history(pruned.info.run_id, "lr/pg0")) == 2
    assert {"sparsify/sparsity.png", "sparsify/sparsity.json", "sparsify/model.pt"} <= {
        a.path for a in client.list_artifacts(pruned.info.run_id, "sparsify")}
    assert [a.path for a in client.list_artifacts(pruned.info.run_id, "recipe")] == ["recipe/recipe.yaml"]

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


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_defaults_learn_and_predict_finds_objects(tmp_path):
    """`make demo`'s defaults (synthetic:preset=demo, 30 epochs at 160 px, nbs = batch): the
    baseline detects (mAP50 >= 0.5), pruned50 keeps >= 95 % of it, predict finds objects, and the
    recomputed mAP behind the interval agrees with ultralytics' figure."""
    import json

    result = run_demo(tmp_path / "demo", DemoConfig(), track=False)
    variants = result.extra["variants"]
    base, pruned = variants["baseline"]["metrics"], variants["pruned50"]["metrics"]
    assert base["map50"] >= 0.5, base
    assert pruned["map50"] >= 0.95 * base["map50"], (pruned["map50"], base["map50"])
    assert base["map50_95_ci_low"] < base["map50_95"] < base["map50_95_ci_high"]
    assert pruned["map50_95_ratio_ci_low"] <= pruned["map50_95_ratio"] <= pruned["map50_95_ratio_ci_high"]
    found = result.extra["predict_sample"]
    assert sum(row["objects"] for row in found) >= 0.5 * sum(row["labelled"] for row in found), found
    evaluated = json.loads((tmp_path / "demo" / "evaluate" / "result.json").read_text())
    assert abs(evaluated["extra"]["bootstrap"]["map50_95_recomputed"] - base["map50_95"]) <= 0.03
