"""Accuracy and training cost of pruning with the shipped recipes, against plain training.

    .venv/bin/python benchmarks/sparsify_bench.py --out runs/bench-sparsify      # or: make bench-sparsify

On the generated dataset (YOLOv8n at 320 px by default):
1. a baseline trained ``--epochs`` epochs from scratch;
2. ``plain``: the baseline trained ``--prune-epochs`` more epochs without a recipe (the fair
   reference for accuracy and for time per epoch: same start, same length);
3. ``pruned50`` / ``pruned75``: the baseline under recipes/yolov8n-pruned50.yaml and
   yolov8n-pruned75.yaml, shortened with recipe_args to ``--prune-epochs`` epochs.
Every final checkpoint is evaluated on the same val split. Time per epoch is the median of the
training loop's wall time per epoch (validation excluded), measured with ultralytics callbacks.
Prints a Markdown table with ratios (mAP50-95 vs plain and vs baseline; time per epoch vs plain)
and writes it with the raw numbers to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def epoch_timer() -> tuple[dict[str, list], list[float]]:
    seconds: list[float] = []
    started: list[float] = []

    def start(trainer):
        started.append(time.perf_counter())

    def end(trainer):
        seconds.append(time.perf_counter() - started[-1])

    return {"on_train_epoch_start": [start], "on_train_epoch_end": [end]}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-sparsify")
    parser.add_argument("--data", default="synthetic:train=128,val=32,size=320,seed=0")
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=60, help="baseline epochs from scratch")
    parser.add_argument("--prune-epochs", type=int, default=30, help="length of plain and recipe fine-tuning")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--timing-epochs", type=int, default=4, help="epochs of each alternating timing run")
    parser.add_argument("--timing-rounds", type=int, default=2, help="plain/recipe timing pairs")
    args = parser.parse_args()

    from sparsepipe.data import prepare_data
    from sparsepipe.evaluate import EvaluateConfig, evaluate
    from sparsepipe.hardware import cpu_info
    from sparsepipe.results import atomic_write_text
    from sparsepipe.sparsify import SparsifyConfig, sparsify
    from sparsepipe.training import TrainConfig, train

    out = Path(args.out).resolve()
    data = str(prepare_data(args.data, out / "data").out_dir)
    rows_file = out / "rows.json"
    # Finished variants are kept (the benchmark can be re-run after an interruption).
    rows: dict[str, dict] = json.loads(rows_file.read_text()) if rows_file.is_file() else {}

    def record(name: str, weights: str, seconds: list[float], extra: dict) -> None:
        ev = evaluate(weights, data, out / f"{name}-eval", EvaluateConfig(imgsz=args.imgsz))
        rows[name] = {"map50_95": ev.metrics["map50_95"], "map50": ev.metrics["map50"], "weights": weights,
                      "epoch_s": statistics.median(seconds) if seconds else float("nan"), **extra}
        atomic_write_text(rows_file, json.dumps(rows, indent=2) + "\n")
        print(name, rows[name], flush=True)

    if "baseline" not in rows:
        cbs, secs = epoch_timer()
        base = train(args.model, data, out / "baseline", TrainConfig(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, plots=False), callbacks=cbs)
        record("baseline", str(base.path("weights")), secs, {"epochs": args.epochs})
    base_weights = rows["baseline"]["weights"]

    plain_config = dict(imgsz=args.imgsz, batch=args.batch, plots=False, optimizer="SGD", lr0=0.01)
    if "plain" not in rows:
        cbs, secs = epoch_timer()
        plain = train(base_weights, data, out / "plain", TrainConfig(epochs=args.prune_epochs, **plain_config), callbacks=cbs)
        record("plain", str(plain.path("weights")), secs, {"epochs": args.epochs + args.prune_epochs})

    end = max(1, int(args.prune_epochs * 0.6))
    shortened = f"num_epochs={args.prune_epochs},pruning_start_epoch=0,pruning_end_epoch={end}"
    recipes = {"pruned50": "recipes/yolov8n-pruned50.yaml", "pruned75": "recipes/yolov8n-pruned75.yaml"}
    for name, recipe in recipes.items():
        if name in rows:
            continue
        cbs, secs = epoch_timer()
        result = sparsify(base_weights, data, recipe, out / name,
                          SparsifyConfig(imgsz=args.imgsz, batch=args.batch, plots=False, variant=name),
                          recipe_args=shortened, callbacks=cbs)
        record(name, str(result.path("weights")), secs,
               {"epochs": args.epochs + args.prune_epochs, "sparsity": result.metrics["sparsity"], "recipe": recipe, "recipe_args": shortened})

    # Training cost, measured fairly: short plain and recipe runs alternate, so machine load
    # hits both alike; the ratio of median epoch times is the overhead of recipe training.
    timing: dict[str, list[float]] = {"plain": [], "pruned75": []}
    short = f"num_epochs={args.timing_epochs},pruning_start_epoch=0,pruning_end_epoch={max(1, args.timing_epochs - 1)}"
    for round_ in range(args.timing_rounds):
        cbs, secs = epoch_timer()
        train(base_weights, data, out / f"timing-plain-{round_}", TrainConfig(epochs=args.timing_epochs, **plain_config), callbacks=cbs)
        timing["plain"] += secs[1:]  # the first epoch of a run also warms caches
        cbs, secs = epoch_timer()
        sparsify(base_weights, data, recipes["pruned75"], out / f"timing-pruned75-{round_}",
                 SparsifyConfig(imgsz=args.imgsz, batch=args.batch, plots=False), recipe_args=short, callbacks=cbs)
        timing["pruned75"] += secs[1:]
    overhead = statistics.median(timing["pruned75"]) / statistics.median(timing["plain"])
    rows["timing"] = {k: v for k, v in timing.items()}

    ref = rows["plain"]
    variants = {k: v for k, v in rows.items() if k != "timing"}
    lines = [
        "| variant | epochs | sparsity | mAP50-95 | mAP50 | mAP50-95 vs plain | vs baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in variants.items():
        lines.append(
            f"| {name} | {row['epochs']} | {row.get('sparsity', 0):.3f} | {row['map50_95']:.4f} | {row['map50']:.4f} | "
            f"{row['map50_95'] / ref['map50_95'] if ref['map50_95'] else float('nan'):.3f} | "
            f"{row['map50_95'] / rows['baseline']['map50_95'] if rows['baseline']['map50_95'] else float('nan'):.3f} |"
        )
    lines += [
        "",
        f"Training cost: median seconds per epoch over {args.timing_rounds} alternating pairs of "
        f"{args.timing_epochs}-epoch runs from the baseline (first epoch of each run dropped): plain "
        f"{statistics.median(timing['plain']):.2f} s, pruned75 recipe {statistics.median(timing['pruned75']):.2f} s, "
        f"**recipe_time_per_epoch_vs_plain = {overhead:.3f}**.",
    ]
    hw = cpu_info()
    header = (f"Command: `.venv/bin/python benchmarks/sparsify_bench.py --epochs {args.epochs} --prune-epochs {args.prune_epochs} "
              f"--imgsz {args.imgsz}`; data `{args.data}`; machine: {hw['cpu_model']}, {hw['usable_cores']} cores; "
              f"{time.strftime('%Y-%m-%d')}.")
    table = header + "\n\n" + "\n".join(lines) + "\n"
    print(table)
    atomic_write_text(out / "sparsify.md", table)
    atomic_write_text(out / "sparsify.json", json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
