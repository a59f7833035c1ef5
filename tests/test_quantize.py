"""The quantize step (PTQ) and the OpenVINO engine, on the tiny trained model (64 px).

    .venv/bin/python -m pytest tests/test_quantize.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparsepipe.errors import ConfigError, DataError, ModelError, SparsepipeError
from sparsepipe.quantize import (
    QuantizeConfig,
    conv_kernel_counts,
    dq_fed_float_convs,
    head_float_nodes,
    optimized_graph,
    preprocess,
    quantize,
    train_images,
)

IMGSZ = 64
YOLOV8N_HEAD = sorted(
    [f"/model.22/cv{b}.{i}/cv{b}.{i}.2/Conv" for b in (2, 3) for i in range(3)] + ["/model.22/dfl/conv/Conv"]
)


@pytest.fixture(scope="module")
def ptq(trained, tmp_path_factory):
    """PTQ of the trained model's 64 px FP32 export (export out folder as input), with mAP."""
    out = tmp_path_factory.mktemp("ptq") / "ptq"
    return quantize(str(trained.export_dir), str(trained.data_dir), out, QuantizeConfig(calibration_images=8))


@pytest.fixture(scope="module")
def pruned_ptq(trained, tmp_path_factory):
    """A 50%-pruned checkpoint (2-epoch recipe) quantized from its .pt (export inside quantize)."""
    from sparsepipe.sparsify import SparsifyConfig, sparsify

    root = tmp_path_factory.mktemp("pruned")
    sparsify(str(trained.train_dir), str(trained.data_dir), "tests/sparsify/prune-quick.yaml", root / "sparse",
             SparsifyConfig(imgsz=IMGSZ, batch=8, workers=0, plots=False))
    config = QuantizeConfig(calibration_images=8, imgsz=IMGSZ, evaluate=False)
    return quantize(str(root / "sparse"), str(trained.data_dir), root / "ptq", config)


def test_result_files_sizes_and_metadata(ptq, trained):
    int8, fp32 = ptq.path("int8_onnx"), ptq.path("fp32_onnx")
    assert int8.name == "model_int8.onnx" and int8.parent == Path(ptq.out_dir)
    assert fp32 == trained.export_dir / "model.onnx"
    m = ptq.metrics
    # int8 weights: about 4x smaller than float32 (biases, head convs and scales stay wider)
    assert m["size_mb"] < m["fp32_size_mb"] / 2.5
    assert m["size_gz_mb"] <= m["size_mb"]
    assert 0.0 <= m["map50_95"] <= m["map50"] <= 1.0  # evaluated through the INT8 file
    assert ptq.variant == "ptq" and m["calibration_images"] == 8
    model = onnx.load(str(int8))
    # only the default domain at the FP32 file's opset (DeepSparse refuses extra imports)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    meta_int8 = {p.key: p.value for p in model.metadata_props}
    meta_fp32 = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    assert meta_int8 == meta_fp32 and meta_int8["imgsz"] == f"[{IMGSZ}, {IMGSZ}]"
    assert (Path(ptq.out_dir) / "result.json").is_file()


def test_head_output_convs_and_dfl_found_from_the_graph(ptq, trained):
    fp32 = onnx.load(str(trained.export_dir / "model.onnx"))
    assert sorted(head_float_nodes(fp32)) == YOLOV8N_HEAD
    # kept float: those convs and the head's decode after them (DFL, box arithmetic, class sigmoid)
    floats = set(ptq.extra["float_nodes"])
    assert set(YOLOV8N_HEAD) <= floats
    assert all(name.startswith("/model.22/") for name in floats)
    assert {"/model.22/Sigmoid", "/model.22/Concat_5"} & floats


def test_optimized_graph_runs_integer_convs(ptq):
    """What onnxruntime actually runs: every Conv but the 7 float head convs became an integer
    QLinearConv (DequantizeLinear -> Conv -> QuantizeLinear fused), and no other float Conv reads a
    DequantizeLinear output (that pair would mean an int8 weight/activation dequantized back to
    float for a float conv: INT8 file size without INT8 speed)."""
    opt = optimized_graph(ptq.path("int8_onnx"))
    counts = conv_kernel_counts(opt)
    assert counts["int8_conv_nodes"] == ptq.metrics["int8_conv_nodes"] == 57  # YOLOv8n: 64 convs - 7
    assert counts["float_conv_nodes"] == ptq.metrics["float_conv_nodes"] == len(YOLOV8N_HEAD)
    # Only the head's output convs, kept float on purpose, may read a dequantized int8 tensor (their
    # input is the int8 SiLU output of the conv before them); no conv on the hot path does.
    head_prefixes = tuple(name.rsplit("/", 1)[0] + "/" for name in YOLOV8N_HEAD)
    assert all(name.startswith(head_prefixes) for name in dq_fed_float_convs(opt)), dq_fed_float_convs(opt)
    # the QDQ file itself: a DequantizeLinear feeds every quantized Conv's weight
    model = onnx.load(str(ptq.path("int8_onnx")))
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"]
    assert len(quantized) == 57 and len(convs) - len(quantized) == 7


