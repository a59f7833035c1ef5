"""The full comparison: every YOLOv8n variant on every CPU engine, one interleaved run (issue 8).

    .venv/bin/python benchmarks/bench.py --out runs/bench        # or: make bench (after make bench-sparsify)
    .venv/bin/python benchmarks/bench.py --quick --out runs/bench-quick   # minutes: 320 px, 1 thread, 2 epochs

Models come from the pruning benchmark (``--sparsify``, default runs/bench-sparsify, on
``synthetic:preset=bench``): ``baseline`` (60 epochs from scratch + 15 low-LR epochs = 75,
plateaued), ``plain`` (baseline + 30 plain epochs), ``pruned50`` / ``pruned75`` (baseline + 30
epochs of their recipes). FAIRNESS: every fine-tuned variant has the same number of epochs in all,
so the dense reference is ``plain`` by default; ``--reference baseline`` uses the plateaued
baseline itself (more epochs do not help it: plain scored lower), and ``--pruned ''`` leaves the
GMP runs out when they were not trained:
- ``dense``: FP32 export of the reference (timed on onnxruntime FP32); ``dense-ptq``: its PTQ INT8;
- ``pruned50`` / ``pruned75`` (+ ``-ptq``, + ``-qat``: 3 more QAT epochs with
  benchmarks/recipes/qat-finetune.yaml);
- one variant per channel recipe (``--recipes``, default the ``-distill`` ones: channel pruning
  with output distillation from the dense baseline, ``--teacher self``), trained from the
  baseline for ``--epochs`` (30) epochs with the recipe's epoch variables scaled to fit; FP32
  recipes also get a PTQ file, ``-quant`` recipes are QAT and export INT8 (named ``-qat``);
- ``ultralytics-onnx-int8`` / ``ultralytics-openvino-int8``: ultralytics' own
  ``export(format=..., quantize=8)`` of plain, what a user would do without sparsepipe.
Each file is exported at every ``--sizes`` and evaluated (mAP50-95) on the same val split.
Per size and thread count, every (variant, engine) runner is timed in the same interleaved
rounds (batch 1, sync). The machine's INT8/FP32 peak is measured once per thread count
(:func:`sparsepipe.hardware.measure_peak`); ``floor_ms`` = 2 x MACs / INT8 peak.
Resumable: every step (training, export, PTQ, evaluation) is content-keyed
(:mod:`sparsepipe.step_cache`): a finished step is reused when its inputs (recipe text and
arguments, starting checkpoint or file bytes, settings) are unchanged, so a second run only
re-times; change a recipe and only what depends on it is redone. Writes ``--out``/bench.{json,md}, ``benchmarks/results/bench-<date>.{json,md}``,
``docs/img/bench-<date>.png`` and the issue-8 section of docs/benchmarks.md (``--no-docs``: not).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_report  # noqa: E402  (next to this script)

ROOT = Path(__file__).resolve().parent.parent


def reuse(out: Path, make: Callable[[], Any], **inputs: Any) -> Any:
    """The step result in ``out`` when it finished from the same ``inputs`` (a ``Path`` to a file
    counts by its bytes), else ``make()``'s; see :func:`sparsepipe.step_cache.cached_step`."""
    from sparsepipe.step_cache import cached_step, content_key

    return cached_step(out, content_key(**inputs), make)


def weights_of(model: str | Path) -> Path:
    """The .pt of a train/sparsify out folder (or the path itself)."""
    from sparsepipe.results import read_result

    path = Path(model)
    return read_result(path).path("weights") if path.is_dir() else path


