"""Quantization-aware training from recipes, exported to INT8 QDQ ONNX (real tiny training).

    .venv/bin/python -m pytest tests/test_qat.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from sparsepipe.errors import SparsepipeError
from sparsepipe.qat import AddInput, FakeQuant, QATConfig, QATConv, convert_for_export, optimized_graph_ops, qat
from sparsepipe.recipe_session import checkpoint_state

HERE = Path(__file__).parent / "sparsify"
PRUNE_QAT = HERE / "qat-prune-current.yaml"
LEGACY = HERE / "qat-legacy.yaml"
CONFIG = dict(imgsz=64, batch=8, workers=0, plots=False)


def ckpt_model(path: Path) -> torch.nn.Module:
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).float().eval()


@pytest.fixture(scope="module")
def run(trained, tmp_path_factory):
    """The trained tiny model: GMP to 50% during epoch 0, then QAT (current dialect) in epoch 1."""
    out = tmp_path_factory.mktemp("qat") / "prune-qat"
    return qat(str(trained.train_dir), str(trained.data_dir), str(PRUNE_QAT), out, QATConfig(**CONFIG))


def test_qat_onnx_runs_integer_conv_kernels(run):
    path = run.path("int8_onnx")
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "BatchNormalization" not in ops
    opt = optimized_graph_ops(path)
    # yolov8n has 57 conv+bn+act blocks: all integer; 7 plain head convs (6 box/class outputs + DFL) stay float
    assert opt["int8_conv_nodes"] == 57 and opt["float_conv_nodes"] == 7
    assert opt["stray_dq_conv"] == []  # no DequantizeLinear -> float Conv left on the hot path
    # one integer path: SiLU, residual adds, concats, pooling run as integer ops between the convs
    assert opt["float_hot_path"] == [] and run.metrics["float_hot_path_ops"] == 0
    assert opt["ops"]["QLinearSigmoid"] == opt["ops"]["QLinearMul"] == 57 and opt["ops"]["QLinearAdd"] == 6
    assert run.metrics["int8_conv_nodes"] == 57
    assert 0 < run.metrics["size_gz_mb"] < run.metrics["size_mb"] < 4.0  # int8 weights: ~1/4 of fp32 yolov8n
    assert set(run.files) >= {"int8_onnx", "weights"}


def test_ultralytics_validates_the_int8_onnx(run):
    # mAP measured through the ONNX file by ultralytics' validator (AutoBackend + onnxruntime)
    assert 0.0 <= run.metrics["map50_95"] <= 1.0 and 0.0 <= run.metrics["map50"] <= 1.0
    assert Path(run.out_dir, "evaluate", "result.json").is_file()


def test_trained_int8_onnx_matches_its_fake_quant_model(run):
    import onnxruntime as ort

    model = ckpt_model(run.path("weights"))
    assert sum(isinstance(m, QATConv) for m in model.modules()) == 57
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))[0].numpy()
        converted = convert_for_export(model)(torch.from_numpy(x))[0].numpy()
    session = ort.InferenceSession(str(run.path("int8_onnx")), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    # conversion (BN folded with running statistics, scales fixed) is the same arithmetic in float
    np.testing.assert_allclose(converted, ref, rtol=0, atol=1e-4)
    # outputs are boxes in pixels and class probabilities: 99% of boxes within 1 px, probabilities
    # within 0.02 (this 2-epoch tiny model's head is nearly constant, so it matches almost exactly;
    # the layer-wise bound on a model with lively activations is the next test)
    boxes, probs = np.abs(got[:, :4] - ref[:, :4]), np.abs(got[:, 4:] - ref[:, 4:])
    assert np.quantile(boxes, 0.99) < 1.0 and np.quantile(probs, 0.99) < 0.02


def _export_fresh(folder: Path, modifier) -> tuple[torch.nn.Module, str]:
    """yolov8n (random init) prepared, observers and BN statistics calibrated on 4 random batches,
    exported through ultralytics' exporter; returns (fake-quant reference in eval mode, ONNX path)."""
    import copy

    from ultralytics import YOLO

    from sparsepipe.qat import int8_initializers, prepare_qat_, set_qat_state

    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    for bn in yolo.model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = 1.0  # running statistics = the last batch: activations of a sane size
    prepare_qat_(yolo.model, modifier)
    set_qat_state(yolo.model, active=True, observers_frozen=False, bn_frozen=False)
    yolo.model.train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(4):
            yolo.model(torch.rand(4, 3, 64, 64, generator=generator))
    set_qat_state(yolo.model, active=True, observers_frozen=True, bn_frozen=True)
    reference = copy.deepcopy(yolo.model).eval()
    convert_for_export(yolo.model)
    cwd = os.getcwd()
    os.chdir(folder)  # ultralytics writes the export of a YAML-built model into the working directory
    try:
        path = yolo.export(format="onnx", imgsz=64, opset=17, simplify=False, device="cpu")
    finally:
        os.chdir(cwd)
    assert int8_initializers(Path(folder, path)) == 57
    return reference, str(Path(folder, path))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    from sparsepipe.modifiers.quantization import QuantizationModifier

    return _export_fresh(tmp_path_factory.mktemp("fresh"), QuantizationModifier(ignore=["model.22.dfl.conv"]))


