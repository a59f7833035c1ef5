"""Recipes: variables, ``eval()`` expressions, stages, recipe_args, YAML round trip.

    python -c "from sparsepipe.recipe import load_recipe; r = load_recipe('recipes/yolov8n-pruned50.yaml'); print(r.num_epochs)"

Layout of a recipe (recipes.md sections 1-2):

* top-level scalar (or list / mapping) keys are variables; ``version`` is just a variable;
* top-level lists whose key contains ``modifiers`` hold ``!Tagged`` modifiers; a list of
  modifiers under any other key is an error;
* a *staged* recipe has top-level mappings that contain ``*modifiers`` lists: the stage's own
  variables shadow the globals, and each stage's epochs are shifted by the end of the stage
  before it (``start_epoch: -1`` = the start of its stage). A recipe is either flat or staged.

Variables are resolved lazily in any order; cycles and undefined names are errors naming the
variable. ``recipe_args`` override top-level variables (``name``) or stage variables
(``stage.name``) before anything is evaluated, so overrides flow into every ``eval()``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sparsepipe.modifiers.base import Modifier
from sparsepipe.modifiers.lr import param_group_warning
from sparsepipe.modifiers.registry import build_modifier, known_tags, lookup
from sparsepipe.recipe.errors import RecipeError, RecipeExpressionError, RecipeSyntaxError
from sparsepipe.recipe.expr import eval_body, evaluate, is_eval_string
from sparsepipe.recipe.yaml_io import (
    TaggedModifier,
    dump_yaml,
    load_yaml,
    read_recipe_file,
)
from sparsepipe.results import atomic_write_text

RecipeArgs = Mapping[str, Any] | str | None
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_VARIABLES = 5_000


def _is_modifier_key(key: str) -> bool:
    return "modifiers" in key


@dataclasses.dataclass(eq=True)
class Stage:
    """One stage of a recipe (a flat recipe has exactly one, named ``""``).

    ``lists`` maps the key of each modifier list (``training_modifiers``...) to its modifiers,
    with epochs *local* to the stage; ``offset`` is where the stage starts in the whole run.
    """

    name: str
    variables: dict[str, Any]
    lists: dict[str, list[Modifier]]
    offset: float = 0.0

    @property
    def local_modifiers(self) -> list[Modifier]:
        """Modifiers with stage-local epochs, in recipe order."""
        return [m for mods in self.lists.values() for m in mods]

    @property
    def modifiers(self) -> list[Modifier]:
        """Modifiers with epochs shifted into the whole run."""
        return [m.shifted(self.offset) for m in self.local_modifiers]

    @property
    def length(self) -> float:
        """Largest epoch used by this stage's modifiers, in stage-local epochs."""
        return max((e for m in self.local_modifiers for e in m.epochs_used()), default=0.0)


