"""Converged baseline and pruned variants with error bars: the models `make bench` times.

    .venv/bin/python benchmarks/sparsify_bench.py --out runs/bench-sparsify      # or: make bench-sparsify

On the generated benchmark dataset (``synthetic:preset=bench``: 512 train / 512 val images at
320 px, 4 classes), YOLOv8n at 320 px, batch 16 with ``nbs=16`` (every batch is an optimizer
step: 32 steps an epoch, not the 8 of ultralytics' default nbs=64):
1. ``baseline-scratch``: trained ``--epochs`` epochs from scratch (ultralytics' auto optimizer:
   AdamW, lr 0.00125 decaying linearly to 1 % of it); then ``baseline``: that checkpoint trained
   ``--polish-epochs`` more epochs with AdamW from ``--polish-lr0`` (the scratch run's LR at 90 %
   of its epochs) decaying to a tenth of it, no warm-up and no mosaic, like the scratch run's
   last 10 epochs: the tail of the schedule, made longer. The script checks that the whole curve
   plateaued (relative gain of mAP50-95 over the last fifth of all the epochs < ``--plateau`` = 1 %)
   and says so. ``--polish-epochs 0`` makes the scratch run the baseline;
2. ``plain``: the baseline trained ``--prune-epochs`` more epochs without a recipe (the fair
   reference: same start, same length as the recipes);
3. ``pruned50`` / ``pruned75``: the baseline under recipes/yolov8n-pruned50.yaml / -pruned75.yaml,
   shortened with recipe_args to ``--prune-epochs`` epochs.
Every final checkpoint is evaluated on the same 512 val images with a bootstrap 95 % interval,
and each variant gets its paired ratio to ``plain`` (same resampled images for both).
Resumable: each step's folder is reused when it finished with the same inputs (content key:
data definition, model, settings, recipe text, starting checkpoint; :mod:`sparsepipe.step_cache`);
a stopped run re-does only the unfinished step. Finished steps committed under
``benchmarks/models/<step>/`` (``--seeds``) are copied in when their key matches, so a new
machine does not train them again (the scratch baseline is ~90 min on 2 cores). Writes ``sparsify.{md,json}`` and
``curves.png`` (mAP50-95 per epoch of every run) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"pruned50": "recipes/yolov8n-pruned50.yaml", "pruned75": "recipes/yolov8n-pruned75.yaml"}


def curve(result_dir: Path) -> list[dict[str, float]]:
    """Per-epoch validation metrics of a train/sparsify folder (ultralytics' results.csv)."""
    import csv

    path = result_dir / "ultralytics" / "results.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(handle)]
    return [{"epoch": int(float(r["epoch"])), "map50_95": float(r["metrics/mAP50-95(B)"]),
             "map50": float(r["metrics/mAP50(B)"])} for r in rows]  # fmt: skip


def plateau_gain(points: list[dict[str, float]], fraction: float = 0.2) -> float | None:
    """Relative gain of mAP50-95 over the last ``fraction`` of the epochs (3-epoch means at both ends).

    0.004 means the final epochs improved the model by 0.4 % of its value: it has plateaued.
    """
    if len(points) < 10:
        return None
    values = [p["map50_95"] for p in points]
    start = len(values) - max(int(round(len(values) * fraction)), 3)
    before = sum(values[start - 2:start + 1]) / 3
    after = sum(values[-3:]) / 3
    return (after - before) / before if before > 0 else None


def curves_plot(curves: dict[str, list[dict[str, float]]], offsets: dict[str, int], path: Path) -> Path:
    """mAP50-95 per epoch of every run on one axis (fine-tuning runs start where the baseline ended)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsepipe.results import atomic_write_with

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for name, points in curves.items():
        if points:
            ax.plot([p["epoch"] + offsets.get(name, 0) for p in points], [p["map50_95"] for p in points], label=name)
    ax.set_xlabel("epoch (fine-tuning runs continue from the baseline's last epoch)")
    ax.set_ylabel("mAP50-95 (val, 512 images)")
    ax.set_title("learning curves: YOLOv8n on synthetic:preset=bench")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-sparsify")
    parser.add_argument("--data", default="synthetic:preset=bench")
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=60, help="baseline epochs from scratch")
    parser.add_argument("--polish-epochs", type=int, default=15, help="low-LR epochs continuing the scratch baseline")
    parser.add_argument("--polish-lr0", type=float, default=1.25e-4, help="AdamW LR of the first polish epoch")
    parser.add_argument("--prune-epochs", type=int, default=30, help="length of plain and recipe fine-tuning")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--nbs", type=int, default=16, help="ultralytics' nominal batch size (= batch: a step per batch)")
    parser.add_argument("--plateau", type=float, default=0.01, help="max relative mAP50-95 gain over the last fifth")
    parser.add_argument("--seeds", default=str(ROOT / "benchmarks" / "models"),
                        help="folder of finished step folders (baseline/, plain/...) to copy in when their content key matches")
    parser.add_argument("--only", default="", help="comma list of steps to run (baseline,plain,pruned50,pruned75)")
    args = parser.parse_args()

    from sparsepipe.bootstrap import DetectionRecords, UndefinedRatio, paired_ratio_interval
    from sparsepipe.data import parse_source, prepare_data
    from sparsepipe.evaluate import EvaluateConfig, evaluate
    from sparsepipe.hardware import cpu_info
    from sparsepipe.results import atomic_write_text
    from sparsepipe.sparsify import SparsifyConfig, sparsify
    from sparsepipe.step_cache import cached_step, content_key, dataset_digest
    from sparsepipe.synthetic import GENERATOR_VERSION
    from sparsepipe.training import TrainConfig, train

    out = Path(args.out).resolve()
    source = parse_source(args.data)
    spec = {"synthetic": source.synthetic, "generator": GENERATOR_VERSION} if source.synthetic is not None else args.data
    data = str(cached_step(out / "data", content_key(step="data", data=spec),
                           lambda: prepare_data(args.data, out / "data")).out_dir)
    data_id = dataset_digest(data)  # what trained models are keyed on: the images and labels themselves
    wanted = set(filter(None, args.only.split(","))) or {"baseline", "plain", *RECIPES}
    extra = {"nbs": args.nbs}
    steps: dict[str, Any] = {}

    base_config = TrainConfig(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, extra=extra)
    base_key = content_key(step="train", model=args.model, data=data_id, config=base_config)
    seeds = Path(args.seeds)
    scratch = cached_step(out / "baseline-scratch", base_key,
                          lambda: train(args.model, data, out / "baseline-scratch", base_config),
                          seed=seeds / "baseline-scratch")
    if args.polish_epochs > 0:
        polish_config = TrainConfig(epochs=args.polish_epochs, imgsz=args.imgsz, batch=args.batch, optimizer="AdamW",
                                    lr0=args.polish_lr0, extra={**extra, "lrf": 0.1, "warmup_epochs": 0,
                                                                "close_mosaic": args.polish_epochs})
        key = content_key(step="train", model=scratch.path("weights"), data=data_id, config=polish_config)
        steps["baseline"] = cached_step(out / "baseline", key, lambda: train(
            str(scratch.path("weights")), data, out / "baseline", polish_config), seed=seeds / "baseline")
    else:
        steps["baseline"] = scratch
    base_weights = steps["baseline"].path("weights")

    if "plain" in wanted:
        plain_config = TrainConfig(epochs=args.prune_epochs, imgsz=args.imgsz, batch=args.batch, optimizer="SGD", lr0=0.01,
                                   extra=extra, variant="plain")
        key = content_key(step="train", model=base_weights, data=data_id, config=plain_config)
        steps["plain"] = cached_step(out / "plain", key, lambda: train(str(base_weights), data, out / "plain", plain_config),
                                     seed=seeds / "plain")

    end = max(1, int(args.prune_epochs * 0.6))
    shortened = f"num_epochs={args.prune_epochs},pruning_start_epoch=0,pruning_end_epoch={end}"
    for name, recipe in RECIPES.items():
        if name not in wanted:
            continue
        config = SparsifyConfig(imgsz=args.imgsz, batch=args.batch, variant=name, extra=extra)
        key = content_key(step="sparsify", model=base_weights, data=data_id, config=config, recipe=ROOT / recipe,
                          recipe_args=shortened)
        steps[name] = cached_step(out / name, key, lambda name=name, recipe=recipe, config=config: sparsify(
            str(base_weights), data, str(ROOT / recipe), out / name, config, recipe_args=shortened), seed=seeds / name)

    evaluations = {}
    for name, step in steps.items():
        key = content_key(step="evaluate", model=step.path("weights"), data=data_id, imgsz=args.imgsz)
        evaluations[name] = cached_step(out / f"{name}-eval", key, lambda step=step, name=name: evaluate(
            str(step.path("weights")), data, out / f"{name}-eval", EvaluateConfig(imgsz=args.imgsz, variant=name)))

    curves = {name: curve(Path(step.out_dir)) for name, step in steps.items()}
    base_epochs = args.epochs + args.polish_epochs
    if args.polish_epochs > 0:  # one curve: scratch epochs, then the polish epochs after them
        curves["baseline"] = curve(Path(scratch.out_dir)) + [
            {**p, "epoch": p["epoch"] + args.epochs} for p in curves["baseline"]]
    gain = plateau_gain(curves["baseline"])
    reference = "plain" if "plain" in evaluations else "baseline"
    ref_records = DetectionRecords.load(evaluations[reference].path("per_image"))
    rows: dict[str, dict[str, Any]] = {}
    for name, ev in evaluations.items():
        m = ev.metrics
        row = {"epochs": base_epochs + (args.prune_epochs if name != "baseline" else 0), "map50_95": m["map50_95"],
               "map50": m["map50"], "ci": [m.get("map50_95_ci_low"), m.get("map50_95_ci_high")],
               "sparsity": steps[name].metrics.get("sparsity", 0.0), "weights": str(steps[name].path("weights")),
               "curve": curves[name]}
        if name != reference:
            try:
                ratio = paired_ratio_interval(DetectionRecords.load(ev.path("per_image")), ref_records)
            except UndefinedRatio as exc:
                print(f"{name}: no ratio to {reference}: {exc}", flush=True)
            else:
                row["ratio_vs_" + reference] = [round(ratio.value, 4), round(ratio.low, 4), round(ratio.high, 4)]
        rows[name] = row

    lines = [f"| variant | epochs | sparsity | mAP50-95 [95% CI] | mAP50 | mAP50-95 / {reference} [paired 95% CI] |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        ratio = row.get("ratio_vs_" + reference)
        ci = row["ci"]
        lines.append(f"| {name} | {row['epochs']} | {row['sparsity']:.3f} | {row['map50_95']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] | "
                     f"{row['map50']:.4f} | " + (f"{ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]" if ratio else
                                                 "1 (reference)" if name == reference else "-")
                     + " |")
    verdict = ("not measurable (fewer than 10 epochs, or mAP 0 where the last fifth starts)" if gain is None else
               f"{gain:+.2%} over the last fifth: {'plateaued' if abs(gain) < args.plateau else 'NOT plateaued'} "
               f"(criterion < {args.plateau:.0%})")
    base_curve = curves["baseline"]
    lines += ["", f"Baseline learning curve: {verdict}. mAP50-95 every 5 epochs: "
              + ", ".join(f"{p['epoch']}: {p['map50_95']:.3f}" for p in base_curve if p["epoch"] % 5 == 0 or p is base_curve[-1])]
    for name in rows:
        if name != "baseline" and curves[name]:
            lines.append(f"- {name}: " + ", ".join(f"{p['epoch']}: {p['map50_95']:.3f}" for p in curves[name]
                                                    if p["epoch"] % 5 == 0 or p is curves[name][-1]))
    offsets = {name: (base_epochs if name != "baseline" else 0) for name in curves}
    plot = curves_plot(curves, offsets, out / "curves.png")
    hw = cpu_info()
    header = (f"Command: `.venv/bin/python benchmarks/sparsify_bench.py --epochs {args.epochs} --polish-epochs "
              f"{args.polish_epochs} --polish-lr0 {args.polish_lr0:g} --prune-epochs {args.prune_epochs} --imgsz {args.imgsz} --batch {args.batch} --nbs {args.nbs}`; data `{args.data}`; "
              f"machine: {hw['cpu_model']}, {hw['usable_cores']} cores; {time.strftime('%Y-%m-%d')}. "
              f"Recipes shortened with `{shortened}`. Curves: {plot.name}.")
    table = header + "\n\n" + "\n".join(lines) + "\n"
    print(table)
    atomic_write_text(out / "sparsify.md", table)
    atomic_write_text(out / "sparsify.json", json.dumps({"rows": rows, "plateau_gain": gain, "args": vars(args)},
                                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
