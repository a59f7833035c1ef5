"""The report step: variants merged from step results into tables and a plot.

    .venv/bin/python -m pytest tests/test_report.py
"""

from __future__ import annotations

import dataclasses

import pytest

from sparsepipe.errors import SparsepipeError
from sparsepipe.report import ReportConfig, report
from sparsepipe.results import StepResult


def _result(tmp_path, name, step, variant, metrics, files=None, extra=None):
    out = tmp_path / name
    out.mkdir()
    StepResult(step=step, out_dir=str(out), variant=variant, metrics=metrics, files=files or {}, extra=extra or {}).write()
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
        # Timed with the baseline in its own run, at another load: the baseline took 30 ms there.
        _result(tmp_path, "bench-pruned", "benchmark", "pruned",
                {"latency_ms_p50": 10.0, "latency_ms_p90": 11.0, "throughput_ips": 100.0, "size_mb": 12.0, "size_gz_mb": 3.0,
                 "speedup_vs_baseline": 3.0},
                extra={"baseline": {"latency_ms_p50": 30.0}}),
    ]


def test_variants_are_merged_with_speedups(results, tmp_path):
    result = report(results, tmp_path / "report")
    variants = result.extra["variants"]
    assert set(variants) == {"baseline", "pruned"}
    # The speedup of its own interleaved run, never 20 ms / 10 ms across runs.
    assert variants["pruned"]["metrics"]["speedup_vs_baseline"] == 3.0
    assert variants["pruned"]["metrics"]["baseline_latency_ms_p50"] == 30.0
    assert variants["baseline"]["metrics"]["speedup_vs_baseline"] == 1.0
    assert variants["pruned"]["metrics"]["map50_95_delta"] == pytest.approx(-0.01)
    assert variants["pruned"]["metrics"]["params"] == 3_000_000
    md = result.path("markdown").read_text()
    assert "| pruned |" in md and "3.00x" in md and "2.00x" not in md and "mAP50-95" in md
    assert "same run" in md and "not comparable" in md
    html = result.path("html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    assert result.path("plot").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pruned" in result.extra["table"]


def test_missing_baseline_names_the_variants(results, tmp_path):
    with pytest.raises(SparsepipeError, match="baseline, pruned"):
        report(results, tmp_path / "r", ReportConfig(baseline="dense"))


def test_a_variant_timed_without_the_baseline_gets_no_speedup(tmp_path):
    results = [
        _result(tmp_path, "bench-base", "benchmark", "baseline", {"latency_ms_p50": 20.0}),
        _result(tmp_path, "ev-base", "evaluate", "baseline", {"map50_95": 0.3}),
        _result(tmp_path, "bench-alone", "benchmark", "alone", {"latency_ms_p50": 10.0}),
        _result(tmp_path, "ev-alone", "evaluate", "alone", {"map50_95": 0.3, "map50": float("nan")}),
    ]
    result = report(results, tmp_path / "report")
    alone = result.extra["variants"]["alone"]["metrics"]
    assert "speedup_vs_baseline" not in alone and "map50" not in alone  # no cross-run ratio, no NaN
    assert [p["variant"] for p in result.extra["plot_points"]] == ["baseline"]


def test_separate_runs_at_different_loads_keep_their_own_ratios(trained, tmp_path):
    """Two variants timed in separate benchmark runs, the second under a CPU hog: every ratio the
    table and the plot show is the one measured inside each run (speedup_vs_baseline)."""
    import multiprocessing
    import time as _time

    from sparsepipe.benchmark import BenchmarkConfig, benchmark

    config = BenchmarkConfig(threads=1, warmup=2, iterations=30, rounds=2)
    model = str(trained.export_dir)
    quiet = benchmark(model, tmp_path / "quiet", dataclasses.replace(config, variant="quiet"), baseline=model)
    hogs = [multiprocessing.Process(target=_spin, args=(_time.time() + 60,), daemon=True) for _ in range(3)]
    for h in hogs:
        h.start()
    try:
        busy = benchmark(model, tmp_path / "busy", dataclasses.replace(config, variant="busy"), baseline=model)
    finally:
        for h in hogs:
            h.terminate()
    base = benchmark(model, tmp_path / "base", dataclasses.replace(config, variant="baseline"))
    scores = [_result(tmp_path, f"ev-{v}", "evaluate", v, {"map50_95": 0.2}) for v in ("baseline", "quiet", "busy")]
    result = report([str(tmp_path / d) for d in ("base", "quiet", "busy")] + scores, tmp_path / "report")
    variants = result.extra["variants"]
    for timed in (quiet, busy):
        m = variants[timed.variant]["metrics"]
        assert m["speedup_vs_baseline"] == timed.metrics["speedup_vs_baseline"]
        assert m["baseline_latency_ms_p50"] == timed.extra["baseline"]["latency_ms_p50"]
        # the table's two latencies of a row give back its speedup
        assert m["baseline_latency_ms_p50"] / m["latency_ms_p50"] == pytest.approx(m["speedup_vs_baseline"], rel=1e-3)
    plotted = {p["variant"]: p["speedup_vs_baseline"] for p in result.extra["plot_points"]}
    assert plotted == {"baseline": 1.0, "quiet": quiet.metrics["speedup_vs_baseline"],
                       "busy": busy.metrics["speedup_vs_baseline"]}
    # The two runs' baselines were timed apart (at other loads), so a cross-run ratio would differ
    # from the in-run one; each run's ratio is its own baseline p50 over its own model p50 (no bound
    # on the timings themselves: tests never assert how fast a machine is).
    assert busy.extra["baseline"]["latency_ms_p50"] != quiet.extra["baseline"]["latency_ms_p50"]
    for timed in (quiet, busy):
        assert timed.metrics["speedup_vs_baseline"] == round(
            timed.extra["baseline"]["latency_ms_p50"] / timed.metrics["latency_ms_p50"], 4)


def _spin(until: float) -> None:
    import time as _time

    while _time.time() < until:
        pass


def test_a_refused_report_leaves_out_untouched(results, tmp_path):
    out = tmp_path / "report-refused"
    with pytest.raises(SparsepipeError):
        report(results, out, ReportConfig(baseline="dense"))
    assert not out.exists()
