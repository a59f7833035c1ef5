"""Tables, targets, plot and the docs section of `make bench` (benchmarks/bench.py).

    .venv/bin/python benchmarks/bench.py --out runs/bench      # calls these; no CLI of its own

Pure functions over the rows bench.py measures (one dict per size x threads x variant x engine),
so they are tested without timing anything (tests/test_benchmark.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Targets of issue 8: best sparsepipe variant vs dense FP32 on onnxruntime and vs ultralytics'
# OpenVINO INT8 export of the same baseline, at >= 97 % of the dense reference's mAP50-95.
TARGET_VS_ORT_FP32 = 5.0
TARGET_VS_UL_OV_INT8 = 1.5
TARGET_MAP_KEPT = 0.97
REFERENCE = ("dense", "onnxruntime")
UL_OV = ("ultralytics-openvino-int8", "openvino")
START = "<!-- bench:issue8:start (written by benchmarks/bench.py; reruns replace it) -->"
END = "<!-- bench:issue8:end -->"


def scaled_recipe_args(raw: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Shorten a recipe to ``epochs``: ``num_epochs`` becomes ``epochs`` and every other plain
    numeric variable whose name contains ``epoch`` is scaled by the same factor (expressions
    such as ``eval(num_epochs - 1)`` follow by themselves and are left alone)."""
    original = raw.get("num_epochs")
    if not isinstance(original, (int, float)) or isinstance(original, bool) or original <= 0:
        return {"num_epochs": epochs}
    factor = epochs / original
    args: dict[str, Any] = {"num_epochs": epochs}
    for name, value in raw.items():
        if name == "num_epochs" or "epoch" not in name or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        scaled = value * factor
        args[name] = int(round(scaled)) if isinstance(value, int) else round(scaled, 4)
    return args


