"""The sparsify step: recipes applied inside real ultralytics training on tiny generated data.

    .venv/bin/python -m pytest tests/test_sparsify.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper

from sparsepipe.errors import SparsepipeError
from sparsepipe.export import ExportConfig, export_onnx
from sparsepipe.recipe import load_recipe
from sparsepipe.recipe_session import checkpoint_state
from sparsepipe.results import read_result
from sparsepipe.sparsify import SparsifyConfig, sparsify

HERE = Path(__file__).parent / "sparsify"
PRUNE = HERE / "prune-quick.yaml"
CONFIG = dict(imgsz=64, batch=8, workers=0, plots=False)


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    model = torch.load(str(path), map_location="cpu", weights_only=False)["model"]
    return {name: p.detach().float() for name, p in model.named_parameters()}


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory):
    """The trained tiny model pruned to 50% in 2 epochs; LR of group 0 recorded every batch."""
    lrs: list[tuple[float, float]] = []
    out = tmp_path_factory.mktemp("sparsify") / "pruned"

    def record(trainer):
        lrs.append((trainer.epoch, trainer.optimizer.param_groups[0]["lr"]))

    result = sparsify(str(trained.train_dir), str(trained.data_dir), str(PRUNE), out, SparsifyConfig(**CONFIG),
                      callbacks={"on_train_batch_end": [record]})
    return result, lrs


def test_every_target_has_the_recipe_sparsity_in_the_saved_checkpoint(pruned):
    result, _ = pruned
    targets = result.extra["targets"]
    assert len(targets) > 30 and set(targets.values()) == {0.5}
    weights = weights_of(result.path("weights"))  # the EMA copy ultralytics saved, in half precision
    for name, final in targets.items():
        tensor = weights[name]
        assert abs(zeros(tensor) - round(final * tensor.numel())) <= 1, name
    # Untargeted tensors stay dense: the stem, the Detect head.
    for name in ("model.0.conv.weight", "model.22.cv2.0.0.conv.weight", "model.22.cv3.2.2.weight"):
        assert name not in targets
        assert zeros(weights[name]) <= 1, name
    assert result.metrics["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert 0.2 < result.metrics["sparsity_all_weights"] < 0.5
    table = json.loads(result.path("sparsity").read_text())
    assert table["model.2.cv1.conv.weight"]["target"] == 0.5
    assert result.path("sparsity_chart").read_bytes()[:4] == b"\x89PNG"


def test_last_pt_carries_recipe_state(pruned):
    result, _ = pruned
    state = checkpoint_state(result.path("weights"))
    assert state["finished"] is True
    assert state["epoch"] == pytest.approx(2.0)
    assert load_recipe(str(PRUNE)).to_yaml() == state["recipe"]
    assert state["masks"]["last_update"][0] == pytest.approx(1.5)  # the end_epoch update


def test_exported_onnx_keeps_the_zeros(pruned, tmp_path):
    result, _ = pruned
    weights = weights_of(result.path("weights"))
    onnx_path = export_onnx(str(result.out_dir), tmp_path / "onnx", ExportConfig(imgsz=64)).path("onnx")
    inits = [numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer]
    conv_inits = [a for a in inits if a.ndim == 4]
    # Batch norm is folded into the convs on export (w * gamma / sigma): a zero stays zero.
    for name, final in result.extra["targets"].items():
        shape, want = tuple(weights[name].shape), round(final * weights[name].numel())
        candidates = [a for a in conv_inits if a.shape == shape and abs(int((a == 0).sum()) - want) <= 1]
        assert candidates, f"{name}: no ONNX conv weight of shape {shape} with {want} zeros"


def test_recipe_lr_replaces_ultralytics_schedule_without_warmup(pruned):
    _, lrs = pruned
    batches = len(lrs) // 2
    assert batches >= 2
    for i, (_, lr) in enumerate(lrs):
        epoch = i / batches  # the LR was set at the start of batch i
        assert lr == pytest.approx(0.01 + (epoch / 2) * (0.002 - 0.01), rel=1e-6), i


def test_sparse_transfer_keeps_exact_positions(pruned, tmp_path):
    result, _ = pruned
    recipe = tmp_path / "transfer.yaml"
    recipe.write_text(textwrap.dedent("""
        num_epochs: 1
        training_modifiers:
          - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(num_epochs)}
        pruning_modifiers:
          - !ConstantPruningModifier
            params: ['re:^((?!dfl).)*$']
            start_epoch: 0.0
            end_epoch: -1
    """))
    new_data = "synthetic:train=16,val=8,size=128,seed=11"  # "new" data: another seed
    transferred = sparsify(str(result.out_dir), new_data, str(recipe), tmp_path / "transfer",
                           SparsifyConfig(**CONFIG, variant="transfer"))
    before, after = weights_of(result.path("weights")), weights_of(transferred.path("weights"))
    changed = 0
    for name in result.extra["targets"]:
        assert torch.equal(before[name] == 0, after[name] == 0), name
        changed += int(not torch.equal(before[name], after[name]))
    assert changed > 0  # it did train: non-zero weights moved


CRASH = textwrap.dedent("""
    import os, signal, sys
    from sparsepipe.sparsify import sparsify, SparsifyConfig
    def crash(trainer):
        if trainer.epoch == 1:  # second epoch, first batch: die like kill -9 would
            os.kill(os.getpid(), signal.SIGKILL)
    sparsify(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4],
             SparsifyConfig(imgsz=64, batch=8, workers=0, plots=False), callbacks={"on_train_batch_end": [crash]})
