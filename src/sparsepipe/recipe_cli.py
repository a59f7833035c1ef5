"""``sparsepipe recipe validate|schedule``: check a recipe and show its schedule.

    python -m sparsepipe.recipe.cli validate recipes/yolov8n-pruned50.yaml --model yolov8n.yaml
    python -m sparsepipe.recipe.cli schedule recipes/yolov8n-quick-test.yaml --model yolov8n.yaml --steps-per-epoch 8 --plot schedule.png

The main CLI calls :func:`add_recipe_commands`; each handler is ``func(args) -> int`` and user
mistakes raise :class:`sparsepipe.errors.RecipeError` (printed without traceback by the caller;
this module's own ``main`` does the same when run with ``python -m``).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import warnings as _warnings
from pathlib import Path
from typing import Any

from sparsepipe.errors import ModelError, SparsepipeError
from sparsepipe.models import load_yolo
from sparsepipe.results import atomic_write_bytes


def _load_model(spec: str) -> Any:
    """Build a model from an ultralytics YAML name (``yolov8n.yaml``) or load a local ``.pt``."""
    os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    if spec.endswith((".yaml", ".yml")):
        from ultralytics.nn.tasks import DetectionModel  # heavy: ultralytics

        try:
            return DetectionModel(spec, verbose=False)
        except (FileNotFoundError, KeyError, ValueError, AttributeError, TypeError) as exc:
            raise ModelError(
                f"--model '{spec}': cannot build a model from this config ({exc}). Use an "
                f"ultralytics model config such as yolov8n.yaml or yolov5su.yaml, or a local .pt."
            ) from None
    if spec.endswith(".pt"):
        if not Path(spec).is_file():
            raise ModelError(f"--model '{spec}': no such checkpoint file. Weights are never "
                             f"downloaded: pass a local .pt or a config such as yolov8n.yaml.")

        return load_yolo(spec).model
    raise ModelError(f"--model '{spec}': expected an ultralytics config (.yaml, e.g. yolov8n.yaml) "
                     f"or a local checkpoint (.pt).")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


def cmd_validate(args: argparse.Namespace) -> int:
    """Print variables, modifiers, total epochs and (with --model) what each modifier touches."""
    from sparsepipe.modifiers import ConstantPruningModifier, GMPruningModifier  # heavy: pydantic (via sparsepipe.modifiers)
    from sparsepipe.recipe import RecipeWarning, load_recipe, validate_recipe  # heavy: pydantic (via sparsepipe.recipe)

    out = getattr(args, "stdout", None) or sys.stdout
    recipe = load_recipe(args.recipe, args.recipe_args)
    print(f"recipe: {args.recipe}" + (" (staged)" if recipe.staged else ""), file=out)
    if recipe.overrides:
        print(f"overrides: {recipe.overrides}", file=out)
    print("variables:", file=out)
    for name, value in recipe.variables.items():
        print(f"  {name} = {_fmt(value)}", file=out)
    for stage in recipe.stages:
        if recipe.staged:
            print(f"stage {stage.name} (starts at epoch {stage.offset:g}):", file=out)
            for name, value in stage.variables.items():
                print(f"  {name} = {_fmt(value)}", file=out)
    print("modifiers:", file=out)
    for i, mod in enumerate(recipe.modifiers):
        print(f"  #{i} {mod.describe()}", file=out)
    print(f"total epochs: {recipe.num_epochs}", file=out)
    warnings = recipe.warnings()
    if args.model:
        model = _load_model(args.model)
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", RecipeWarning)  # printed below instead
            report = validate_recipe(recipe, model)
        warnings = report.warnings
        params = dict(model.named_parameters())
        print(f"model: {args.model}", file=out)
        for i, rep in enumerate(report.modifiers):
            mod = rep.modifier
            if isinstance(mod, GMPruningModifier):
                total = sum(params[n].numel() for n in rep.targets)
                zeros = sum(round(f * params[n].numel()) for n, f in rep.targets.items())
                print(f"  #{i} {mod.tag}: {len(rep.targets)} tensors, {total:,} weights, "
                      f"{zeros / max(total, 1):.1%} of them pruned at the end", file=out)
                for name, final in rep.targets.items():
                    print(f"      {name:<40} {tuple(params[name].shape)!s:<18} final {final:.2f}",
                          file=out)
            elif isinstance(mod, ConstantPruningModifier):
                print(f"  #{i} {mod.tag}: keeps zeros of {len(rep.targets)} tensors", file=out)
            elif getattr(mod, "dialect", "") == "legacy":
                extra = mod.custom_quantizable_module_types
                print(f"  #{i} QuantizationModifier (legacy dialect): quantizes "
                      f"{', '.join(mod.submodules or ['the whole model'])}"
                      + (f" including {', '.join(extra)} modules" if extra else "")
                      + (f", excluding {', '.join(mod.exclude_module_types)}"
                         if mod.exclude_module_types else ""), file=out)
            elif mod.tag == "QuantizationModifier":
                ignored = sorted(n for n, s in rep.targets.items() if s is None)
                print(f"  #{i} QuantizationModifier ({mod.dialect} dialect): "
                      f"{len(rep.targets) - len(ignored)} modules quantized"
                      + (f", {len(ignored)} ignored" if mod.dialect == "current" else ""), file=out)
            elif rep.targets:
                print(f"  #{i} {mod.tag}: {len(rep.targets)} layers: "
                      f"{', '.join(list(rep.targets)[:8])}{' ...' if len(rep.targets) > 8 else ''}",
                      file=out)
            for note in rep.notes:
                print(f"      note: {note}", file=out)
    for text in warnings:
        print(f"warning: {text}", file=out)
    print("OK: the recipe is valid" + (f" for {args.model}" if args.model else ""), file=out)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """Print (and optionally plot) LR per param group and sparsity per modifier over epochs."""
    from sparsepipe.recipe import RecipeError, load_recipe, validate_recipe  # heavy: pydantic (via sparsepipe.recipe)
    from sparsepipe.recipe.schedule import timeline  # heavy: pydantic (via sparsepipe.recipe.schedule)

    out = getattr(args, "stdout", None) or sys.stdout
    if args.steps_per_epoch < 1:
        raise RecipeError(f"--steps-per-epoch must be at least 1, got {args.steps_per_epoch}.")
    recipe = load_recipe(args.recipe, args.recipe_args)
    if args.model:
        validate_recipe(recipe, _load_model(args.model))
    steps = recipe.num_epochs * args.steps_per_epoch
    if steps > 5_000_000:
        raise RecipeError(f"{recipe.num_epochs} epochs x {args.steps_per_epoch} steps is too many "
                          f"steps to simulate; pass a smaller --steps-per-epoch.")
    groups = (0, 1, 2)
    tl = timeline(recipe, args.steps_per_epoch, groups, base_lr=args.base_lr)
    labels = list(tl.sparsity)
    header = ["epoch"] + [f"lr[g{g}]" for g in groups] + labels + ["qat", "distill"]
    print("  ".join(header), file=out)
    rows_per_epoch = max(1, args.rows_per_epoch)
    stride = max(1, args.steps_per_epoch // rows_per_epoch)
    for k, epoch in enumerate(tl.epochs):
        if k % stride and k != len(tl.epochs) - 1:
            continue
        cells = [f"{epoch:7.3f}"] + [f"{(tl.lr[g][k] or 0):.6g}" for g in groups]
        cells += [f"{tl.sparsity[label][k]:.4f}" for label in labels]
        cells += ["on" if tl.qat[k] else "-", "on" if tl.distill[k] else "-"]
        print("  ".join(cells), file=out)
    print(f"total epochs: {recipe.num_epochs}, steps: {steps}", file=out)
    if args.plot:
        _plot(tl, args.plot, str(args.recipe))
        print(f"plot written to {args.plot}", file=out)
    return 0


def _plot(tl: Any, path: str, title: str) -> None:
    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib

    fig, (ax_lr, ax_sp) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for g, values in tl.lr.items():
        ax_lr.plot(tl.epochs, [v if v is not None else math.nan for v in values], label=f"group {g}")
    ax_lr.set_ylabel("learning rate")
    ax_lr.legend(loc="upper right", fontsize=8)
    for label, values in tl.sparsity.items():
        ax_sp.plot(tl.epochs, values, label=label)
    qat = [e for e, on in zip(tl.epochs, tl.qat) if on]
    if qat:
        ax_sp.axvspan(qat[0], qat[-1], color="orange", alpha=0.15, label="QAT")
    ax_sp.set_ylabel("sparsity")
    ax_sp.set_xlabel("epoch")
    ax_sp.set_ylim(0, 1)
    if tl.sparsity or qat:
        ax_sp.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def add_recipe_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``recipe validate`` and ``recipe schedule`` to an argparse sub-parsers object."""
    recipe = subparsers.add_parser(
        "recipe", help="check a sparsification recipe and show its schedule",
        description="Work with SparseML-format recipes (.yaml, .yml or .md recipe cards). "
                    "See docs/recipes.md for the format.")
    sub = recipe.add_subparsers(dest="recipe_command", metavar="{validate,schedule}")
    sub.required = True

    overrides_help = ("override recipe variables: a JSON object '{\"num_epochs\": 3}' or "
                      "'num_epochs=3,init_lr=0.01'; stage variables as 'stage.name=value'")
    v = sub.add_parser(
        "validate", help="load a recipe, print it resolved, and check it against a model",
        description="Load RECIPE, print the resolved variables, the modifiers and the total "
                    "epochs; with --model also resolve every parameter/module name against the "
                    "model and list the tensors each modifier touches and their final sparsity. "
                    "Exits 2 with one message listing every problem.")
    v.add_argument("recipe", metavar="RECIPE", help="recipe file (.yaml, .yml, .md)")
    v.add_argument("--model", default=None,
                   help="ultralytics config (yolov8n.yaml, yolov5su.yaml) or local .pt to check "
                        "names against; weights are never downloaded")
    v.add_argument("--recipe-args", default=None, help=overrides_help)
    v.add_argument("--trust-checkpoint", action="store_true", help="load a --model .pt that fails the checkpoint policy (SECURITY.md)")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser(
        "schedule", help="print (and plot) LR and sparsity over the epochs of a recipe",
        description="Simulate every optimizer step of RECIPE and print the LR of param groups "
                    "0/1/2, the applied sparsity of each pruning tier, and whether QAT and "
                    "distillation are on; --plot writes a PNG.")
    s.add_argument("recipe", metavar="RECIPE", help="recipe file (.yaml, .yml, .md)")
    s.add_argument("--model", required=True,
                   help="ultralytics config or local .pt the recipe is checked against first")
    s.add_argument("--steps-per-epoch", type=int, required=True,
                   help="batches per epoch (dataset images / batch size)")
    s.add_argument("--recipe-args", default=None, help=overrides_help)
    s.add_argument("--base-lr", type=float, default=0.01,
                   help="LR of groups no LR modifier has set yet (ultralytics lr0, default 0.01)")
    s.add_argument("--rows-per-epoch", type=int, default=1,
                   help="printed rows per epoch (default 1; the plot uses every step)")
    s.add_argument("--plot", default=None, metavar="OUT.png", help="write a PNG plot here")
    s.add_argument("--trust-checkpoint", action="store_true", help="load a --model .pt that fails the checkpoint policy (SECURITY.md)")
    s.set_defaults(func=cmd_schedule)
    return recipe


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m sparsepipe.recipe.cli validate|schedule ...``."""
    parser = argparse.ArgumentParser(prog="python -m sparsepipe.recipe.cli",
                                     description="sparsepipe recipe tools")
    subparsers = parser.add_subparsers(dest="command")
    add_recipe_commands(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] != "recipe" and argv[0] not in ("-h", "--help"):
        argv = ["recipe", *argv]
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except SparsepipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
