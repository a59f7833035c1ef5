"""The report step: variants merged from step results into tables and a plot.

    .venv/bin/python -m pytest tests/test_report.py
"""

from __future__ import annotations

import pytest

from sparsepipe.errors import SparsepipeError
from sparsepipe.report import ReportConfig, report
from sparsepipe.results import StepResult


def _result(tmp_path, name, step, variant, metrics, files=None):
    out = tmp_path / name
    out.mkdir()
    StepResult(step=step, out_dir=str(out), variant=variant, metrics=metrics, files=files or {}).write()
    return str(out)


@pytest.fixture()
def results(tmp_path):
    return [
        _result(tmp_path, "ev-base", "evaluate", "baseline", {"map50": 0.5, "map50_95": 0.3}),
        _result(tmp_path, "bench-base", "benchmark", "baseline",
                {"latency_ms_p50": 20.0, "latency_ms_p90": 22.0, "throughput_ips": 50.0, "size_mb": 12.0, "size_gz_mb": 11.0},
                {"onnx": "model.onnx"}),
        _result(tmp_path, "train-pruned", "train", "pruned", {"params": 3_000_000.0}),
        _result(tmp_path, "ev-pruned", "evaluate", "pruned", {"map50": 0.49, "map50_95": 0.29}),
        _result(tmp_path, "bench-pruned", "benchmark", "pruned",
                {"latency_ms_p50": 10.0, "latency_ms_p90": 11.0, "throughput_ips": 100.0, "size_mb": 12.0, "size_gz_mb": 3.0}),
    ]


def test_variants_are_merged_with_speedups(results, tmp_path):
    result = report(results, tmp_path / "report")
    variants = result.extra["variants"]
    assert set(variants) == {"baseline", "pruned"}
    assert variants["pruned"]["metrics"]["speedup_vs_baseline"] == 2.0
    assert variants["baseline"]["metrics"]["speedup_vs_baseline"] == 1.0
    assert variants["pruned"]["metrics"]["map50_95_delta"] == pytest.approx(-0.01)
    assert variants["pruned"]["metrics"]["params"] == 3_000_000
    md = result.path("markdown").read_text()
    assert "| pruned |" in md and "2.00x" in md and "mAP50-95" in md
    html = result.path("html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    assert result.path("plot").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pruned" in result.extra["table"]


def test_missing_baseline_names_the_variants(results, tmp_path):
    with pytest.raises(SparsepipeError, match="baseline, pruned"):
        report(results, tmp_path / "r", ReportConfig(baseline="dense"))
