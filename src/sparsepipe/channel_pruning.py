"""Channel pruning during ultralytics training: torch-pruning steps + trainer rebuild.

    sparsepipe sparsify --model runs/train --data synthetic --recipe recipes/yolov8n-channels50.yaml --out runs/channels50

:class:`ChannelPruningController` follows a recipe's ``!ChannelPruningModifier`` schedule
(:mod:`sparsepipe.modifiers.channel_pruning`). The model is first made split-free
(:mod:`sparsepipe.splitfree`) by the trainer's ``get_model``; at each pruning step torch-pruning
removes the lowest-scoring channel groups (conv outputs plus every tensor coupled to them),
then everything that held references to the old parameters is rebuilt through the trainer's
public attributes: the optimizer (same learning rates and weight decay per group, fresh
momentum), the LR scheduler (same lambda and position), the EMA (a copy of the pruned model,
update count kept) and sparsepipe's own unstructured-mask manager and its optimizer hook.

Architecture: a model holding :class:`~sparsepipe.splitfree.SplitFreeC2f` blocks is no longer
what its YAML builds. :func:`keep_architecture_trainer` makes a trainer's ``get_model`` return
such a checkpoint's own module instead of rebuilding from the YAML, so ``sparsepipe train`` /
``sparsify`` from a channel-pruned checkpoint and ``--resume`` keep the pruned shapes.
The original channel count of every conv is stored on the model (``ORIGINAL_ATTR``), so the
achieved ratio is known after reloads.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sparsepipe.controllers import Controller, TrainingContext, register_controller
from sparsepipe.errors import SparsepipeError
from sparsepipe.masks import MaskManager
from sparsepipe.models import load_yolo
from sparsepipe.modifiers.channel_pruning import ChannelPruningModifier
from sparsepipe.recipe.rules import channel_modifier, channel_selector_matches, unmatched_selectors  # noqa: F401 - re-exported
from sparsepipe.results import atomic_write_text
from sparsepipe.splitfree import is_splitfree, to_splitfree  # noqa: F401 - is_splitfree re-exported
from sparsepipe.torch_utils import unwrap

ORIGINAL_ATTR = "sparsepipe_channels"  # {conv name: original out_channels}, pickled with the model
STATE_KEY = "channel_pruning"
TRACE_IMGSZ = 64  # input size for dependency tracing (any multiple of 32 >= 64 works)


# ------------------------------------------------------------------------------ model helpers
ATTENTION_BLOCKS = ("C2PSA", "C2fPSA", "PSABlock", "Attention", "A2C2f", "AAttn")  # reshape heads: kept whole


def always_ignored(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose output channels are never pruned: the head's output convs, DFL, Proto's last
    conv, and attention blocks (YOLO11's C2PSA splits q/k/v by head, which tracing cannot follow)."""
    head_index = len(model.model) - 1
    prefix = f"model.{head_index}."
    out = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ATTENTION_BLOCKS:
            out.append((name, module))
        if not name.startswith(prefix):
            continue
        if kind == "DFL":
            out += [(name, module), (f"{name}.conv", module.conv)]
        elif isinstance(module, nn.Conv2d) and not name.endswith(".conv"):  # raw nn.Conv2d = an output
            out.append((name, module))
        elif kind == "Proto":
            out.append((f"{name}.cv3", module.cv3))
    return out


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every ``nn.Conv2d`` of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def record_original(model: nn.Module) -> dict[str, int]:
    """Store (once) and return the original output channels of every conv."""
    original = getattr(model, ORIGINAL_ATTR, None)
    if not original:
        original = {n: int(m.out_channels) for n, m in conv_layers(model).items()}
        setattr(model, ORIGINAL_ATTR, original)
    return original


