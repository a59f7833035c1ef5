"""sparsepipe.engines: one place for session / compile options, checked on real sessions.

    .venv/bin/python -m pytest tests/test_engines.py -q

onnxruntime and OpenVINO are dependencies of sparsepipe, so their tests never skip. The
benchmark-vs-predict test opens both on the same exported model and compares what the live
session / compiled model reports, not the arguments passed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsepipe.engines import OPENVINO_PRECISION, SessionSettings, openvino_properties, ort_session_options
from sparsepipe.engines.kernels import FLOAT_CONV_OPS, INT_CONV_OPS, conv_kernel_counts
from sparsepipe.engines.sessions import (
    openvino_compile,
    openvino_settings_of,
    optimized_graph,
    ort_session,
    ort_settings_of,
)
from sparsepipe.errors import ModelError


def _bf16_cpu() -> bool:
    from sparsepipe.hardware import cpu_info

    isa = cpu_info()["isa"]
    return bool(isa.get("amx_bf16") or isa.get("avx512_bf16"))


def _conv_model(path, convs: int = 3, side: int = 16):
    """``convs`` 3x3 convs (8 channels) with Relu between them: a float model to quantize."""
    rng = np.random.default_rng(0)
    nodes, inits, prev, cin = [], [], "images", 3
    for i in range(convs):
        w = numpy_helper.from_array(rng.normal(0, 0.3, (8, cin, 3, 3)).astype(np.float32), f"w{i}")
        b = numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), f"b{i}")
        inits += [w, b]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev, cin = f"r{i}", 8
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, side, side])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 8, side, side])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# -- options: the table ------------------------------------------------------------------------


def test_openvino_properties_name_the_precision_of_each_engine():
    assert OPENVINO_PRECISION == {"openvino": "f32", "openvino-bf16": "bf16"}
    sync = openvino_properties("openvino", SessionSettings(threads=2))
    assert sync == {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    many = openvino_properties("openvino-bf16", SessionSettings(threads=4, scenario="async", streams=2, pin=True),
                               perf_count=True)
    assert many == {"INFERENCE_NUM_THREADS": 4, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2,
                    "INFERENCE_PRECISION_HINT": "bf16", "ENABLE_CPU_PINNING": True, "PERF_COUNT": True}
    with pytest.raises(ValueError, match="not an OpenVINO engine"):
        openvino_properties("onnxruntime")
    for bad in ({"threads": 0}, {"streams": True}, {"scenario": "batch"}):
        with pytest.raises(ValueError):
            SessionSettings(**bad)


def test_ort_session_options_are_the_documented_ones(tmp_path):
    import onnxruntime as ort

    options = ort_session_options(SessionSettings(threads=4, scenario="async", streams=2))
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1  # 4 threads over 2 streams
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort_session(_conv_model(tmp_path / "m.onnx"), SessionSettings(threads=2))
    assert ort_settings_of(session)["intra_op_threads"] == 2
    assert ort_settings_of(session)["providers"] == ["CPUExecutionProvider"]
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        ort_session(tmp_path / "broken.onnx")
    with pytest.raises(ModelError, match="OpenVINO cannot read"):
        openvino_compile(tmp_path / "broken.onnx")


def test_openvino_compiled_model_runs_the_precision_its_name_says(tmp_path):
    path = _conv_model(tmp_path / "m.onnx")
    f32 = openvino_settings_of(openvino_compile(path, "openvino", SessionSettings(threads=1)))
    assert f32 == {"threads": 1, "performance_hint": "LATENCY", "streams": 1, "precision": "f32"}
    bf16 = openvino_settings_of(openvino_compile(path, "openvino-bf16", SessionSettings(threads=1)))
    assert bf16["precision"] == ("bf16" if _bf16_cpu() else "f32")  # a CPU without bf16 falls back


def test_importing_the_package_imports_no_engine():
    code = ("import sys, sparsepipe, sparsepipe.engines, sparsepipe.benchmark, sparsepipe.predict; "
            "print(sorted(m for m in ('onnxruntime', 'openvino', 'deepsparse') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().replace("'", '"')) == []


def test_old_deepsparse_import_paths_still_work():
    from sparsepipe import deepsparse_engine, deepsparse_predict
    from sparsepipe.engines import deepsparse, deepsparse_predict as moved

    assert deepsparse_engine.DeepSparseRunner is deepsparse.DeepSparseRunner
    assert deepsparse_engine.require_deepsparse_python is deepsparse.require_deepsparse_python
    assert deepsparse_predict.DeepSparsePredictEngine is moved.DeepSparsePredictEngine
    # both workers create the engine with the same source
    assert deepsparse.WORKER_SOURCE.startswith(deepsparse.ENGINE_SOURCE) and moved.WORKER.startswith(deepsparse.ENGINE_SOURCE)


# -- one op-set table, on a real quantized graph -------------------------------------------------


def test_ptq_and_qat_count_integer_kernels_with_the_same_table(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from sparsepipe import ptq, qat, qat_export, quantize

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.feeds = iter([{"images": rng.random((1, 3, 16, 16), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    fp32 = _conv_model(tmp_path / "fp32.onnx", convs=3)
    int8 = tmp_path / "int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    opt = optimized_graph(int8)
    counts = conv_kernel_counts(opt)
    assert counts == {"int8_conv_nodes": 3, "float_conv_nodes": 0}, {n.op_type for n in opt.graph.node}
    assert conv_kernel_counts(optimized_graph(fp32)) == {"int8_conv_nodes": 0, "float_conv_nodes": 3}
    # PTQ and QAT report through the same function and table
    assert quantize.conv_kernel_counts is conv_kernel_counts and quantize.INT8_CONV_OPS is INT_CONV_OPS
    assert quantize.FLOAT_CONV_OPS is FLOAT_CONV_OPS
    assert ptq.INT8_CONV_OPS is INT_CONV_OPS and ptq.FLOAT_CONV_OPS is FLOAT_CONV_OPS
    assert qat_export._INT_CONV_OPS is INT_CONV_OPS and qat.optimized_graph_ops is qat_export.optimized_graph_ops
    ops = qat.optimized_graph_ops(int8)
    assert {k: ops[k] for k in counts} == counts and ops["stray_dq_conv"] == []


# -- benchmark times what predict and serve run ----------------------------------------------------


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino", "openvino-bf16"])
def test_benchmark_and_predict_open_the_same_session(trained, engine):
    """For one engine name, `benchmark` and `predict` (and `serve`, which runs a Predictor) open the
    model with identical options: compared on the live session / compiled model."""
    from sparsepipe.benchmark import RUNNERS, BenchmarkConfig
    from sparsepipe.predict import PredictConfig, Predictor

    model = trained.export_dir / "model.onnx"
    runner = RUNNERS[engine](model, BenchmarkConfig(engine=engine, threads=2))
    predictor = Predictor(model, config=PredictConfig(engine=engine, threads=2))
    if engine == "onnxruntime":
        assert ort_settings_of(runner.session) == ort_settings_of(predictor.engine.session)
        assert ort_settings_of(runner.session)["intra_op_threads"] == 2
    else:
        ran = openvino_settings_of(predictor.engine.compiled)
        assert openvino_settings_of(runner.compiled) == ran
        assert ran["precision"] == ("f32" if engine == "openvino" or not _bf16_cpu() else "bf16")


def test_benchmark_result_names_the_precision_that_ran(trained, tmp_path):
    from sparsepipe.benchmark import BenchmarkConfig, benchmark

    result = benchmark(str(trained.export_dir), tmp_path / "bench",
                       BenchmarkConfig(engine="openvino,openvino-bf16,onnxruntime", iterations=4, warmup=1, rounds=2))
    settings = result.extra["engine_settings"]
    assert settings["openvino"]["precision"] == "f32"
    assert settings["openvino-bf16"]["precision"] == ("bf16" if _bf16_cpu() else "f32")
    assert settings["onnxruntime"]["graph_optimization"].endswith("ORT_ENABLE_ALL")
    assert "speedup_vs_openvino-bf16" in result.metrics
