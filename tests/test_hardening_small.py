"""The smaller faults of issue 15 (item 12): wrong messages, unreadable results, file modes.

    .venv/bin/python -m pytest tests/test_hardening_small.py -q

Each case runs the real CLI (or the real uvicorn server) and checks the message names the real
problem, exit status 2 and no traceback.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sparsepipe.cli import main
from sparsepipe.results import StepResult


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


# ------------------------------------------------------------------ report on bad results


def test_report_on_a_png_passed_as_a_result(tmp_path, capsys):
    png = tmp_path / "plot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    code, err = _run(["report", "--results", str(png), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and f"{png} is not a sparsepipe result" in err, err


@pytest.mark.parametrize("value", ['"NaN"', "[1, 2]", '{"a": 1}'])
def test_report_on_a_non_numeric_metric(value, tmp_path, capsys):
    out = tmp_path / "bench"
    StepResult(step="benchmark", out_dir=str(out), metrics={"latency_ms_p50": 1.0}).write()
    text = (out / "result.json").read_text().replace('"latency_ms_p50": 1.0', f'"latency_ms_p50": {value}')
    (out / "result.json").write_text(text)
    code, err = _run(["report", "--results", str(out), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "latency_ms_p50" in err and "not a number" in err, err


def test_a_result_that_is_not_an_object(tmp_path, capsys):
    (tmp_path / "result.json").write_text("[1, 2, 3]")
    code, err = _run(["report", "--results", str(tmp_path), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "not a sparsepipe result" in err, err


# ------------------------------------------------------------------ messages that named the wrong problem


def test_folder_passed_as_an_image(tmp_path):
    from sparsepipe.image_input import ImageInputError, load_image

    with pytest.raises(ImageInputError, match="is a folder, not an image file"):
        load_image(tmp_path)


def test_data_yaml_with_a_syntax_error_is_named(tmp_path, capsys):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "data.yaml").write_text("train: images/train\nval: [images/val\nnames: [a]\n")
    code, err = _run(["data", "--source", str(folder), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "not valid YAML" in err and "data.yaml:" in err and "No data YAML" not in err, err


def test_zip_without_a_yaml_names_the_archive(tmp_path, capsys):
    archive = tmp_path / "images-only.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/train/a.jpg", b"x")
    cache = tmp_path / "cache"
    os.environ["SPARSEPIPE_CACHE"], saved = str(cache), os.environ.get("SPARSEPIPE_CACHE")
    try:
        code, err = _run(["data", "--source", str(archive), "--out", str(tmp_path / "out")], capsys)
    finally:
        os.environ["SPARSEPIPE_CACHE"] = saved or ""
    assert code == 2 and str(archive) in err and str(cache) not in err, err


def test_serve_on_a_port_in_use_says_so(tmp_path):
    from test_serve import _bright_cell_model

    model = _bright_cell_model(tmp_path / "bright.onnx")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "sparsepipe", "serve", str(model), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------ modes of what a step writes


def test_outputs_follow_the_umask(tmp_path):
    """Files and folders a step writes are 0644/0755 under umask 022 (tempfile made them 0600/0700)."""
    previous = os.umask(0o022)
    try:
        assert main(["data", "--source", "synthetic:train=2,val=2,size=64", "--out", str(tmp_path / "out")]) == 0
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for name in ("result.json", "data.yaml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert json.loads((out / "result.json").read_text())["step"] == "data"


# ------------------------------------------------------------------ MLflow runs of killed processes


def test_run_of_a_killed_process_is_marked_killed_by_the_next_start(mlflow_server, tmp_path):
    """kill -9 leaves no chance to end the run; the next start on this host (here a pipeline's open_run,
    then a step) ends it as KILLED, and leaves runs of live processes and pipeline parents alone."""
    import uuid

    from mlflow.tracking import MlflowClient

    from sparsepipe.tracking import resolve_tracker

    experiment = f"killed-{uuid.uuid4().hex[:8]}"
    victim = ("import os, sys; from sparsepipe.tracking import resolve_tracker; "
              f"t = resolve_tracker({experiment!r}, 'victim', tracking_uri={mlflow_server.tracking_uri!r}); "
              "print(t.run_id, flush=True); os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", victim], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -9, proc.stderr
    killed_id = proc.stdout.split()[0]
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    assert client.get_run(killed_id).info.status == "RUNNING"
    opener = ("import json; from sparsepipe.kfp_support import open_run; "
              f"print(json.loads(open_run(experiment={experiment!r}, tracking_uri={mlflow_server.tracking_uri!r}, "
              "kfp_run_id='kfp-1'))['parent_run_id'])")
    proc = subprocess.run([sys.executable, "-c", opener], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    pipeline_parent = proc.stdout.split()[-1]  # left RUNNING on purpose for close_run, by a process now gone
    with resolve_tracker(experiment, "next", tracking_uri=mlflow_server.tracking_uri) as live:
        killed = client.get_run(killed_id)
        assert killed.info.status == "KILLED" and "sparsepipe.ended_by" in killed.data.tags
        assert client.get_run(live.run_id).info.status == "RUNNING"  # a live process's run is left alone
        assert client.get_run(pipeline_parent).info.status == "RUNNING"  # a pipeline's parent waits for close_run
        with resolve_tracker(experiment, "second", tracking_uri=mlflow_server.tracking_uri):
            assert client.get_run(live.run_id).info.status == "RUNNING"
