"""Run a recipe inside ultralytics training through callbacks and a trainer subclass.

    sparsepipe sparsify --model runs/train --data synthetic --recipe recipes/yolov8n-pruned50.yaml --out runs/pruned50

:class:`RecipeSession` registers ultralytics callbacks (see :mod:`sparsepipe.ultralytics_hooks`
for the contract test) that, on every batch, work out the fractional epoch
(``batches_seen / batches_per_epoch``), update pruning masks and set the learning rate and
weight decay the recipe asks for. Masks are enforced by a torch optimizer post-step hook
(exact through momentum, weight decay, AMP and gradient accumulation) and applied to the EMA
whenever they change. The recipe, its overrides, the epoch and the schedule state are written
into ``last.pt``/``best.pt`` after each save, so a killed run resumes where it stopped.

The session is the first :class:`~sparsepipe.controllers.Controller` of every sparsify run (the
others read its fractional epoch); :func:`create_controllers` adds the registered controllers the
recipe needs (distillation, QAT, channel pruning, any other registered one).

Learning rate: when the recipe has an LR modifier, ultralytics' warm-up is switched off
(``warmup_epochs=0``; recipes carry their own warm-up) and, for every batch an LR modifier
covers, the recipe's value overwrites the per-epoch value of ultralytics' scheduler. Outside
those epochs ultralytics' scheduler applies unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from sparsepipe import __version__
from sparsepipe.controllers import Controller, TrainingContext, check_covered, registered
from sparsepipe.masks import MaskManager, overall_sparsity, sparsity_table
from sparsepipe.modifiers.epoch import EpochRangeModifier
from sparsepipe.modifiers.lr import LR_MODIFIERS, SetWeightDecayModifier
from sparsepipe.modifiers.pruning import PRUNING_MODIFIERS
from sparsepipe.recipe import schedule
from sparsepipe.results import atomic_write_with
from sparsepipe.torch_utils import unwrap
from sparsepipe.tracking import Tracker
from sparsepipe.trust import load_checkpoint

STATE_KEY = "sparsepipe"  # key of sparsepipe's state inside ultralytics checkpoints


def checkpoint_state(path: str | Path) -> dict[str, Any] | None:
    """sparsepipe's recipe state stored in an ultralytics checkpoint, or None."""
    ckpt = load_checkpoint(path)  # scanned, then torch's enforcing unpickler (SECURITY.md)
    return ckpt.get(STATE_KEY) if isinstance(ckpt, dict) else None


def write_checkpoint_state(path: str | Path, state: dict[str, Any]) -> None:
    """Add ``state`` to a checkpoint file, atomically (temporary file + rename)."""
    import torch  # heavy: torch

    ckpt = load_checkpoint(path)
    ckpt[STATE_KEY] = state
    atomic_write_with(path, lambda tmp: torch.save(ckpt, tmp))


def load_controllers() -> list[type[Controller]]:
    """Every registered controller class by order, once the built-in ones are imported (and registered)."""
    from sparsepipe import channel_pruning, distillation, qat_modules  # noqa: F401  # heavy: torch, ultralytics (importing them registers their controllers)

    return registered()


def create_controllers(context: TrainingContext) -> list[Controller]:
    """``[context.session, ...]``: the recipe session, then each registered controller this run needs, by order.

    The session stores each controller's :meth:`~Controller.state` in every checkpoint. A recipe
    modifier that no controller runs is refused (training would silently ignore it).
    """
    classes = load_controllers()
    check_covered(context.recipe, RecipeSession.modifiers)
    made = [c for c in (cls.create(context) for cls in classes) if c is not None]
    context.session.state_hooks.extend(c.state for c in made)
    return [context.session, *made]


