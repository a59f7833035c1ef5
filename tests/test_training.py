"""The train step: real ultralytics training on generated data, offline.

    .venv/bin/python -m pytest tests/test_training.py
"""

from __future__ import annotations

import json

import pytest

from sparsepipe.errors import ConfigError, ModelError
from sparsepipe.results import read_result
from sparsepipe.training import TrainConfig


def test_train_publishes_weights_result_and_offline_plots(trained):
    result = read_result(trained.train_dir)
    assert result.step == "train" and result.variant == "baseline"
    assert result.path("weights").is_file() and result.path("weights").name == "model.pt"
    for key in ("map50", "map50_95", "precision", "recall", "params", "train_time_s"):
        assert key in result.metrics, key
    assert 0.0 <= result.metrics["map50_95"] <= result.metrics["map50"] <= 1.0
    assert result.metrics["params"] > 1_000_000  # yolov8n ~3.0M
    assert result.metrics["epochs"] == 2
    run_dir = trained.train_dir / "ultralytics"
    # Plots are drawn offline (no font or asset download): labels, curves, batch mosaics.
    for name in ("results.png", "labels.jpg", "train_batch0.jpg"):
        assert (run_dir / name).is_file(), name
    raw = json.loads((trained.train_dir / "result.json").read_text())
    assert raw["files"]["weights"] == "model.pt"  # relative: the folder is relocatable


def test_config_rejects_bad_values_with_the_fix():
    with pytest.raises(ConfigError, match="multiple of 32"):
        TrainConfig(imgsz=100)
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="set by sparsepipe"):
        TrainConfig(extra={"data": "x.yaml"})


def test_unknown_model_name_is_a_model_error(tiny_data, tmp_path):
    from sparsepipe.training import train

    with pytest.raises(ModelError, match="yolov8n.yaml"):
        train("yolov8q.yaml", str(tiny_data), tmp_path / "t", TrainConfig(epochs=1, imgsz=64))
    assert not (tmp_path / "t" / "result.json").exists()


def test_hub_weights_are_never_downloaded(tiny_data, tmp_path):
    from sparsepipe.training import train

    with pytest.raises(ModelError, match="never downloads"):
        train("yolov8n.pt", str(tiny_data), tmp_path / "t", TrainConfig(epochs=1, imgsz=64))


def test_cpu_training_uses_the_configured_threads(tiny_data, tmp_path, monkeypatch):
    """ultralytics sets torch to cores - 1 threads on the CPU (1 on a 2-core machine); sparsepipe's
    trainer sets every usable core, or SPARSEPIPE_TRAIN_THREADS."""
    import torch

    from sparsepipe.training import train
    from sparsepipe.ultralytics_hooks import TRAIN_THREADS_ENV, training_threads

    seen: list[int] = []
    monkeypatch.setenv(TRAIN_THREADS_ENV, "3")
    assert training_threads() == 3
    config = TrainConfig(epochs=1, imgsz=64, batch=8, workers=0, plots=False)
    before = torch.get_num_threads()
    try:
        train("yolov8n.yaml", str(tiny_data), tmp_path / "t", config,
              callbacks={"on_train_epoch_start": [lambda trainer: seen.append(torch.get_num_threads())]})
    finally:
        torch.set_num_threads(before)  # the setting is process-wide; later tests expect the default
    assert seen == [3]
    monkeypatch.setenv(TRAIN_THREADS_ENV, "zero")
    with pytest.raises(ConfigError, match=TRAIN_THREADS_ENV):
        training_threads()