def train_variants(args: argparse.Namespace, out: Path, data: str) -> dict[str, dict[str, Any]]:
    """name -> {"model": checkpoint folder, "int8": whether it exports INT8 (QAT), "epochs": total}.

    Every training step is content-keyed (:mod:`sparsepipe.step_cache`): a rerun reuses a finished
    checkpoint only when the recipe text, its arguments, the starting checkpoint and the settings
    are unchanged.
    """
    from sparsepipe.modifiers.distillation import DISTILLATION_MODIFIERS
    from sparsepipe.qat import quant_modifier
    from sparsepipe.recipe import load_recipe
    from sparsepipe.recipe.yaml_io import load_yaml
    from sparsepipe.sparsify import SparsifyConfig, sparsify
    from sparsepipe.step_cache import cached_step, content_key, dataset_digest

    src = Path(args.sparsify)
    data_id = dataset_digest(data)
    fine_tuned = args.base_epochs + args.prune_epochs
    reference_epochs = fine_tuned if args.reference == "plain" else args.base_epochs
    models = {"dense": {"model": src / args.reference, "int8": False, "epochs": reference_epochs}}
    for pruned in args.pruned:
        models[pruned] = {"model": src / pruned, "int8": False, "epochs": fine_tuned}
    config = SparsifyConfig(imgsz=args.train_imgsz, batch=args.batch, plots=False, extra={"nbs": args.nbs})
    qat_recipe = ROOT / "benchmarks/recipes/qat-finetune.yaml"
    for pruned in args.pruned:
        name = f"{pruned}-qat"
        start = weights_of(src / pruned)
        target = out / "train" / name
        variant_config = dataclasses.replace(config, variant=name)
        key = content_key(step="sparsify", model=start, data=data_id, config=variant_config, recipe=qat_recipe,
                          recipe_args={"num_epochs": args.qat_epochs})
        cached_step(target, key, lambda start=start, target=target, variant_config=variant_config: sparsify(
            str(start), data, str(qat_recipe), target, variant_config, recipe_args={"num_epochs": args.qat_epochs}))
        models[name] = {"model": target, "int8": True, "epochs": fine_tuned + args.qat_epochs}
    base = weights_of(src / "baseline")
    for recipe in args.recipes:
        loaded = load_recipe(recipe)
        int8 = quant_modifier(loaded) is not None  # a QAT recipe: its checkpoint exports INT8
        teacher = "self" if loaded.modifiers_of(*DISTILLATION_MODIFIERS) else None  # the dense baseline
        name = bench_report.variant_name(recipe, int8)
        raw = load_yaml(Path(recipe).read_text(), recipe)
        recipe_args = bench_report.scaled_recipe_args(raw if isinstance(raw, dict) else {}, args.epochs)
        target = out / "train" / name
        variant_config = dataclasses.replace(config, variant=name)
        print(f"train {name}: {recipe} from {src / 'baseline'} with {recipe_args}, teacher {teacher}", flush=True)
        key = content_key(step="sparsify", model=base, data=data_id, config=variant_config, recipe=Path(recipe),
                          recipe_args=recipe_args, teacher=teacher)
        cached_step(target, key, lambda recipe=recipe, target=target, variant_config=variant_config, recipe_args=recipe_args,
                    teacher=teacher: sparsify(str(base), data, recipe, target, variant_config, recipe_args=recipe_args,
                                              teacher=teacher))
        models[name] = {"model": target, "int8": int8, "epochs": args.base_epochs + args.epochs,
                        "recipe": recipe, "recipe_args": recipe_args, "teacher": teacher}
    return models


def ultralytics_int8(plain_pt: Path, fmt: str, work: Path, data_yaml: str, size: int) -> Path:
    """ultralytics' own INT8 export of the dense reference (ONNX file or OpenVINO IR .xml)."""
    from sparsepipe.results import StepResult
    from ultralytics import YOLO

    role = "openvino_xml" if fmt == "openvino" else "onnx"

    def make() -> StepResult:
        work.mkdir(parents=True, exist_ok=True)
        staged = work / "model.pt"
        staged.write_bytes(plain_pt.read_bytes())
        exported = Path(YOLO(str(staged)).export(format=fmt, quantize=8, data=data_yaml, imgsz=size, batch=1, device="cpu"))
        if fmt == "openvino":
            exported = next(exported.glob("*.xml"))
        result = StepResult(step="export", out_dir=str(work), variant=f"ultralytics-{fmt}-int8",
                            files={role: str(exported)}, config={"format": fmt, "quantize": 8, "imgsz": size})
        result.write()
        return result

    return reuse(work, make, step="ultralytics-int8", model=plain_pt, fmt=fmt, data=data_yaml, imgsz=size).path(role)


