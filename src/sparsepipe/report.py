"""Compare variants side by side: accuracy, size and CPU speed in one table and one plot.

    sparsepipe report --results runs/demo/*/ --baseline baseline --out runs/report

Reads the ``result.json`` of any steps (train, export, evaluate, benchmark...), groups them by
variant and merges their metrics. Writes ``report.md``, a self-contained ``report.html`` (the
plot embedded, so the KFP UI and MLflow render it as is), ``report.json`` and
``accuracy_vs_latency.png``.

Integrity rules:
* every speed comparison comes from ONE interleaved run: ``speedup`` is the variant's own
  benchmark's ``speedup_vs_baseline`` (baseline p50 / variant p50, both timed in that run), and
  the row shows the baseline p50 of that same run beside the variant's. Latencies of different
  rows come from different runs (other loads) and are never divided by each other; the plot's
  x axis is that same speedup;
* accuracy carries its 95 % bootstrap interval, and a variant's ratio to the baseline is the
  *paired* interval (same resampled validation images for both, from the evaluate steps'
  ``per_image.npz``). "keeps >= 97 %" is claimed only when that ratio's lower bound is >= 0.97.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from sparsepipe.bootstrap import DetectionRecords, UndefinedRatio, paired_ratio_interval
from sparsepipe.errors import ConfigError, SparsepipeError
from sparsepipe.results import StepResult, atomic_write_bytes, atomic_write_text, check_out, claim_out, read_result
from sparsepipe.tracking import Tracker

# (metric key, column title, format) in display order; names shared with MLflow and KFP.
COLUMNS = (
    ("map50_95", "mAP50-95", "{:.4f}"),
    ("map50_95_ci", "95% CI", "{}"),
    ("map50_95_ratio_ci", "ratio vs baseline [95% CI]", "{}"),
    ("keeps", "keeps >= threshold", "{}"),
    ("map50", "mAP50", "{:.4f}"),
    ("params", "params", "{:,.0f}"),
    ("sparsity", "sparsity", "{:.2f}"),
    ("size_mb", "size MB", "{:.2f}"),
    ("size_gz_mb", "gzip MB", "{:.2f}"),
    ("latency_ms_p50", "p50 ms", "{:.2f}"),
    ("baseline_latency_ms_p50", "baseline p50 ms (same run)", "{:.2f}"),
    ("latency_ms_p90", "p90 ms", "{:.2f}"),
    ("throughput_ips", "img/s", "{:.1f}"),
    ("speedup_vs_baseline", "speedup", "{:.2f}x"),
)
# When two steps of one variant report the same metric, the later step in this order wins
# (e.g. the ONNX params from export over the torch params from train).
STEP_ORDER = ("data", "train", "sparsify", "quantize", "export", "evaluate", "benchmark")


@dataclasses.dataclass
class ReportConfig:
    """Settings of the report step."""

    baseline: str = "baseline"  # variant every speedup and accuracy delta is relative to
    title: str = "sparsepipe variant comparison"  # heading of the Markdown/HTML report
    keep_threshold: float = 0.97  # "keeps" = lower bound of the paired mAP50-95 ratio >= this
    bootstrap: int = 1000  # resamples for the paired ratio intervals (per_image.npz of evaluate steps)

    def __post_init__(self) -> None:
        if not self.baseline:
            raise ConfigError("baseline must name a variant, e.g. --baseline baseline.")
        if not 0 < self.keep_threshold <= 1.5:
            raise ConfigError(f"keep_threshold={self.keep_threshold!r}: use a ratio such as 0.97.")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 10:
            raise ConfigError(f"bootstrap={self.bootstrap!r}: use a number of resamples >= 10, e.g. 1000.")


def collect_variants(results: list[StepResult]) -> dict[str, dict[str, Any]]:
    """Merge step results into ``{variant: {"metrics": {...}, "model": path, "steps": [...]}}``."""
    variants: dict[str, dict[str, Any]] = {}
    ordered = sorted(results, key=lambda r: STEP_ORDER.index(r.step) if r.step in STEP_ORDER else len(STEP_ORDER))
    for result in ordered:
        if result.step == "data":
            continue
        entry = variants.setdefault(result.variant or "baseline", {"metrics": {}, "model": "", "steps": []})
        entry["steps"].append(result.step)
        entry["metrics"].update({k: v for k, v in result.metrics.items() if _finite(v)})
        if result.step == "benchmark":
            # The baseline timed in this variant's own run: the only latency its speedup may use.
            same_run = (result.extra.get("baseline") or {}).get("latency_ms_p50")
            if same_run is not None and "speedup_vs_baseline" in result.metrics:
                entry["metrics"]["baseline_latency_ms_p50"] = same_run
            else:
                entry["metrics"].pop("baseline_latency_ms_p50", None)
                entry["metrics"].pop("speedup_vs_baseline", None)
        if result.step in ("evaluate", "quantize") and "per_image" in result.files:
            entry["per_image"] = str(result.path("per_image"))
        for role in ("int8_onnx", "onnx", "weights"):
            if role in result.files and result.step in ("export", "quantize", "benchmark"):
                entry["model"] = _short_path(result, role)
                break
        if not entry["model"] and "weights" in result.files:
            entry["model"] = _short_path(result, "weights")
    return variants


def _short_path(result: StepResult, role: str) -> str:
    """``<step folder>/<file>``: enough to find the file, short enough for a table cell."""
    path = result.path(role)
    return f"{path.parent.name}/{path.name}"


def _finite(value: Any) -> bool:
    """Numbers that can be shown and compared (a NaN or a string is left out of the table)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def add_relative_metrics(variants: dict[str, dict[str, Any]], baseline: str, config: "ReportConfig | None" = None) -> None:
    """Accuracy against the baseline: ``map50_95_delta`` and the paired ratio with its interval.

    Speed is never derived here: ``speedup_vs_baseline`` is only what a variant's own benchmark
    measured against the baseline in the same interleaved run (absent otherwise).
    """
    config = config or ReportConfig(baseline=baseline)
    if baseline not in variants:
        raise SparsepipeError(
            f"Baseline variant '{baseline}' is not among the results ({', '.join(sorted(variants)) or 'none'}). "
            f"Pass --baseline with one of those names."
        )
    base_entry = variants[baseline]
    base = base_entry["metrics"]
    base_records = DetectionRecords.load(base_entry["per_image"]) if base_entry.get("per_image") else None
    for name, entry in variants.items():
        m = entry["metrics"]
        if "map50_95" in m and "map50_95" in base:
            m["map50_95_delta"] = round(m["map50_95"] - base["map50_95"], 5)
        if "map50_95_ci_low" in m and "map50_95_ci_high" in m:
            m["map50_95_ci"] = f"[{m['map50_95_ci_low']:.4f}, {m['map50_95_ci_high']:.4f}]"
        if name == baseline:
            continue
        if base_records is not None and entry.get("per_image"):
            try:
                ratio = paired_ratio_interval(DetectionRecords.load(entry["per_image"]), base_records, config.bootstrap)
            except UndefinedRatio:
                pass  # the baseline detects nothing: no ratio (the table shows "-")
            else:
                m.update(ratio.as_metrics("map50_95_ratio"))
        if "map50_95_ratio_ci_low" in m:
            m["map50_95_ratio_ci"] = (f"{m['map50_95_ratio']:.3f} [{m['map50_95_ratio_ci_low']:.3f}, "
                                      f"{m['map50_95_ratio_ci_high']:.3f}]")  # fmt: skip
            m["keeps"] = "yes" if m["map50_95_ratio_ci_low"] >= config.keep_threshold else "no"
    if "latency_ms_p50" in base:
        base["speedup_vs_baseline"] = 1.0
        base["baseline_latency_ms_p50"] = base["latency_ms_p50"]