def test_onnx_matches_the_fake_quant_torch_model(fresh):
    """Tolerances (measured on this random-init net, 4 inputs):

    * The first layers differ from torch by at most one quantization step of their conv-output
      quantizer (times SiLU's largest slope, 1.1) in under 1% of the values: torch rounds
      ``x * (1/scale)``, onnxruntime ``x / scale`` and QLinearConv requantizes an exact int32 sum,
      so a value on a rounding boundary can land one step away.
    * Such flips spread through the untrained network (gain > 1 per layer), so the end is compared
      statistically: RMS error of the boxes relative to their spread. Without graph optimizations
      (QuantizeLinear/DequantizeLinear/Conv in float, the reference meaning of the QDQ graph)
      measured 0-2% (< 5% asserted); with integer kernels 4-8% (< 15% asserted). The trained
      model's outputs are compared in ``test_trained_int8_onnx_matches_its_fake_quant_model``.
    """
    import onnxruntime as ort

    reference, path = fresh
    model = onnx.load(path)
    for k in (0, 1):  # SiLU outputs: observing them does not stop the conv before from fusing
        model.graph.output.append(onnx.helper.make_tensor_value_info(f"/model.{k}/act/Mul_output_0",
                                                                     onnx.TensorProto.FLOAT, None))
    feats = {}
    for k in (0, 1):
        reference.model[k].register_forward_hook(lambda m, i, o, k=k: feats.__setitem__(k, o.numpy()))
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = {"qdq-float": (ort.InferenceSession(model.SerializeToString(), plain, providers=["CPUExecutionProvider"]), 0.05),
                "int8": (ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), 0.15)}
    opt = optimized_graph_ops(path)
    assert opt["int8_conv_nodes"] == 57 and not opt["stray_dq_conv"]
    # QDQ only where this recipe fake-quantizes: SiLU, adds, concats run in float between the
    # integer convs (what export_layout="integer" removes, test_qat_onnx_runs_integer_conv_kernels)
    assert {"/model.0/act/Sigmoid", "/model.0/act/Mul"} <= set(opt["float_hot_path"])
    for seed in range(4):
        x = np.random.default_rng(seed).random((1, 3, 64, 64), dtype=np.float32)
        with torch.no_grad():
            ref = reference(torch.from_numpy(x))[0].numpy()
        for kind, (session, rel_rms) in sessions.items():
            out, *layers = session.run(None, {"images": x})
            for k, got in zip((0, 1), layers):
                quant = reference.model[k].act_input_quant
                step = float(quant.qparams(quant.min_val, quant.max_val)[0])
                diff = np.abs(got - feats[k])
                assert diff.max() <= 1.1 * step + 1e-5 and (diff > 1e-5).mean() < 0.01, (kind, seed, k, diff.max(), step)
            boxes = out[:, :4] - ref[:, :4]
            error = float(np.sqrt((boxes ** 2).mean()) / ref[:, :4].std())
            assert error < rel_rms, (kind, seed, error)


