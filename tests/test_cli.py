"""The command line: help for every step, and user errors without tracebacks.

    .venv/bin/python -m pytest tests/test_cli.py
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

STEPS = ["data", "train", "export", "evaluate", "benchmark", "report", "demo"]


def run_cli(*args, cwd=None):
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    return subprocess.run(
        [sys.executable, "-m", "sparsepipe", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def assert_clean_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "error:" in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_top_level_help_lists_every_step():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for step in STEPS:
        assert step in proc.stdout


@pytest.mark.parametrize("step", STEPS)
def test_each_step_has_help_with_out(step):
    proc = run_cli(step, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--out" in proc.stdout


def test_unknown_model_name(tmp_path, tiny_data):
    proc = run_cli("train", "--model", "yolov8q.yaml", "--data", str(tiny_data), "--out", str(tmp_path / "t"), "--no-track")
    assert_clean_error(proc, "yolov8q.yaml", "yolov8n.yaml")


def test_export_of_nonexistent_checkpoint(tmp_path):
    proc = run_cli("export", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "e"), "--no-track")
    assert_clean_error(proc, "missing.pt", "does not exist")


def test_missing_data_yaml(tmp_path):
    proc = run_cli("data", "--source", str(tmp_path / "nowhere" / "data.yaml"), "--out", str(tmp_path / "d"))
    assert_clean_error(proc, "nowhere")


def test_label_with_class_99(tmp_path, tiny_data):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    label = sorted((broken / "labels" / "train").glob("*.txt"))[0]
    label.write_text("99 0.5 0.5 0.2 0.2\n")
    proc = run_cli("data", "--source", str(broken), "--out", str(tmp_path / "d"))
    assert_clean_error(proc, label.name, "99")


def test_corrupt_jpeg(tmp_path, tiny_data):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    image = sorted((broken / "images" / "val").glob("*.jpg"))[0]
    image.write_bytes(image.read_bytes()[:200])
    proc = run_cli("data", "--source", str(broken), "--out", str(tmp_path / "d"))
    assert_clean_error(proc, image.name)


def test_bad_config_value_is_clear(tmp_path):
    proc = run_cli("benchmark", "--model", "x.onnx", "--threads", "0", "--out", str(tmp_path / "b"), "--no-track")
    assert_clean_error(proc, "threads")
