"""Channel pruning: split-free C2f, the modifier's validation, and real pruned training runs.

    .venv/bin/python -m pytest tests/test_channel_pruning.py

The training tests prune the session's tiny trained YOLOv8n (``trained`` fixture, 64 px) with
``recipes/yolov8n-channels-quick-test.yaml`` stretched to 3 epochs (steps at epochs 1 and 2),
killing the first run after epoch 1 and resuming it, so every later assertion is about a
checkpoint that went through a kill, a resume and two pruning steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsepipe.channel_pruning import (
    channel_ratio,
    channel_table,
    is_splitfree,
    macs_and_params,
)
from sparsepipe.errors import SparsepipeError
from sparsepipe.modifiers.channel_pruning import ChannelPruningModifier
from sparsepipe.recipe import load_recipe_string, validate_recipe
from sparsepipe.recipe.errors import RecipeError
from sparsepipe.recipe_session import checkpoint_state
from sparsepipe.results import read_result
from sparsepipe.sparsify import SparsifyConfig, sparsify
from sparsepipe.splitfree import SplitFreeC2f, to_splitfree

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "recipes" / "yolov8n-channels-quick-test.yaml"
ARGS = "num_epochs=3,prune_start_epoch=0,prune_end_epoch=2,prune_update_frequency=1"
RATIO = 0.5  # the quick-test recipe's channel_ratio
CONFIG = dict(imgsz=64, batch=8, workers=0, plots=False)
# Tolerances. Channels: round_to=8 on 16-channel layers moves the achieved ratio a little.
# MACs and parameters: a layer losing r of its inputs and outputs keeps (1 - r)**2 of both.
RATIO_TOL = 0.05
KEPT_TOL = 0.05
ONNX_ATOL = 1e-3  # FP32 ONNX (conv+bn fused by the exporter) vs the torch checkpoint, on 0..64 px boxes / 0..1 scores


def _model(path: Path) -> torch.nn.Module:
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).float().eval()  # last.pt holds the EMA, model.pt the model


# ------------------------------------------------------------------------------ split-free C2f
@pytest.mark.parametrize("config", ["yolov8n.yaml", "yolo11n.yaml"])
def test_splitfree_blocks_compute_exactly_the_same_outputs(config):
    from ultralytics import YOLO

    model = YOLO(config).model.eval()
    for m in model.modules():  # non-trivial batch-norm statistics, so the halves must carry them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)[0]
        swapped = to_splitfree(model)
        after = model(x)[0]
    assert swapped == 8  # YOLOv8n has 8 C2f blocks, YOLO11n 8 C3k2
    assert is_splitfree(model) and sum(isinstance(m, SplitFreeC2f) for m in model.modules()) == 8
    assert torch.equal(before, after)


def test_ratios_and_ignore_are_honoured_one_shot():
    from ultralytics.nn.tasks import DetectionModel

    from sparsepipe.channel_pruning import always_ignored, prune_to

    model = DetectionModel("yolov8n.yaml", nc=6, verbose=False).eval()
    to_splitfree(model)
    mod = ChannelPruningModifier(target_ratio=0.5, start_epoch=0, end_epoch=0, ratios={"model.0": 0.25},
                                 ignore=["model.4.cv2"], round_to=None)
    prune_to(model, mod, 1.0)
    table = channel_table(model)
    assert table["model.0.conv"] == {"original": 16, "channels": 12}
    assert table["model.4.cv2.conv"]["channels"] == table["model.4.cv2.conv"]["original"] == 64
    assert table["model.7.conv"] == {"original": 256, "channels": 128}
    for name, _ in always_ignored(model):  # head outputs keep their meaning
        if name in table:
            assert table[name]["channels"] == table[name]["original"], name
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64))[0].shape[1] == 4 + 6  # decoded boxes + 6 class scores


@pytest.mark.slow
def test_yolo11n_prunes_one_shot_with_its_attention_block_kept():
    from ultralytics import YOLO

    from sparsepipe.channel_pruning import prune_to

    model = YOLO("yolo11n.yaml").model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        shape = model(x)[0].shape
    to_splitfree(model)
    macs0, _ = macs_and_params(model, 64)
    psa = {n: m.cv1.conv.out_channels for n, m in model.named_modules() if type(m).__name__ == "C2PSA"}
    prune_to(model, ChannelPruningModifier(target_ratio=0.5, start_epoch=0, end_epoch=0), 1.0)
    with torch.no_grad():
        assert model(x)[0].shape == shape
    assert macs_and_params(model, 64)[0] / macs0 < 0.4
    assert {n: model.get_submodule(n).cv1.conv.out_channels for n in psa} == psa


# ------------------------------------------------------------------------------ the modifier
def test_schedule_steps_and_ratios():
    mod = ChannelPruningModifier(target_ratio=0.5, start_epoch=2, end_epoch=8, update_frequency=2)
    assert mod.step_epochs() == [4.0, 6.0, 8.0]
    assert [mod.steps_due(e) for e in (3.9, 4.0, 7.5, 8.0, 20)] == [0, 1, 2, 3, 3]
    ratios = [mod.ratio_at_step(k) for k in range(4)]
    assert ratios[0] == 0 and ratios[-1] == pytest.approx(0.5)
    assert ratios[1] == pytest.approx(0.5 * (1 - (2 / 3) ** 3))  # cubic ramp, like GMP
    one_shot = ChannelPruningModifier(target_ratio=0.3, start_epoch=5, end_epoch=5)
    assert one_shot.step_epochs() == [5.0] and one_shot.ratio_at_step(1) == pytest.approx(0.3)


def _recipe(fields: str, extra: str = "") -> str:
    return textwrap.dedent("""\
        version: 1.1.0
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 4
          - !ChannelPruningModifier
        """) + textwrap.indent(textwrap.dedent(fields), "    ") + textwrap.indent(textwrap.dedent(extra), "  ")


@pytest.mark.parametrize("fields, named", [
    ("target_ratio: 1.2\nstart_epoch: 0\nend_epoch: 2\n", "target_ratio"),
    ("target_ratio: 0.5\nratios: {'re:^model\\.2\\.': 0.99}\nstart_epoch: 0\nend_epoch: 2\n", "ratios"),
    ("target_ratio: 0.5\nstart_epoch: 3\nend_epoch: 1\n", "start_epoch"),
    ("target_ratio: 0.5\nstart_epoch: 0\nend_epoch: 2\nupdate_frequency: 0\n", "update_frequency"),
    ("target_ratio: 0.5\nstart_epoch: 0\nend_epoch: 2\nround_to: 0\n", "round_to"),
    ("target_ratio: 0.5\nstart_epoch: 0\nend_epoch: 2\nimportance: taylor2\n", "importance"),
    ("target_ratio: 0.5\nstart_epoch: 0\nend_epoch: 2\nignore: ['re:(']\n", "ignore"),
    ("target_ratio: 0.5\nstart_epoch: 0\nend_epoch: 2\ntarget_sparsity: 0.5\n", "target_sparsity"),
    ("start_epoch: 0\nend_epoch: 2\n", "target_ratio"),
])
def test_bad_fields_fail_at_load_naming_the_field(fields, named):
    with pytest.raises(RecipeError, match=f"ChannelPruningModifier.*{named}"):
        load_recipe_string(_recipe(fields), source="bad.yaml")


def test_recipe_checks_against_the_model():
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml").model
    ok = load_recipe_string(_recipe("target_ratio: 0.3\nstart_epoch: 0\nend_epoch: 2\n"
                                    "ignore: ['model.2.cv1', 're:^model\\.22\\.']\nratios: {'model.9': 0.1}\n"))
    validate_recipe(ok, model)  # cv1 of a C2f names both halves of its split-free form
    missing = load_recipe_string(_recipe("target_ratio: 0.3\nstart_epoch: 0\nend_epoch: 2\nignore: ['model.99']\n"))
    with pytest.raises(SparsepipeError, match="ignore 'model.99' matches no module"):
        validate_recipe(missing, model)
    early_gmp = load_recipe_string(_recipe("target_ratio: 0.3\nstart_epoch: 0\nend_epoch: 2\n", """\
          - !GMPruningModifier
            params: __ALL_PRUNABLE__
            final_sparsity: 0.5
            start_epoch: 1
            end_epoch: 3
        """))
    with pytest.raises(SparsepipeError, match="GMPruningModifier starts at epoch 1, before !ChannelPruningModifier ends"):
        validate_recipe(early_gmp, model)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("yolov8n-channels*.yaml")))
def test_shipped_recipes_shorten_with_num_epochs(name):
    from sparsepipe.recipe import load_recipe

    full, short = load_recipe(ROOT / "recipes" / name), load_recipe(ROOT / "recipes" / name, recipe_args={"num_epochs": 6})
    assert short.num_epochs == 6 and (full.num_epochs >= 60 or "quick-test" in name)
    assert all(e <= 6 for m in short.modifiers for e in m.epochs_used())


# ------------------------------------------------------------------------------ real pruned training
CRASH = textwrap.dedent("""
    import os, signal, sys
    from sparsepipe.sparsify import sparsify, SparsifyConfig
    def crash(trainer):
        if trainer.epoch == 1:  # second epoch (after pruning step 1 and its checkpoint): die like kill -9
            os.kill(os.getpid(), signal.SIGKILL)
    sparsify(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], SparsifyConfig(imgsz=64, batch=8, workers=0,
             plots=False), recipe_args=sys.argv[5], callbacks={"on_train_batch_end": [crash]})