def test_pruned_weights_stay_zero_in_int8_initializers(run):
    model = ckpt_model(run.path("weights"))
    weights = dict(model.named_parameters())
    state = checkpoint_state(run.path("weights"))
    assert state["qat_prepared"] and state["qat"]["active"]
    targets = state["targets"]
    assert len(targets) > 30
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(run.path("int8_onnx"))).graph.initializer}
    converted = convert_for_export(model)
    folded = {f"{n}.conv.weight": m.weight_quant for n, m in converted.named_modules() if hasattr(m, "weight_quant")}
    for name in targets:
        q = inits[f"{name}_quantized"]
        assert q.dtype == np.int8
        zero = (weights[name] == 0).numpy()
        assert zero.mean() == pytest.approx(0.5, abs=0.01), name
        assert (q[zero] == 0).all(), name  # every pruned weight is exactly 0 in INT8 (zero point 0)
        # the integers are the ones QAT trained with: its per-channel scales, its rounding
        scale = folded[name].scale.numpy()
        np.testing.assert_allclose(inits[f"{name}_scale"], scale, rtol=1e-6)
        trained_q = np.rint(converted.get_submodule(name.removesuffix(".conv.weight")).conv.weight.detach().numpy()
                            / scale.reshape(-1, 1, 1, 1))
        assert (q == trained_q).mean() > 0.999, name  # ties may round the other way


def test_scheme_overrides_and_ignore_reach_the_modules(run):
    model = ckpt_model(run.path("weights"))
    mods = dict(model.named_modules())
    # ignore 'model.2.m.0.add_input_1': that add input stays float; the other one is quantized
    assert not isinstance(mods["model.2.m.0.add_input_1.quant"], FakeQuant)
    assert isinstance(mods["model.4.m.0.add_input_1.quant"], FakeQuant)
    # override on model.2.cv1.act: asymmetric output quantizer; the default scheme has none
    assert isinstance(mods["model.2.cv1.output_quant"], FakeQuant) and not mods["model.2.cv1.output_quant"].symmetric
    assert not isinstance(mods["model.4.cv1.output_quant"], FakeQuant)
    # each Conv has its own activation instance
    assert mods["model.2.cv1.act"] is not mods["model.2.cv2.act"]
    # named residual adds; the override makes add_input_0 of model.2.m.0 symmetric
    assert isinstance(mods["model.2.m.0.add_input_0"], AddInput)
    assert mods["model.2.m.0.add_input_0.quant"].symmetric and not mods["model.4.m.0.add_input_0.quant"].symmetric
    assert "model.15.m.0.add_input_0" not in mods  # neck bottlenecks have no shortcut


def test_legacy_dialect_recipe_runs(trained, tmp_path):
    result = qat(str(trained.train_dir), str(trained.data_dir), str(LEGACY), tmp_path / "legacy", QATConfig(**CONFIG))
    assert result.metrics["int8_conv_nodes"] == 57 and result.metrics["stray_dq_conv"] == 0
    mods = dict(ckpt_model(result.path("weights")).named_modules())
    # custom_quantizable_module_types: ['SiLU'] quantizes each activation's output too
    assert isinstance(mods["model.2.cv1.output_quant"], FakeQuant)


