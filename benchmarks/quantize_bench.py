"""INT8 and sparsity on CPU engines, against what a user would pick: one interleaved run.

    .venv/bin/python benchmarks/quantize_bench.py --out runs/bench-quantize      # or: make bench-quantize

Variants of one trained YOLOv8n (default: the pruning benchmark's baseline and its pruned75,
``make bench-sparsify`` first), each exported at every ``--sizes``:
- ``fp32``: sparsepipe export of the dense baseline (the reference: onnxruntime FP32);
- ``ptq``: sparsepipe PTQ INT8 of it;
- ``pruned75``: FP32 export of the pruned model; ``pruned75-ptq``: its PTQ INT8;
- ``pruned75-qat``: the pruned model fine-tuned with QAT (benchmarks/recipes/qat-finetune.yaml), INT8
  in the default ``integer`` export layout (onnxruntime's integer path); ``pruned75-qat-qatlayout``:
  the same checkpoint exported with QDQ only where the recipe fake-quantized (run on OpenVINO only,
  where it is the faster file);
- ``ultralytics-onnx-int8`` / ``ultralytics-openvino-int8``: ultralytics' own INT8 exports of the
  baseline (``export(format=..., quantize=8)``), what a user would do without sparsepipe.
Every ONNX variant runs on every available engine (onnxruntime, OpenVINO, DeepSparse when
``make deepsparse-env`` was run); for each size and thread count all runners are timed in the
same interleaved rounds. mAP50-95 of each file on the same val split. Prints a Markdown table
with ``speedup_vs_ort_fp32`` and ``speedup_vs_ultralytics_ov_int8`` and writes it to ``--out``.

    .venv/bin/python benchmarks/quantize_bench.py --size-breakdown runs/bench-quantize/640/pruned75-ptq/model_int8.onnx

prints where the gzip-compressed bytes of an (INT8) ONNX file go, per group of initializers, and
the order-0 entropy floor of its int8 weights (zero mask + values), then exits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def size_breakdown(path: str) -> str:
    """Markdown table: gzip bytes per initializer group of an ONNX file (each group compressed alone)."""
    import gzip

    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    total = len(gzip.compress(Path(path).read_bytes(), 9))
    groups: dict[str, list[int]] = {}  # tensors, nonzero elements, raw bytes, gzip bytes
    floor_bits = 0.0
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.int8 and a.ndim == 4:
            zeros = float((a == 0).mean())
            where = "stem/head (model.0, model.22)" if init.name.startswith(("model.0.", "model.22.")) else "body"
            key = f"int8 conv weights, {where}, {'pruned' if zeros > 0.5 else 'dense'}"
            mask = 0.0 if zeros in (0.0, 1.0) else -(zeros * np.log2(zeros) + (1 - zeros) * np.log2(1 - zeros))
            _, counts = np.unique(a[a != 0], return_counts=True)
            q = counts / max(counts.sum(), 1)
            floor_bits += a.size * mask + int(np.count_nonzero(a)) * float(-(q * np.log2(q)).sum())
        elif a.dtype in (np.float32, np.float16) and a.ndim == 4:
            key = "float conv weights (kept-float convs)"
        elif a.dtype == np.int32:
            key = "int32 biases"
        elif init.name.endswith("_scale"):
            key = "scales"
        elif init.name.endswith("_zero_point"):
            key = "zero points"
        else:
            key = "other (float biases, shape constants)"
        g = groups.setdefault(key, [0, 0, 0, 0])
        raw = a.tobytes()
        g[0] += 1
        g[1] += int(np.count_nonzero(a))
        g[2] += len(raw)
        g[3] += len(gzip.compress(raw, 9))
    mib = 1024 * 1024
    lines = [f"`{path}`: {Path(path).stat().st_size / mib:.2f} MiB, gzip {total / mib:.3f} MiB", "",
             "| part | tensors | nonzero values | raw MiB | gzip MiB (alone) | share of gzip |", "|---|---|---|---|---|---|"]
    for key, (n, nz, raw, gz) in sorted(groups.items(), key=lambda kv: -kv[1][3]):
        lines.append(f"| {key} | {n} | {nz / 1e6:.3f} M | {raw / mib:.3f} | {gz / mib:.3f} | {gz / total:.0%} |")
    rest = total - sum(g[3] for g in groups.values())
    lines.append(f"| graph, names, metadata (rest) | - | - | - | {rest / mib:.3f} | {rest / total:.0%} |")
    lines.append("")
    lines.append(f"Order-0 entropy floor of the int8 conv weights (zero mask + nonzero values): {floor_bits / 8 / mib:.3f} MiB.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-quantize")
    parser.add_argument("--baseline", default="runs/bench-sparsify/baseline", help="dense checkpoint or train folder")
    parser.add_argument("--pruned", default="runs/bench-sparsify/pruned75", help="pruned checkpoint or sparsify folder")
    parser.add_argument("--data", default="runs/bench-sparsify/data", help="dataset SOURCE (val split for mAP, train for calibration)")
    parser.add_argument("--sizes", default="320,640")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--iterations", type=int, default=60, help="timed iterations per runner per size/threads")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--qat-imgsz", type=int, default=320)
    parser.add_argument("--reuse", action="store_true",
                        help="time again the files of a previous run in --out (and reuse their recorded mAP); "
                             "variants whose folder was removed are made and evaluated again")
    parser.add_argument("--size-breakdown", metavar="ONNX", help="print where the gzip bytes of this file go, and exit")
    args = parser.parse_args()
    if args.size_breakdown:
        print(size_breakdown(args.size_breakdown))
        return

    from ultralytics import YOLO

    from sparsepipe.benchmark import BenchmarkConfig, _available_engines, latency_stats, time_interleaved
    from sparsepipe.data import resolve_data
    from sparsepipe.evaluate import EvaluateConfig, evaluate
    from sparsepipe.export import ExportConfig, export_onnx
    from sparsepipe.hardware import cpu_info
    from sparsepipe.qat import QATConfig, export_int8_onnx, qat
    from sparsepipe.quantize import QuantizeConfig, quantize
    from sparsepipe.results import atomic_write_text, read_result
    from sparsepipe.sizes import file_sizes

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    data_yaml = str(resolve_data(args.data))
    engines = [e for e in _available_engines() if e != "openvino-bf16"]  # as bench.py: openvino = f32
    started = time.time()

    qat_out = out / "pruned75-qat-train"
    if (qat_out / "result.json").is_file():  # a re-run reuses the finished QAT training
        qat_result = read_result(qat_out)
    else:
        qat_result = qat(args.pruned, args.data, "benchmarks/recipes/qat-finetune.yaml", qat_out,
                         QATConfig(imgsz=args.qat_imgsz, plots=False, variant="pruned75-qat"))
    qat_weights = str(qat_result.path("weights"))

    # --reuse: files already in --out whose mAP the previous run recorded are timed again as they are
    previous: dict[tuple[str, int], float] = {}
    if args.reuse and (out / "quantize.json").is_file():
        previous = {(r["variant"], r["size"]): r["map50_95"] for r in json.loads((out / "quantize.json").read_text())}

    def ultralytics_int8(fmt: str, size: int, d: Path) -> Path:
        work = d / f"ultralytics-{fmt}-int8"
        work.mkdir(parents=True, exist_ok=True)
        staged = work / "model.pt"
        baseline_pt = Path(args.baseline) / "model.pt" if Path(args.baseline).is_dir() else Path(args.baseline)
        staged.write_bytes(baseline_pt.read_bytes())
        exported = Path(YOLO(str(staged)).export(format=fmt, quantize=8, data=data_yaml, imgsz=size, batch=1, device="cpu"))
        return next(exported.glob("*.xml")) if fmt == "openvino" else exported  # the IR; its folder holds metadata.yaml

    def qat_layout(size: int, d: Path) -> Path:
        (d / "pruned75-qat-qatlayout").mkdir(parents=True, exist_ok=True)
        return export_int8_onnx(qat_weights, d / "pruned75-qat-qatlayout" / "model_int8.onnx", size, layout="qat")

    files: dict[tuple[str, int], Path] = {}  # (variant, size) -> model file
    accuracy: dict[tuple[str, int], float] = {}
    for size in sizes:
        d = out / str(size)
        makers = {  # variant -> (file it leaves, how to make it)
            "fp32": (d / "fp32" / "model.onnx",
                     lambda: export_onnx(args.baseline, d / "fp32", ExportConfig(imgsz=size)).path("onnx")),
            "ptq": (d / "ptq" / "model_int8.onnx",
                    lambda: quantize(str(d / "fp32"), args.data, d / "ptq", QuantizeConfig(evaluate=False)).path("int8_onnx")),
            "pruned75": (d / "pruned75" / "model.onnx",
                         lambda: export_onnx(args.pruned, d / "pruned75", ExportConfig(imgsz=size)).path("onnx")),
            "pruned75-ptq": (d / "pruned75-ptq" / "model_int8.onnx",
                             lambda: quantize(str(d / "pruned75"), args.data, d / "pruned75-ptq",
                                              QuantizeConfig(evaluate=False)).path("int8_onnx")),
            "pruned75-qat": (d / "pruned75-qat" / "model.onnx",
                             lambda: export_onnx(qat_weights, d / "pruned75-qat", ExportConfig(imgsz=size)).path("onnx")),
            "pruned75-qat-qatlayout": (d / "pruned75-qat-qatlayout" / "model_int8.onnx", lambda: qat_layout(size, d)),
            "ultralytics-onnx-int8": (next(iter(sorted((d / "ultralytics-onnx-int8").glob("*.onnx"))), None),
                                      lambda: ultralytics_int8("onnx", size, d)),
            "ultralytics-openvino-int8": (next(iter(sorted((d / "ultralytics-openvino-int8").glob("*_openvino_model/*.xml"))), None),
                                          lambda: ultralytics_int8("openvino", size, d)),
        }
        for variant, (existing, make) in makers.items():
            if args.reuse and existing is not None and existing.is_file() and (variant, size) in previous:
                files[(variant, size)] = existing
                accuracy[(variant, size)] = previous[(variant, size)]
                print(f"reuse {variant} at {size}: {existing} (mAP50-95 {previous[(variant, size)]:.4f})", flush=True)
            else:
                files[(variant, size)] = make()

    # Accuracy of each file, at its size, on the same val split.
    for (variant, size), path in files.items():
        if (variant, size) in accuracy:
            continue
        if path.suffix == ".xml":  # an OpenVINO IR folder: ultralytics validates it directly
            metrics = YOLO(str(path.parent), task="detect").val(data=data_yaml, imgsz=size, batch=1, plots=False,
                                                                project=str(out / str(size)), name=f"eval-{variant}")
            accuracy[(variant, size)] = float(metrics.box.map)
            continue
        ev = evaluate(str(path), args.data, out / str(size) / f"eval-{variant}", EvaluateConfig(imgsz=size))
        accuracy[(variant, size)] = ev.metrics["map50_95"]

    # Latency: per size and thread count, every (variant, engine) in one interleaved run.
    rows = []
    for size in sizes:
        for nthreads in threads:
            config = BenchmarkConfig(threads=nthreads, iterations=args.iterations, rounds=args.rounds, warmup=5)
            # an OpenVINO IR only runs on OpenVINO; the qat layout is OpenVINO's file
            candidates = [((variant, engine), engine, path) for (variant, vsize), path in files.items()
                          if vsize == size for engine in engines
                          if engine == "openvino" or not (path.suffix == ".xml" or variant.endswith("-qatlayout"))]
            timed = time_interleaved(candidates, config, label=f" at {size} px")
            stats = {pair: latency_stats(lat, 1) for pair, lat in timed.items()}
            ref = stats[("fp32", "onnxruntime")]["latency_ms_p50"]
            ov_ref = stats.get(("ultralytics-openvino-int8", "openvino"), {}).get("latency_ms_p50")
            for (variant, engine), s in stats.items():
                path = files[(variant, size)]
                size_file = path if path.suffix != ".xml" else path.with_suffix(".bin")
                rows.append({
                    "size": size, "threads": nthreads, "variant": variant, "engine": engine,
                    "map50_95": accuracy[(variant, size)], "latency_ms_p50": s["latency_ms_p50"],
                    "latency_ms_p90": s["latency_ms_p90"],
                    "speedup_vs_ort_fp32": ref / s["latency_ms_p50"],
                    "speedup_vs_ultralytics_ov_int8": (ov_ref / s["latency_ms_p50"]) if ov_ref else None,
                    **file_sizes(size_file),
                })

    lines = ["| size | threads | variant | engine | mAP50-95 | p50 ms | vs ORT FP32 | vs ultralytics OV INT8 | size MB | gzip MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs_ov = f"{r['speedup_vs_ultralytics_ov_int8']:.2f}x" if r["speedup_vs_ultralytics_ov_int8"] else "-"
        lines.append(f"| {r['size']} | {r['threads']} | {r['variant']} | {r['engine']} | {r['map50_95']:.4f} | "
                     f"{r['latency_ms_p50']:.2f} | {r['speedup_vs_ort_fp32']:.2f}x | {vs_ov} | {r['size_mb']:.2f} | {r['size_gz_mb']:.2f} |")
    hw = cpu_info()
    header = (f"Command: `.venv/bin/python benchmarks/quantize_bench.py --sizes {args.sizes} --threads {args.threads} "
              f"--iterations {args.iterations} --rounds {args.rounds}{' --reuse' if args.reuse else ''}`; engines {', '.join(engines)}; machine: "
              f"{hw['cpu_model']}, {hw['usable_cores']} cores, INT8: {hw['int8_hint']}; {time.strftime('%Y-%m-%d')}; "
              f"{(time.time() - started) / 60:.0f} min.")
    table = header + "\n\n" + "\n".join(lines) + "\n"
    print(table)
    atomic_write_text(out / "quantize.md", table)
    atomic_write_text(out / "quantize.json", json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
