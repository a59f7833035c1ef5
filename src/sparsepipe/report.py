"""Compare variants side by side: accuracy, size and CPU speed in one table and one plot.

    sparsepipe report --results runs/demo/*/ --baseline baseline --out runs/report

Reads the ``result.json`` of any steps (train, export, evaluate, benchmark...), groups them by
variant and merges their metrics. Writes ``report.md``, a self-contained ``report.html`` (the
plot embedded, so the KFP UI and MLflow render it as is), ``report.json`` and
``accuracy_vs_latency.png``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
from pathlib import Path
from typing import Any

from sparsepipe.errors import ConfigError, SparsepipeError
from sparsepipe.results import StepResult, atomic_write_bytes, atomic_write_text, begin_step, read_result

# (metric key, column title, format) in display order; names shared with MLflow and KFP.
COLUMNS = (
    ("map50_95", "mAP50-95", "{:.4f}"),
    ("map50", "mAP50", "{:.4f}"),
    ("params", "params", "{:,.0f}"),
    ("sparsity", "sparsity", "{:.2f}"),
    ("size_mb", "size MB", "{:.2f}"),
    ("size_gz_mb", "gzip MB", "{:.2f}"),
    ("latency_ms_p50", "p50 ms", "{:.2f}"),
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

    def __post_init__(self) -> None:
        if not self.baseline:
            raise ConfigError("baseline must name a variant, e.g. --baseline baseline.")


def collect_variants(results: list[StepResult]) -> dict[str, dict[str, Any]]:
    """Merge step results into ``{variant: {"metrics": {...}, "model": path, "steps": [...]}}``."""
    variants: dict[str, dict[str, Any]] = {}
    ordered = sorted(results, key=lambda r: STEP_ORDER.index(r.step) if r.step in STEP_ORDER else len(STEP_ORDER))
    for result in ordered:
        if result.step == "data":
            continue
        entry = variants.setdefault(result.variant or "baseline", {"metrics": {}, "model": "", "steps": []})
        entry["steps"].append(result.step)
        entry["metrics"].update(result.metrics)
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


def add_relative_metrics(variants: dict[str, dict[str, Any]], baseline: str) -> None:
    """Fill ``speedup_vs_baseline`` (ratio of p50) and ``map50_95_delta`` against the baseline."""
    if baseline not in variants:
        raise SparsepipeError(
            f"Baseline variant '{baseline}' is not among the results ({', '.join(sorted(variants)) or 'none'}). "
            f"Pass --baseline with one of those names."
        )
    base = variants[baseline]["metrics"]
    for entry in variants.values():
        m = entry["metrics"]
        if "latency_ms_p50" in m and "latency_ms_p50" in base and "speedup_vs_baseline" not in m:
            m["speedup_vs_baseline"] = round(base["latency_ms_p50"] / m["latency_ms_p50"], 4)
        if "map50_95" in m and "map50_95" in base:
            m["map50_95_delta"] = round(m["map50_95"] - base["map50_95"], 5)
    if "latency_ms_p50" in base:
        base.setdefault("speedup_vs_baseline", 1.0)


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


def accuracy_latency_plot(variants: dict[str, dict[str, Any]], path: Path, baseline: str) -> Path | None:
    """Scatter of mAP50-95 against p50 latency, one labelled point per variant."""
    points = [
        (name, e["metrics"]["latency_ms_p50"], e["metrics"]["map50_95"])
        for name, e in variants.items()
        if "latency_ms_p50" in e["metrics"] and "map50_95" in e["metrics"]
    ]
    if not points:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, latency, acc in points:
        ax.scatter([latency], [acc], s=60, marker="*" if name == baseline else "o", zorder=3)
        ax.annotate(name, (latency, acc), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("latency p50 (ms, lower is better)")
    ax.set_ylabel("mAP50-95 (higher is better)")
    ax.set_title("accuracy vs CPU latency")
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
    from sparsepipe.tracking import Tracker

    config = config or ReportConfig()
    tracker = tracker or Tracker()
    if not results:
        raise SparsepipeError("report needs --results: the out folders of evaluate/benchmark steps to compare.")
    out = begin_step(out)

    variants = collect_variants([read_result(r) for r in results])
    add_relative_metrics(variants, config.baseline)
    hardware = {}
    for r in results:
        hardware = read_result(r).extra.get("hardware", hardware) or hardware
    notes = [f"speedup = baseline p50 latency / variant p50 latency; baseline = '{config.baseline}'"]
    if hardware:
        notes.append(
            f"CPU: {hardware.get('cpu_model')} ({hardware.get('usable_cores')} usable cores, INT8: {hardware.get('int8_hint')})"
        )
    plot = accuracy_latency_plot(variants, out / "accuracy_vs_latency.png", config.baseline)
    table = markdown_table(variants)
    md = f"# {config.title}\n\n{table}\n\n" + "".join(f"- {n}\n" for n in notes)
    if plot is not None:
        md += f"\n![accuracy vs latency]({plot.name})\n"
    files = {
        "markdown": str(atomic_write_text(out / "report.md", md)),
        "html": str(atomic_write_text(out / "report.html", html_report(config.title, variants, plot, notes))),
        "json": str(atomic_write_text(out / "report.json", json.dumps(variants, indent=2, sort_keys=True) + "\n")),
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
        extra={"variants": variants, "table": text_table(variants)},
    )
    for path in files.values():
        tracker.log_artifact(path, "report")
    result.write()
    return result
