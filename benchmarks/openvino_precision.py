"""OpenVINO f32 vs bf16 on one trained model: mAP and latency of both precisions, onnxruntime as reference.

    .venv/bin/python benchmarks/openvino_precision.py --model runs/bench/640/dense/model.onnx \
        --data runs/bench-sparsify/data --out benchmarks/results/openvino-precision.json

``openvino`` (f32: what ``predict`` and ``serve`` run) and ``openvino-bf16`` (OpenVINO's own default
on AMX / AVX512-BF16 CPUs) are opened through :mod:`sparsepipe.engines`, exactly as the benchmark
and predict open them. Accuracy: every image of the split goes through ``Predictor`` (letterbox,
engine, NMS at conf 0.001 / IoU 0.7) and is scored with :mod:`sparsepipe.bootstrap`'s COCO-style
mAP. Latency: the three engines timed interleaved in the same rounds (random input, batch 1).
On a CPU without bf16 both OpenVINO runs are f32 (the JSON says which precision ran).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an exported YOLO .onnx")
    parser.add_argument("--data", required=True, help="a data step folder or data YAML")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    from sparsepipe.benchmark import BenchmarkConfig, time_interleaved
    from sparsepipe.bootstrap import build_records, mean_average_precision
    from sparsepipe.data import class_names, resolve_data, split_images
    from sparsepipe.engines.sessions import openvino_settings_of
    from sparsepipe.evaluate import _labels
    from sparsepipe.hardware import cpu_info, engine_versions
    from sparsepipe.image_input import load_image
    from sparsepipe.predict import PredictConfig, Predictor

    data_yaml = resolve_data(args.data)
    images, names = split_images(data_yaml, args.split), class_names(data_yaml)
    engines = ("onnxruntime", "openvino", "openvino-bf16")
    report: dict = {"model": str(args.model), "images": len(images), "threads": args.threads,
                    "hardware": cpu_info(), "engines": engine_versions(), "accuracy": {}, "latency": {}}
    raw: dict[str, list[np.ndarray]] = {}
    for engine in engines:
        predictor = Predictor(args.model, config=PredictConfig(engine=engine, conf=0.001, iou=0.7, threads=args.threads))
        if engine != "onnxruntime":
            report.setdefault("precision", {})[engine] = openvino_settings_of(predictor.engine.compiled)["precision"]
        started = time.perf_counter()

        def rows():
            for image in images:
                pred = predictor.predict([image])[0]
                dets = pred.detections
                gt_boxes, gt_cls = _labels(Path(image), pred.width, pred.height)
                yield (Path(image).name, np.array([d.box for d in dets]).reshape(-1, 4), np.array([d.score for d in dets]),
                       np.array([d.class_id for d in dets], int), gt_boxes, gt_cls)

        map50_95, map50 = mean_average_precision(build_records(rows(), max(len(names), 1)))
        # raw output of the first image: how far each engine's boxes and scores move from onnxruntime's
        batch, _ = predictor._preprocess([load_image(images[0])[0]])
        raw[engine] = [predictor.engine(batch)[0]]
        report["accuracy"][engine] = {"map50": round(map50, 5), "map50_95": round(map50_95, 5),
                                      "seconds": round(time.perf_counter() - started, 1)}
        print(engine, report["accuracy"][engine], flush=True)
    for engine in engines[1:]:
        diff = np.abs(raw[engine][0] - raw["onnxruntime"][0])
        report["accuracy"][engine]["max_abs_output_diff_vs_onnxruntime"] = float(diff.max())
        report["accuracy"][engine]["mean_abs_output_diff_vs_onnxruntime"] = float(diff.mean())
    config = BenchmarkConfig(threads=args.threads, iterations=args.iterations, rounds=args.rounds, warmup=10)
    timed = time_interleaved([(engine, engine, Path(args.model)) for engine in engines], config)
    for engine, lat in timed.items():
        arr = np.asarray(lat)
        report["latency"][engine] = {"p50_ms": round(float(np.median(arr)), 3),
                                     "p90_ms": round(float(np.percentile(arr, 90)), 3), "n": int(arr.size)}
    report["latency"]["bf16_speedup_vs_f32"] = round(report["latency"]["openvino"]["p50_ms"]
                                                     / report["latency"]["openvino-bf16"]["p50_ms"], 3)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
