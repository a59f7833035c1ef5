"""A whole modifier family in one file: the modifier model and its controller, registered on import.

    .venv/bin/python -m pytest tests/test_controllers.py

``!ToyCountingModifier`` counts the training batches it is active in. Nothing else in sparsepipe
names it: importing this module is all ``sparsify`` needs (tests/test_controllers.py imports it,
runs a recipe with it and removes it again). docs/architecture.md, "How to add a modifier".
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from sparsepipe.controllers import Controller, TrainingContext, register_controller
from sparsepipe.errors import SparsepipeError
from sparsepipe.modifiers.base import Modifier
from sparsepipe.modifiers.registry import register

STATE_KEY = "toy_counting"  # this family's key in sparsepipe's checkpoint state
checked: list[str] = []  # models Controller.check saw (the test reads it)


@register("ToyCountingModifier")
class ToyCountingModifier(Modifier):
    """Count the batches the modifier is active in (a stand-in for a real algorithm)."""

    tag: ClassVar[str] = "ToyCountingModifier"
    label: str = "toy"


@register_controller(order=40)  # after the built-in controllers; its trainer wraps theirs
class ToyCountingController(Controller):
    modifiers = (ToyCountingModifier,)

    @classmethod
    def check(cls, context: TrainingContext) -> None:
        checked.append(context.model)
        if getattr(context.yolo.model, "toy_refused", False):
            raise SparsepipeError(f"'{context.model}' cannot be counted")

    def __init__(self, context: TrainingContext) -> None:
        self.session = context.session  # the recipe session: fractional epoch
        self.modifier = context.recipe.modifiers_of(ToyCountingModifier)[0]
        self.batches = int(((context.resume_state or {}).get(STATE_KEY) or {}).get("batches", 0))

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        return {"on_train_batch_start": self.count}

    def count(self, trainer: Any) -> None:
        if self.modifier.is_active(self.session.epoch):
            self.batches += 1

    def state(self) -> dict[str, Any]:
        return {STATE_KEY: {"label": self.modifier.label, "batches": self.batches}}

    def trainer_class(self, base: type, task: str) -> type:
        return type(f"Toy{base.__name__}", (base,), {})

    def results(self, model: Any, out: Any, imgsz: int) -> tuple[dict[str, float], dict[str, str]]:
        return {"toy_batches": float(self.batches)}, {}
