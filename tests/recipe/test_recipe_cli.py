"""``recipe validate`` / ``recipe schedule``: handlers in-process, and the ``python -m`` entry."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import pytest

from recipe_helpers import DATA, RECIPES, REPO
from sparsepipe.errors import RecipeError
from sparsepipe.recipe.cli import add_recipe_commands, main


def parse(argv):
    parser = argparse.ArgumentParser(prog="sparsepipe")
    add_recipe_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    args.stdout = io.StringIO()
    return args


def test_validate_with_model_lists_tensors(monkeypatch):
    from recipe_helpers import build_model
    import sparsepipe.recipe_cli as cli

    monkeypatch.setattr(cli, "_load_model", build_model)
    args = parse(["recipe", "validate", str(RECIPES / "yolov8n-pruned75.yaml"), "--model",
                  "yolov8n.yaml", "--recipe-args", "num_epochs=20"])
    assert args.func(args) == 0
    out = args.stdout.getvalue()
    assert "num_epochs = 20" in out and "total epochs: 100" in out  # pruning ends at 100
    assert "model.2.cv1.conv.weight" in out and "final 0.60" in out and "final 0.80" in out
    assert "OK: the recipe is valid" in out


def test_validate_without_model_and_staged():
    args = parse(["recipe", "validate", str(RECIPES / "yolov8n-pruned75-quant.yaml")])
    assert args.func(args) == 0
    out = args.stdout.getvalue()
    assert "(staged)" in out and "stage quantization_stage (starts at epoch 150)" in out
    assert "total epochs: 160" in out


def test_validate_unknown_override_raises():
    args = parse(["recipe", "validate", str(RECIPES / "yolov8n-pruned50.yaml"),
                  "--recipe-args", '{"num_epoch": 3}'])
    with pytest.raises(RecipeError, match="'num_epoch'"):
        args.func(args)


def test_schedule_prints_and_plots(tmp_path, monkeypatch):
    from recipe_helpers import build_model
    import sparsepipe.recipe_cli as cli

    monkeypatch.setattr(cli, "_load_model", build_model)
    png = tmp_path / "schedule.png"
    args = parse(["recipe", "schedule", str(RECIPES / "yolov8n-quick-test.yaml"), "--model",
                  "yolov8n.yaml", "--steps-per-epoch", "4", "--rows-per-epoch", "4",
                  "--plot", str(png)])
    assert args.func(args) == 0
    lines = args.stdout.getvalue().splitlines()
    assert lines[0].startswith("epoch  lr[g0]")
    row = next(line for line in lines if line.strip().startswith("0.250"))
    assert "0.3102" in row  # cubic sparsity after the update at epoch 0.25
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_texts():
    parser = argparse.ArgumentParser(prog="sparsepipe")
    add_recipe_commands(parser.add_subparsers(dest="command"))
    for argv in (["recipe", "validate", "-h"], ["recipe", "schedule", "-h"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def run_module(*argv):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), YOLO_OFFLINE="true")
    return subprocess.run([sys.executable, "-m", "sparsepipe.recipe.cli", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)


def test_module_entry_yolov5_anchor_head_recipe():
    proc = run_module("validate", str(DATA / "yolov5s-original-repo-pruned.yaml"),
                      "--model", "yolov5s.yaml")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "model.24.m.0.weight" in proc.stderr and "anchor-free" in proc.stderr
    assert "model.24.cv2.0.0.conv.weight" in proc.stderr


def test_main_in_process_error_and_success(capsys):
    assert main(["validate", str(RECIPES / "yolov8n-quick-test.yaml")]) == 0
    assert "total epochs: 2" in capsys.readouterr().out
    assert main(["validate", "no-such-recipe.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err
