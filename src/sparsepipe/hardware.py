"""Describe the CPU a benchmark ran on: model, cores, ISA features, and its measured peak.

    python -m sparsepipe.hardware            # CPU model, cores, ISA flags, engine versions
    python -m sparsepipe.hardware --peak 2   # + measured INT8/FP32 peak ops/s on 2 threads

INT8 kernels are fast with AVX-512 VNNI / AVX-VNNI and fastest with AMX; without VNNI an
INT8 model can be slower than FP32. Every benchmark result records these flags so numbers
from different machines are never compared blindly.

:func:`measure_peak` times one large 3x3 convolution (FP32, and INT8 as a QDQ graph that both
engines fuse into integer kernels) on onnxruntime and OpenVINO with the given threads and keeps
the fastest: the machine's practical ceiling in ops/s. A model's *floor* latency is then its
FLOPs (2 x MACs, :func:`sparsepipe.benchmark.onnx_macs`) divided by that peak.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ISA_FLAGS = {
    "avx2": "avx2",
    "avx512f": "avx512",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}


def _cpuinfo(text: str | None = None) -> tuple[str, set[str], int | None]:
    if text is None:
        path = Path("/proc/cpuinfo")
        text = path.read_text(errors="replace") if path.is_file() else ""
    model, flags, cores = "", set(), set()
    physical = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and not model:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
            cores.add((physical, core))
    return model, flags, (len(cores) or None)


def cpu_info(cpuinfo_text: str | None = None) -> dict:
    """CPU model, logical/physical/usable cores and ISA features, as a JSON-able dict."""
    model, flags, physical = _cpuinfo(cpuinfo_text)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    isa = {name: (flag in flags) for flag, name in ISA_FLAGS.items()}
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count() or 1,
        "physical_cores": physical,
        "usable_cores": usable,
        "isa": isa,
        "int8_hint": (
            "AMX" if isa["amx_int8"] else "VNNI" if (isa["avx512_vnni"] or isa["avx_vnni"]) else "no VNNI: INT8 may not beat FP32"
        ),
    }


def engine_versions() -> dict[str, str]:
    """Versions of the inference engines importable here."""
    versions = {}
    for name in ("onnxruntime", "openvino", "onnx", "torch"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            continue
    return versions


# Shape of the peak-probe convolution: 3x3, CHANNELS -> CHANNELS on a SIDE x SIDE map (~1.2 GMAC).
PEAK_CHANNELS = 128
PEAK_SIDE = 64


def peak_conv_onnx(path: str | Path, int8: bool, channels: int = PEAK_CHANNELS, side: int = PEAK_SIDE) -> int:
    """Write a one-conv ONNX probe (FP32, or INT8 as QDQ: uint8 activations, int8 per-tensor
    weights) to ``path``; returns its MACs."""
    import onnx  # heavy: onnx
    from onnx import TensorProto, helper, numpy_helper  # heavy: onnx

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.05
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, side, side])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, side, side])
    inits = []
    nodes = []
    if int8:
        q_w = np.clip(np.round(weight / 0.002), -127, 127).astype(np.int8)
        inits += [
            numpy_helper.from_array(q_w, "w_q"),
            numpy_helper.from_array(np.array(0.002, np.float32), "w_s"),
            numpy_helper.from_array(np.array(0, np.int8), "w_z"),
            numpy_helper.from_array(np.array(1 / 255, np.float32), "a_s"),
            numpy_helper.from_array(np.array(0, np.uint8), "a_z"),
            numpy_helper.from_array(np.array(0.05, np.float32), "o_s"),
            numpy_helper.from_array(np.array(128, np.uint8), "o_z"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "a_s", "a_z"], ["x_dq"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"]),
            helper.make_node("Conv", ["x_dq", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("QuantizeLinear", ["c", "o_s", "o_z"], ["c_q"]),
            helper.make_node("DequantizeLinear", ["c_q", "o_s", "o_z"], ["y"]),
        ]
    else:
        inits.append(numpy_helper.from_array(weight, "w"))
        nodes.append(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "peak", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return channels * channels * 9 * side * side


def _time_call(call: Any, warmup: int, iterations: int) -> float:
    for _ in range(warmup):
        call()
    best = float("inf")
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def measure_peak(threads: int, iterations: int = 20, engines: tuple[str, ...] = ("onnxruntime", "openvino")) -> dict[str, Any]:
    """Measured peak ops/s (1 MAC = 2 ops) of the probe convolution per precision and engine on
    ``threads`` threads; ``int8_ops_s`` / ``fp32_ops_s`` are the best engine's (best of
    ``iterations`` runs, so the figure is a ceiling, not a typical value)."""
    result: dict[str, Any] = {"threads": threads, "probe": f"conv3x3 {PEAK_CHANNELS}->{PEAK_CHANNELS} @ {PEAK_SIDE}x{PEAK_SIDE}"}
    with tempfile.TemporaryDirectory(prefix="sparsepipe-peak-") as tmp:
        for precision in ("fp32", "int8"):
            path = Path(tmp) / f"{precision}.onnx"
            macs = peak_conv_onnx(path, int8=precision == "int8")
            feed = np.random.default_rng(0).random((1, PEAK_CHANNELS, PEAK_SIDE, PEAK_SIDE), dtype=np.float32)
            best = 0.0
            for engine in engines:
                try:
                    if engine == "onnxruntime":
                        import onnxruntime as ort  # heavy: onnxruntime

                        options = ort.SessionOptions()
                        options.intra_op_num_threads = threads
                        options.inter_op_num_threads = 1
                        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                        seconds = _time_call(lambda: session.run(None, {"x": feed}), 3, iterations)
                    elif engine == "openvino":
                        import openvino as ov  # heavy: openvino

                        compiled = ov.Core().compile_model(
                            str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
                        request = compiled.create_infer_request()
                        seconds = _time_call(lambda: request.infer({0: feed}), 3, iterations)
                    else:
                        continue
                except ImportError:
                    continue
                ops = 2.0 * macs / seconds
                result[f"{precision}_ops_s_{engine}"] = ops
                best = max(best, ops)
            result[f"{precision}_ops_s"] = best
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Describe this CPU (and optionally measure its peak ops/s).")
    parser.add_argument("--peak", type=int, default=0, metavar="THREADS", help="measure INT8/FP32 peak on THREADS threads")
    args = parser.parse_args()
    info: dict[str, Any] = {**cpu_info(), "engines": engine_versions()}
    if args.peak:
        info["peak"] = measure_peak(args.peak)
    print(json.dumps(info, indent=2))