def test_bad_inputs_fail_before_training(run, trained, tmp_path):
    with pytest.raises(SparsepipeError, match="already quantized"):
        qat(str(run.path("weights")), str(trained.data_dir), str(PRUNE_QAT), tmp_path / "a", QATConfig(**CONFIG))
    with pytest.raises(SparsepipeError, match="is an ONNX model"):
        qat(str(run.path("int8_onnx")), str(trained.data_dir), str(PRUNE_QAT), tmp_path / "a", QATConfig(**CONFIG))
    strict = tmp_path / "strict.yaml"
    strict.write_text(PRUNE_QAT.read_text().replace("'model.2.m.0.add_input_1'", "'model.15.m.0.add_input_1'"))
    with pytest.raises(SparsepipeError, match="model.15.m.0.add_input_1"):
        qat(str(trained.train_dir), str(trained.data_dir), str(strict), tmp_path / "b", QATConfig(**CONFIG))
    with pytest.raises(SparsepipeError, match="no !QuantizationModifier"):
        qat(str(trained.train_dir), str(trained.data_dir), str(HERE / "prune-quick.yaml"), tmp_path / "c",
            QATConfig(**CONFIG))
    for sub in "abc":
        assert not (tmp_path / sub / "train" / "ultralytics").exists()


CRASH = textwrap.dedent("""
    import os, signal, sys
    def crash(trainer):
        if trainer.epoch == 1:  # second epoch, first batch (QAT on since 0.5): die like kill -9
            os.kill(os.getpid(), signal.SIGKILL)
    from sparsepipe.sparsify import sparsify, SparsifyConfig
    sparsify(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4],
             SparsifyConfig(imgsz=64, batch=8, workers=0, plots=False), callbacks={"on_train_batch_end": [crash]})
""")


def test_killed_qat_run_resumes(trained, tmp_path):
    recipe = tmp_path / "resume.yaml"
    # legacy recipe over 2 epochs: QAT from 0.5, observers and BN frozen at 1.5
    recipe.write_text(LEGACY.read_text().replace("num_epochs: 1", "num_epochs: 2").replace("epoch: 0.5", "epoch: 1.5")
                      .replace("start_epoch: 0.0\n    submodules", "start_epoch: 0.5\n    submodules"))
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(trained.train_dir), str(trained.data_dir), str(recipe),
                           str(out / "train")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == -9, proc.stderr[-2000:]
    last = out / "train" / "ultralytics" / "weights" / "last.pt"
    state = checkpoint_state(last)
    assert state["qat_prepared"] and state["qat"]["active"] and state["epoch"] == pytest.approx(1.0)
    observed = [m for m in ckpt_model(last).modules() if isinstance(m, FakeQuant) and not m.weight]
    assert observed and all(float(m.observed) == 1.0 for m in observed)  # ranges saved with the model

    result = qat(str(trained.train_dir), str(trained.data_dir), None, out, QATConfig(**CONFIG), resume=True)
    assert result.metrics["int8_conv_nodes"] == 57
    final = checkpoint_state(result.path("weights"))
    assert final["epoch"] == pytest.approx(2.0) and final["qat"] == {"active": True, "observers_frozen": True,
                                                                    "bn_frozen": True}


def test_an_unquantized_conv_output_is_reported_as_a_float_conv(tmp_path):
    """Ignoring a Conv's activation leaves its conv output float: onnxruntime cannot run that conv
    as an integer kernel, and the optimized-graph check names it."""
    from sparsepipe.modifiers.quantization import QuantizationModifier

    _, path = _export_fresh(tmp_path, QuantizationModifier(ignore=["model.9.cv2.act", "model.22.dfl.conv"]))
    opt = optimized_graph_ops(path)
    assert opt["int8_conv_nodes"] == 56 and opt["stray_dq_conv"] == ["/model.9/cv2/Conv"]


