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
    args = parser.parse_args()

    from sparsepipe.data import prepare_data
    from sparsepipe.evaluate import EvaluateConfig, evaluate
    from sparsepipe.hardware import cpu_info
    from sparsepipe.results import atomic_write_text
    from sparsepipe.sparsify import SparsifyConfig, sparsify
    from sparsepipe.training import TrainConfig, train

    out = Path(args.out).resolve()
    data = str(prepare_data(args.data, out / "data").out_dir)
    rows: dict[str, dict] = {}

    def record(name: str, weights: str, seconds: list[float], extra: dict) -> None:
        ev = evaluate(weights, data, out / f"{name}-eval", EvaluateConfig(imgsz=args.imgsz))
        rows[name] = {"map50_95": ev.metrics["map50_95"], "map50": ev.metrics["map50"],
                      "epoch_s": statistics.median(seconds) if seconds else float("nan"), **extra}
        print(name, rows[name], flush=True)

    cbs, secs = epoch_timer()
    base = train(args.model, data, out / "baseline", TrainConfig(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, plots=False), callbacks=cbs)
    record("baseline", str(base.path("weights")), secs, {"epochs": args.epochs})

    cbs, secs = epoch_timer()
    plain = train(str(base.path("weights")), data, out / "plain",
                  TrainConfig(epochs=args.prune_epochs, imgsz=args.imgsz, batch=args.batch, plots=False, optimizer="SGD", lr0=0.01), callbacks=cbs)
    record("plain", str(plain.path("weights")), secs, {"epochs": args.epochs + args.prune_epochs})

    end = max(1, int(args.prune_epochs * 0.6))
    shortened = f"num_epochs={args.prune_epochs},pruning_start_epoch=0,pruning_end_epoch={end}"
    for name, recipe in (("pruned50", "recipes/yolov8n-pruned50.yaml"), ("pruned75", "recipes/yolov8n-pruned75.yaml")):
        cbs, secs = epoch_timer()
        result = sparsify(str(base.path("weights")), data, recipe, out / name,
                          SparsifyConfig(imgsz=args.imgsz, batch=args.batch, plots=False, variant=name),
                          recipe_args=shortened, callbacks=cbs)
        record(name, str(result.path("weights")), secs,
               {"epochs": args.epochs + args.prune_epochs, "sparsity": result.metrics["sparsity"], "recipe": recipe, "recipe_args": shortened})

    ref = rows["plain"]
    lines = [
        f"| variant | epochs | sparsity | mAP50-95 | mAP50 | mAP50-95 vs plain | vs baseline | s/epoch | time/epoch vs plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['epochs']} | {row.get('sparsity', 0):.3f} | {row['map50_95']:.4f} | {row['map50']:.4f} | "
            f"{row['map50_95'] / ref['map50_95'] if ref['map50_95'] else float('nan'):.3f} | "
            f"{row['map50_95'] / rows['baseline']['map50_95'] if rows['baseline']['map50_95'] else float('nan'):.3f} | "
            f"{row['epoch_s']:.2f} | {row['epoch_s'] / ref['epoch_s']:.3f} |"
        )
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
