"""What only the Kubeflow adapter did now runs from the CLI too: recipes by name and from s3://, data-step
tracking, champion registration. Against the real SeaweedFS and MLflow servers of service_fixtures.py.

    .venv/bin/python -m pytest tests/test_cli_library.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsepipe.errors import ConfigError
from sparsepipe.recipe_lookup import resolve_recipe
from sparsepipe.results import StepResult

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path, **env: str):
    full = {**os.environ, "MLFLOW_TRACKING_URI": "", **env}
    full.pop("MLFLOW_RUN_ID", None)
    return subprocess.run([sys.executable, "-m", "sparsepipe", *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=300)


def test_recipe_lookup_by_name_path_and_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: names are found in the recipe dirs
    shipped = resolve_recipe("recipes/yolov8n-pruned50.yaml")
    assert Path(shipped).is_file()
    assert resolve_recipe("yolov8n-pruned50.yaml") == shipped == resolve_recipe("yolov8n-pruned50")
    text = "version: 1.1.0\nmodifiers: []\n"
    assert resolve_recipe(text) == text  # YAML text goes to load_recipe unchanged
    with pytest.raises(ConfigError, match="not found.*Did you mean yolov8n-pruned50"):  # the closest shipped names
        resolve_recipe("yolov8n-prunde50")


def test_sparsify_cli_finds_a_recipe_by_name(tmp_path):
    """The budget check runs after the recipe is loaded and before any data or model: it proves the lookup."""
    proc = run_cli("sparsify", "--recipe", "yolov8n-pruned50", "--max-epochs", "1", "--no-track",
                   "--out", str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "epochs but the budget (--max-epochs) is 1" in proc.stderr


def test_sparsify_cli_reads_an_s3_recipe(tmp_path, s3_env):
    key = "recipes/from-s3.yaml"
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key,
                               Body=(ROOT / "recipes" / "yolov8n-pruned50.yaml").read_bytes())
    proc = run_cli("sparsify", "--recipe", f"s3://{s3_env.bucket}/{key}", "--max-epochs", "1", "--no-track",
                   "--out", str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "epochs but the budget (--max-epochs) is 1" in proc.stderr
    missing = run_cli("sparsify", "--recipe", f"s3://{s3_env.bucket}/recipes/none.yaml", "--no-track",
                      "--out", str(tmp_path / "t"), cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert "recipes/none.yaml" in missing.stderr


def test_data_cli_is_tracked_like_the_pipeline_step(tmp_path, mlflow_server, s3_env):
    from mlflow.tracking import MlflowClient

    experiment = f"cli-data-{tmp_path.name}"
    proc = run_cli("data", "--source", "synthetic:train=4,val=2,size=64", "--out", str(tmp_path / "d"),
                   "--experiment", experiment, "--no-progress", cwd=tmp_path,
                   MLFLOW_TRACKING_URI=mlflow_server.tracking_uri)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["data.source"].startswith("synthetic") and run.data.params["data.validate"] == "True"
    assert run.data.metrics["train_images"] == 4 and run.data.tags["sparsepipe.step"] == "data"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "data")] == ["data/data.yaml"]


def _tiny_onnx(path: Path, scale: float) -> Path:
    from test_registry import tiny_onnx  # the registry tests' y = x * scale graph

    path.parent.mkdir(parents=True, exist_ok=True)
    return tiny_onnx(path, scale)


def _variant_folders(root: Path) -> list[str]:
    """export/evaluate/benchmark result folders of two variants: pruned is 2x faster at 99 % of the mAP."""
    folders = []
    for variant, accuracy, p50, speedup in (("baseline", 0.50, 10.0, None), ("pruned", 0.495, 5.0, 2.0)):
        export = root / variant / "export"
        _tiny_onnx(export / "model.onnx", 2.0 if variant == "baseline" else 3.0)
        StepResult(step="export", out_dir=str(export), variant=variant, files={"onnx": "model.onnx"},
                   metrics={"size_mb": 0.01}).write()
        evaluate = root / variant / "evaluate"
        evaluate.mkdir(parents=True)
        StepResult(step="evaluate", out_dir=str(evaluate), variant=variant,
                   metrics={"map50_95": accuracy, "map50": accuracy + 0.2}).write()
        bench = root / variant / "benchmark"
        bench.mkdir(parents=True)
        metrics = {"latency_ms_p50": p50, **({"speedup_vs_baseline": speedup} if speedup else {})}
        StepResult(step="benchmark", out_dir=str(bench), variant=variant, metrics=metrics).write()
        folders += [str(export), str(evaluate), str(bench)]
    return folders


def test_report_cli_registers_the_champion(tmp_path, mlflow_server, s3_env):
    from mlflow.tracking import MlflowClient

    folders = _variant_folders(tmp_path / "steps")
    name = f"cli-champion-{tmp_path.name}"
    proc = run_cli("report", "--results", *folders, "--out", str(tmp_path / "report"), "--register-model", name,
                   "--experiment", f"cli-report-{tmp_path.name}", cwd=tmp_path,
                   MLFLOW_TRACKING_URI=mlflow_server.tracking_uri)
    assert proc.returncode == 0, proc.stderr
    assert f"registered: models:/{name}@champion = version 1 (pruned)" in proc.stdout
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    version = client.get_model_version_by_alias(name, "champion")
    assert version.tags["sparsepipe.variant"] == "pruned"
    assert "## Registered model" in (tmp_path / "report" / "report.md").read_text()
    run = client.get_run(version.run_id)
    assert run.data.tags["sparsepipe.champion"] == "pruned" and run.data.tags["sparsepipe.step"] == "report"
    # A tighter budget than the pruned variant's 1 % loss keeps the baseline.
    tight = run_cli("report", "--results", *folders, "--out", str(tmp_path / "report2"), "--register-model", name,
                    "--max-accuracy-drop", "0.005", "--alias", "strict", cwd=tmp_path,
                    MLFLOW_TRACKING_URI=mlflow_server.tracking_uri)
    assert tight.returncode == 0, tight.stderr
    assert client.get_model_version_by_alias(name, "strict").tags["sparsepipe.variant"] == "baseline"


def test_register_without_tracking_is_a_clear_error(tmp_path):
    proc = run_cli("report", "--results", str(tmp_path), "--register-model", "m", "--no-track",
                   "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--register-model m" in proc.stderr and "--no-track" in proc.stderr
    assert not (tmp_path / "r").exists()
