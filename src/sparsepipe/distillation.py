"""Distillation inside ``sparsify``: a frozen teacher guides the student while a recipe trains it.

    sparsepipe sparsify --model runs/train --data synthetic --recipe tests/sparsify/distill-layers.yaml --teacher self --out runs/distilled

:class:`DistillationController` (a :class:`~sparsepipe.controllers.Controller`) builds a
:class:`DistillationSession` when the recipe has distillation modifiers
(``DistillationSession.create(recipe, yolo, teacher, tracker)``); the session's
``trainer_class(task)`` is the innermost trainer passed to ``YOLO.train(trainer=...)``. Only documented extension
points are used: a trainer subclass (``get_model``, ``build_optimizer``) and callbacks.

* Teacher (:func:`resolve_teacher`): a checkpoint path or step ``--out`` folder, an MLflow
  registry URI ``models:/name/version`` or ``models:/name@alias``, or ``self`` (a frozen copy of
  the starting model). It runs in eval mode, without gradients, in fp32, on the training device.
* ``PerLayerDistillationModifier``: ``L + gain * sum_i mse(P_i(s_i), t_i)`` (each term divided by
  ``mean(t_i^2) + epsilon`` when ``normalize``); ``P_i`` is a bias-free 1x1 conv (student ->
  teacher channels) sized by a dry forward pass here, before training.
* ``DistillationModifier``: ``(1 - hardness) * L + hardness * T^2 * KL`` on the raw class scores
  of the Detect head, with a per-class *sigmoid* (Bernoulli) KL, because ultralytics trains those
  scores as independent sigmoids with BCE (a softmax over classes is meaningless at background
  anchors and constant when ``nc == 1``).

The student is a subclass of ultralytics' model class whose ``loss()`` adds the terms. Any copy or
pickle of it (the EMA, every checkpoint) is a plain ultralytics model, so ``last.pt``/``model.pt``
load, validate and export without sparsepipe. The projections are not part of the model: the
trainer adds them to the optimizer as an extra parameter group. See ``docs/distillation.md``.
"""

from __future__ import annotations

import copy
import copyreg
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsepipe.controllers import Controller, TrainingContext, register_controller
from sparsepipe.errors import SparsepipeError
from sparsepipe.models import load_yolo
from sparsepipe.modifiers.distillation import (
    DISTILLATION_MODIFIERS,
    DistillationModifier,
    PerLayerDistillationModifier,
)
from sparsepipe.recipe.schedule import active_distillation
from sparsepipe.splitfree import is_splitfree
from sparsepipe.ultralytics_hooks import trainer_class

TEACHER_SELF = "self"  # --teacher self: a frozen copy of the starting model
DRY_RUN_IMGSZ = 64  # px of the dry forward pass that sizes projections and checks layer shapes
SESSION_ATTR = "_sparsepipe_distill"  # where the student model keeps its (never copied) session link
PROJECTION_CLIP = 10.0  # max grad norm of the projections, as ultralytics clips the model's
PROJECTION_SEED = 0  # projections are initialised from their own generator: reproducible runs


# ---------------------------------------------------------------------------------- teacher
def resolve_teacher(teacher: str, yolo: Any) -> nn.Module:
    """The teacher as a frozen fp32 ``nn.Module`` (eval mode, no gradients, on the CPU).

    ``teacher`` is ``self`` (a deep copy of ``yolo.model``, the starting model), an MLflow registry
    URI (``models:/name/version``, ``models:/name@alias``) or anything ``load_yolo`` accepts (a
    checkpoint path, a train/sparsify ``--out`` folder, ``s3://...pt``).
    """
    teacher = str(teacher).strip()
    if teacher == TEACHER_SELF:
        model = copy.deepcopy(yolo.model)
    else:  # checkpoint, out folder, s3:// or models:/ (sparsepipe.registry resolves and caches it)
        model = load_yolo(teacher).model
    if not isinstance(model, nn.Module):
        raise SparsepipeError(f"Teacher '{teacher}' is not a PyTorch checkpoint (an ONNX file cannot teach).")
    model = model.float().eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------- helpers