def export_files(args: argparse.Namespace, out: Path, data: str, data_yaml: str,
                 models: dict[str, dict[str, Any]]) -> dict[tuple[str, int], Path]:
    from sparsepipe.export import ExportConfig, export_onnx
    from sparsepipe.quantize import QuantizeConfig, quantize
    from sparsepipe.step_cache import dataset_digest

    data_id = dataset_digest(data)
    files: dict[tuple[str, int], Path] = {}
    for size in args.sizes:
        d = out / str(size)
        for name, info in models.items():
            exported = reuse(d / name, lambda: export_onnx(str(info["model"]), d / name, ExportConfig(imgsz=size, variant=name)),
                             step="export", model=weights_of(info["model"]), imgsz=size)
            files[(name, size)] = exported.path("onnx")
            if not info["int8"]:
                ptq = reuse(d / f"{name}-ptq", lambda: quantize(str(d / name), data, d / f"{name}-ptq",
                                                                QuantizeConfig(evaluate=False, variant=f"{name}-ptq")),
                            step="quantize", model=exported.path("onnx"), data=data_id)
                files[(f"{name}-ptq", size)] = ptq.path("int8_onnx")
        plain_pt = weights_of(models["dense"]["model"])
        for fmt in ("onnx", "openvino"):
            files[(f"ultralytics-{fmt}-int8", size)] = ultralytics_int8(plain_pt, fmt, d / f"ultralytics-{fmt}-int8", data_yaml, size)
    return files


def accuracy(out: Path, data: str, data_yaml: str, files: dict[tuple[str, int], Path]) -> dict[tuple[str, int], dict[str, Any]]:
    """(variant, size) -> mAP50-95 with its 95 % interval and ``map_kept`` (paired ratio to ``dense``
    at the same size, same resampled validation images) with its interval."""
    from sparsepipe.bootstrap import DetectionRecords, paired_ratio_interval
    from sparsepipe.evaluate import EvaluateConfig, error_bars, evaluate
    from sparsepipe.results import StepResult
    from sparsepipe.step_cache import dataset_digest

    data_id = dataset_digest(data)
    scores: dict[tuple[str, int], dict[str, Any]] = {}
    for (variant, size), path in files.items():
        target = out / str(size) / f"eval-{variant}"
        if path.suffix == ".xml":  # an OpenVINO IR: ultralytics validates (and predicts with) its folder directly

            def make(path: Path = path, size: int = size, target: Path = target, variant: str = variant) -> StepResult:
                from ultralytics import YOLO

                yolo = YOLO(str(path.parent), task="detect")
                m = yolo.val(data=data_yaml, imgsz=size, batch=1, plots=False, project=str(target), name="ultralytics",
                             exist_ok=True)
                files_: dict[str, str] = {}
                extra: dict[str, Any] = {}
                metrics = {"map50_95": float(m.box.map), "map50": float(m.box.map50)}
                metrics.update(error_bars(yolo, data_yaml, EvaluateConfig(imgsz=size), size, target, files_, extra, None,
                                          metrics["map50_95"]))
                result = StepResult(step="evaluate", out_dir=str(target), variant=variant, files=files_, metrics=metrics,
                                    extra=extra)
                result.write()
                return result

            result = reuse(target, make, step="evaluate", model=path, weights=path.with_suffix(".bin"), data=data_id, imgsz=size)
        else:
            result = reuse(target, lambda: evaluate(str(path), data, target, EvaluateConfig(imgsz=size)),
                           step="evaluate", model=path, data=data_id, imgsz=size)
        scores[(variant, size)] = {**result.metrics, "per_image": str(result.path("per_image")) if "per_image" in result.files else None}
    for (variant, size), score in scores.items():
        ref = scores.get(("dense", size))
        if not ref or not ref["per_image"] or not score["per_image"] or ref["map50_95"] <= 0:
            continue
        if variant == "dense":
            score.update(map_kept_ci_low=1.0, map_kept_ci_high=1.0)
            continue
        ratio = paired_ratio_interval(DetectionRecords.load(score["per_image"]), DetectionRecords.load(ref["per_image"]))
        score.update(map_kept_ci_low=ratio.low, map_kept_ci_high=ratio.high, map_kept_recomputed=ratio.value)
    return scores