@dataclasses.dataclass
class Recipe:
    """A loaded recipe: resolved global variables and stages of validated modifiers."""

    variables: dict[str, Any]
    stages: list[Stage]
    source: str = dataclasses.field(default="recipe", compare=False)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def staged(self) -> bool:
        return not (len(self.stages) == 1 and self.stages[0].name == "")

    @property
    def modifiers(self) -> list[Modifier]:
        """All modifiers of all stages, epochs in whole-run terms, in recipe order."""
        return [m for stage in self.stages for m in stage.modifiers]

    def modifiers_of(self, *types: type) -> list[Any]:
        """Modifiers that are instances of ``types``."""
        return [m for m in self.modifiers if isinstance(m, types)]

    @property
    def num_epochs(self) -> int:
        """Training length: the ceil of the largest start/end epoch over all modifiers."""
        values = [e for m in self.modifiers for e in m.epochs_used()]
        return int(math.ceil(max(values))) if values else 0

    def warnings(self) -> list[str]:
        """Things that load fine but deserve the user's attention."""
        out = []
        text = param_group_warning(self.modifiers)
        if text:
            out.append(text)
        return out

    def to_data(self) -> dict[str, Any]:
        """Plain data (variables + ``TaggedModifier``) that :func:`dump_yaml` writes."""
        data: dict[str, Any] = dict(self.variables)
        for stage in self.stages:
            target = data
            if self.staged:
                target = data.setdefault(stage.name, {})
                target.update(stage.variables)
            for key, mods in stage.lists.items():
                target[key] = [m.to_tagged() for m in mods]
        return data

    def to_yaml(self) -> str:
        """YAML text that loads back into an equal recipe (variables already resolved)."""
        return dump_yaml(self.to_data())

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_yaml` atomically to ``path``."""
        return atomic_write_text(path, self.to_yaml())


# ------------------------------------------------------------------------------------------------
# recipe_args
# ------------------------------------------------------------------------------------------------
def parse_recipe_args(args: RecipeArgs, source: str = "--recipe-args") -> dict[str, Any]:
    """Overrides from a dict, a JSON object string, or ``k=v,k2=v2`` (values read as YAML)."""
    if args is None:
        return {}
    if isinstance(args, Mapping):
        out = dict(args)
    elif isinstance(args, str):
        text = args.strip()
        if not text:
            return {}
        if text.startswith("{"):
            try:
                out = json.loads(text)
            except json.JSONDecodeError as exc:
                raise RecipeError(
                    f"{source}: '{text[:80]}' is not valid JSON ({exc.msg} at character "
                    f"{exc.pos}). Write e.g. '{{\"num_epochs\": 3}}' or 'num_epochs=3,init_lr=0.01'."
                ) from None
            if not isinstance(out, dict):
                raise RecipeError(f"{source}: the JSON must be an object like {{\"num_epochs\": 3}}.")
        else:
            out = {}
            for part in text.split(","):
                if "=" not in part:
                    raise RecipeError(
                        f"{source}: '{part.strip()}' is not 'name=value'. Write overrides as "
                        f"'num_epochs=3,init_lr=0.01' or as a JSON object."
                    )
                key, value = part.split("=", 1)
                parsed = load_yaml(value.strip(), source) if value.strip() else ""
                out[key.strip()] = parsed
    else:
        raise RecipeError(f"{source}: recipe args must be a dict, a JSON string or 'k=v,k2=v2', "
                          f"got {type(args).__name__}.")
    for key, value in out.items():
        if not isinstance(key, str) or not key:
            raise RecipeError(f"{source}: override names must be non-empty strings, got {key!r}.")
        if isinstance(value, TaggedModifier):
            raise RecipeError(f"{source}: the override '{key}' cannot be a modifier.")
    return out


# ------------------------------------------------------------------------------------------------
# variables
# ------------------------------------------------------------------------------------------------
class _Scope:
    """Lazily resolved variables with cycle detection; ``parent`` holds the globals."""

    def __init__(self, raw: dict[str, Any], where: str, parent: "_Scope | None" = None):
        self.raw = raw
        self.where = where
        self.parent = parent
        self.done: dict[str, Any] = {}
        self.stack: list[str] = []

    def names(self) -> list[str]:
        names = set(self.raw)
        if self.parent:
            names |= set(self.parent.names())
        return sorted(names)

    def get(self, name: str) -> Any:
        if name in self.raw:
            return self._resolve_var(name)
        if self.parent is not None:
            return self.parent.get(name)
        raise RecipeExpressionError(
            f"{self.where}: the variable '{name}' is used but never defined (defined: "
            f"{', '.join(self.names()) or 'none'}). Define it at the top of the recipe or pass "
            f"it with --recipe-args."
        )

    def _resolve_var(self, name: str) -> Any:
        if name in self.done:
            return self.done[name]
        if name in self.stack:
            chain = " -> ".join(self.stack[self.stack.index(name):] + [name])
            raise RecipeExpressionError(
                f"{self.where}: the variables refer to each other in a cycle: {chain}. Give one "
                f"of them a number."
            )
        self.stack.append(name)
        try:
            value = self.resolve(self.raw[name], f"{self.where}: variable '{name}'")
        except RecursionError:
            raise RecipeExpressionError(
                f"{self.where}: variable '{name}' refers through too many other variables."
            ) from None
        finally:
            self.stack.pop()
        self.done[name] = value
        return value

    def resolve(self, value: Any, where: str) -> Any:
        """Resolve every ``eval(...)`` string inside ``value`` (lists and mappings too)."""
        if isinstance(value, str):
            if is_eval_string(value):
                return evaluate(eval_body(value), self.get, where)
            return value
        if isinstance(value, list):
            return [self.resolve(v, where) for v in value]
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                key = self.resolve(k, where)
                if isinstance(key, (list, dict)):
                    raise RecipeExpressionError(
                        f"{where}: the mapping key {k!r} evaluates to a {type(key).__name__}; "
                        f"keys must be numbers or strings."
                    )
                out[key] = self.resolve(v, where)
            return out
        return value

    def resolve_all(self) -> dict[str, Any]:
        return {name: self._resolve_var(name) for name in self.raw}


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _find_stray_modifier(value: Any, path: str) -> str | None:
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, TaggedModifier):
            return where
        if isinstance(current, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(current))
        elif isinstance(current, dict):
            stack.extend((v, f"{where}.{k}") for k, v in current.items())
    return None


def _split(data: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, list[TaggedModifier]]]:
    """Separate variables from modifier lists in one mapping (top level or a stage)."""
    variables: dict[str, Any] = {}
    lists: dict[str, list[TaggedModifier]] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise RecipeSyntaxError(f"{where}: the key {key!r} is not a string; recipe keys are "
                                    f"names like 'num_epochs' or 'training_modifiers'.")
        if _is_modifier_key(key):
            if value is None:
                value = []
            if isinstance(value, TaggedModifier):
                raise RecipeSyntaxError(
                    f"{where}: '{key}' holds one '!{value.tag}' that is not a list item. Write "
                    f"'- ' before each modifier tag ('  - !{value.tag}'), so that '{key}' is a "
                    f"list of modifiers."
                )
            if isinstance(value, dict):
                value = _mapping_modifiers(value, f"{where}: '{key}'")
            if not isinstance(value, list) or not all(isinstance(v, TaggedModifier) for v in value):
                raise RecipeSyntaxError(
                    f"{where}: '{key}' must be a list of tagged modifiers like "
                    f"'- !GMPruningModifier {{...}}' (every item needs its '!Tag')."
                )
            lists[key] = value
            continue
        if isinstance(value, list) and any(isinstance(v, TaggedModifier) for v in value):
            raise RecipeSyntaxError(
                f"{where}: '{key}' holds modifiers, but only keys containing 'modifiers' may "
                f"(e.g. '{key}_modifiers' or 'training_modifiers'). Rename the key."
            )
        stray = _find_stray_modifier(value, f"{where}: {key}")
        if stray:
            raise RecipeSyntaxError(
                f"{stray}: a modifier appears outside a '*modifiers' list. Put every "
                f"'!Modifier' item directly in a list under a key containing 'modifiers'."
            )
        if not _NAME_RE.match(key):
            raise RecipeSyntaxError(
                f"{where}: the variable name '{key}' is not a valid name (letters, digits and "
                f"'_', not starting with a digit), so no eval() could use it. Rename it."
            )
        variables[key] = value
    return variables, lists


# Field names of SparseML's newer (sparseml.core) modifiers, read as the recipe-format names.
MAPPING_FIELD_ALIASES = {"start": "start_epoch", "end": "end_epoch", "update": "update_frequency",
                         "targets": "params"}


def _mapping_modifiers(value: dict[Any, Any], where: str) -> list[TaggedModifier]:
    """SparseML's newer stage format: ``{ModifierName: {fields}}`` instead of a ``!Tag`` list.

    Each key names a modifier (the tag without ``!``); its value holds the fields. The newer
    field names ``start``, ``end``, ``update`` and ``targets`` are read as ``start_epoch``,
    ``end_epoch``, ``update_frequency`` and ``params``.
    """
    out = []
    for name, fields in value.items():
        if isinstance(fields, TaggedModifier) or not isinstance(name, str) or lookup(name) is None:
            raise RecipeSyntaxError(
                f"{where}: in the mapping form each key must name a modifier, got {name!r}. "
                f"Known modifiers: {', '.join(known_tags())}. (Or write a list of "
                f"'- !Modifier {{...}}' items.)"
            )
        if fields is None:
            fields = {}
        if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
            raise RecipeSyntaxError(f"{where}: '{name}' must map to its fields, e.g. "
                                    f"'{name}: {{start_epoch: 0}}'.")
        renamed: dict[str, Any] = {}
        for k, v in fields.items():
            target = MAPPING_FIELD_ALIASES.get(k, k)
            if target in renamed:
                raise RecipeSyntaxError(f"{where}: '{name}' sets '{target}' twice (as '{k}' and "
                                        f"under its other name); keep one.")
            renamed[target] = v
        out.append(TaggedModifier(name, renamed, 0))
    return out


def _is_stage(value: Any) -> bool:
    return isinstance(value, dict) and any(isinstance(k, str) and _is_modifier_key(k) for k in value)


def recipe_from_data(data: Any, source: str = "recipe", recipe_args: RecipeArgs = None) -> Recipe:
    """Build a :class:`Recipe` from parsed YAML data (see module docstring)."""
    if not isinstance(data, dict):
        raise RecipeSyntaxError(
            f"{source}: a recipe is a YAML mapping of variables and '*modifiers' lists, got "
            f"{type(data).__name__ if data is not None else 'an empty document'}."
        )
    overrides = parse_recipe_args(recipe_args)
    stage_items = {k: v for k, v in data.items() if _is_stage(v)}
    flat = {k: v for k, v in data.items() if k not in stage_items}
    global_vars, top_lists = _split(flat, source)
    if stage_items and top_lists:
        raise RecipeSyntaxError(
            f"{source}: the recipe has both stages ({', '.join(stage_items)}) and top-level "
            f"modifier lists ({', '.join(top_lists)}). Move the top-level lists into a stage."
        )
    stage_raw: list[tuple[str, dict[str, Any], dict[str, list[TaggedModifier]]]] = []
    if stage_items:
        for name, body in stage_items.items():
            svars, slists = _split(body, f"{source}: stage '{name}'")
            stage_raw.append((name, svars, slists))
    else:
        stage_raw.append(("", {}, top_lists))
    if len(global_vars) + sum(len(s[1]) for s in stage_raw) > MAX_VARIABLES:
        raise RecipeSyntaxError(f"{source}: more than {MAX_VARIABLES} variables; is this a recipe?")

    # apply overrides to the raw values before anything is evaluated
    for key, value in overrides.items():
        if key in global_vars:
            global_vars[key] = value
            continue
        stage_name, _, var = key.rpartition(".")
        target = next((s for s in stage_raw if s[0] == stage_name and stage_name), None)
        if target is not None and var in target[1]:
            target[1][var] = value
            continue
        defined = sorted(global_vars) + [f"{s[0]}.{v}" for s in stage_raw if s[0] for v in s[1]]
        raise RecipeError(
            f"{source}: recipe_args override '{key}', but the recipe defines no such variable "
            f"(it defines: {', '.join(defined) or 'no variables'}). Check the spelling; overrides "
            f"can only change variables the recipe declares."
        )

    gscope = _Scope(global_vars, source)
    try:
        variables = gscope.resolve_all()
        stages: list[Stage] = []
        offset = 0.0
        for name, svars, slists in stage_raw:
            where = f"{source}: stage '{name}'" if name else source
            scope = _Scope(svars, where, parent=gscope)
            resolved_vars = scope.resolve_all()
            lists: dict[str, list[Modifier]] = {}
            for key, tagged in slists.items():
                mods = []
                for i, item in enumerate(tagged):
                    mwhere = f"{where}: {key}[{i}] !{item.tag} (line {item.line})"
                    fields = {k: scope.resolve(v, f"{mwhere} field '{k}'") for k, v in item.fields.items()}
                    mods.append(build_modifier(item.tag, fields, mwhere))
                lists[key] = mods
            stage = Stage(name, resolved_vars, lists, offset)
            stages.append(stage)
            offset += stage.length
    except RecursionError:
        raise RecipeExpressionError(f"{source}: the variables are nested too deeply.") from None
    if not any(stage.local_modifiers for stage in stages):
        raise RecipeSyntaxError(
            f"{source}: the recipe has no modifiers. Add a list such as 'training_modifiers:' with "
            f"items like '- !EpochRangeModifier {{start_epoch: 0, end_epoch: 10}}'."
        )
    return Recipe(variables, stages, source, overrides)


def load_recipe(source: str | os.PathLike, recipe_args: RecipeArgs = None) -> Recipe:
    """Load a recipe from a path (``.yaml``, ``.yml``, ``.md`` card) or from YAML text.

    A ``str`` is taken as a path when it has no newline and ends in ``.yaml``/``.yml``/``.md``
    (or names an existing file); otherwise it is YAML text. ``recipe_args`` override variables.
    """
    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and "\n" not in source and len(source) < 4096
        and (source.lower().endswith((".yaml", ".yml", ".md", ".markdown")) or os.path.isfile(source))
    ):
        name = os.fspath(source)
        text = read_recipe_file(name)
        return recipe_from_data(load_yaml(text, name), name, recipe_args)
    return load_recipe_string(str(source), recipe_args)


def load_recipe_string(text: str, recipe_args: RecipeArgs = None, source: str = "recipe") -> Recipe:
    """Load a recipe from YAML text."""
    return recipe_from_data(load_yaml(text, source), source, recipe_args)


def iter_recipe_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Recipe files in ``folder`` (``.yaml``, ``.yml``, ``.md`` except README.md), sorted."""
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() in (".yaml", ".yml", ".md") and path.name.lower() != "readme.md":
            yield path


__all__: list[str] = [
    "Recipe", "Stage", "load_recipe", "load_recipe_string", "parse_recipe_args",
    "recipe_from_data", "iter_recipe_files",
]