def channel_table(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{conv: {"original", "channels"}}`` for every conv of a (pruned) model."""
    original = getattr(model, ORIGINAL_ATTR, None) or {}
    return {n: {"original": int(original.get(n, m.out_channels)), "channels": int(m.out_channels)}
            for n, m in conv_layers(model).items()}


def channel_ratio(model: nn.Module) -> float:
    """Fraction of the original output channels removed from the prunable convs (all but the head outputs)."""
    skip = {n for n, _ in always_ignored(model)}
    table = {n: r for n, r in channel_table(model).items() if n not in skip}
    original = sum(r["original"] for r in table.values())
    return 1.0 - sum(r["channels"] for r in table.values()) / original if original else 0.0


def macs_and_params(model: nn.Module, imgsz: int = 640) -> tuple[float, int]:
    """(MACs, parameters) of one ``imgsz`` x ``imgsz`` image (torch-pruning's counter, on a copy)."""
    import torch_pruning as tp  # heavy: torch_pruning

    from sparsepipe.qat_modules import is_prepared, set_qat_state  # heavy: ultralytics (via sparsepipe.qat_modules)

    probe = copy.deepcopy(model).float().cpu().eval()
    if is_prepared(probe):  # QAT convs call F.conv2d while active; plain conv modules are counted
        set_qat_state(probe, active=False, observers_frozen=False, bn_frozen=False)
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(probe, torch.zeros(1, 3, imgsz, imgsz))
    return float(macs), int(params)


def _importance(name: str) -> Any:
    import torch_pruning as tp  # heavy: torch_pruning

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    raise SparsepipeError(f"unknown channel importance '{name}' (use l1, l2, bn_scale or lamp)")


def target_ratios(model: nn.Module, modifier: ChannelPruningModifier) -> dict[str, float]:
    """Final ratio of every prunable conv (``ratios`` overrides, else ``target_ratio``)."""
    skip = {n for n, _ in always_ignored(model)}
    out = {}
    for name in conv_layers(model):
        if name in skip or any(channel_selector_matches(sel, name) for sel in modifier.ignore):
            continue
        ratio = modifier.target_ratio
        for sel, value in modifier.ratios.items():
            if channel_selector_matches(sel, name):
                ratio = value
        out[name] = ratio
    return out


def prune_to(model: nn.Module, modifier: ChannelPruningModifier, fraction: float) -> dict[str, int]:
    """Prune ``model`` in place so each layer has lost ``fraction`` of the way to its target ratio.

    ``fraction`` is the schedule position ``y(k/N)`` in [0, 1]; a layer with target ratio ``r``
    ends with about ``original * (1 - r * fraction)`` channels (``round_to`` rounds).
    Returns ``{conv: channels}`` after pruning.
    """
    import torch_pruning as tp  # heavy: torch_pruning

    original = record_original(model)
    convs = conv_layers(model)
    ratios: dict[nn.Module, float] = {}
    for name, final in target_ratios(model, modifier).items():
        start = original.get(name, convs[name].out_channels)
        keep = max(1, round(start * (1.0 - final * fraction)))
        step = modifier.round_to
        if step and start >= step:  # nearest multiple of round_to (torch-pruning's own rounding removes more)
            keep = max(step, int(round(keep / step)) * step)
        current = convs[name].out_channels
        keep = min(keep, current)
        # torch-pruning keeps int(current * (1 - ratio)) channels: aim half a channel above `keep`
        # so float error cannot drop one more
        ratios[convs[name]] = min(max((current - keep - 0.5) / current, 0.0), 0.95) if current else 0.0
    ignored = [m for _, m in always_ignored(model)]
    ignored += [m for n, m in model.named_modules()
                if n and any(channel_selector_matches(sel, n) for sel in modifier.ignore) and isinstance(m, nn.Conv2d)]
    was_training = model.training
    device = next(model.parameters()).device
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()  # tracing must not touch batch-norm statistics
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            pruner = tp.pruner.BasePruner(
                model, torch.zeros(1, 3, TRACE_IMGSZ, TRACE_IMGSZ, device=device),
                importance=_importance(modifier.importance), pruning_ratio=0.0,
                pruning_ratio_dict=ratios, ignored_layers=ignored, round_to=None)
            pruner.step()
    finally:
        for p in model.parameters():
            p.requires_grad_(flags.get(p, True))
        model.train(was_training)
    return {n: int(m.out_channels) for n, m in conv_layers(model).items()}


# ------------------------------------------------------------------------------ recipe checks
# ------------------------------------------------------------------------------ training integration
def keep_architecture_trainer(base: type, convert: bool = False) -> type:
    """Subclass of trainer ``base`` whose ``get_model`` keeps a split-free (pruned) checkpoint's module.

    ``convert=True`` also makes any other model split-free (the start of a channel-pruning run).
    """

    def get_model(trainer: Any, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        if is_splitfree(weights):
            nc = (getattr(trainer, "data", None) or {}).get("nc")
            have = getattr(weights.model[-1], "nc", nc) if hasattr(weights, "model") else nc
            if nc is not None and have != nc:
                raise SparsepipeError(
                    f"The channel-pruned checkpoint predicts {have} classes but the data set has "
                    f"{nc}; its head cannot be rebuilt from the YAML. Train it on data with the same "
                    f"classes, or prune a model trained on this data set.")
            model = copy.deepcopy(weights).float()
            for p in model.parameters():
                p.requires_grad_(True)
            return trainer.set_model_names_for_load(model) if hasattr(trainer, "set_model_names_for_load") else model
        model = base.get_model(trainer, cfg=cfg, weights=weights, verbose=verbose)
        if convert:
            to_splitfree(model)
            record_original(model)
        return model

    return type(f"Channel{base.__name__}", (base,), {"get_model": get_model, "keeps_architecture": True})


def rebuild_training_state(trainer: Any) -> None:
    """New optimizer, LR scheduler and EMA for ``trainer.model`` after its parameters changed."""
    from ultralytics.utils.torch_utils import ModelEMA  # heavy: ultralytics

    model = unwrap(trainer.model)
    old = trainer.optimizer
    groups = [(g["lr"], g.get("initial_lr"), g.get("weight_decay")) for g in old.param_groups]
    decay = trainer.args.weight_decay * trainer.batch_size * trainer.accumulate / trainer.args.nbs
    iterations = math.ceil(len(trainer.train_loader.dataset) / max(trainer.batch_size, trainer.args.nbs)) * trainer.epochs
    trainer.optimizer = trainer.build_optimizer(model=model, name=trainer.args.optimizer, lr=trainer.args.lr0,
                                                momentum=trainer.args.momentum, decay=decay, iterations=iterations)
    last_epoch = trainer.scheduler.last_epoch
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lr_lambda=trainer.lf)
    trainer.scheduler.last_epoch = last_epoch
    for group, (lr, initial, wd) in zip(trainer.optimizer.param_groups, groups):
        group["lr"] = lr
        if initial is not None:
            group["initial_lr"] = initial
        if wd is not None:
            group["weight_decay"] = wd
    if getattr(trainer, "ema", None) is not None:
        updates = trainer.ema.updates
        trainer.ema = ModelEMA(model)
        trainer.ema.updates = updates


# every sparsify run: its trainer keeps a channel-pruned checkpoint's architecture (inside QAT's, around distillation's)
@register_controller(order=30, wrap_order=20)
class ChannelPruningController(Controller):
    """Runs the recipe's channel-pruning steps inside training (callbacks) and stores its state.

    Created for every sparsify run: without a ``!ChannelPruningModifier`` it only keeps a channel-pruned
    checkpoint's architecture (:func:`keep_architecture_trainer`) and reports its channels.
    """

    modifiers = (ChannelPruningModifier,)

    @classmethod
    def create(cls, context: TrainingContext) -> ChannelPruningController:
        return cls(context.recipe, context.session, context.resume_state)

    def __init__(self, recipe: Any, session: Any, resume_state: dict[str, Any] | None = None) -> None:
        self.recipe = recipe
        self.modifier = channel_modifier(recipe)  # None: nothing to prune in this run
        self.session = session  # RecipeSession: fractional epoch, masks, tracker
        self.steps_done = int(((resume_state or {}).get(STATE_KEY) or {}).get("steps_done", 0))
        self.imgsz = 640
        self.history: list[dict[str, Any]] = []
        self.extra_hooks: list[Callable[[Any], None]] = []  # called after each rebuild

    def state(self) -> dict[str, Any]:
        if self.modifier is None:
            return {}
        return {STATE_KEY: {"steps_done": self.steps_done, "history": self.history}}

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        if self.modifier is None:
            return {}
        return {"on_train_start": self.on_train_start, "on_train_batch_start": self.maybe_prune,
                "on_train_epoch_end": self.maybe_prune}

    def trainer_class(self, base: type, task: str) -> type:
        # a channel-pruned checkpoint keeps its own architecture; a channel-pruning run goes split-free
        return keep_architecture_trainer(base, convert=self.modifier is not None)

    def results(self, model: Any, out: Any, imgsz: int) -> tuple[dict[str, float], dict[str, str]]:
        """Channel-pruned (split-free) model: GMACs, channel ratio and ``channels.json`` (per-layer channels)."""
        if not is_splitfree(model):
            return {}, {}
        macs, _ = macs_and_params(model, imgsz)
        metrics = {"gmacs": round(macs / 1e9, 6), "channel_ratio": round(channel_ratio(model), 4)}
        path = atomic_write_text(Path(out) / "channels.json", json.dumps(
            {"imgsz": imgsz, "history": self.history, "layers": channel_table(model)}, indent=2) + "\n")
        return metrics, {"channels": str(path)}

    def on_train_start(self, trainer: Any) -> None:
        self.imgsz = int(trainer.args.imgsz)
        self.maybe_prune(trainer)

    def maybe_prune(self, trainer: Any) -> None:
        mod = self.modifier
        due = mod.steps_due(self.session.epoch)
        if due <= self.steps_done:
            return
        model = unwrap(trainer.model)
        fraction = mod.ratio_at_step(due, 1.0)
        prune_to(model, mod, fraction)
        self.steps_done = due
        rebuild_training_state(trainer)
        # sparsepipe's unstructured masks resolved the old parameter objects: resolve again
        session = self.session
        if getattr(session, "masks", None) is not None:
            session.masks = MaskManager(model, self.recipe)
            masks = session.masks
            trainer.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: masks.apply())
        for hook in self.extra_hooks:
            hook(trainer)
        macs, params = macs_and_params(model, self.imgsz)
        entry = {"epoch": round(session.epoch, 4), "step": due, "channel_ratio": round(channel_ratio(model), 4),
                 "gmacs": round(macs / 1e9, 6), "params": params}
        self.history.append(entry)
        tracker = getattr(session, "tracker", None)
        if tracker is not None:
            tracker.log_metrics({"channels/ratio": entry["channel_ratio"], "channels/gmacs": entry["gmacs"],
                                 "channels/params": float(params)}, step=max(0, int(round(session.epoch))))


# ------------------------------------------------------------------------------ preview
def preview(model_path: str, ratios: list[float], sizes: list[int], round_to: int | None = 8) -> list[dict[str, Any]]:
    """GMACs / parameters of ``model_path`` after one-shot pruning at each ratio (no training)."""
    rows = []
    for ratio in [0.0, *ratios]:
        model = copy.deepcopy(load_yolo(model_path).model).float()
        to_splitfree(model)
        if ratio > 0:
            prune_to(model, ChannelPruningModifier(target_ratio=ratio, start_epoch=0, end_epoch=0,
                                                   round_to=round_to), 1.0)
        row: dict[str, Any] = {"ratio": ratio, "channel_ratio": round(channel_ratio(model), 4)}
        for size in sizes:
            macs, params = macs_and_params(model, size)
            row[f"gmacs@{size}"] = round(macs / 1e9, 3)
            row["params"] = params
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m sparsepipe.channel_pruning MODEL --ratios 0.3 0.5 --imgsz 320 640``: a GMACs/params table."""
    parser = argparse.ArgumentParser(prog="python -m sparsepipe.channel_pruning",
                                     description="GMACs and parameters after one-shot channel pruning (a preview).")
    parser.add_argument("model", help="checkpoint, step folder or model config (e.g. yolov8n.yaml)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--round-to", type=int, default=8)
    args = parser.parse_args(argv)
    rows = preview(args.model, args.ratios, args.imgsz, args.round_to)
    sizes = [f"gmacs@{s}" for s in args.imgsz]
    print("| target ratio | channels removed | " + " | ".join(f"GMACs {s}px" for s in args.imgsz)
          + " | params | MACs kept |")
    print("|---" * (len(sizes) + 4) + "|")
    for row in rows:
        kept = row[sizes[-1]] / rows[0][sizes[-1]]
        print(f"| {row['ratio']:.2f} | {row['channel_ratio']:.3f} | "
              + " | ".join(f"{row[s]:.3f}" for s in sizes) + f" | {row['params']:,} | {kept:.3f} |")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
