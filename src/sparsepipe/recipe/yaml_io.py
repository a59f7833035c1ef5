"""Safe reading and writing of recipe YAML (files, Markdown recipe cards, strings).

    python -c "from sparsepipe.recipe.yaml_io import load_yaml; print(load_yaml('a: 1', 'x'))"

Only :class:`yaml.SafeLoader` constructors plus one constructor per known modifier tag are
available: ``!!python/object`` and any other unknown tag is refused with the list of known tags.
Inputs are capped: files at :data:`MAX_RECIPE_BYTES`, the YAML node graph at
:data:`MAX_NODES` nodes after alias expansion (billion-laughs documents are refused before they
are built), and recursive aliases are refused. Duplicate keys in one mapping are an error too
(YAML would silently keep the last one).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from sparsepipe.modifiers.base import TaggedModifier
from sparsepipe.modifiers.registry import known_tags, lookup
from sparsepipe.recipe.errors import RecipeSyntaxError

MAX_RECIPE_BYTES = 1_000_000
MAX_NODES = 200_000

_COMMENT_RE = re.compile(r"\A\s*<!--.*?-->", re.DOTALL)
_FENCE_RE = re.compile(r"^---[ \t]*$", re.MULTILINE)


def read_recipe_file(path: str | os.PathLike) -> str:
    """Return the recipe YAML text of a ``.yaml``/``.yml`` file or a ``.md`` recipe card."""
    p = Path(path)
    if not p.is_file():
        raise RecipeSyntaxError(
            f"Recipe file '{p}' does not exist or is not a file. Pass the path of a .yaml, .yml "
            f"or .md recipe (see recipes/ for examples)."
        )
    size = p.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeSyntaxError(
            f"Recipe file '{p}' is {size:,} bytes; recipes are limited to {MAX_RECIPE_BYTES:,} "
            f"bytes. A recipe is a short list of modifiers: check that you passed the right file."
        )
    with p.open("rb") as handle:
        data = handle.read(MAX_RECIPE_BYTES + 1)
    if len(data) > MAX_RECIPE_BYTES:  # grew between stat and read
        raise RecipeSyntaxError(f"Recipe file '{p}' is larger than {MAX_RECIPE_BYTES:,} bytes.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeSyntaxError(
            f"Recipe file '{p}' is not UTF-8 text (byte {exc.start}). Save it as UTF-8."
        ) from None
    if p.suffix.lower() in (".md", ".markdown"):
        return front_matter(text, str(p))
    return text


def front_matter(text: str, source: str) -> str:
    """The YAML of a Markdown recipe card: the first ``---`` block, after optional HTML comments."""
    rest = text.lstrip("\ufeff")
    while True:
        match = _COMMENT_RE.match(rest)
        if not match:
            break
        rest = rest[match.end():]
    rest = rest.lstrip()
    fences = list(_FENCE_RE.finditer(rest))
    if not fences or fences[0].start() != 0 or len(fences) < 2:
        raise RecipeSyntaxError(
            f"Recipe card '{source}' has no YAML front matter: the recipe must come first (after "
            f"optional <!-- licence --> comments), between a line '---' and a closing '---'."
        )
    return rest[fences[0].end(): fences[1].start()]


def _unknown_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    line = node.start_mark.line + 1 if node.start_mark else "?"
    raise RecipeSyntaxError(
        f"{loader.source}: line {line}: unknown YAML tag '{node.tag}'. Recipes may only tag "
        f"modifiers; known tags: {', '.join('!' + t for t in known_tags())}. Python object tags "
        f"are never accepted."
    )


def _modifier_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> TaggedModifier:
    line = node.start_mark.line + 1 if node.start_mark else 0
    if lookup(suffix) is None:
        raise RecipeSyntaxError(
            f"{loader.source}: line {line}: unknown modifier tag '!{suffix}'. Known tags: "
            f"{', '.join('!' + t for t in known_tags())}. Check the spelling, or remove the "
            f"modifier."
        )
    if isinstance(node, yaml.ScalarNode) and node.value == "":
        fields: dict[str, Any] = {}
    elif isinstance(node, yaml.MappingNode):
        fields = loader.construct_mapping(node, deep=True)
    else:
        raise RecipeSyntaxError(
            f"{loader.source}: line {line}: '!{suffix}' must tag a mapping of fields, e.g. "
            f"'!{suffix} {{start_epoch: 0.0}}'."
        )
    for key in fields:
        if not isinstance(key, str):
            raise RecipeSyntaxError(
                f"{loader.source}: line {line}: '!{suffix}' has a non-string field name {key!r}."
            )
    return TaggedModifier(suffix, dict(fields), line)


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader + modifier tags; everything else tagged is refused."""

    source = "recipe"