""")


def test_killed_run_resumes_to_the_same_sparsities(pruned, trained, tmp_path):
    result, _ = pruned
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(trained.train_dir), str(trained.data_dir), str(PRUNE), str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (out / "result.json").exists() and not (out / "model.pt").exists()
    state = checkpoint_state(out / "ultralytics" / "weights" / "last.pt")
    assert state["epoch"] == pytest.approx(1.0)

    # resumed from the CLI with none of the original flags (issue 15: the defaults, a generated set at
    # 320 px, used to end up in the final evaluation and result.json)
    from sparsepipe.cli import main

    assert main(["sparsify", "--resume", "--out", str(out), "--no-track", "--workers", "0"]) == 0
    resumed = read_result(out)
    want, got = weights_of(result.path("weights")), weights_of(resumed.path("weights"))
    for name in result.extra["targets"]:
        assert zeros(got[name]) == zeros(want[name]), name
    assert resumed.metrics["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert resumed.config["data"] == str(trained.data_dir) and resumed.config["model"] == str(trained.train_dir)
    assert resumed.config["imgsz"] == 64 and resumed.config["recipe"] is None and resumed.config["resume"] is True
    assert Path(resumed.files["data_yaml"]) == Path(result.files["data_yaml"])


def test_resume_of_a_finished_run_changes_nothing(pruned, tmp_path, monkeypatch, capsys):
    import shutil

    from sparsepipe.cli import main

    result, _ = pruned
    out = tmp_path / "done"
    shutil.copytree(result.out_dir, out)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)  # ultralytics used to start a new training into ./runs/detect/train
    assert main(["sparsify", "--resume", "--out", str(out), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert "Nothing to resume" in err and "complete" in err and "Traceback" not in err, err
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not (tmp_path / "runs").exists()


def test_bad_inputs_fail_before_training(trained, tmp_path):
    missing = tmp_path / "missing.yaml"
    missing.write_text(PRUNE.read_text().replace("re:^model", "re:^backbone"))
    with pytest.raises(SparsepipeError, match="matches no parameter"):
        sparsify(str(trained.train_dir), str(trained.data_dir), str(missing), tmp_path / "a", SparsifyConfig(**CONFIG))
    assert not (tmp_path / "a" / "ultralytics").exists()

    with pytest.raises(SparsepipeError, match="no sparsepipe recipe state|does not exist"):
        sparsify(str(trained.train_dir), str(trained.data_dir), None, tmp_path / "b", SparsifyConfig(**CONFIG), resume=True)

    with pytest.raises(SparsepipeError, match="needs 2 epochs but the budget"):
        sparsify(str(trained.train_dir), str(trained.data_dir), str(PRUNE), tmp_path / "c", SparsifyConfig(**CONFIG, max_epochs=1))

    with pytest.raises(SparsepipeError, match="num_epochz"):
        sparsify(str(trained.train_dir), str(trained.data_dir), str(PRUNE), tmp_path / "d", SparsifyConfig(**CONFIG),
                 recipe_args="num_epochz=3")


def test_resume_from_a_checkpoint_without_state(trained, tmp_path):
    weights = tmp_path / "r" / "ultralytics" / "weights"
    weights.mkdir(parents=True)
    (weights / "last.pt").write_bytes((trained.train_dir / "model.pt").read_bytes())
    with pytest.raises(SparsepipeError, match="no sparsepipe recipe state"):
        sparsify(str(trained.train_dir), str(trained.data_dir), None, tmp_path / "r", SparsifyConfig(**CONFIG), resume=True)


@pytest.mark.parametrize(
    ("model", "data"),
    [
        ("yolo11n.yaml", "synthetic:train=8,val=4,size=96,seed=2"),
        ("yolov5nu.yaml", "synthetic:train=8,val=4,size=96,seed=2"),
        ("yolov8n-seg.yaml", "synthetic:train=8,val=4,size=96,seed=2,task=segment"),
    ],
)
def test_other_families_and_segmentation(model, data, tmp_path):
    result = sparsify(model, data, str(HERE / "prune-any-family.yaml"), tmp_path / "s",
                      SparsifyConfig(imgsz=64, batch=4, workers=0, plots=False))
    weights = weights_of(result.path("weights"))
    assert result.extra["targets"]
    for name in result.extra["targets"]:
        assert abs(zeros(weights[name]) - round(0.3 * weights[name].numel())) <= 1, name
    if "seg" in model:
        assert "mask_map50_95" in result.metrics
