"""The benchmark step: onnxruntime CPU latency statistics and hardware description.

    .venv/bin/python -m pytest tests/test_benchmark.py
"""

from __future__ import annotations

import pytest

from sparsepipe.benchmark import BenchmarkConfig, benchmark, latency_stats
from sparsepipe.errors import ConfigError, ModelError
from sparsepipe.hardware import cpu_info

CPUINFO = """processor	: 0
model name	: Test CPU 9000
physical id	: 0
core id		: 0
flags		: fpu sse avx2 avx512f avx512_vnni
processor	: 1
model name	: Test CPU 9000
physical id	: 0
core id		: 0
flags		: fpu sse avx2 avx512f avx512_vnni
processor	: 2
physical id	: 0
core id		: 1
"""


def test_latency_stats_hand_computed():
    stats = latency_stats([1.0, 2.0, 3.0, 4.0, 10.0], batch=2)
    assert stats["latency_ms_mean"] == 4.0
    assert stats["latency_ms_p50"] == 3.0
    assert stats["latency_ms_p90"] == pytest.approx(7.6)
    assert stats["latency_ms_p99"] == pytest.approx(9.76)
    assert stats["latency_ms_min"] == 1.0
    assert stats["throughput_ips"] == 500.0  # 2 images per 4 ms


def test_cpu_info_parses_isa_and_physical_cores():
    info = cpu_info(CPUINFO)
    assert info["cpu_model"] == "Test CPU 9000"
    assert info["physical_cores"] == 2
    assert info["isa"]["avx512_vnni"] and info["isa"]["avx2"] and not info["isa"]["amx"]
    assert info["int8_hint"] == "VNNI"


def test_benchmark_with_interleaved_baseline(trained, tmp_path, capsys):
    config = BenchmarkConfig(threads=1, warmup=2, iterations=20, rounds=2)
    result = benchmark(str(trained.export_dir), tmp_path / "b", config, baseline=str(trained.export_dir))
    m = result.metrics
    assert m["iterations"] == 20
    assert 0 < m["latency_ms_min"] <= m["latency_ms_p50"] <= m["latency_ms_p90"] <= m["latency_ms_p99"]
    assert m["throughput_ips"] > 0
    # The ratio is the one this run measured: the baseline's p50 over the model's (no timing bound:
    # tests never assert how fast a machine is, and the same file against itself is not exactly 1).
    base = result.extra["baseline"]
    assert base["model"].endswith("model.onnx") and base["iterations"] == 20
    assert m["speedup_vs_baseline"] == round(base["latency_ms_p50"] / m["latency_ms_p50"], 4)
    assert result.extra["hardware"]["usable_cores"] >= 1
    assert (tmp_path / "b" / "result.json").is_file()
    assert "speedup_vs_baseline" in capsys.readouterr().out


def test_time_interleaved_skips_a_refused_file_and_times_the_rest(trained, tmp_path, capsys):
    from sparsepipe.benchmark import time_interleaved

    onnx_file = trained.export_dir / "model.onnx"
    broken = tmp_path / "broken.onnx"
    broken.write_text("not an onnx model")
    config = BenchmarkConfig(threads=1, warmup=1, iterations=6, rounds=2)
    timed = time_interleaved([("ort", "onnxruntime", onnx_file), ("bad", "onnxruntime", broken),
                              ("ov", "openvino", onnx_file)], config, label=" in test")
    assert list(timed) == ["ort", "ov"]
    assert all(len(lat) == 6 and min(lat) > 0 for lat in timed.values())
    assert "skip bad on onnxruntime in test" in capsys.readouterr().out


def test_duration_mode_runs_for_the_budget(trained, tmp_path):
    result = benchmark(str(trained.export_dir), tmp_path / "d", BenchmarkConfig(warmup=1, duration_s=0.5))
    assert result.metrics["iterations"] >= 3


def test_batch_mismatch_and_non_onnx_are_clear(trained, tmp_path):
    with pytest.raises(ConfigError, match="static batch of 1"):
        benchmark(str(trained.export_dir), tmp_path / "x", BenchmarkConfig(batch=4, iterations=1))
    with pytest.raises(ModelError, match="ONNX"):
        benchmark(str(trained.train_dir), tmp_path / "y", BenchmarkConfig(iterations=1))