FEATURES = [f"/model.{i}/cv2/act/Mul_output_0" for i in (2, 4, 6, 9, 15, 18, 21)]  # backbone, SPPF, neck


def _features(path, feed):
    """output0 plus the feature maps in FEATURES (added as graph outputs) of one ONNX file."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    for name in FEATURES:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["output0", *FEATURES], {session.get_inputs()[0].name: feed})


def test_int8_outputs_match_fp32(ptq, trained):
    """Same inputs (real val images, preprocessed like ultralytics) through both files.

    Tolerances, and why: 8-bit activations give 255 steps over each calibrated range, and the
    rounding compounds over ~20 conv layers. (1) Every feature map of FEATURES: mean absolute
    error <= 3% of the FP32 map's range and cosine similarity >= 0.98 (measured: <= 0.3% and
    >= 0.999 on this model; <= 1.3% and >= 0.99 on a 30-epoch 160 px model). These are the
    meaningful checks here, because the 2-epoch 64 px fixture's head is still nearly constant.
    (2) output0 ([1, 4 + classes, anchors]): box centre/size within 5% of the image size on
    average, class probabilities within 0.05 (the 30-epoch model: 0.6% and 0.005). Errors above
    these mean a wrong scale or zero point, not rounding.
    """
    fp32, int8 = ptq.path("fp32_onnx"), ptq.path("int8_onnx")
    images = sorted((trained.data_dir / "images" / "val").glob("*"))[:3]
    assert images
    for image in images:
        feed = preprocess(image, IMGSZ)
        a, b = _features(fp32, feed), _features(int8, feed)
        for name, u, v in zip(FEATURES, a[1:], b[1:]):
            rel = float(np.abs(u - v).mean() / (u.max() - u.min()))
            cos = float((u * v).sum() / (np.linalg.norm(u) * np.linalg.norm(v)))
            assert rel <= 0.03 and cos >= 0.98, f"{image.name} {name}: rel {rel:.4f} cos {cos:.4f}"
        out_a, out_b = a[0], b[0]
        assert out_a.shape == out_b.shape
        assert (np.abs(out_a[:, :4] - out_b[:, :4]) / IMGSZ).mean() < 0.05
        cls_err = np.abs(out_a[:, 4:] - out_b[:, 4:])
        assert cls_err.max() < 0.05 and cls_err.mean() < 0.01


def test_pruned_weights_stay_exactly_zero_in_int8(pruned_ptq):
    fp32 = onnx.load(str(pruned_ptq.path("fp32_onnx")))
    int8 = onnx.load(str(pruned_ptq.path("int8_onnx")))
    floats = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    inits = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    checked = zeros = 0
    for node in int8.graph.node:
        if node.op_type != "DequantizeLinear" or inits.get(node.input[0]) is None:
            continue
        q = inits[node.input[0]]
        if q.dtype != np.int8 or q.ndim != 4:
            continue  # conv weights only (biases are int32)
        name = node.input[0].removesuffix("_quantized")
        w = floats[name]
        zp = inits[node.input[2]]
        assert np.all(zp == 0), f"{name}: weight zero point must be 0 (symmetric)"
        assert np.all(q[w == 0] == 0), f"{name}: a pruned weight is non-zero in INT8"
        checked += 1
        zeros += int((w == 0).sum())
    assert checked >= 40 and zeros > 100_000  # the recipe pruned 50% of model.1..21 convs
    assert pruned_ptq.metrics["int8_conv_nodes"] == 57
    assert pruned_ptq.path("fp32_onnx").parent.name == "fp32"  # exported from the .pt first
    assert pruned_ptq.variant.endswith("-ptq")


def test_calibration_sample_is_deterministic_train_split(trained):
    from sparsepipe.quantize import sample_images

    images = train_images(str(trained.data_dir))
    assert len(images) == 16 and all("train" in p.parts for p in (i.relative_to(trained.data_dir) for i in images))
    assert sample_images(images, 5, seed=0) == sample_images(images, 5, seed=0)
    assert sample_images(images, 5, seed=0) != sample_images(images, 5, seed=1)
    x = preprocess(images[0], IMGSZ)
    assert x.shape == (1, 3, IMGSZ, IMGSZ) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_bad_inputs_are_clear(ptq, trained, tmp_path):
    import shutil

    data = str(trained.data_dir)
    with pytest.raises(ModelError, match="already quantized"):
        quantize(str(ptq.path("int8_onnx")), data, tmp_path / "a")
    with pytest.raises(ModelError, match="already quantized"):
        quantize(ptq.out_dir, data, tmp_path / "a2")  # the quantize out folder resolves to its INT8 file
    with pytest.raises(ConfigError, match="static at 64"):
        quantize(str(trained.export_dir), data, tmp_path / "b", QuantizeConfig(imgsz=640))
    # a dataset whose train split has no images
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    shutil.copytree(trained.data_dir / "images" / "val", empty / "images" / "val")
    (empty / "data.yaml").write_text(f"path: {empty}\ntrain: images/train\nval: images/val\nnames: {{0: a}}\n")
    with pytest.raises(DataError, match="train split is empty"):  # the shared --data check (issue 15 item 4)
        quantize(str(trained.export_dir), str(empty / "data.yaml"), tmp_path / "c")
    with pytest.raises(SparsepipeError, match="needs a recipe"):
        quantize(str(trained.export_dir), data, tmp_path / "d", QuantizeConfig(method="qat"))
    with pytest.raises(ConfigError, match="calibration_method"):
        QuantizeConfig(calibration_method="kl")
    with pytest.raises(ConfigError, match="only int8"):
        QuantizeConfig(weight_type="uint8")
    with pytest.raises(ConfigError, match="op_types"):
        QuantizeConfig(op_types=("Relu",))


def test_already_quantized_checkpoint_is_refused(trained, tmp_path, monkeypatch):
    import torch

    # torch's FakeQuantize pickles torch.per_tensor_affine, outside the checkpoint allowlist: trust
    # this file, so the quantization check (not the trust policy) is what refuses it
    monkeypatch.setenv("SPARSEPIPE_TRUST_CHECKPOINT", "1")

    ckpt = torch.load(trained.train_dir / "model.pt", map_location="cpu", weights_only=False)
    for key in ("model", "ema"):
        if ckpt.get(key) is not None:
            ckpt[key].model[0].add_module("weight_fake_quant", torch.ao.quantization.FakeQuantize())
    torch.save(ckpt, tmp_path / "qat.pt")
    with pytest.raises(ModelError, match="already quantized"):
        quantize(str(tmp_path / "qat.pt"), str(trained.data_dir), tmp_path / "q", QuantizeConfig(imgsz=IMGSZ))


def test_openvino_benchmarks_fp32_and_int8(ptq, tmp_path):
    from sparsepipe.benchmark import ENGINES, BenchmarkConfig, benchmark

    assert "openvino" in ENGINES  # a dependency of sparsepipe: it must be importable
    config = BenchmarkConfig(engine="openvino", threads=1, warmup=1, iterations=10, rounds=2)
    result = benchmark(str(ptq.out_dir), tmp_path / "ov", config, baseline=str(ptq.path("fp32_onnx")))
    assert result.files["onnx"].endswith("model_int8.onnx")
    assert result.metrics["iterations"] == 10 and result.metrics["latency_ms_p50"] > 0
    assert result.extra["baseline"]["latency_ms_p50"] > 0 and result.config["engine"] == "openvino"


def test_cli_quantize(trained, tmp_path, capsys):
    from sparsepipe.cli import main
    from sparsepipe.results import read_result

    out = tmp_path / "cli"
    rc = main(["quantize", "--model", str(trained.export_dir), "--data", str(trained.data_dir), "--calibration-images", "4",
               "--calibration-method", "minmax", "--op-types", "Conv", "--no-evaluate", "--no-track", "--out", str(out)])
    assert rc == 0
    result = read_result(out)
    assert result.step == "quantize" and result.path("int8_onnx").is_file()
    assert result.config["calibration_method"] == "minmax" and result.config["op_types"] == ["Conv"]
    # QAT trains a checkpoint; an ONNX file cannot be trained: a clear error, no traceback.
    assert main(["quantize", "--method", "qat", "--model", str(trained.export_dir), "--data", str(trained.data_dir),
                 "--recipe", "tests/sparsify/qat-prune-current.yaml", "--no-track", "--out", str(tmp_path / "qat")]) == 2
    assert "Traceback" not in capsys.readouterr().err
