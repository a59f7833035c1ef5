"""Modifier families drive themselves: sparsify runs whatever controllers are registered.

    .venv/bin/python -m pytest tests/test_controllers.py

A new family is one file (tests/toy_modifier.py: a modifier model and its controller). Importing
it is enough for a recipe with ``!ToyCountingModifier`` to run through ``sparsify`` with the
controller's check, callbacks, checkpoint state, trainer class and results in play.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import textwrap

import pytest

import sparsepipe.modifiers as modifiers
from sparsepipe.controllers import unregister_controller
from sparsepipe.errors import SparsepipeError
from sparsepipe.modifiers.base import Modifier
from sparsepipe.modifiers.registry import unregister
from sparsepipe.recipe_session import RecipeSession, checkpoint_state, load_controllers
from sparsepipe.sparsify import SparsifyConfig, sparsify

CONFIG = dict(imgsz=64, batch=8, workers=0, plots=False)
RECIPE = textwrap.dedent("""
    training_modifiers:
      - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}
      - !ToyCountingModifier {start_epoch: 0, end_epoch: 1, label: counted}
""")


@pytest.fixture(scope="module")
def toy():
    """tests/toy_modifier.py imported (so registered) for this module only."""
    module = importlib.import_module("toy_modifier")
    yield module
    unregister_controller(module.ToyCountingController)
    unregister("ToyCountingModifier")
    sys.modules.pop("toy_modifier", None)


@pytest.fixture(scope="module")
def toy_run(toy, trained, tmp_path_factory):
    """One epoch of the tiny trained model under a recipe using the toy modifier."""
    root = tmp_path_factory.mktemp("toy")
    recipe = root / "toy.yaml"
    recipe.write_text(RECIPE)
    seen: dict[str, object] = {}

    def on_train_start(trainer):
        seen["trainer"] = type(trainer).__name__
        seen["batches"] = len(trainer.train_loader)

    result = sparsify(str(trained.train_dir), str(trained.data_dir), str(recipe), root / "out",
                      SparsifyConfig(**CONFIG), callbacks={"on_train_start": [on_train_start]})
    return result, seen


def test_a_registered_family_runs_through_sparsify(toy, toy_run, trained):
    result, seen = toy_run
    assert str(trained.train_dir) in toy.checked  # Controller.check ran
    # its trainer subclass wraps the built-in ones (here: the keep-architecture trainer)
    assert seen["trainer"] == "ToyChannelSparsepipeDetectionTrainer"
    # its callback fired on every batch of the one epoch, and its results reached result.json
    assert result.metrics["toy_batches"] == seen["batches"] >= 2
    # its state is in every checkpoint sparsify wrote, beside the recipe session's
    for path in (result.path("weights"), result.path("last")):
        state = checkpoint_state(path)
        assert state["toy_counting"] == {"label": "counted", "batches": seen["batches"]}
        assert state["finished"] is True and "ToyCountingModifier" in state["recipe"]


def test_a_family_check_refuses_the_model_before_training(toy, trained, tmp_path, monkeypatch):
    from ultralytics.nn.tasks import DetectionModel

    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE)
    monkeypatch.setattr(DetectionModel, "toy_refused", True, raising=False)
    with pytest.raises(SparsepipeError, match="cannot be counted"):
        sparsify(str(trained.train_dir), str(trained.data_dir), str(recipe), tmp_path / "out", SparsifyConfig(**CONFIG))
    assert not (tmp_path / "out" / "ultralytics").exists()


def test_a_modifier_without_a_controller_is_refused_before_training(toy, trained, tmp_path):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE)
    unregister_controller(toy.ToyCountingController)
    try:
        with pytest.raises(SparsepipeError, match="No training controller runs !ToyCountingModifier"):
            sparsify(str(trained.train_dir), str(trained.data_dir), str(recipe), tmp_path / "out",
                     SparsifyConfig(**CONFIG))
    finally:
        toy.register_controller(order=40)(toy.ToyCountingController)
    assert not (tmp_path / "out" / "ultralytics").exists()


def test_built_in_controllers_keep_their_order():
    classes = load_controllers()
    names = [c.__name__ for c in classes if c.__module__.startswith("sparsepipe.")]
    # callbacks and checkpoint state: the session, distillation, QAT, channel pruning ...
    assert names == ["DistillationController", "QATController", "ChannelPruningController"]
    # ... trainer classes, innermost first: distillation builds the model, channel pruning keeps or
    # converts its architecture, QAT prepares whatever the others built
    assert sorted(names, key=lambda n: next(c for c in classes if c.__name__ == n).wrap_order) == [
        "DistillationController", "ChannelPruningController", "QATController"]


def test_every_built_in_modifier_has_a_controller():
    served = tuple(m for c in load_controllers() for m in c.modifiers) + RecipeSession.modifiers
    classes = [c for c in vars(modifiers).values()
               if inspect.isclass(c) and issubclass(c, Modifier) and c is not Modifier]
    assert len(classes) > 15
    assert [c.__name__ for c in classes if not issubclass(c, served)] == []