def class_scores(output: Any) -> torch.Tensor:
    """Raw class scores ``(batch, nc, anchors)`` from a Detect/Segment head output (train or eval)."""
    if isinstance(output, (tuple, list)):
        output = next((o for o in reversed(output) if isinstance(o, dict)), None)
    if not isinstance(output, dict):
        raise SparsepipeError("output distillation needs an ultralytics Detect/Segment head (raw score dict)")
    if "one2many" in output:
        output = output["one2many"]
    return output["scores"]


def sigmoid_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Bernoulli KL(teacher || student) of per-class sigmoids at ``temperature``.

    Summed over classes, averaged over images and anchors (fp32).
    """
    s = student.float() / temperature
    t = teacher.float() / temperature
    p = torch.sigmoid(t)
    kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.sum(1).mean()


def _capture(modules: dict[str, nn.Module], names: set[str], store: dict[str, Any]) -> list[Any]:
    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            store[name] = output
        return hook

    return [modules[n].register_forward_hook(hook_for(n)) for n in sorted(names)]


def _dry_run(model: nn.Module, names: set[str]) -> tuple[dict[str, Any], Any]:
    """Outputs of the named modules and of the model for one zero image (eval mode, no grad)."""
    channels = int((getattr(model, "yaml", None) or {}).get("channels", 3))
    device = next(model.parameters()).device
    store: dict[str, Any] = {}
    handles = _capture(dict(model.named_modules()), names, store)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(1, channels, DRY_RUN_IMGSZ, DRY_RUN_IMGSZ, device=device,
                                    dtype=next(model.parameters()).dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return store, out


def _describe(x: Any) -> str:
    return "x".join(map(str, x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


class _DistillingModel:
    """Mixin for ultralytics' model classes: ``loss()`` adds the session's distillation terms.

    Copies and pickles (ModelEMA, checkpoints) become the plain ultralytics class without the
    session link, so nothing sparsepipe-specific is ever saved.
    """

    _plain_class: type

    def loss(self, batch: dict, preds: Any = None):
        session = self.__dict__.get(SESSION_ATTR)
        if session is None or not self.training or not torch.is_grad_enabled() or not session.active:
            return super().loss(batch, preds)
        return session.distill_loss(self, super().loss, batch, preds)

    def __reduce_ex__(self, protocol: int):
        state = {k: v for k, v in self.__dict__.items() if k != SESSION_ATTR}
        return copyreg.__newobj__, (self._plain_class,), state


_MODEL_CLASSES: dict[type, type] = {}


def distilling_model_class(base: type) -> type:
    """``base`` (DetectionModel, SegmentationModel) with the distillation ``loss``."""
    if base not in _MODEL_CLASSES:
        _MODEL_CLASSES[base] = type(f"Distilling{base.__name__}", (_DistillingModel, base), {"_plain_class": base})
    return _MODEL_CLASSES[base]


# ---------------------------------------------------------------------------------- session
class DistillationSession:
    """Teacher, projections, schedule and per-epoch loss history of one sparsify run."""

    def __init__(self, recipe: Any, teacher: nn.Module, projections: dict[tuple[int, str], nn.Module],
                 tracker: Any = None):
        self.recipe = recipe
        self.teacher = teacher
        self.modifiers = recipe.modifiers_of(*DISTILLATION_MODIFIERS)
        self._index = {id(m): i for i, m in enumerate(self.modifiers)}
        self.projections = nn.ModuleDict({f"{i}:{name}".replace(".", "/"): p for (i, name), p in projections.items()})
        self._projection_of = projections
        self.tracker = tracker
        self.epoch = 0.0  # fractional epoch of the current batch
        self.active: list[Any] = []  # modifiers active at self.epoch
        self.history: list[float] = []  # mean added loss term (per image) of each epoch it was active
        self.history_epochs: list[int] = []  # 1-based epoch of each history entry
        self._batch = 0
        self._sum: torch.Tensor | None = None
        self._count = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, recipe: Any, yolo: Any, teacher: str | None, tracker: Any = None,
               teacher_model: nn.Module | None = None) -> DistillationSession:
        """Resolve the teacher, check every layer pair, size the projections; all before training.

        ``teacher_model``: the teacher already resolved from ``teacher`` (by :func:`resolve_teacher`),
        so a caller that validated the recipe against it does not load it twice.
        """
        modifiers = recipe.modifiers_of(*DISTILLATION_MODIFIERS)
        if not modifiers:
            raise SparsepipeError("the recipe has no distillation modifier: no DistillationSession needed")
        if not teacher:
            raise SparsepipeError(
                f"The recipe has a {modifiers[0].tag}, which needs a teacher: pass --teacher with a "
                f"checkpoint path or step --out folder, a registry URI (models:/NAME/VERSION or "
                f"models:/NAME@ALIAS), or 'self' (a frozen copy of the starting model)."
            )
        teacher_model = teacher_model if teacher_model is not None else resolve_teacher(teacher, yolo)
        projections = cls._plan(modifiers, yolo.model, teacher_model, teacher)
        return cls(recipe, teacher_model, projections, tracker)

    @staticmethod
    def _plan(modifiers: list[Any], student: nn.Module, teacher: nn.Module, teacher_ref: str
              ) -> dict[tuple[int, str], nn.Module]:
        s_modules, t_modules = dict(student.named_modules()), dict(teacher.named_modules())
        s_names = {s for m in modifiers if isinstance(m, PerLayerDistillationModifier) for s, _ in m.layer_pairs()}
        t_names = {t for m in modifiers if isinstance(m, PerLayerDistillationModifier) for _, t in m.layer_pairs()}
        problems = [f"student has no layer '{n}'" for n in sorted(s_names - set(s_modules))]
        problems += [f"teacher has no layer '{n}'" for n in sorted(t_names - set(t_modules))]
        if problems:
            raise SparsepipeError(f"Distillation with teacher '{teacher_ref}': {'; '.join(problems)}. "
                                  f"Name modules that exist in both models (e.g. model.15).")
        s_feats, s_out = _dry_run(student, s_names)
        t_feats, t_out = _dry_run(teacher, t_names)
        generator = torch.Generator().manual_seed(PROJECTION_SEED)
        projections: dict[tuple[int, str], nn.Module] = {}
        for index, mod in enumerate(modifiers):
            if isinstance(mod, DistillationModifier):
                s, t = class_scores(s_out), class_scores(t_out)
                if s.shape != t.shape:
                    raise SparsepipeError(
                        f"Output distillation with teacher '{teacher_ref}': the teacher predicts "
                        f"{t.shape[1]} classes at {t.shape[2]} anchors, the student {s.shape[1]} at "
                        f"{s.shape[2]} (at {DRY_RUN_IMGSZ} px). The teacher must be trained on the same "
                        f"classes and have the same detection strides (a different architecture "
                        f"cannot teach per-anchor outputs)."
                    )
                continue
            for s_name, t_name in mod.layer_pairs():
                s, t = s_feats[s_name], t_feats[t_name]
                where = f"student '{s_name}' ({_describe(s)}) -> teacher '{t_name}' ({_describe(t)})"
                if not (isinstance(s, torch.Tensor) and isinstance(t, torch.Tensor) and s.ndim == 4 and t.ndim == 4):
                    raise SparsepipeError(
                        f"Per-layer distillation {where}: both layers must output one feature map "
                        f"(N, C, H, W); pick Conv/C2f/SPPF modules, not the head or a layer "
                        f"returning a list.")
                if s.shape[2:] != t.shape[2:]:
                    raise SparsepipeError(
                        f"Per-layer distillation {where} at {DRY_RUN_IMGSZ} px: spatial sizes differ, so "
                        f"the teacher '{teacher_ref}' has a different architecture at this layer. "
                        f"Pair each student layer with a teacher layer of the same stride through "
                        f"teacher_layer_names (no valid layer mapping exists for these names).")
                if s.shape[1] != t.shape[1] and not mod.project_features:
                    raise SparsepipeError(
                        f"Per-layer distillation {where}: channel counts differ and "
                        f"project_features is false; set project_features: true to learn a 1x1 "
                        f"projection, or pair layers of equal width.")
                if mod.project_features:
                    conv = nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1, bias=False)
                    nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=generator)
                    projections[(index, s_name)] = conv
        return projections

    # ------------------------------------------------------------------ ultralytics wiring
    def to(self, device: Any) -> DistillationSession:
        self.teacher.to(device)
        self.projections.to(device)
        return self

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        """``{event: function}``: epoch bookkeeping and logging (the trainer registers them)."""
        return {
            "on_train_epoch_start": self.on_train_epoch_start,
            "on_train_batch_start": self.on_train_batch_start,
            "on_train_epoch_end": self.on_train_epoch_end,
        }

    def trainer_class(self, task: str, base: type | None = None) -> type:
        """Subclass of ``base`` (default: sparsepipe's trainer for ``task``) that trains the student
        with distillation (its ``get_model`` builds the model: nothing inside it may build another)."""
        from ultralytics.nn.tasks import DetectionModel, SegmentationModel  # heavy: ultralytics
        from ultralytics.utils import RANK  # heavy: ultralytics

        base = base or trainer_class(task)
        model_class = distilling_model_class({"detect": DetectionModel, "segment": SegmentationModel}[task])
        session = self

        def __init__(trainer: Any, *args: Any, **kwargs: Any) -> None:
            base.__init__(trainer, *args, **kwargs)
            if getattr(trainer.args, "compile", False):
                raise SparsepipeError("Distillation needs eager mode: remove compile=True from the train arguments.")
            for event, function in session.callbacks().items():
                if function not in trainer.callbacks.get(event, []):
                    trainer.add_callback(event, function)

        def get_model(trainer: Any, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
            # Same as ultralytics' DetectionTrainer/SegmentationTrainer.get_model, with our class.
            model = trainer.set_model_names_for_load(
                model_class(cfg, nc=trainer.data["nc"], ch=trainer.data["channels"], verbose=verbose and RANK == -1)
            )
            if weights:
                model.load(weights)
            model.__dict__[SESSION_ATTR] = session
            return model

        def build_optimizer(trainer: Any, model: nn.Module, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
            optimizer = base.build_optimizer(trainer, model, *args, **kwargs)
            session.to(trainer.device)
            params = list(session.projections.parameters())
            if params:  # trained with the model: same settings as ultralytics' decayed conv weights
                groups = optimizer.param_groups
                ref = next((g for g in groups if g.get("param_group") in ("weight", "muon")), groups[0])
                optimizer.add_param_group({**{k: v for k, v in ref.items() if k != "params"}, "params": params})
                # ultralytics clips the model's gradients (norm PROJECTION_CLIP) before each step; the
                # projections are not in the model, so they get the same clip here (grads unscaled by then)
                def clip(opt: Any, args: Any, kwargs: Any) -> None:
                    torch.nn.utils.clip_grad_norm_(params, max_norm=PROJECTION_CLIP)

                optimizer.register_step_pre_hook(clip)
            return optimizer

        return type(f"Distillation{base.__name__}", (base,), {
            "__init__": __init__, "get_model": get_model, "build_optimizer": build_optimizer})

    # ------------------------------------------------------------------ events
    def on_train_epoch_start(self, trainer: Any) -> None:
        self._batch = 0
        self._sum, self._count = None, 0

    def on_train_batch_start(self, trainer: Any) -> None:
        batches = max(1, len(trainer.train_loader))
        self.epoch = int(trainer.epoch) + self._batch / batches
        self._batch += 1
        self.active = active_distillation(self.recipe, self.epoch)

    def on_train_epoch_end(self, trainer: Any) -> None:
        self.active = []
        if not self._count or self._sum is None:
            return
        mean = float(self._sum) / self._count
        epoch = int(trainer.epoch) + 1
        self.history.append(mean)
        self.history_epochs.append(epoch)
        if self.tracker is not None:
            self.tracker.log_metrics({"train/distill_loss": mean}, step=epoch)

    # ------------------------------------------------------------------ loss
    def distill_loss(self, model: nn.Module, task_loss: Callable, batch: dict, preds: Any = None):
        """``task_loss`` plus the active modifiers' terms; returns ultralytics' ``(total, items)``."""
        img = batch["img"]
        layers = [m for m in self.active if isinstance(m, PerLayerDistillationModifier)]
        s_names = {s for m in layers for s, _ in m.layer_pairs()}
        t_names = {t for m in layers for _, t in m.layer_pairs()}
        s_feats: dict[str, Any] = {}
        if s_names and preds is not None:
            raise SparsepipeError("per-layer distillation must run the student forward itself (no precomputed preds)")
        if preds is None:
            handles = _capture(dict(model.named_modules()), s_names, s_feats)
            try:
                preds = model(img)
            finally:
                for h in handles:
                    h.remove()
        loss, items = task_loss(batch, preds)
        t_feats: dict[str, Any] = {}
        if next(self.teacher.parameters()).device != img.device:
            self.to(img.device)
        handles = _capture(dict(self.teacher.named_modules()), t_names, t_feats)
        try:
            with torch.no_grad(), torch.autocast(device_type=img.device.type, enabled=False):
                t_out = self.teacher(img.float())
        finally:
            for h in handles:
                h.remove()
        batch_size = img.shape[0]
        total = loss.sum()  # ultralytics' loss is already scaled by the batch size
        term = total.new_zeros(())  # the added term, per image (what is logged)
        for mod in self.active:
            index = self._index[id(mod)]
            if isinstance(mod, PerLayerDistillationModifier):
                feature = total.new_zeros(())
                for s_name, t_name in mod.layer_pairs():
                    s = s_feats[s_name]
                    projection = self._projection_of.get((index, s_name))
                    if projection is not None:
                        s = projection(s)
                    t = t_feats[t_name].float()
                    mse = F.mse_loss(s.float(), t)
                    if mod.normalize:
                        mse = mse / (t.pow(2).mean() + mod.epsilon)
                    feature = feature + mse
                feature = mod.gain * feature
                total = total + batch_size * feature
                term = term + feature
            else:
                kd = sigmoid_kl(class_scores(preds), class_scores(t_out), mod.temperature)
                keep, weight = mod.loss_weights()
                total = keep * total + batch_size * weight * kd
                term = term + weight * kd
        detached = term.detach()
        self._sum = detached if self._sum is None else self._sum + detached
        self._count += 1
        return total, items


# ---------------------------------------------------------------------------------- sparsify
@register_controller(order=10, wrap_order=10)  # its trainer is the innermost: it builds the student
class DistillationController(Controller):
    """Distillation in a sparsify run: the :class:`DistillationSession` and its trainer class.

    The session's epoch callbacks are registered by that trainer (after every other callback), so
    :meth:`callbacks` is empty; nothing is stored in checkpoints (a resumed run rebuilds the session
    from the stored teacher reference).
    """

    modifiers = DISTILLATION_MODIFIERS

    def __init__(self, session: DistillationSession) -> None:
        self.session = session

    @classmethod
    def create(cls, context: TrainingContext) -> DistillationController | None:
        if not context.recipe.modifiers_of(*cls.modifiers):
            return None
        # The teacher sparsify resolved to validate the recipe is reused, not loaded (or deep-copied) again.
        session = DistillationSession.create(context.recipe, context.yolo, context.teacher, context.tracker,
                                             teacher_model=context.teacher_model)
        if is_splitfree(context.yolo.model):
            raise SparsepipeError(
                f"'{context.model}' is channel-pruned; distillation rebuilds the student from its YAML and does not "
                f"support pruned architectures yet. Distill before channel pruning, or drop the distillation "
                f"modifiers from this recipe.")
        return cls(session)

    def trainer_class(self, base: type, task: str) -> type:
        return self.session.trainer_class(task, base)