""")


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory):
    """The quick-test recipe over 3 epochs, killed during epoch 2 and resumed; (result, state at the kill)."""
    out = tmp_path_factory.mktemp("channels") / "pruned"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(trained.train_dir), str(trained.data_dir), str(QUICK),
                           str(out), ARGS], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == -9, proc.stderr[-3000:]
    last = out / "ultralytics" / "weights" / "last.pt"
    killed = {"state": checkpoint_state(last), "ratio": channel_ratio(_model(last))}
    seen: list[dict] = []

    def check(trainer):  # after every batch: optimizer and EMA hold exactly the live parameters
        model = trainer.model
        live = {id(p) for p in model.parameters()}  # ultralytics' optimizer also holds the frozen DFL weight
        in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        ema_shapes = [tuple(p.shape) for p in trainer.ema.ema.parameters()]
        seen.append({"epoch": trainer.epoch, "optimizer_ok": live == in_opt, "lr": trainer.optimizer.param_groups[0]["lr"],
                     "ema_ok": ema_shapes == [tuple(p.shape) for p in model.parameters()],
                     "channels": sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))})

    result = sparsify(str(trained.train_dir), str(trained.data_dir), None, out, SparsifyConfig(**CONFIG), resume=True,
                      callbacks={"on_train_batch_end": [check]})
    return result, {**killed, "seen": seen}


def test_killed_run_resumes_with_its_pruned_architecture(pruned):
    result, killed = pruned
    assert killed["state"]["channel_pruning"]["steps_done"] == 1
    assert 0 < killed["ratio"] < RATIO * 0.95  # step 1 of 2 (cubic: 0.875 of the way)
    state = checkpoint_state(result.path("weights"))
    assert state["channel_pruning"]["steps_done"] == 2 and state["finished"]
    assert read_result(result.out_dir).config["resume"] is True
    seen = killed["seen"]  # the resumed run pruned again (step 2 at epoch 2) and kept training
    assert seen and all(row["optimizer_ok"] and row["ema_ok"] for row in seen)
    assert seen[0]["channels"] > seen[-1]["channels"]  # channels removed at step 2, mid-run
    assert all(row["lr"] > 0 for row in seen)


def test_pruned_checkpoint_has_fewer_channels_params_and_macs(pruned, trained):
    result, _ = pruned
    base, model = _model(trained.train_dir / "model.pt"), _model(result.path("weights"))
    base_macs, base_params = macs_and_params(base, 64)
    macs, params = macs_and_params(model, 64)
    assert channel_ratio(model) == pytest.approx(RATIO, abs=RATIO_TOL)
    kept = (1 - RATIO) ** 2
    assert params / base_params == pytest.approx(kept, abs=KEPT_TOL)
    assert macs / base_macs == pytest.approx(kept, abs=KEPT_TOL)
    metrics = result.metrics
    assert metrics["params"] == params and metrics["gmacs"] == pytest.approx(macs / 1e9, rel=1e-3)
    assert metrics["channel_ratio"] == pytest.approx(channel_ratio(model), abs=1e-4)
    assert "map50_95" in metrics  # ultralytics validated the pruned checkpoint (evaluate step)
    table = result.path("channels").read_text()
    assert '"model.2.cv1a.conv"' in table and '"original": 16' in table


def test_pruned_checkpoint_reloads_and_trains_without_yaml_rebuild(pruned, trained, tmp_path):
    from sparsepipe.models import load_yolo
    from sparsepipe.training import TrainConfig, train

    result, _ = pruned
    reloaded = load_yolo(str(result.path("weights")))
    assert is_splitfree(reloaded.model)
    before = channel_table(reloaded.model)
    again = train(str(result.out_dir), str(trained.data_dir), tmp_path / "again",
                  TrainConfig(epochs=1, imgsz=64, batch=8, workers=0, plots=False))
    after_model = _model(again.path("weights"))
    assert channel_table(after_model) == before  # not rebuilt from yolov8n.yaml
    assert again.metrics["params"] == result.metrics["params"]
    assert "map50_95" in again.metrics  # ultralytics' own final validation ran on it


def test_pruned_checkpoint_refuses_data_with_other_classes(pruned, tmp_path):
    from sparsepipe.training import TrainConfig, train

    result, _ = pruned
    with pytest.raises(SparsepipeError, match="predicts 6 classes but the data set has 3"):
        train(str(result.out_dir), "synthetic:train=8,val=4,size=64,classes=3,seed=5", tmp_path / "other",
              TrainConfig(epochs=1, imgsz=64, batch=4, workers=0, plots=False))


def test_pruned_onnx_matches_torch(pruned, tmp_path):
    import onnxruntime as ort

    from sparsepipe.export import ExportConfig, export_onnx

    result, _ = pruned
    exported = export_onnx(str(result.out_dir), tmp_path / "export", ExportConfig(imgsz=64))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = _model(result.path("weights"))(x)[0].numpy()
    session = ort.InferenceSession(str(exported.path("onnx")), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ONNX_ATOL, rtol=1e-3)


@pytest.mark.slow
def test_channels_then_gmp_then_qat_exports_int8(trained, tmp_path):
    """The combination recipe, shortened: channel pruning, GMP on the smaller model, QAT, INT8 ONNX."""
    import onnx

    from sparsepipe.export import ExportConfig, export_onnx

    recipe = ROOT / "recipes" / "yolov8n-channels30-pruned70-quant.yaml"
    result = sparsify(str(trained.train_dir), str(trained.data_dir), str(recipe), tmp_path / "combo",
                      SparsifyConfig(**CONFIG), recipe_args="num_epochs=8")
    assert result.metrics["channel_ratio"] == pytest.approx(0.3, abs=RATIO_TOL)
    assert result.metrics["sparsity"] == pytest.approx(0.7, abs=1e-3)  # masks resolved on the pruned shapes
    exported = export_onnx(str(result.out_dir), tmp_path / "export", ExportConfig(imgsz=64))
    graph = onnx.load(str(exported.path("onnx"))).graph
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) > 20 and any(n.op_type == "DequantizeLinear" for n in graph.node)  # INT8 QDQ convs