class RecipeSession(Controller):
    """The recipe's lifecycle during one ultralytics ``train()`` call: pruning masks, LR, weight decay."""

    modifiers = (*PRUNING_MODIFIERS, *LR_MODIFIERS, SetWeightDecayModifier, EpochRangeModifier)

    def __init__(self, recipe: Any, recipe_args: dict[str, Any] | None = None, tracker: Any = None,
                 resume_state: dict[str, Any] | None = None) -> None:
        self.recipe = recipe
        self.recipe_args = dict(recipe_args or {})
        self.tracker = tracker or Tracker()
        self.resume_state = resume_state
        self.masks: MaskManager | None = None
        self.batches_per_epoch = 1
        self.batches_seen = 0
        self.controls_lr = schedule.controls_lr(recipe)
        self.last_lrs: list[float] = []
        self._epoch_ended = False
        self._saved_mtimes: dict[str, float] = {}
        # functions returning more state to store in checkpoints (sparsify: the run, each controller's state)
        self.state_hooks: list[Callable[[], dict[str, Any]]] = []

    # ------------------------------------------------------------------ helpers
    @property
    def epoch(self) -> float:
        """Fractional epoch = batches seen / batches per epoch (accumulation-skipped batches count)."""
        return self.batches_seen / self.batches_per_epoch

    def ultralytics_overrides(self) -> dict[str, Any]:
        """Train arguments the recipe decides: its length, and no warm-up when it drives the LR."""
        overrides: dict[str, Any] = {"epochs": max(1, schedule.training_epochs(self.recipe))}
        if self.controls_lr:
            overrides["warmup_epochs"] = 0.0
        return overrides

    def state(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "recipe": self.recipe.to_yaml(),
            "recipe_args": self.recipe_args,
            "epoch": self.epoch,
            "batches_per_epoch": self.batches_per_epoch,
            "masks": self.masks.state_dict() if self.masks else {},
            "targets": self.masks.targets if self.masks else {},
            **{k: v for hook in self.state_hooks for k, v in hook().items()},
        }

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        """``{event: function}`` to register with ``YOLO.add_callback``."""
        return {
            "on_train_start": self.on_train_start,
            "on_train_batch_start": self.on_train_batch_start,
            "on_train_batch_end": self.on_train_batch_end,
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_model_save": self.on_model_save,
            "on_fit_epoch_end": self.on_fit_epoch_end,
        }

    # ------------------------------------------------------------------ events
    def on_train_start(self, trainer: Any) -> None:
        model = unwrap(trainer.model)
        self.batches_per_epoch = max(1, len(trainer.train_loader))
        self.batches_seen = int(trainer.start_epoch) * self.batches_per_epoch
        self.masks = MaskManager(model, self.recipe)
        if self.resume_state:
            self.masks.load_state_dict(self.resume_state.get("masks", {}))
            self.masks.apply()
        masks = self.masks
        trainer.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: masks.apply())
        if masks.needs_gradients:  # OBS / M-FAC estimate the Fisher from training gradients
            trainer.optimizer.register_step_pre_hook(
                lambda optimizer, args, kwargs: masks.collect_gradients(self.epoch, self.batches_per_epoch))
        self._update(trainer)

    def _update(self, trainer: Any) -> None:
        if self.masks is not None and self.masks.step(self.epoch):
            self.masks.apply()
            if getattr(trainer, "ema", None) is not None:
                self.masks.apply(trainer.ema.ema)
            if self.masks.reset_momentum:
                self.masks.reset_momentum_buffers(trainer.optimizer)

    def on_train_batch_start(self, trainer: Any) -> None:
        self._update(trainer)
        epoch = self.epoch
        lrs = []
        for index, group in enumerate(trainer.optimizer.param_groups):
            if self.controls_lr:
                lr = schedule.lr_at(self.recipe, epoch, index, None)
                if lr is not None:
                    group["lr"] = lr
            decay = schedule.weight_decay_at(self.recipe, epoch, index, None)
            if decay is not None:
                group["weight_decay"] = decay
            lrs.append(float(group["lr"]))
        self.last_lrs = lrs

    def on_train_batch_end(self, trainer: Any) -> None:
        self.batches_seen += 1

    def on_train_epoch_end(self, trainer: Any) -> None:
        # The last update of a modifier ending exactly at the end of training happens here,
        # before ultralytics validates and saves the epoch.
        self._update(trainer)
        self._epoch_ended = True

    def on_model_save(self, trainer: Any) -> None:
        state = self.state()
        for path in (Path(trainer.last), Path(trainer.best)):
            if not path.is_file():
                continue
            mtime = path.stat().st_mtime_ns
            if self._saved_mtimes.get(str(path)) == mtime:
                continue  # not rewritten by ultralytics since we stamped it
            write_checkpoint_state(path, state)
            self._saved_mtimes[str(path)] = path.stat().st_mtime_ns

    def on_fit_epoch_end(self, trainer: Any) -> None:
        if not self._epoch_ended:
            return  # ultralytics' extra call for the final validation of best.pt
        self._epoch_ended = False
        epoch = int(round(self.epoch))
        # The LR of each param group is logged with the other per-epoch values (epoch_logger).
        metrics: dict[str, float] = {}
        if self.masks is not None and self.masks.targets:
            table = sparsity_table(trainer.ema.ema if trainer.ema else trainer.model, list(self.masks.targets))
            metrics["sparsity"] = overall_sparsity(table)
            for name, row in table.items():
                metrics[f"sparsity/{name}"] = row["sparsity"]
        self.tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=epoch)