def test_benchmark_config_validation():
    with pytest.raises(ConfigError, match="engine"):
        BenchmarkConfig(engine="tensorrt")
    with pytest.raises(ConfigError, match="threads"):
        BenchmarkConfig(threads=0)


# ---------------------------------------------------------------- scenarios, sweeps, pinning, floor (issue 8)
def test_async_scenario_keeps_streams_in_flight_on_both_engines(trained, tmp_path):
    config = BenchmarkConfig(engine="onnxruntime,openvino", threads=2, scenario="async", streams=2,
                             warmup=1, iterations=6, rounds=2)
    result = benchmark(str(trained.export_dir), tmp_path / "a", config)
    m = result.metrics
    # One iteration = one request per stream: throughput counts streams x batch images per wave.
    assert m["throughput_ips"] == pytest.approx(2 * 1000.0 / m["latency_ms_mean"], rel=1e-3)
    assert result.extra["scenario"] == "async" and result.extra["streams"] == 2
    assert "openvino" in result.extra["same_run_engines"]
    ov = result.extra["same_run_engines"]["openvino"]["model"]
    assert m["speedup_vs_openvino"] == round(ov["latency_ms_p50"] / m["latency_ms_p50"], 4)
    assert {"onnxruntime", "openvino"} <= set(result.extra["engines"])
    assert "amx" in result.extra["hardware"]["isa"]


def test_batch_sweep_writes_one_row_per_batch(trained, tmp_path):
    from sparsepipe.export import ExportConfig, export_onnx

    dynamic = export_onnx(str(trained.train_dir), tmp_path / "dyn", ExportConfig(imgsz=64, dynamic=True))
    config = BenchmarkConfig(batch=1, batches=(1, 3), imgsz=64, warmup=1, iterations=4)
    result = benchmark(dynamic.out_dir, tmp_path / "s", config)
    sweep = result.extra["sweep"]
    assert [row["batch"] for row in sweep] == [1, 3]
    assert sweep[1]["throughput_ips"] == pytest.approx(3 * 1000.0 / sweep[1]["latency_ms_mean"], rel=1e-3)
    assert result.metrics["throughput_ips_b3"] == sweep[1]["throughput_ips"]
    assert result.metrics["latency_ms_p50"] == sweep[0]["latency_ms_p50"]  # the first batch is the step's metrics


def test_pinning_restores_affinity_and_floor_is_flops_over_peak(trained, tmp_path):
    import os

    from sparsepipe.benchmark import onnx_macs

    before = os.sched_getaffinity(0)
    threads = min(2, len(before))
    result = benchmark(str(trained.export_dir), tmp_path / "p",
                       BenchmarkConfig(engine="onnxruntime,openvino", threads=threads, pin=True, floor=True,
                                       warmup=1, iterations=4))
    assert result.extra["pinned_cpus"] == sorted(before)[:threads]
    assert os.sched_getaffinity(0) == before
    m, peak = result.metrics, result.extra["peak"]
    macs = onnx_macs(result.files["onnx"])
    assert m["gmacs"] == pytest.approx(macs / 1e9, abs=1e-4)
    assert m["floor_ms"] == pytest.approx(2 * macs / peak["int8_ops_s"] * 1000, rel=1e-3)
    assert m["latency_vs_floor"] == pytest.approx(m["latency_ms_p50"] / m["floor_ms"], rel=1e-2)
    assert peak["int8_ops_s"] >= peak["int8_ops_s_onnxruntime"] > 0


def test_onnx_macs_counts_probe_convs_fp32_and_qdq(tmp_path):
    from sparsepipe.benchmark import onnx_macs
    from sparsepipe.hardware import peak_conv_onnx

    for int8 in (False, True):
        path = tmp_path / f"probe-{int8}.onnx"
        expected = peak_conv_onnx(path, int8=int8, channels=8, side=6)
        assert expected == 8 * 8 * 9 * 6 * 6
        assert onnx_macs(path) == expected  # QDQ weights are followed through DequantizeLinear


