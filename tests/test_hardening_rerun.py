"""A re-run refused for bad input leaves a good --out folder exactly as it was (issue 15, item 6).

    .venv/bin/python -m pytest tests/test_hardening_rerun.py -q

Steps used to delete ``result.json`` first thing (``begin_step``), so ``export --model random.pt
--out <good export>`` destroyed a finished export before refusing the model. Now a step checks
its arguments first and claims the folder (``results.claim_out``) only right before it writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsepipe.cli import main
from sparsepipe.results import StepResult

DATA = "synthetic:train=2,val=2,size=64"


def _good_folder(out: Path, step: str) -> dict[Path, bytes]:
    out.mkdir(parents=True)
    (out / "model.onnx").write_bytes(b"not touched")
    StepResult(step=step, out_dir=str(out), files={"onnx": str(out / "model.onnx")}, metrics={"map50": 0.5}).write()
    return _snapshot(out)


def _snapshot(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("step,argv", [
    ("export", ["export", "--model", "{random}", "--no-track"]),
    ("export", ["export", "--model", "{dir}/missing.pt", "--no-track"]),
    ("train", ["train", "--model", "{dir}/bad.yaml", "--data", DATA, "--epochs", "1", "--imgsz", "64", "--no-track"]),
    ("train", ["train", "--model", "yolov8n.yaml", "--data", "{dir}/nothing-here", "--epochs", "1", "--no-track"]),
    ("sparsify", ["sparsify", "--model", "yolov8n.yaml", "--data", DATA, "--recipe", "{dir}/missing.yaml",
                  "--no-track"]),
    ("sparsify", ["sparsify", "--resume", "--no-track"]),
    ("benchmark", ["benchmark", "--model", "{dir}/missing.onnx", "--no-track"]),
    ("benchmark", ["benchmark", "--model", "{random}", "--no-track"]),
    ("quantize", ["quantize", "--model", "{dir}/missing.onnx", "--data", DATA, "--no-track"]),
    ("quantize", ["quantize", "--method", "qat", "--model", "{dir}/missing.pt", "--data", DATA, "--recipe",
                  "{dir}/missing.yaml", "--no-track"]),
    ("quantize", ["quantize", "--method", "qat", "--model", "yolov8n.yaml", "--data", DATA, "--no-track"]),
])
def test_refused_rerun_leaves_a_good_folder_unchanged(step, argv, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SPARSEPIPE_TRUST_CHECKPOINT", raising=False)
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "bad.yaml").write_text("backbone: [[-1, 1, torch_load, ['x']]]\nhead: []\n")
    out = tmp_path / "good"
    before = _good_folder(out, step)
    args = [a.replace("{random}", str(tmp_path / "random.pt")).replace("{dir}", str(tmp_path)) for a in argv]
    code = main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert _snapshot(out) == before, "the refused re-run changed the good folder"


def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("keep")
    code = main(["export", "--model", "yolov8n.yaml", "--no-track", "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and "is an existing file" in err and "Traceback" not in err, err
    assert target.read_text() == "keep"
