"""The only places sparsepipe touches ultralytics' training loop.

    .venv/bin/python -m pytest tests/test_ultralytics_contract.py

sparsepipe uses two documented extension points: the ``trainer=`` argument of
``YOLO.train`` (a subclass of the task's trainer) and callbacks (``model.add_callback``).
``tests/test_ultralytics_contract.py`` proves the events below still fire in this order on
the pinned ultralytics range, so an upgrade that breaks them fails a test instead of
silently training without a recipe.

Tracking: sparsepipe owns the MLflow run. Ultralytics' own MLflow callback would log into
whatever run is active, or into another experiment, or silently stop when a run id is
injected, so the trainer subclass removes it and :func:`epoch_logger` logs per-epoch
losses, metrics and learning rates into sparsepipe's run instead, under stable names.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

from sparsepipe.errors import ConfigError, ModelError

# Events sparsepipe relies on, in the order ultralytics fires them during ``train()``.
# (ultralytics 8.4 declares an "optimizer_step" event but never fires it: code that must run
# right after each optimizer step overrides the trainer's ``optimizer_step`` method instead.)
TRAINING_EVENTS = (
    "on_pretrain_routine_start",
    "on_pretrain_routine_end",
    "on_train_start",
    "on_train_epoch_start",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_model_save",  # the checkpoint of the epoch is written before the epoch's metrics callback
    "on_fit_epoch_end",
    "on_train_end",
)

FOREIGN_TRACKING_MODULES = ("ultralytics.utils.callbacks.mlflow",)


def strip_foreign_tracking(callbacks: dict[str, list[Callable]]) -> int:
    """Remove ultralytics' MLflow callbacks from a callbacks dict in place; return how many."""
    removed = 0
    for event, fns in callbacks.items():
        keep = [f for f in fns if not getattr(f, "__module__", "").startswith(FOREIGN_TRACKING_MODULES)]
        removed += len(fns) - len(keep)
        callbacks[event] = keep
    return removed


#: Environment variable that sets the CPU threads of training (default: every usable core).
TRAIN_THREADS_ENV = "SPARSEPIPE_TRAIN_THREADS"
ULTRALYTICS_DIR = "ultralytics"  # ultralytics' own run folder inside --out (plots, results.csv, weights/)


def training_threads() -> int:
    """Intra-op threads for CPU training: ``$SPARSEPIPE_TRAIN_THREADS``, else every usable core.

    ultralytics sets ``torch.set_num_threads(cpu_count - 1)`` when it selects the CPU, which on a
    2-core machine is 1 thread: the second core idles while training (it also loads data in
    the main process on CPU). Measured here: see docs/benchmarks.md, "Training threads".
    """
    raw = os.environ.get(TRAIN_THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"{TRAIN_THREADS_ENV}={raw!r}: use a positive number of threads, e.g. 2.")
        return int(raw)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def trainer_class(task: str) -> type:
    """A subclass of ultralytics' trainer for ``task`` that leaves tracking to sparsepipe.

    On the CPU it also trains with :func:`training_threads` threads instead of ultralytics'
    ``cores - 1``.
    """
    from ultralytics.models.yolo.detect import DetectionTrainer  # heavy: ultralytics
    from ultralytics.models.yolo.segment import SegmentationTrainer  # heavy: ultralytics

    bases = {"detect": DetectionTrainer, "segment": SegmentationTrainer}
    if task not in bases:
        raise ModelError(
            f"Task '{task}' is not supported: sparsepipe trains detection and segmentation models "
            f"({', '.join(bases)}). Use a detection or -seg model config."
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bases[task].__init__(self, *args, **kwargs)
        strip_foreign_tracking(self.callbacks)
        if getattr(self.device, "type", "") == "cpu":
            import torch  # heavy: torch

            torch.set_num_threads(training_threads())

    return type(f"Sparsepipe{bases[task].__name__}", (bases[task],), {"__init__": __init__})


def _metric_name(key: str) -> str:
    """``metrics/mAP50-95(B)`` -> ``val/map50_95``; ``train/box_loss`` stays as is."""
    renames = {
        "metrics/precision(B)": "val/precision",
        "metrics/recall(B)": "val/recall",
        "metrics/mAP50(B)": "val/map50",
        "metrics/mAP50-95(B)": "val/map50_95",
        "metrics/precision(M)": "val/mask_precision",
        "metrics/recall(M)": "val/mask_recall",
        "metrics/mAP50(M)": "val/mask_map50",
        "metrics/mAP50-95(M)": "val/mask_map50_95",
    }
    return renames.get(key, key.replace("(", "_").replace(")", "").lower())


def epoch_metrics(trainer: Any) -> dict[str, float]:
    """Losses, validation metrics and learning rates of the epoch that just ended."""
    values: dict[str, float] = {}
    values.update(trainer.label_loss_items(trainer.tloss, prefix="train"))
    values.update(trainer.metrics or {})
    values.update(trainer.lr or {})
    out = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[_metric_name(key)] = number
    return out


def epoch_logger(tracker: Any) -> dict[str, Callable[[Any], None]]:
    """Callbacks that log :func:`epoch_metrics` with ``step=epoch`` once per training epoch.

    Ultralytics fires ``on_fit_epoch_end`` once more after training, for the final validation
    of ``best.pt`` (at step epochs + 1). That call is not preceded by ``on_train_epoch_end``
    and is skipped here: the train step logs those final numbers as ``map50``/``map50_95``.
    Returns ``{event: callback}`` to register with ``YOLO.add_callback``.
    """
    pending = {"epoch_ended": False}

    def on_train_epoch_end(trainer: Any) -> None:
        pending["epoch_ended"] = True

    def on_fit_epoch_end(trainer: Any) -> None:
        if not pending["epoch_ended"]:
            return
        pending["epoch_ended"] = False
        tracker.log_metrics(epoch_metrics(trainer), step=int(trainer.epoch) + 1)

    return {"on_train_epoch_end": on_train_epoch_end, "on_fit_epoch_end": on_fit_epoch_end}


def remove_truncated_checkpoints(folder: Path) -> list[Path]:
    """Delete the ``.pt`` files in ``folder`` that are not complete zip archives (torch's format).

    ultralytics saves ``last.pt``/``best.pt`` in place; a write cut by a full disk leaves a file a
    later ``--resume`` would try (and fail with a misleading message) to load. Complete files stay.
    """
    removed = []
    for path in sorted(Path(folder).glob("*.pt")) if Path(folder).is_dir() else []:
        if not zipfile.is_zipfile(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