def test_onnx_macs_grouped_conv_and_gemm(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sparsepipe.benchmark import onnx_macs

    w = numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float32), "w")  # depthwise: 4 groups
    g = numpy_helper.from_array(np.zeros((4 * 5 * 5, 10), np.float32), "g")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["y"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, g])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert onnx_macs(path) == 4 * 5 * 5 * 9 + 10 * 100


def test_profile_ops_ranks_operator_types(trained):
    from sparsepipe.benchmark import _onnx_path, profile_ops

    path = _onnx_path(str(trained.export_dir))[0]
    for engine in ("onnxruntime", "openvino"):
        ops = profile_ops(path, engine, threads=1, iterations=2, top=5)
        assert 0 < len(ops) <= 5
        shares = [op["share"] for op in ops]
        assert shares == sorted(shares, reverse=True) and sum(shares) <= 1.0001
        assert any("Conv" in op["op"] for op in ops)


def test_scenario_options_are_validated():
    with pytest.raises(ConfigError, match="scenario async"):
        BenchmarkConfig(streams=2)
    with pytest.raises(ConfigError, match="scenario="):
        BenchmarkConfig(scenario="offline")
    with pytest.raises(ConfigError, match="batches"):
        BenchmarkConfig(batches=(4, 4))
    with pytest.raises(ConfigError, match="usable"):
        BenchmarkConfig(threads=4096, pin=True)


def test_cli_batch_list_is_checked(trained, tmp_path, capsys):
    from sparsepipe.cli import main

    code = main(["benchmark", "--model", str(trained.export_dir), "--batch", "1,x", "--no-track", "--out", str(tmp_path / "c")])
    assert code != 0
    assert "--batch" in capsys.readouterr().err


# ---------------------------------------------------------------- make bench: report helpers (no timing)
def _bench_report():
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    return importlib.import_module("bench_report")


def test_recipe_epochs_are_scaled_to_the_budget():
    br = _bench_report()
    raw = {"num_epochs": 100, "pruning_start_epoch": 0, "pruning_end_epoch": 60, "qat_start_epoch": 90.0,
           "freeze_epoch": "eval(num_epochs - 1)", "lr": 0.01, "use_epoch": True}
    assert br.scaled_recipe_args(raw, 30) == {"num_epochs": 30, "pruning_start_epoch": 0, "pruning_end_epoch": 18,
                                              "qat_start_epoch": 27.0}
    assert br.scaled_recipe_args({}, 5) == {"num_epochs": 5}
    assert br.variant_name("recipes/yolov8n-channels50-quant.yaml") == "channels50-qat"
    assert br.variant_name("recipes/yolov8n-channels30.yaml") == "channels30"
    assert br.variant_name("recipes/yolov8n-quick-test.yaml", qat=True) == "quick-test-qat"


def _row(variant, engine, p50, map_, size=640, threads=1):
    return {"size": size, "threads": threads, "variant": variant, "engine": engine, "latency_ms_p50": p50,
            "map50_95": map_}


def test_ratios_best_variant_and_verdict():
    br = _bench_report()
    rows = [_row("dense", "onnxruntime", 60.0, 0.20), _row("ultralytics-openvino-int8", "openvino", 20.0, 0.20),
            _row("channels50-qat", "openvino", 10.0, 0.195), _row("channels70", "openvino", 5.0, 0.10),
            _row("dense", "onnxruntime", 20.0, 0.10, size=320)]
    br.add_ratios(rows)
    assert rows[2]["vs_ort_fp32"] == 6.0 and rows[2]["vs_ul_ov_int8"] == 2.0
    assert rows[2]["map_kept"] == pytest.approx(0.975)
    # A point ratio >= 0.97 is not enough: the lower bound of the paired interval decides.
    assert br.best_rows(rows)[(640, 1)]["variant"] == "dense"
    rows[2].update(map_kept_ci_low=0.968, map_kept_ci_high=0.982)
    assert br.best_rows(rows)[(640, 1)]["variant"] == "dense"
    rows[2].update(map_kept_ci_low=0.971)
    rows[3].update(map_kept_ci_low=0.4, map_kept_ci_high=0.6)
    best = br.best_rows(rows)
    assert best[(640, 1)]["variant"] == "channels50-qat"  # channels70 is faster but lost accuracy
    assert best[(320, 1)]["variant"] == "dense"
    assert "met" in br.verdict(best[(640, 1)]) and "NOT" not in br.verdict(best[(640, 1)])
    assert "NOT met (needs 5.00x more)" in br.verdict(best[(320, 1)])
    assert br.fastest_rows(rows)[(640, 1)]["variant"] == "channels70"
    text = br.summary(rows, {"x": [{"op": "QLinearConv", "share": 0.5, "ms_per_run": 1.0}]})
    assert "channels50-qat on openvino" in text and "QLinearConv 50%" in text
    assert "fastest at any accuracy, 640 px, 1 thread: channels70 on openvino" in text


