"""Controllers: what each modifier family does inside a sparsify training run, looked up by registry.

    python -c "from sparsepipe.recipe_session import load_controllers; print([c.__name__ for c in load_controllers()])"

A modifier (:mod:`sparsepipe.modifiers`) only describes a schedule. Its *controller* runs it in
ultralytics training; :func:`sparsepipe.sparsify.sparsify` treats every controller alike:

* :meth:`Controller.check` (every registered class, every run, before recipe validation): refuse
  a starting model the family cannot train;
* :meth:`Controller.create` (when the recipe holds one of the class's ``modifiers``): build it,
  with every check that needs the validated recipe, before training starts;
* :meth:`~Controller.callbacks` (ultralytics events), :meth:`~Controller.state` (stored in every
  checkpoint under sparsepipe's key; ``context.resume_state`` hands it back on ``--resume``),
  :meth:`~Controller.ultralytics_overrides` (train arguments),
  :meth:`~Controller.trainer_class` (wraps the trainer class) and :meth:`~Controller.results`
  (metrics and files of the published model).

:class:`~sparsepipe.recipe_session.RecipeSession` (masks and learning rate) is the first
controller of every run: the others read its fractional epoch. A module registers its controller
with :func:`register_controller` when it is imported; ``docs/architecture.md`` ("How to add a
modifier") shows a whole family in one file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

from sparsepipe.errors import SparsepipeError

C = TypeVar("C", bound=type)


@dataclasses.dataclass
class TrainingContext:
    """What a controller may use, as sparsify checked it (``session`` and ``teacher_model`` are
    None during :meth:`Controller.check`)."""

    recipe: Any  # the loaded recipe (sparsepipe.recipe.Recipe)
    yolo: Any  # the ultralytics YOLO about to train
    model: str  # the --model reference, for messages
    tracker: Any  # sparsepipe.tracking.Tracker of the run
    resume: bool = False  # True: continuing a killed run
    resume_state: dict[str, Any] | None = None  # sparsepipe's state of the checkpoint being resumed
    teacher: str | None = None  # the --teacher reference
    teacher_model: Any = None  # the teacher, resolved once by sparsify (nn.Module) or None
    session: Any = None  # the RecipeSession: fractional epoch, masks, tracker


class Controller:
    """Base of every controller; each method's default does nothing."""

    #: the modifier classes this controller runs (the default :meth:`create` needs one in the recipe)
    modifiers: tuple[type, ...] = ()
    #: position of its callbacks and checkpoint state (the recipe session, 0, is always first)
    order: int = 0
    #: position of its :meth:`trainer_class`: lower wraps first (innermost)
    wrap_order: int = 0

    @classmethod
    def check(cls, context: TrainingContext) -> None:
        """Raise :class:`SparsepipeError` for a starting model this family cannot train."""

    @classmethod
    def create(cls, context: TrainingContext) -> Controller | None:
        """The controller of this run, or None: by default ``cls(context)`` when the recipe holds one
        of :attr:`modifiers`."""
        return cls(context) if context.recipe.modifiers_of(*cls.modifiers) else None  # type: ignore[call-arg]

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        """``{event: function}`` to register with ``YOLO.add_callback``."""
        return {}

    def state(self) -> dict[str, Any]:
        """Keys to store in every checkpoint (next to the recipe state) for ``--resume``."""
        return {}

    def ultralytics_overrides(self) -> dict[str, Any]:
        """Train arguments this controller decides (they win over the user's extras)."""
        return {}

    def trainer_class(self, base: type, task: str) -> type:
        """The trainer class to train with: ``base`` or a subclass of it."""
        return base

    def results(self, model: Any, out: Any, imgsz: int) -> tuple[dict[str, float], dict[str, str]]:
        """``(metrics, files)`` of the published model (files written under ``out``)."""
        return {}, {}


_REGISTRY: dict[str, type[Controller]] = {}


def _key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_controller(order: int, wrap_order: int | None = None) -> Callable[[C], C]:
    """Class decorator: sparsify asks the decorated :class:`Controller` subclass in every run.

    ``order`` places its callbacks and checkpoint state among the others (ties: by name);
    ``wrap_order`` (default ``order``) places its :meth:`Controller.trainer_class`, lower wrapping
    first. The built-in ones: distillation 10/10, QAT 20/30, channel pruning 30/20.
    """

    def deco(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, Controller)):
            raise TypeError(f"{cls!r} is not a sparsepipe.controllers.Controller subclass")
        cls.order, cls.wrap_order = order, order if wrap_order is None else wrap_order
        _REGISTRY[_key(cls)] = cls
        return cls

    return deco


def unregister_controller(cls: type[Controller]) -> None:
    """Forget ``cls`` (tests that register a temporary controller)."""
    _REGISTRY.pop(_key(cls), None)


def registered() -> list[type[Controller]]:
    """Every registered controller class, by ``order`` then name."""
    return sorted(_REGISTRY.values(), key=lambda cls: (cls.order, _key(cls)))


def check_covered(recipe: Any, extra: tuple[type, ...] = ()) -> None:
    """Refuse a recipe modifier that no registered controller (nor ``extra``) runs."""
    served = tuple(m for cls in _REGISTRY.values() for m in cls.modifiers) + tuple(extra)
    orphans = sorted({m.tag for m in recipe.modifiers if not isinstance(m, served)})
    if orphans:
        raise SparsepipeError(
            f"No training controller runs {', '.join('!' + t for t in orphans)}: the module that defines "
            f"the modifier must also register its controller (sparsepipe.controllers.register_controller) "
            f"and be imported before sparsify runs.")