def time_cells(args: argparse.Namespace, files: dict[tuple[str, int], Path], maps: dict[tuple[str, int], dict[str, Any]],
               engines: list[str]) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    from sparsepipe.benchmark import BenchmarkConfig, latency_stats, onnx_macs, time_interleaved
    from sparsepipe.hardware import measure_peak
    from sparsepipe.sizes import file_sizes

    peaks = {threads: measure_peak(threads) for threads in args.threads}
    for threads, peak in peaks.items():
        print(f"peak on {threads} thread(s): INT8 {peak['int8_ops_s'] / 1e9:.0f} GOPS, FP32 {peak['fp32_ops_s'] / 1e9:.0f} GOPS "
              f"({', '.join(f'{k} {v / 1e9:.0f}' for k, v in peak.items() if k.endswith(('onnxruntime', 'openvino')))})", flush=True)
    macs = {key: onnx_macs(path) for key, path in files.items() if path.suffix == ".onnx"}
    for (variant, size), path in files.items():
        if path.suffix == ".xml":  # same architecture as the dense file it was exported from
            macs[(variant, size)] = macs[("dense", size)]
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        for threads in args.threads:
            config = BenchmarkConfig(threads=threads, iterations=args.iterations, rounds=args.rounds, warmup=args.warmup)
            candidates = [((variant, engine), engine, path) for (variant, vsize), path in files.items()
                          if vsize == size for engine in engines
                          # an OpenVINO IR only runs on OpenVINO
                          if path.suffix != ".xml" or engine.startswith("openvino")]
            print(f"timing {len(candidates)} (variant, engine) candidates at {size} px, {threads} thread(s), interleaved", flush=True)
            timed = time_interleaved(candidates, config, label=f" at {size} px")
            floor_scale = 2.0 * 1000.0 / peaks[threads]["int8_ops_s"]
            for (variant, engine), lat in timed.items():
                stats = latency_stats(lat, 1)
                path = files[(variant, size)]
                floor_ms = macs[(variant, size)] * floor_scale
                rows.append({
                    "size": size, "threads": threads, "variant": variant, "engine": engine,
                    "map50_95": maps[(variant, size)]["map50_95"],
                    **{k: maps[(variant, size)].get(k) for k in ("map50_95_ci_low", "map50_95_ci_high",
                                                                  "map_kept_ci_low", "map_kept_ci_high")},
                    "latency_ms_p50": stats["latency_ms_p50"],
                    "latency_ms_p90": stats["latency_ms_p90"], "latency_ms_mean": stats["latency_ms_mean"],
                    "iterations": stats["iterations"], "gmacs": macs[(variant, size)] / 1e9, "floor_ms": floor_ms,
                    "latency_vs_floor": stats["latency_ms_p50"] / floor_ms,
                    **file_sizes(path if path.suffix != ".xml" else path.with_suffix(".bin")),
                    "file": str(path),
                })
    bench_report.add_ratios(rows)
    return rows, peaks


