"""Sparsify: train an ultralytics model under a recipe and publish a sparse checkpoint.

    sparsepipe sparsify --model runs/train --data synthetic --recipe recipes/yolov8n-pruned50.yaml --out runs/pruned50

Steps: load + validate the recipe against the model (every error before any training),
train with ultralytics for the recipe's length while :class:`~sparsepipe.recipe_session.RecipeSession`
drives masks and learning rate and the registered controllers (:mod:`sparsepipe.controllers`:
distillation, QAT, channel pruning...) run the other modifier families, then publish the *final*
checkpoint (``last.pt``, not the "best" epoch, which may predate pruning) as ``<out>/model.pt``
with the recipe state in it, evaluate it, and write the per-layer sparsity table and bar chart.
``--resume`` continues a killed run from ``<out>/ultralytics/weights/last.pt`` with the model, data,
teacher and settings the run started with (stored in the checkpoint; the call's own are ignored), so
everything it reports comes from the original run. A finished run is refused and left unchanged.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any, Callable

from sparsepipe.controllers import TrainingContext
from sparsepipe.errors import ConfigError, SparsepipeError
from sparsepipe.evaluate import EvaluateConfig, evaluate
from sparsepipe.limits import check_epochs, check_input_size
from sparsepipe.models import count_params, load_yolo
from sparsepipe.recipe_lookup import resolve_recipe
from sparsepipe.results import (StepResult, atomic_copy, atomic_write_bytes, atomic_write_text, check_out,
                                claim_out)
from sparsepipe.results import RESULT_FILE
from sparsepipe.tracking import Tracker
from sparsepipe.trust import load_checkpoint
from sparsepipe.ultralytics_hooks import ULTRALYTICS_DIR, epoch_logger, remove_truncated_checkpoints, trainer_class


@dataclasses.dataclass
class SparsifyConfig:
    """Settings of the sparsify step (the recipe decides the number of epochs)."""

    imgsz: int = 320  # square training size in pixels (multiple of 32)
    batch: int = 16  # images per batch
    device: str = "cpu"  # "cpu", "0", "0,1"
    workers: int = 2  # data-loader processes
    seed: int = 0  # RNG seed (deterministic=True)
    optimizer: str = "auto"  # ultralytics optimizer; "auto" becomes SGD when the recipe sets the LR (recipes assume SGD)
    lr0: float | None = None  # initial LR when the recipe has no LR modifier (None: ultralytics' choice)
    max_epochs: int | None = None  # budget: refuse a recipe that needs more epochs than this
    plots: bool = True  # ultralytics' plots
    variant: str = "pruned"  # variant name in MLflow and the report
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # other ultralytics train args

    def __post_init__(self) -> None:
        if not isinstance(self.imgsz, int) or self.imgsz < 32 or self.imgsz % 32:
            raise ConfigError(f"imgsz={self.imgsz!r} must be a multiple of 32 (e.g. 320 or 640).")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"batch={self.batch!r} must be a positive integer.")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"workers={self.workers!r} must be 0 or more (0 loads data in the main process).")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError(f"max_epochs={self.max_epochs!r} must be a positive integer or unset.")
        if self.max_epochs is not None:
            check_epochs("max_epochs", self.max_epochs)
        check_input_size(self.batch, self.imgsz, "training")
        reserved = {"model", "data", "project", "name", "exist_ok", "trainer", "resume", "epochs"} & set(self.extra)
        if reserved:
            raise ConfigError(f"extra ultralytics arguments {sorted(reserved)} are decided by sparsepipe or the recipe.")


def sparsity_chart(table: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Horizontal bar chart of per-layer sparsity (PNG)."""
    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib

    names = list(table)
    height = max(3.0, 0.18 * len(names) + 1.2)
    fig, ax = plt.subplots(figsize=(7.5, height), dpi=100)
    ax.barh(range(len(names)), [table[n]["sparsity"] for n in names], color="#4c72b0")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([n.replace(".weight", "") for n in names], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("sparsity (fraction of zero weights)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _load_for_resume(out: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """``(last.pt, sparsepipe state, ultralytics train_args)`` of an interrupted run in ``out``.

    Refuses (changing nothing) a folder without ``last.pt``, one whose checkpoint carries no recipe
    state, and a run that already finished (ultralytics would start a new training on its defaults).
    """
    from sparsepipe.recipe_session import STATE_KEY  # heavy: pydantic (via sparsepipe.recipe_session)

    last = out / ULTRALYTICS_DIR / "weights" / "last.pt"
    if not last.is_file():
        raise SparsepipeError(
            f"Cannot resume: {last} does not exist. --resume continues a sparsify run in the same "
            f"--out folder; start a new run without --resume."
        )
    ckpt = load_checkpoint(last)
    state = ckpt.get(STATE_KEY) if isinstance(ckpt, dict) else None
    if not state:
        raise SparsepipeError(
            f"Cannot resume from {last}: the checkpoint has no sparsepipe recipe state (it was not "
            f"written by `sparsepipe sparsify`, or training finished and the file was stripped). "
            f"Start a new run without --resume."
        )
    if state.get("finished") or (out / RESULT_FILE).is_file():
        raise SparsepipeError(
            f"Nothing to resume: the sparsify run in {out} is complete (its checkpoint is marked finished"
            f"{' and ' + RESULT_FILE + ' is written' if (out / RESULT_FILE).is_file() else ''}); nothing was "
            f"changed. Use {out / 'model.pt'}, or start a new run with another --out (without --resume)."
        )
    train_args = ckpt.get("train_args") if isinstance(ckpt.get("train_args"), dict) else {}
    return last, state, train_args


def _resumed_run(state: dict[str, Any], train_args: dict[str, Any], model: str, data: str,
                 teacher: str | None, config: SparsifyConfig) -> tuple[str, str, str | None, SparsifyConfig]:
    """The original run's model, data, teacher and config (a resumed run reports those, not the CLI's)."""
    run = state.get("run") or {}
    if run:
        return run["model"], run["data"], run.get("teacher"), SparsifyConfig(**run["config"])
    # checkpoints from before sparsepipe stored its run settings: ultralytics' own train_args
    data = str(train_args.get("data") or data)
    sizes = {k: train_args[k] for k in ("imgsz", "batch") if isinstance(train_args.get(k), int)}
    return model, data, teacher, dataclasses.replace(config, **sizes)


def sparsify(
    model: str,
    data: str,
    recipe: str | None,
    out: str | Path,
    config: SparsifyConfig | None = None,
    recipe_args: Any = None,
    teacher: str | None = None,
    resume: bool = False,
    tracker: Any = None,
    callbacks: dict[str, list[Callable[[Any], None]]] | None = None,
) -> StepResult:
    """Train ``model`` under ``recipe`` on ``data``; publish ``<out>/model.pt`` and its result."""
    from sparsepipe.data import resolve_data  # heavy: cv2 (via sparsepipe.data)
    from sparsepipe.masks import overall_sparsity, sparsity_table  # heavy: pydantic (via sparsepipe.masks)
    from sparsepipe.recipe import load_recipe, load_recipe_string, parse_recipe_args, validate_recipe  # heavy: pydantic (via sparsepipe.recipe)
    from sparsepipe.recipe_session import RecipeSession, create_controllers, load_controllers, write_checkpoint_state  # heavy: pydantic, torch (via sparsepipe.recipe_session)

    config = config or SparsifyConfig()
    tracker = tracker or Tracker()

    # 1. Everything that can be wrong is checked before training starts.
    resume_state = None
    if resume:  # a refused resume changes nothing in --out
        start_from, resume_state, resumed_args = _load_for_resume(Path(out).resolve())
        model, data, teacher, config = _resumed_run(resume_state, resumed_args, model, data, teacher, config)
    out = check_out(out)  # nothing in --out changes before every check passed (claim_out below)
    if resume:
        if recipe is not None or recipe_args:
            raise SparsepipeError(
                "--resume continues with the recipe and overrides stored in the checkpoint; do not "
                "pass --recipe or --recipe-args with --resume."
            )
        args = dict(resume_state.get("recipe_args") or {})
        loaded = load_recipe_string(resume_state["recipe"], source=f"{start_from} (stored recipe)")
    else:
        if not recipe:
            raise SparsepipeError("sparsify needs --recipe RECIPE (a .yaml/.md file); see recipes/ for examples.")
        start_from = None
        args = parse_recipe_args(recipe_args)
        loaded = load_recipe(resolve_recipe(recipe), recipe_args=args)  # a path, a shipped name or s3://
    epochs_needed = max(1, loaded.num_epochs)
    if config.max_epochs is not None and epochs_needed > config.max_epochs:
        raise SparsepipeError(
            f"The recipe needs {epochs_needed} epochs but the budget (--max-epochs) is {config.max_epochs}. "
            f"Shorten it with --recipe-args (e.g. num_epochs={config.max_epochs} if the recipe defines "
            f"num_epochs) or raise --max-epochs."
        )
    data_yaml = resolve_data(data)
    yolo = load_yolo(str(start_from) if start_from else model)
    context = TrainingContext(recipe=loaded, yolo=yolo, model=model, tracker=tracker, resume=resume,
                              resume_state=resume_state, teacher=teacher)
    for controller_class in load_controllers():  # e.g. QAT: refuses an already-quantized model
        controller_class.check(context)
    if yolo.task not in ("detect", "segment"):
        raise SparsepipeError(f"'{model}' is a {yolo.task} model; sparsify supports detection and segmentation models.")
    if teacher:
        from sparsepipe.distillation import resolve_teacher  # heavy: pydantic, torch (via sparsepipe.distillation)

        context.teacher_model = resolve_teacher(teacher, yolo)
    validate_recipe(loaded, yolo.model, teacher=context.teacher_model)
    session = RecipeSession(loaded, args, tracker, resume_state=resume_state)
    run = {"model": model, "data": data, "teacher": teacher, "config": dataclasses.asdict(config)}
    session.state_hooks.append(lambda: {"run": run})  # what --resume restores (_resumed_run)
    context.session = session
    # the session, then distillation, QAT, channel pruning and any other registered controller
    # (sparsepipe.controllers); each checks what it needs now, before training starts
    controllers = create_controllers(context)

    # 2. Train.
    claim_out(out)
    for event, function in {**epoch_logger(tracker)}.items():
        yolo.add_callback(event, function)
    for controller in controllers:
        for event, function in controller.callbacks().items():
            yolo.add_callback(event, function)
    for event, functions in (callbacks or {}).items():
        for function in functions:
            yolo.add_callback(event, function)
    params = {"model": model, "data": data, "recipe": recipe or "(resumed)", "teacher": teacher or "",
              "recipe_epochs": epochs_needed, **{f"recipe_args.{k}": v for k, v in args.items()},
              **{k: v for k, v in dataclasses.asdict(config).items() if k != "extra"}}
    if not resume:
        tracker.log_params(params)
        tracker.log_text(loaded.to_yaml(), "recipe/recipe.yaml")
    train_args: dict[str, Any] = {
        "imgsz": config.imgsz, "batch": config.batch, "device": config.device, "workers": config.workers,
        "seed": config.seed, "deterministic": True, "plots": config.plots,
        # SparseML recipes give SGD learning rates (0.01...): ultralytics' "auto" would pick AdamW
        # for short runs, for which those rates are far too high.
        "optimizer": "SGD" if (config.optimizer == "auto" and session.controls_lr) else config.optimizer,
        **({"lr0": config.lr0} if config.lr0 is not None else {}), **config.extra,
        **{k: v for controller in controllers for k, v in controller.ultralytics_overrides().items()},
    }
    trainer_cls = trainer_class(yolo.task)
    for controller in sorted(controllers, key=lambda c: c.wrap_order):  # distillation, channels, QAT
        trainer_cls = controller.trainer_class(trainer_cls, yolo.task)
    started = time.perf_counter()
    try:
        if resume:
            yolo.train(resume=True, trainer=trainer_cls)
        else:
            yolo.train(data=str(data_yaml), project=str(out), name=ULTRALYTICS_DIR, exist_ok=True,
                       trainer=trainer_cls, **train_args)
    except OSError:  # a full disk mid-save: never leave a truncated last.pt for the next --resume
        remove_truncated_checkpoints(out / ULTRALYTICS_DIR / "weights")
        raise
    seconds = time.perf_counter() - started
    trainer = yolo.trainer

    # 3. Publish the final checkpoint with its recipe state, then measure it.
    last = Path(trainer.last)
    write_checkpoint_state(last, {**session.state(), "finished": True})
    weights = atomic_copy(last, out / "model.pt")

    final = load_checkpoint(weights)["model"].float()
    targets = session.masks.targets if session.masks else {}
    table = sparsity_table(final, list(targets) if targets else None)
    all_weights = sparsity_table(final)
    table_path = atomic_write_text(out / "sparsity.json", json.dumps(
        {name: {**row, "target": targets.get(name)} for name, row in all_weights.items()}, indent=2) + "\n")
    chart = sparsity_chart(all_weights, out / "sparsity.png", f"per-layer sparsity ({config.variant})")
    evaluated = evaluate(str(weights), str(data_yaml), out / "evaluate",
                         EvaluateConfig(imgsz=config.imgsz, device=config.device, variant=config.variant))
    metrics = {
        **{k: v for k, v in evaluated.metrics.items() if k in ("map50", "map50_95", "mask_map50", "mask_map50_95")},
        "sparsity": round(overall_sparsity(table), 6) if targets else round(overall_sparsity(all_weights), 6),
        "sparsity_all_weights": round(overall_sparsity(all_weights), 6),
        "params": float(count_params(final)),
        "nonzero_params": float(sum(int((p != 0).sum()) for p in final.parameters())),
        "train_time_s": round(seconds, 3),
        "epochs": float(epochs_needed),
        "time_per_epoch_s": round(seconds / max(1, epochs_needed - (resume_state or {}).get("epoch", 0)), 3),
    }
    files_extra: dict[str, str] = {}
    for controller in controllers:  # e.g. channel pruning: GMACs, per-layer channels (channels.json)
        more_metrics, more_files = controller.results(final, out, config.imgsz)
        metrics.update(more_metrics)
        files_extra.update(more_files)
    result = StepResult(
        step="sparsify",
        out_dir=str(out),
        variant=config.variant,
        files={"weights": str(weights), "sparsity": str(table_path), "sparsity_chart": str(chart),
               "last": str(last), "data_yaml": str(data_yaml), **files_extra},
        metrics=metrics,
        config={"model": model, "data": data, "recipe": recipe, "recipe_args": args, "teacher": teacher,
                "resume": resume, **dataclasses.asdict(config)},
        extra={"targets": targets},
    )
    # "sparsity" is already a per-epoch curve (RecipeSession); its last point is the final value.
    tracker.log_metrics({k: v for k, v in metrics.items() if k not in ("epochs", "sparsity")})
    for path in (weights, table_path, chart, *files_extra.values()):
        tracker.log_artifact(str(path), "sparsify")
    result.write()
    return result