def _cell(metrics: dict[str, Any], key: str, fmt: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else fmt.format(value)


def markdown_table(variants: dict[str, dict[str, Any]]) -> str:
    header = ["variant", "model"] + [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in variants.items():
        cells = [name, entry["model"] or "-"] + [_cell(entry["metrics"], k, f) for k, _, f in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_table(variants: dict[str, dict[str, Any]]) -> str:
    header = ["variant"] + [title for _, title, _ in COLUMNS]
    rows = [[name] + [_cell(e["metrics"], k, f) for k, _, f in COLUMNS] for name, e in variants.items()]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), "-" * (sum(widths) + 2 * (len(widths) - 1))] + [fmt(r) for r in rows])


def plot_points(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What the plot shows: per variant its measured speedup (one run) and mAP50-95 with its CI."""
    points = []
    for name, e in variants.items():
        m = e["metrics"]
        if "speedup_vs_baseline" in m and "map50_95" in m:
            points.append({"variant": name, "speedup_vs_baseline": m["speedup_vs_baseline"], "map50_95": m["map50_95"],
                           "ci": [m["map50_95_ci_low"], m["map50_95_ci_high"]] if "map50_95_ci_low" in m else None})
    return points


def accuracy_latency_plot(points: list[dict[str, Any]], path: Path, baseline: str) -> Path | None:
    """mAP50-95 (with its 95 % interval) against the speedup each variant measured in its own run."""
    if not points:
        return None

    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for p in points:
        x, y = p["speedup_vs_baseline"], p["map50_95"]
        if p["ci"]:
            ax.errorbar([x], [y], yerr=[[y - p["ci"][0]], [p["ci"][1] - y]], fmt="none", capsize=3, alpha=0.6)
        ax.scatter([x], [y], s=60, marker="*" if p["variant"] == baseline else "o", zorder=3)
        ax.annotate(p["variant"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel(f"speedup vs '{baseline}' (its p50 / variant p50, timed in the variant's own run)")
    ax.set_ylabel("mAP50-95, 95 % bootstrap interval")
    ax.set_title("accuracy vs CPU speedup")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def html_report(title: str, variants: dict[str, dict[str, Any]], plot: Path | None, notes: list[str]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in ["variant", "model"] + [c[1] for c in COLUMNS])
    body = ""
    for name, entry in variants.items():
        cells = [name, entry["model"] or "-"] + [_cell(entry["metrics"], k, f) for k, _, f in COLUMNS]
        body += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>\n"
    image = ""
    if plot is not None:
        encoded = base64.b64encode(plot.read_bytes()).decode("ascii")
        image = f'<img alt="accuracy vs latency" src="data:image/png;base64,{encoded}">'
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<ul>{items}</ul>{image}</body></html>\n"
    )


def report(results: list[str], out: str | Path, config: ReportConfig | None = None, tracker: Any = None) -> StepResult:
    """Build the comparison report from step out folders (or result.json files)."""
    config = config or ReportConfig()
    tracker = tracker or Tracker()
    if not results:
        raise SparsepipeError("report needs --results: the out folders of evaluate/benchmark steps to compare.")
    out = check_out(out)  # nothing in --out changes until every result has been read and merged

    variants = collect_variants([read_result(r) for r in results])
    add_relative_metrics(variants, config.baseline, config)
    out = claim_out(out)
    hardware = {}
    for r in results:
        hardware = read_result(r).extra.get("hardware", hardware) or hardware
    notes = [
        f"speedup = p50 latency of '{config.baseline}' / p50 latency of the variant, both timed interleaved in "
        f"the variant's own benchmark run (same process, same load); that baseline p50 is shown beside it. "
        f"p50 values of different rows come from different runs and are not comparable with each other; "
        f"a variant whose benchmark did not time the baseline has no speedup.",
        "95% CI: bootstrap percentile interval of mAP50-95 over the validation images. ratio vs baseline: "
        "mAP50-95 of the variant / of the baseline with its paired interval (same resampled images for both); "
        f"keeps = 'yes' only when the ratio's lower bound is >= {config.keep_threshold}.",
    ]
    if hardware:
        notes.append(
            f"CPU: {hardware.get('cpu_model')} ({hardware.get('usable_cores')} usable cores, INT8: {hardware.get('int8_hint')})"
        )
    points = plot_points(variants)
    plot = accuracy_latency_plot(points, out / "accuracy_vs_latency.png", config.baseline)
    table = markdown_table(variants)
    md = f"# {config.title}\n\n{table}\n\n" + "".join(f"- {n}\n" for n in notes)
    if plot is not None:
        md += f"\n![accuracy vs latency]({plot.name})\n"
    files = {
        "markdown": str(atomic_write_text(out / "report.md", md)),
        "html": str(atomic_write_text(out / "report.html", html_report(config.title, variants, plot, notes))),
        "json": str(atomic_write_text(out / "report.json", json.dumps({"variants": variants, "plot_points": points},
                                                                       indent=2, sort_keys=True) + "\n")),
    }
    if plot is not None:
        files["plot"] = str(plot)
    result = StepResult(
        step="report",
        out_dir=str(out),
        variant="",
        files=files,
        metrics={},
        config={"results": [str(r) for r in results], **dataclasses.asdict(config)},
        extra={"variants": variants, "table": text_table(variants), "plot_points": points},
    )
    for path in files.values():
        tracker.log_artifact(path, "report")
    result.write()
    return result