def variant_name(recipe: str | Path, qat: bool = False) -> str:
    """``recipes/yolov8n-channels50-quant.yaml`` -> ``channels50-qat``; a QAT recipe (``qat``)
    whose name does not say so gets ``-qat`` appended."""
    stem = Path(recipe).stem
    stem = stem.split("-", 1)[1] if stem.startswith("yolov8n-") else stem
    if stem.endswith("-quant"):
        return stem[: -len("-quant")] + "-qat"
    return stem + "-qat" if qat else stem


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Per (size, threads) cell: ``vs_ort_fp32``, ``vs_ul_ov_int8``, ``map_kept`` (in place).

    ``map_kept`` is the point ratio of mAP50-95 to the dense reference; its paired bootstrap
    interval (``map_kept_ci_low``/``_high``) is filled by bench.py from the evaluate records.
    """
    cells: dict[tuple[int, int], dict[tuple[str, str], dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["size"], row["threads"]), {})[(row["variant"], row["engine"])] = row
    for cell in cells.values():
        ref = cell.get(REFERENCE)
        ov = cell.get(UL_OV)
        for row in cell.values():
            p50 = row["latency_ms_p50"]
            row["vs_ort_fp32"] = ref["latency_ms_p50"] / p50 if ref else None
            row["vs_ul_ov_int8"] = ov["latency_ms_p50"] / p50 if ov else None
            ref_map = ref["map50_95"] if ref else None
            row["map_kept"] = row["map50_95"] / ref_map if ref_map else None


def keeps(row: dict[str, Any]) -> bool:
    """The row keeps >= TARGET_MAP_KEPT of the reference's mAP50-95: the LOWER bound of its paired
    95 % interval says so (the dense reference itself keeps by definition). A row without an
    interval cannot claim it."""
    if (row["variant"], row["engine"]) == REFERENCE or row["variant"] == REFERENCE[0]:
        return True
    low = row.get("map_kept_ci_low")
    return low is not None and low >= TARGET_MAP_KEPT


def best_rows(rows: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """Per (size, threads): the fastest sparsepipe row (ultralytics' exports excluded) that keeps
    >= TARGET_MAP_KEPT of the dense reference's mAP50-95 by :func:`keeps`."""
    best: dict[tuple[int, int], dict[str, Any]] = {}
    for row in rows:
        if row["variant"].startswith("ultralytics-") or not keeps(row):
            continue
        key = (row["size"], row["threads"])
        if key not in best or row["latency_ms_p50"] < best[key]["latency_ms_p50"]:
            best[key] = row
    return best


def fastest_rows(rows: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """Per (size, threads): the fastest sparsepipe row at any accuracy."""
    fastest: dict[tuple[int, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["size"], row["threads"])
        if not row["variant"].startswith("ultralytics-") and (key not in fastest or row["latency_ms_p50"] < fastest[key]["latency_ms_p50"]):
            fastest[key] = row
    return fastest


def verdict(row: dict[str, Any]) -> str:
    """One line: met / not met, by how much, for both speed targets."""
    parts = []
    for name, value, target in (("vs dense FP32 ORT", row.get("vs_ort_fp32"), TARGET_VS_ORT_FP32),
                                ("vs ultralytics OV INT8", row.get("vs_ul_ov_int8"), TARGET_VS_UL_OV_INT8)):
        if value is None:
            parts.append(f"{name}: not measured")
            continue
        state = "met" if value >= target else f"NOT met (needs {target / value:.2f}x more)"
        parts.append(f"{name} {value:.2f}x (target >= {target:g}x: {state})")
    return "; ".join(parts)


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _interval(low: Any, high: Any, spec: str) -> str:
    return "" if low is None or high is None else f" [{low:{spec}}, {high:{spec}}]"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | threads | variant | engine | mAP50-95 [95% CI] | kept [paired 95% CI] | p50 ms | vs ORT FP32 "
             "| vs ultralytics OV INT8 | GMAC | INT8 floor ms | p50 / floor | size MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['threads']} | {r['variant']} | {r['engine']} | {r['map50_95']:.4f}"
            f"{_interval(r.get('map50_95_ci_low'), r.get('map50_95_ci_high'), '.3f')} | "
            f"{_fmt(r.get('map_kept'), '.3f')}{_interval(r.get('map_kept_ci_low'), r.get('map_kept_ci_high'), '.3f')} | "
            f"{r['latency_ms_p50']:.2f} | {_fmt(r.get('vs_ort_fp32'), '.2f', 'x')} | "
            f"{_fmt(r.get('vs_ul_ov_int8'), '.2f', 'x')} | {_fmt(r.get('gmacs'), '.3f')} | {_fmt(r.get('floor_ms'), '.3f')} | "
            f"{_fmt(r.get('latency_vs_floor'), '.1f', 'x')} | {_fmt(r.get('size_mb'), '.2f')} |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]], profiles: dict[str, list[dict[str, Any]]]) -> str:
    """The closing lines: best variant per cell with its verdict, then the top ops of the best ones."""
    lines = [f"Best sparsepipe variant per cell (fastest whose paired 95 % interval of mAP50-95 / dense has its lower "
             f"bound >= {TARGET_MAP_KEPT:.2f}):", ""]
    best = best_rows(rows)
    for (size, threads), row in sorted(best.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        lines.append(f"- {size} px, {threads} thread{'s' if threads > 1 else ''}: **{row['variant']} on {row['engine']}**, "
                     f"{row['latency_ms_p50']:.2f} ms, mAP kept {_fmt(row.get('map_kept'), '.3f')}"
                     f"{_interval(row.get('map_kept_ci_low'), row.get('map_kept_ci_high'), '.3f')}, p50 / INT8 floor "
                     f"{_fmt(row.get('latency_vs_floor'), '.1f', 'x')}: {verdict(row)}")
    cells = {(r["size"], r["threads"]) for r in rows}
    for (size, threads), row in sorted(fastest_rows(rows).items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        if best.get((size, threads)) is not row:
            lines.append(f"- (fastest at any accuracy, {size} px, {threads} thread{'s' if threads > 1 else ''}: {row['variant']} on "
                         f"{row['engine']}, {row['latency_ms_p50']:.2f} ms, mAP kept {_fmt(row.get('map_kept'), '.3f')}, "
                         f"{_fmt(row.get('vs_ort_fp32'), '.2f', 'x')} vs dense FP32 ORT, "
                         f"{_fmt(row.get('vs_ul_ov_int8'), '.2f', 'x')} vs ultralytics OV INT8)")
    for size, threads in sorted(cells - set(best)):
        lines.append(f"- {size} px, {threads} threads: no sparsepipe variant's interval shows it keeps {TARGET_MAP_KEPT:.0%} "
                     f"of the reference mAP")
    if profiles:
        lines += ["", "What limits it (top ops by time, summed kernel time per run):", ""]
        for name, ops in profiles.items():
            shown = ", ".join(f"{op['op']} {op['share']:.0%} ({op['ms_per_run']:.2f} ms)" for op in ops[:6])
            lines.append(f"- {name}: {shown}")
    return "\n".join(lines)


def replace_section(doc: str, section: str, heading: str) -> str:
    """Put ``section`` between the START/END markers of ``doc`` (appended under ``heading`` when
    the markers are missing); text outside the markers is kept as it is."""
    block = f"{START}\n{section.rstrip()}\n{END}"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if pattern.search(doc):
        return pattern.sub(lambda _: block, doc, count=1)
    return doc.rstrip() + f"\n\n{heading}\n\n{block}\n"


ENGINE_MARKERS = {"onnxruntime": "o", "openvino": "s", "deepsparse": "^"}
ENGINE_LINES = {"onnxruntime": "-", "openvino": "--", "deepsparse": ":"}


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row beats on both latency (lower) and mAP50-95 (higher), fastest first."""
    front: list[dict[str, Any]] = []
    best_map = float("-inf")
    for row in sorted(rows, key=lambda r: (r["latency_ms_p50"], -r["map50_95"])):
        if row["map50_95"] > best_map:
            front.append(row)
            best_map = row["map50_95"]
    return front


def plot(rows: list[dict[str, Any]], path: Path, threads: int, save: Any = None) -> Path:
    """Accuracy vs latency, one panel per size, one marker per variant x engine at ``threads``;
    ``save(path, write)`` writes the PNG (e.g. sparsepipe.results.atomic_write_with)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.ScalarFormatter below)

    sizes = sorted({r["size"] for r in rows}, reverse=True)
    variants = sorted({r["variant"] for r in rows})
    cmap = plt.get_cmap("tab20")
    colors = {v: cmap(i % 20) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 5.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        cell = [r for r in rows if r["size"] == size and r["threads"] == threads]
        for r in cell:
            if r.get("map50_95_ci_low") is not None:
                ax.errorbar([r["latency_ms_p50"]], [r["map50_95"]], color=colors[r["variant"]], linewidth=0.8, alpha=0.7,
                            yerr=[[r["map50_95"] - r["map50_95_ci_low"]], [r["map50_95_ci_high"] - r["map50_95"]]])
            ax.scatter(r["latency_ms_p50"], r["map50_95"], color=colors[r["variant"]],
                       marker=ENGINE_MARKERS.get(r["engine"], "x"), s=55, edgecolors="black", linewidths=0.4, zorder=3)
        for engine in sorted({r["engine"] for r in cell}):
            front = pareto_front([r for r in cell if r["engine"] == engine])
            ax.step([r["latency_ms_p50"] for r in front], [r["map50_95"] for r in front], where="post", color="black",
                    linestyle=ENGINE_LINES.get(engine, "-"), linewidth=0.9, alpha=0.6)
        ref = [r for r in rows if r["size"] == size and r["threads"] == threads and (r["variant"], r["engine"]) == REFERENCE]
        if ref:
            ax.axhline(ref[0]["map50_95"] * TARGET_MAP_KEPT, color="gray", linestyle="--", linewidth=0.8)
            ax.axvline(ref[0]["latency_ms_p50"] / TARGET_VS_ORT_FP32, color="gray", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("p50 latency, ms (log scale, batch 1)")
        ax.set_ylabel("mAP50-95 (val split, 95 % bootstrap interval)")
        ax.set_title(f"YOLOv8n {size} px, {threads} thread{'s' if threads > 1 else ''}: Pareto front per engine (black "
                     f"lines); gray dashed: {TARGET_MAP_KEPT:.0%} of dense mAP; dotted: 5x dense ORT FP32", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[v], marker="o", linestyle="", label=v) for v in variants]
    handles += [plt.Line2D([], [], color="black", marker=m, linestyle=ENGINE_LINES[e], label=f"{e} (front)")
                for e, m in ENGINE_MARKERS.items() if any(r["engine"] == e for r in rows)]
    fig.legend(handles=handles, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    if save is None:
        fig.savefig(path, dpi=110)
    else:
        save(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