def profile_best(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Top ops of the best variant at each size, and of the fastest at any accuracy (each on its own
    engine, and on onnxruntime)."""
    from sparsepipe.benchmark import profile_ops

    profiles: dict[str, list[dict[str, Any]]] = {}
    threads = max(args.threads)
    chosen = list(bench_report.best_rows(rows).values()) + list(bench_report.fastest_rows(rows).values())
    for row in list({id(r): r for r in chosen}.values()):
        size = row["size"]
        if row["threads"] != threads:
            continue
        engines = [row["engine"]] if row["engine"] in ("onnxruntime", "openvino") else []
        if "onnxruntime" not in engines:
            engines.append("onnxruntime")
        for engine in engines:
            try:
                ops = profile_ops(row["file"], engine, threads, iterations=args.profile_iterations)
            except Exception as exc:  # noqa: BLE001 - a profile that cannot run is reported, not fatal
                print(f"profile of {row['variant']} on {engine} failed: {exc}", flush=True)
                continue
            profiles[f"{row['variant']} on {engine}, {size} px, {threads} thread{'s' if threads > 1 else ''}"] = ops
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--sparsify", default="runs/bench-sparsify", help="out folder of benchmarks/sparsify_bench.py")
    parser.add_argument("--recipes", default="recipes/yolov8n-channels[0-9]*-distill*.yaml",
                        help="glob (or comma list) of channel recipes trained from the baseline (distillation recipes get --teacher self)")
    parser.add_argument("--sizes", default="640,320")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--engines", default="", help="comma list; default: every available engine")
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs of each channel recipe from the baseline")
    parser.add_argument("--reference", choices=("plain", "baseline"), default="plain",
                        help="the dense reference: plain (baseline + --prune-epochs plain epochs: as long as the pruned "
                             "runs) or the baseline itself (fair when it has plateaued: more epochs do not help it)")
    parser.add_argument("--pruned", default="pruned50,pruned75",
                        help="comma list of --sparsify GMP runs to include (each also gets a -qat variant); '' for none")
    parser.add_argument("--base-epochs", type=int, default=75, help="epochs of the --sparsify baseline (for the table)")
    parser.add_argument("--prune-epochs", type=int, default=30, help="epochs of the --sparsify plain/pruned runs (for the table)")
    parser.add_argument("--qat-epochs", type=int, default=3, help="QAT epochs on top of pruned50 and pruned75")
    parser.add_argument("--train-imgsz", type=int, default=320, help="image size of the channel/QAT fine-tuning")
    parser.add_argument("--batch", type=int, default=16, help="training batch of the channel/QAT fine-tuning")
    parser.add_argument("--nbs", type=int, default=16, help="ultralytics' nominal batch (= batch: one optimizer step per batch)")
    parser.add_argument("--iterations", type=int, default=60, help="timed iterations per runner per size/threads")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile-iterations", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="320 px, 1 thread, 2 epochs, few iterations; no docs")
    parser.add_argument("--no-docs", action="store_true", help="write only into --out")
    parser.add_argument("--prepare-only", action="store_true", help="train, export and evaluate (cached), time nothing")
    parser.add_argument("--report-only", action="store_true", help="re-render tables/plot/docs from --out/bench.json, time nothing")
    parser.add_argument("--reprofile", action="store_true", help="with --report-only: profile the best/fastest rows again")
    parser.add_argument("--note", default="", help="a sentence for the docs header (e.g. machine load)")
    args = parser.parse_args()
    if args.quick:  # smaller defaults; flags given explicitly still win
        quick = {"sizes": "320", "threads": "1", "epochs": 2, "qat_epochs": 1, "iterations": 10, "rounds": 2,
                 "warmup": 2, "profile_iterations": 3, "no_docs": True}
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    args.threads = [int(t) for t in str(args.threads).split(",")]
    patterns = [p for p in args.recipes.split(",") if p]
    found = [f for p in patterns for f in (sorted(glob.glob(p)) or ([p] if Path(p).is_file() else []))]
    args.recipes = list(dict.fromkeys(found))  # trained in the order given (globs sorted), each once

    from sparsepipe.benchmark import _available_engines
    from sparsepipe.data import resolve_data
    from sparsepipe.hardware import cpu_info, engine_versions
    from sparsepipe.results import atomic_write_text

    started = time.time()
    out = Path(args.out).resolve()
    if args.report_only:
        if not (out / "bench.json").is_file():
            sys.exit(f"error: {out / 'bench.json'} does not exist; run benchmarks/bench.py --out {args.out} first.")
        payload = json.loads((out / "bench.json").read_text())
        if args.reprofile:
            payload["profiles"] = profile_best(payload["rows"], args)
            atomic_write_text(out / "bench.json", json.dumps(payload, indent=2) + "\n")
        publish(payload, out, write_docs=not args.no_docs)
        return
    out.mkdir(parents=True, exist_ok=True)
    src = Path(args.sparsify)
    args.pruned = [p for p in str(args.pruned).split(",") if p]
    for need in ("baseline", args.reference, *args.pruned, "data"):
        if not (src / need / "result.json").is_file():
            sys.exit(f"error: {src / need} has no result.json; run `make bench-sparsify` first (or pass --sparsify).")
    data = str(src / "data")
    data_yaml = str(resolve_data(data))
    # default: every engine as predict/serve run it (openvino = f32); openvino-bf16 only when named
    engines = [e for e in args.engines.split(",") if e] or [e for e in _available_engines() if e != "openvino-bf16"]

    models = train_variants(args, out, data)
    files = export_files(args, out, data, data_yaml, models)
    maps = accuracy(out, data, data_yaml, files)
    if args.prepare_only:
        print(f"prepared {len(files)} files under {out}; mAP50-95: "
              f"{json.dumps({f'{v}@{s}': m['map50_95'] for (v, s), m in maps.items()})}")
        return
    rows, peaks = time_cells(args, files, maps, engines)
    profiles = profile_best(rows, args)

    payload = {"rows": rows, "peaks": peaks, "profiles": profiles, "models": models, "hardware": cpu_info(),
               "engines": engine_versions(), "args": vars(args), "minutes": (time.time() - started) / 60,
               "day": time.strftime("%Y-%m-%d")}
    payload = json.loads(json.dumps(payload, default=str))
    atomic_write_text(out / "bench.json", json.dumps(payload, indent=2) + "\n")
    publish(payload, out, write_docs=not args.no_docs)


def publish(payload: dict[str, Any], out: Path, write_docs: bool) -> None:
    """bench.md + bench.png in ``out``; with ``write_docs`` also benchmarks/results/bench-<day>.*,
    docs/img/bench-<day>.png and the generated block of docs/benchmarks.md."""
    from sparsepipe.results import atomic_write_text, atomic_write_with

    args, hw, rows = payload["args"], payload["hardware"], payload["rows"]
    day = payload.setdefault("day", time.strftime("%Y-%m-%d"))
    command = "benchmarks/bench.py --quick" if args["quick"] else "make bench"
    isa = ", ".join(k for k, v in hw["isa"].items() if v)
    peak_text = "; ".join(f"{t} thread(s): INT8 {p['int8_ops_s'] / 1e9:.0f} GOPS, FP32 {p['fp32_ops_s'] / 1e9:.0f} GOPS"
                          for t, p in payload["peaks"].items())
    header = (
        f"Command: `{command}` (`.venv/bin/python benchmarks/bench.py --sizes {','.join(map(str, args['sizes']))} "
        f"--threads {','.join(map(str, args['threads']))} --epochs {args['epochs']} --iterations {args['iterations']} "
        f"--rounds {args['rounds']}`), {day}, {payload['minutes']:.0f} min for this invocation (steps reused from "
        f"earlier runs are not re-done). Machine: {hw['cpu_model']}, {hw['usable_cores']} usable cores, ISA: {isa}. "
        f"Engines: {', '.join(f'{k} {v}' for k, v in payload['engines'].items())}. Measured peak (probe: one 3x3 conv, "
        f"best engine): {peak_text}. {args.get('note', '')}".rstrip()
    )
    variants_text = "; ".join(
        f"`{n}` {m['epochs']} epochs" + (f" ({Path(m['recipe']).name}, {m['recipe_args']})" if m.get("recipe") else "")
        for n, m in payload["models"].items())
    section = (f"{header}\n\nModels: {variants_text}.\n\n{bench_report.markdown_table(rows)}\n\n"
               f"{bench_report.summary(rows, payload['profiles'])}\n")
    print(section, flush=True)
    atomic_write_text(out / "bench.md", section)
    plot_path = out / "bench.png"
    bench_report.plot(rows, plot_path, threads=min(args["threads"]), save=atomic_write_with)
    if not write_docs:
        return
    results = ROOT / "benchmarks" / "results"
    atomic_write_text(results / f"bench-{day}.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(results / f"bench-{day}.md", section)
    img = ROOT / "docs" / "img" / f"bench-{day}.png"
    atomic_write_with(img, lambda tmp: Path(tmp).write_bytes(plot_path.read_bytes()))
    doc_path = ROOT / "docs" / "benchmarks.md"
    generated = (f"Raw numbers: `benchmarks/results/bench-{day}.{{json,md}}`. Plot ({min(args['threads'])} thread): "
                 f"![accuracy vs latency](img/bench-{day}.png)\n\n{section}")
    atomic_write_text(doc_path, bench_report.replace_section(
        doc_path.read_text(), generated, "## Channel pruning and the fastest CPU variant (issue 8)"))
    print(f"wrote {doc_path} (issue-8 section), {results}/bench-{day}.*, {img}", flush=True)


if __name__ == "__main__":
    main()