def test_qat_composes_with_per_layer_distillation(trained, tmp_path):
    from sparsepipe.distillation import SESSION_ATTR
    from sparsepipe.qat import export_int8_onnx
    from sparsepipe.sparsify import SparsifyConfig, sparsify

    recipe = tmp_path / "distill-qat.yaml"
    recipe.write_text(LEGACY.read_text() + textwrap.dedent("""
        distillation_modifiers:
          - !PerLayerDistillationModifier
            gain: 1.0
            start_epoch: 0.0
            end_epoch: eval(num_epochs)
            student_layer_names: [model.15, model.18, model.21]
    """))
    seen = {}

    def on_train_start(trainer) -> None:
        seen["distilling"] = SESSION_ATTR in trainer.model.__dict__
        seen["qat_convs"] = sum(isinstance(m, QATConv) for m in trainer.model.modules())

    result = sparsify(str(trained.train_dir), str(trained.data_dir), str(recipe), tmp_path / "train",
                      SparsifyConfig(**CONFIG), teacher="self", callbacks={"on_train_start": [on_train_start]})
    assert seen == {"distilling": True, "qat_convs": 57}
    path = export_int8_onnx(result.path("weights"), tmp_path / "model_int8.onnx", imgsz=64, layout="qat")
    opt = optimized_graph_ops(path)
    assert opt["int8_conv_nodes"] == 57 and opt["float_hot_path"]  # the layout for OpenVINO: SiLU stays float


def test_inputs_quantized_upstream_get_a_lossless_qdq_pair(tmp_path):
    """The published sparse-transfer recipe (SparseML's shape, written for DeepSparse) switches off
    the input quantizer of convs fed by an already-quantized tensor through a Split; onnxruntime
    needs DQ right before the conv, so the export re-inserts one with the upstream scale."""
    import shutil

    import onnxruntime as ort

    from sparsepipe.qat import quant_modifier, requantize_conv_inputs
    from sparsepipe.recipe import load_recipe

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "yolov8n-sparse-transfer-quant.yaml")
    _, path = _export_fresh(tmp_path, quant_modifier(recipe))
    before = str(tmp_path / "before.onnx")
    shutil.copyfile(path, before)
    assert requantize_conv_inputs(path) == 8
    assert optimized_graph_ops(before)["int8_conv_nodes"] == 39
    after = optimized_graph_ops(path)
    assert after["int8_conv_nodes"] == 47
    # the other 10 read a Concat of differently quantized tensors or a float residual sum
    assert len(after["stray_dq_conv"]) == 10 and "/model.2/cv2/Conv" in after["stray_dq_conv"]
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    a, b = (ort.InferenceSession(p, plain, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
            for p in (before, path))
    np.testing.assert_array_equal(a, b)  # the inserted pair changes no value


def test_cli_quantize_qat_and_export_route(trained, tmp_path):
    """`sparsepipe quantize --method qat` trains and writes INT8; `export` of the QAT checkpoint is INT8 too."""
    from sparsepipe.cli import main
    from sparsepipe.export import ExportConfig, export_onnx
    from sparsepipe.results import read_result

    out = tmp_path / "qat-cli"
    rc = main(["quantize", "--method", "qat", "--model", str(trained.train_dir), "--data", str(trained.data_dir),
               "--recipe", str(LEGACY), "--imgsz", "64", "--batch", "8", "--workers", "0", "--no-track", "--out", str(out)])
    assert rc == 0
    result = read_result(out)
    assert result.step == "quantize" and result.path("int8_onnx").is_file()
    assert result.metrics["int8_conv_nodes"] > 0
    exported = export_onnx(str(result.path("weights")), tmp_path / "export", ExportConfig(imgsz=64))
    ops = {n.op_type for n in onnx.load(str(exported.path("onnx"))).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_integer_export_without_its_dataset_is_a_clear_error(run, tmp_path):
    """The integer layout calibrates the ranges QAT did not learn on the checkpoint's train images."""
    from sparsepipe.errors import ConfigError
    from sparsepipe.qat import export_int8_onnx

    ckpt = torch.load(str(run.path("weights")), map_location="cpu", weights_only=False)
    ckpt["train_args"]["data"] = str(tmp_path / "gone" / "data.yaml")
    torch.save(ckpt, tmp_path / "moved.pt")
    with pytest.raises(SparsepipeError, match="names no dataset"):
        export_int8_onnx(tmp_path / "moved.pt", tmp_path / "model_int8.onnx", imgsz=64)
    with pytest.raises(ConfigError, match="export_layout"):
        QATConfig(export_layout="fast")
    assert not (tmp_path / "model_int8.onnx").exists()
