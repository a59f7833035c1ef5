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
    # The same file against itself in one interleaved run: the ratio is near 1.
    assert 0.5 < m["speedup_vs_baseline"] < 2.0
    assert result.extra["hardware"]["usable_cores"] >= 1
    assert (tmp_path / "b" / "result.json").is_file()
    assert "speedup_vs_baseline" in capsys.readouterr().out


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
