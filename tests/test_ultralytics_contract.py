"""The ultralytics extension points sparsepipe relies on still exist and fire in order.

    .venv/bin/python -m pytest tests/test_ultralytics_contract.py

If an ultralytics upgrade renames an event, stops honouring ``trainer=`` or changes the
order, these fail instead of recipes silently not being applied.
"""

from __future__ import annotations

import torch

from sparsepipe.ultralytics_hooks import TRAINING_EVENTS, strip_foreign_tracking, trainer_class


def _first_index(events, name):
    assert name in events, f"ultralytics never fired {name}; fired: {sorted(set(events))}"
    return events.index(name)


def test_every_event_fires_in_the_assumed_order(trained):
    events = trained.events
    order = [_first_index(events, e) for e in TRAINING_EVENTS]
    assert order == sorted(order), f"event order changed: {[e for _, e in sorted(zip(order, TRAINING_EVENTS))]}"


def test_per_batch_events_fire_once_per_batch(trained):
    events = trained.events
    starts = events.count("on_train_batch_start")
    assert starts >= 4  # 16 images / batch 8 * 2 epochs
    assert events.count("on_train_batch_end") == starts
    assert events.count("on_train_epoch_end") == 2
    assert events[-1] == "on_train_end"


def test_trainer_class_is_a_real_subclass_and_strips_mlflow():
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.models.yolo.segment import SegmentationTrainer

    assert issubclass(trainer_class("detect"), DetectionTrainer)
    assert issubclass(trainer_class("segment"), SegmentationTrainer)

    def foreign(trainer):
        pass

    foreign.__module__ = "ultralytics.utils.callbacks.mlflow"

    def ours(trainer):
        pass

    callbacks = {"on_train_end": [foreign, ours], "on_fit_epoch_end": [foreign]}
    assert strip_foreign_tracking(callbacks) == 2
    assert callbacks == {"on_train_end": [ours], "on_fit_epoch_end": []}


def test_ultralytics_mlflow_callback_module_still_exists():
    # The name we strip must stay the real one, or the strip becomes a silent no-op.
    import importlib.util

    assert importlib.util.find_spec("ultralytics.utils.callbacks.mlflow") is not None


def test_saved_checkpoint_holds_the_ema_model(trained):
    # sparsepipe reads the trained weights from ultralytics' checkpoint dict (EMA copy, half precision).
    ckpt = torch.load(trained.train_dir / "model.pt", map_location="cpu", weights_only=False)
    # strip_optimizer moved the EMA into "model" and dropped the separate copy and optimizer.
    assert ckpt.get("ema") is None and ckpt.get("optimizer") is None
    assert next(ckpt["model"].parameters()).dtype == torch.float16