# YAML 1.1 reads '1e-4' (no dot) as a string; recipes mean a number.
_FLOAT_RE = re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$""")
RecipeLoader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789"))
RecipeLoader.add_multi_constructor("!", _modifier_tag)
RecipeLoader.add_constructor(None, _unknown_tag)  # type: ignore[arg-type]


def _check_graph(node: yaml.Node, source: str) -> None:
    """Refuse cyclic aliases, duplicate keys and documents that expand past MAX_NODES nodes."""
    sizes: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, done = stack.pop()
        key = id(current)
        if done:
            on_stack.discard(key)
            children = _children(current)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > MAX_NODES:
                raise RecipeSyntaxError(
                    f"{source}: the YAML expands to more than {MAX_NODES:,} values (aliases '*name' "
                    f"repeated inside each other?). Recipes are small; write the values out instead."
                )
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in on_stack:
            line = current.start_mark.line + 1 if current.start_mark else "?"
            raise RecipeSyntaxError(
                f"{source}: line {line}: a YAML alias refers to a value that contains itself. "
                f"Recursive anchors are not allowed in recipes."
            )
        on_stack.add(key)
        stack.append((current, True))
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for k, _ in current.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    if k.value in seen:
                        raise RecipeSyntaxError(
                            f"{source}: line {k.start_mark.line + 1}: the key '{k.value}' appears "
                            f"twice in the same mapping; YAML would silently keep only the last. "
                            f"Remove one of them."
                        )
                    seen.add(k.value)
        for child in _children(current):
            if id(child) in on_stack:
                line = child.start_mark.line + 1 if child.start_mark else "?"
                raise RecipeSyntaxError(
                    f"{source}: line {line}: a YAML alias refers to a value that contains itself. "
                    f"Recursive anchors are not allowed in recipes."
                )
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str, source: str = "recipe") -> Any:
    """Parse recipe YAML safely (see module docstring); return plain data + TaggedModifier."""
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeSyntaxError(
            f"{source}: the recipe text is {len(text):,} characters; recipes are limited to "
            f"{MAX_RECIPE_BYTES:,}. Check that you passed the right text."
        )
    loader: RecipeLoader | None = None
    try:
        loader = RecipeLoader(text)
        loader.source = source
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        dashless = _dashless_modifier(text)
        if dashless is not None:
            line, tag = dashless
            raise RecipeSyntaxError(
                f"{source}: line {line}: the modifier '!{tag}' is not a list item. Every modifier "
                f"in a '*_modifiers' list starts with '- ' (write '- !{tag}', with its fields "
                f"indented below it); without the dashes YAML cannot read two modifiers in a row."
            ) from None
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise RecipeSyntaxError(
            f"{source}: invalid YAML at {where}: {exc.problem or exc.context}. Fix the YAML syntax "
            f"(indentation, quotes, a missing ':' or bracket)."
        ) from None
    except yaml.YAMLError as exc:
        raise RecipeSyntaxError(f"{source}: invalid YAML: {exc}.") from None
    except RecursionError:
        raise RecipeSyntaxError(
            f"{source}: the YAML is nested too deeply to be a recipe."
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


_TAG_LINE_RE = re.compile(r"^[ \t]*!([A-Za-z_][A-Za-z0-9_]*)\b")


def _dashless_modifier(text: str) -> tuple[int, str] | None:
    """(line, tag) of a known modifier tag that starts a line without '- ', if any.

    A widely copied guide writes modifier lists without dashes; YAML then fails at the second
    tag with a confusing message, so the loader names the real problem instead.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        match = _TAG_LINE_RE.match(line)
        if match and lookup(match.group(1)) is not None:
            return number, match.group(1)
    return None


class RecipeDumper(yaml.SafeDumper):
    """SafeDumper that writes modifier objects as ``!Tag {fields}`` and never emits aliases."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: D102 - yaml hook
        return True


def _represent_tagged(dumper: yaml.SafeDumper, data: TaggedModifier) -> yaml.Node:
    return dumper.represent_mapping("!" + data.tag, data.fields)


RecipeDumper.add_representer(TaggedModifier, _represent_tagged)


def dump_yaml(data: Any) -> str:
    """YAML text of ``data`` (plain values and TaggedModifier), keys in insertion order."""
    return yaml.dump(data, Dumper=RecipeDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)
