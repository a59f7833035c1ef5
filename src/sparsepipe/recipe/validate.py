"""Check a recipe against a model's module tree and resolve every name it uses.

    python -c "from sparsepipe.recipe.validate import validate_recipe"  # see sparsepipe recipe validate

What is resolved (recipes.md section 4):

* pruning ``params`` selectors against ``model.named_parameters()``: an exact name; ``re:<pattern>``
  with :func:`re.match` (anchored at the start, not the end); ``__ALL_PRUNABLE__`` = the
  ``.weight`` of every Conv/Linear/Embedding; ``__ALL__`` = every parameter;
* quantization ``ignore`` entries, ``scheme_overrides`` keys and legacy ``submodules`` against
  module names, or (for ``ignore``/``scheme_overrides``) class names such as ``Upsample``;
* distillation layer names against module names.

Names that only exist after QAT preparation. Published recipes name ``model.2.cv1.act`` and
``model.2.m.0.add_input_0``; ultralytics shares one SiLU instance between all Conv modules and
has no module for residual adds. Until the model is prepared, the rule is:

* module names are listed with ``named_modules(remove_duplicate=False)``, so every Conv's
  shared ``act`` is visible under its own name (``model.1.act``);
* ``<name>.add_input_0`` and ``<name>.add_input_1`` exist when ``<name>`` is a module with a
  truthy ``add`` attribute (an ultralytics ``Bottleneck`` whose shortcut is used). A
  ``Bottleneck`` without a shortcut (``add=False``, as in YOLOv8's neck) has no such names.

Every unmatched name of every modifier is reported in one :class:`RecipeValidationError`,
with close matches (difflib) and, for exact names, what the nearest existing module holds.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import warnings as _warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sparsepipe.errors import SparsepipeError
from sparsepipe.modifiers.base import Modifier
from sparsepipe.modifiers.distillation import PerLayerDistillationModifier
from sparsepipe.modifiers.pruning import ALL, ALL_PRUNABLE, ConstantPruningModifier, GMPruningModifier
from sparsepipe.modifiers.quantization import LegacyQuantizationModifier, QuantizationModifier
from sparsepipe.recipe.errors import RecipeValidationError, RecipeWarning
from sparsepipe.recipe.rules import channel_modifier, unmatched_selectors

if TYPE_CHECKING:
    import torch

    from sparsepipe.recipe.recipe import Recipe

PRUNABLE_TYPES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                  "ConvTranspose3d", "Linear", "Embedding")
DETECT_HEADS = ("Detect", "Segment", "Pose", "OBB", "v10Detect", "WorldDetect", "YOLOEDetect")
_ANCHOR_HEAD_RE = re.compile(r"^model\.(\d+)\.m\.\d+\.(weight|bias)$")


@dataclasses.dataclass
class ModelIndex:
    """Names in a model: parameters (name -> shape) and modules (name -> class name)."""

    params: dict[str, tuple[int, ...]]
    modules: dict[str, str]
    prunable: list[str]
    class_names: set[str]

    @classmethod
    def from_module(cls, model: "torch.nn.Module") -> "ModelIndex":
        import torch  # heavy: torch

        params = {n: tuple(p.shape) for n, p in model.named_parameters()}
        modules: dict[str, str] = {}
        prunable: list[str] = []
        for name, module in model.named_modules(remove_duplicate=False):
            if not name:
                continue
            kind = type(module).__name__
            modules[name] = kind
            if getattr(module, "add", False) is True:
                for i in (0, 1):
                    modules[f"{name}.add_input_{i}"] = "AddInput"
            weight = getattr(module, "weight", None)
            if (kind in PRUNABLE_TYPES and isinstance(weight, torch.nn.Parameter)
                    and f"{name}.weight" in params):
                prunable.append(f"{name}.weight")
        return cls(params, modules, sorted(set(prunable), key=list(params).index),
                   set(modules.values()))


def index_model(model: "torch.nn.Module | ModelIndex") -> ModelIndex:
    """:class:`ModelIndex` of ``model`` (passes an index through)."""
    return model if isinstance(model, ModelIndex) else ModelIndex.from_module(model)


def match_selector(selector: str, index: ModelIndex) -> list[str]:
    """Parameter names matched by one ``params`` selector, in model order."""
    if selector == ALL:
        return list(index.params)
    if selector == ALL_PRUNABLE:
        return list(index.prunable)
    if selector.startswith("re:"):
        pattern = re.compile(selector[3:])
        return [n for n in index.params if pattern.match(n)]
    return [selector] if selector in index.params else []


def _close(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


def _anchor_head(name: str, index: ModelIndex) -> str | None:
    """The head module name if ``name`` is an original-YOLOv5 anchor-head tensor on this model."""
    m = _ANCHOR_HEAD_RE.match(name)
    if m and index.modules.get(f"model.{m.group(1)}") in DETECT_HEADS:
        return f"model.{m.group(1)}"
    return None


def _anchor_head_message(names: list[str], head: str, index: ModelIndex) -> str:
    has = [p for p in index.params if p.startswith(head + ".") and p.endswith("conv.weight")][:4]
    return (f"{', '.join(repr(n) for n in names)} name the original YOLOv5 repository's "
            f"anchor-based Detect head (model.N.m.i), which this model does not have: its "
            f"{head} is an anchor-free ultralytics {index.modules[head]} head (YOLOv5u/YOLOv8 "
            f"style) with cv2/cv3/dfl branches instead (e.g. {', '.join(has)}). Drop these names "
            f"or use a recipe written for ultralytics models")


def _what_instead(name: str, index: ModelIndex, kind: str) -> str:
    """A hint naming what the model has near a missing name."""
    head = _anchor_head(name, index)
    if head:
        return _anchor_head_message([name], head, index)
    close = _close(name, index.params if kind == "parameter" else index.modules)
    add = re.match(r"^(.*)\.add_input_\d+$", name)
    if add and add.group(1) in index.modules:
        owner = add.group(1)
        return (f"{owner} is a {index.modules[owner]} without a residual add (no shortcut), so "
                f"QAT preparation creates no add_input module for it; "
                f"did you mean {', '.join(close) or 'another block'}?")
    parts = name.split(".")
    for cut in range(len(parts) - 1, 1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in index.modules:
            pool = index.params if kind == "parameter" else index.modules
            inside = [p for p in pool if p.startswith(prefix + ".")]
            shown = ", ".join(inside[:6]) + (f" (+{len(inside) - 6} more)" if len(inside) > 6 else "")
            text = f"{prefix} ({index.modules[prefix]}) has: {shown or 'nothing'}"
            return f"did you mean {', '.join(close)}? {text}" if close else text
    if close:
        return f"did you mean {', '.join(close)}?"
    return "the model has no similar name"


@dataclasses.dataclass
class ModifierReport:
    """What one modifier touches in the model."""

    modifier: Modifier
    targets: dict[str, Any]  # name -> final sparsity, scheme, or teacher layer
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ValidationReport:
    """Result of :func:`validate_recipe`: one entry per modifier plus warnings."""

    modifiers: list[ModifierReport]
    warnings: list[str]

    def pruning_targets(self) -> dict[str, float]:
        """Final sparsity of every pruned tensor (GMP-family modifiers)."""
        out: dict[str, float] = {}
        for rep in self.modifiers:
            if isinstance(rep.modifier, GMPruningModifier):
                out.update(rep.targets)
        return out


def resolve_pruning(modifier: GMPruningModifier | ConstantPruningModifier,
                    model: "torch.nn.Module | ModelIndex",
                    problems: list[str] | None = None) -> dict[str, float]:
    """Parameter name -> final sparsity (ConstantPruning: the value is ``nan``, keep-zeros).

    Unmatched selectors are appended to ``problems`` when given, else raised at once.
    """
    index = index_model(model)
    own: list[str] = []
    out: dict[str, float] = {}
    pairs = (modifier.selector_targets() if isinstance(modifier, GMPruningModifier)
             else [(s, float("nan")) for s in modifier.selectors()])
    unmatched = []
    for selector, final in pairs:
        names = match_selector(selector, index)
        if not names:
            unmatched.append(selector)
        for name in names:
            if name in out and out[name] != final and final == final:
                own.append(f"'{name}' is selected for both {out[name]} and {final} final sparsity; "
                           f"list each tensor in one tier only")
            out[name] = final
    heads: dict[str, list[str]] = {}
    for selector in list(unmatched):
        head = _anchor_head(selector, index)
        if head:
            heads.setdefault(head, []).append(selector)
            unmatched.remove(selector)
    for head, names in heads.items():
        own.append(f"parameters do not exist: {_anchor_head_message(names, head, index)}")
    for selector in unmatched:
        if selector.startswith("re:"):
            own.append(f"params selector '{selector}' matches no parameter (names look like "
                       f"{', '.join(list(index.params)[:3])})")
        else:
            own.append(f"parameter '{selector}' does not exist: {_what_instead(selector, index, 'parameter')}")
    if problems is None and own:
        raise RecipeValidationError(f"!{modifier.tag}: " + "; ".join(own) + ".")
    if problems is not None:
        problems.extend(f"!{modifier.tag}: {p}" for p in own)
    return out


def _module_key_ok(key: str, index: ModelIndex, allow_class: bool) -> bool:
    return key in index.modules or (allow_class and key in index.class_names)


def validate_recipe(recipe: "Recipe", model: "torch.nn.Module | ModelIndex",
                    teacher: "torch.nn.Module | ModelIndex | None" = None) -> ValidationReport:
    """Resolve every name the recipe uses against ``model``; raise once listing all problems."""
    index = index_model(model)
    tindex = index_model(teacher) if teacher is not None else None
    problems: list[str] = []
    warnings = list(recipe.warnings())
    reports: list[ModifierReport] = []
    for mod in recipe.modifiers:
        rep = ModifierReport(mod, {})
        if isinstance(mod, (GMPruningModifier, ConstantPruningModifier)):
            rep.targets = resolve_pruning(mod, index, problems)
            if isinstance(mod, GMPruningModifier) and mod.mask_type != "unstructured":
                flat = [n for n in rep.targets if len(index.params[n]) < 2]
                if flat:
                    problems.append(f"!{mod.tag}: mask_type {mod.mask_type} needs weights with "
                                    f"input channels, but selects 1-D tensors such as {flat[0]}")
        elif isinstance(mod, QuantizationModifier):
            for key in mod.module_keys():
                if not _module_key_ok(key, index, allow_class=True):
                    text = (f"!QuantizationModifier: '{key}' (in ignore/scheme_overrides) matches no "
                            f"module or class name: {_what_instead(key, index, 'module')}")
                    (problems if mod.strict else warnings).append(
                        text if mod.strict else text + " (ignored because strict is false)")
            for name, kind in index.modules.items():
                if kind in PRUNABLE_TYPES or kind in ("SiLU", "AddInput", "Upsample", "Concat"):
                    rep.targets[name] = mod.scheme_for(name, kind)
        elif isinstance(mod, LegacyQuantizationModifier):
            for key in mod.module_keys():
                if not _module_key_ok(key, index, allow_class=False):
                    problems.append(f"!QuantizationModifier: submodule '{key}' does not exist: "
                                    f"{_what_instead(key, index, 'module')}")
            for kind in mod.exclude_module_types + mod.custom_quantizable_module_types:
                if kind not in index.class_names:
                    warnings.append(f"!QuantizationModifier: the model has no module of class "
                                    f"'{kind}' (classes: {', '.join(sorted(index.class_names))})")
            rep.targets = {k: mod.as_scheme() for k in (mod.submodules or ["(whole model)"])}
        elif type(mod).__name__ == "ChannelPruningModifier":
            try:
                channel_modifier(recipe)  # one of them; GMP/QAT only after it (shapes change)
            except SparsepipeError as exc:
                problems.append(str(exc))
            for text in unmatched_selectors(list(index.modules), mod):
                problems.append(f"!ChannelPruningModifier: {text} matches no module (module names "
                                f"look like 'model.4.cv2', or use a regex such as 're:^model\\.2[01]\\.')")
        elif isinstance(mod, PerLayerDistillationModifier):
            for student, teach in mod.layer_pairs():
                if student not in index.modules:
                    problems.append(f"!PerLayerDistillationModifier: student layer '{student}' does "
                                    f"not exist: {_what_instead(student, index, 'module')}")
                if tindex is not None and teach not in tindex.modules:
                    problems.append(f"!PerLayerDistillationModifier: teacher layer '{teach}' does "
                                    f"not exist: {_what_instead(teach, tindex, 'module')}")
                rep.targets[student] = teach
            if tindex is None and mod.teacher_layer_names and mod.student_layer_names:
                rep.notes.append("teacher layer names are checked when the teacher is loaded")
        reports.append(rep)
    if problems:
        raise RecipeValidationError(
            f"{recipe.source}: the recipe does not fit this model ({len(problems)} problem"
            f"{'s' if len(problems) > 1 else ''}): " + " | ".join(problems)
            + ". Fix the names in the recipe (a recipe written for another architecture names "
              "layers this model does not have)."
        )
    for text in warnings:
        _warnings.warn(f"{recipe.source}: {text}", RecipeWarning, stacklevel=2)
    return ValidationReport(reports, warnings)
