"""Epoch time of CPU training with 1 thread (ultralytics' choice on 2 cores) vs every core.

    .venv/bin/python benchmarks/train_threads_bench.py          # ~2 min on 2 cores

ultralytics sets ``torch.set_num_threads(cores - 1)`` when it trains on the CPU: 1 thread on a
2-core machine. sparsepipe's trainer sets every usable core instead (``SPARSEPIPE_TRAIN_THREADS``
overrides). This script trains the same short run with 1 thread and with every core, alternating
(``--rounds`` pairs, so machine load hits both alike), and prints the ratio of the median epoch
times (the first epoch of each run is dropped: it also warms caches).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-train-threads")
    parser.add_argument("--data", default="synthetic:preset=demo")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from sparsepipe.hardware import cpu_info
    from sparsepipe.training import TrainConfig, train
    from sparsepipe.ultralytics_hooks import TRAIN_THREADS_ENV, training_threads

    cores = training_threads()
    seconds: dict[int, list[float]] = {1: [], cores: []}
    for round_ in range(args.rounds):
        for threads in seconds:
            started: list[float] = []
            ends: list[float] = []
            callbacks = {"on_train_epoch_start": [lambda t: started.append(time.perf_counter())],
                         "on_train_epoch_end": [lambda t: ends.append(time.perf_counter() - started[-1])]}
            os.environ[TRAIN_THREADS_ENV] = str(threads)
            config = TrainConfig(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, plots=False,
                                 extra={"nbs": args.batch, "val": False})
            train("yolov8n.yaml", args.data, Path(args.out) / f"t{threads}-r{round_}", config, callbacks=callbacks)
            seconds[threads] += ends[1:]
    single, every = statistics.median(seconds[1]), statistics.median(seconds[cores])
    hw = cpu_info()
    print(f"train_threads_bench: {hw['cpu_model']}, {hw['usable_cores']} usable cores; {args.data} at {args.imgsz} px, "
          f"batch {args.batch}, {args.rounds} alternating pairs of {args.epochs}-epoch runs (first epoch dropped)")
    print(f"median epoch (training loop, no val): 1 thread {single:.2f} s, {cores} threads {every:.2f} s; "
          f"speedup_vs_one_thread = {single / every:.3f}x")


if __name__ == "__main__":
    main()