def test_pareto_front_keeps_only_undominated_rows():
    br = _bench_report()
    rows = [_row("a", "openvino", 10.0, 0.5), _row("b", "openvino", 5.0, 0.4), _row("c", "openvino", 7.0, 0.3),
            _row("d", "openvino", 20.0, 0.6), _row("e", "openvino", 12.0, 0.45)]
    assert [r["variant"] for r in br.pareto_front(rows)] == ["b", "a", "d"]  # c and e are beaten on both axes


def test_docs_section_is_replaced_not_duplicated():
    br = _bench_report()
    doc = "# Benchmarks\n\nintro\n"
    once = br.replace_section(doc, "table v1", "## Issue 8")
    twice = br.replace_section(once + "\nafter\n", "table v2", "## Issue 8")
    assert once.count("## Issue 8") == 1 and "table v1" in once
    assert "table v2" in twice and "table v1" not in twice and twice.count(br.START) == 1
    assert twice.startswith("# Benchmarks\n\nintro") and twice.rstrip().endswith("after")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # trains, exports (ultralytics INT8 twice), evaluates and times twice
def test_bench_quick_runs_end_to_end_and_reuses_steps(trained, tmp_path):
    """benchmarks/bench.py --quick on the tiny fixture model (baseline = plain = pruned75 here),
    with a QAT recipe as the 'channel' variant; a second run re-times and retrains nothing."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    src = tmp_path / "sparsify"
    for name in ("baseline", "plain", "pruned50", "pruned75"):
        shutil.copytree(trained.train_dir, src / name)
    shutil.copytree(trained.data_dir, src / "data")
    out = tmp_path / "bench"
    cmd = [sys.executable, str(root / "benchmarks" / "bench.py"), "--quick", "--sparsify", str(src), "--out", str(out),
           "--sizes", "64", "--train-imgsz", "64", "--engines", "onnxruntime,openvino", "--epochs", "1",
           "--recipes", str(root / "recipes" / "yolov8n-quick-test.yaml"), "--iterations", "4"]
    first = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads((out / "bench.json").read_text())["rows"]
    pairs = {(r["variant"], r["engine"]) for r in rows}
    for variant in ("dense", "dense-ptq", "pruned50-qat", "pruned75-qat", "quick-test-qat", "ultralytics-openvino-int8"):
        assert any(v == variant for v, _ in pairs), variant
    assert ("quick-test-qat-ptq", "onnxruntime") not in pairs  # an INT8 QAT file is not re-quantized
    ref = next(r for r in rows if (r["variant"], r["engine"]) == ("dense", "onnxruntime"))
    assert ref["vs_ort_fp32"] == 1.0
    assert ref["map_kept"] == (1.0 if ref["map50_95"] > 0 else None)  # the 2-epoch fixture model may score 0
    assert ref["map50_95_ci_low"] <= ref["map50_95"] + 0.05 and ref["map50_95_ci_high"] is not None
    assert all(r["floor_ms"] > 0 and r["latency_vs_floor"] == pytest.approx(r["latency_ms_p50"] / r["floor_ms"]) for r in rows)
    assert "Best sparsepipe variant" in (out / "bench.md").read_text() and (out / "bench.png").stat().st_size > 0
    trained_at = (out / "train" / "quick-test-qat" / "result.json").stat().st_mtime_ns
    second = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1500)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (out / "train" / "quick-test-qat" / "result.json").stat().st_mtime_ns == trained_at
    assert "Starting training" not in second.stdout + second.stderr
