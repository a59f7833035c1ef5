"""Registry of modifier tags: ``!GMPruningModifier`` -> :class:`GMPruningModifier`.

    python -c "from sparsepipe.modifiers.registry import known_tags; print(known_tags())"

Modifier classes register themselves with :func:`register` when :mod:`sparsepipe.modifiers` imports
them (Python imports that package, and so every modifier, before this module); a tag may also be served by a
factory that picks a class from the fields used (``QuantizationModifier`` has two dialects).
:func:`build_modifier` turns a tag + resolved fields into a validated modifier and converts
pydantic's validation errors into one :class:`RecipeError` paragraph naming tag and field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from sparsepipe.errors import RecipeError

if TYPE_CHECKING:
    from sparsepipe.modifiers.base import Modifier

_REGISTRY: dict[str, Callable[[dict[str, Any], str], "Modifier"]] = {}
_CANONICAL: dict[str, str] = {}  # alias -> canonical tag

T = TypeVar("T")


def register(tag: str, *aliases: str) -> Callable[[T], T]:
    """Class decorator: serve ``!tag`` (and ``!alias``) with the decorated modifier class."""

    def deco(cls: T) -> T:
        def factory(fields: dict[str, Any], where: str) -> "Modifier":
            return construct(cls, fields, where)  # type: ignore[arg-type]

        register_factory(tag, factory, *aliases)
        return cls

    return deco


def register_factory(
    tag: str, factory: Callable[[dict[str, Any], str], "Modifier"], *aliases: str
) -> None:
    """Serve ``!tag`` with ``factory(fields, where) -> Modifier`` (for multi-dialect tags)."""
    for name in (tag, *aliases):
        _REGISTRY[name] = factory
        _CANONICAL[name] = tag


def unregister(tag: str) -> None:
    """Stop serving ``tag`` and its aliases (tests that register a temporary modifier)."""
    for name in [n for n, canonical in _CANONICAL.items() if canonical == tag]:
        _REGISTRY.pop(name, None)
        _CANONICAL.pop(name, None)


def lookup(tag: str) -> Callable[[dict[str, Any], str], "Modifier"] | None:
    """The factory for ``tag`` or None."""
    return _REGISTRY.get(tag)


def known_tags() -> list[str]:
    """All accepted tag names (including aliases), sorted."""
    return sorted(_REGISTRY)


def build_modifier(tag: str, fields: dict[str, Any], where: str) -> "Modifier":
    """Validate ``fields`` for ``!tag``; raise :class:`RecipeError` naming tag and field."""
    factory = lookup(tag)
    if factory is None:
        raise RecipeError(
            f"{where}: unknown modifier '!{tag}'. Known modifiers: {', '.join(known_tags())}."
        )
    return factory(fields, where)


def construct(cls: type["Modifier"], fields: dict[str, Any], where: str) -> "Modifier":
    """``cls(**fields)`` with pydantic errors rewritten as one RecipeError paragraph."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        known = ", ".join(sorted(cls.model_fields))
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(modifier)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown field '{loc}'")
            elif err["type"] == "missing":
                problems.append(f"missing required field '{loc}'")
            else:
                msg = err["msg"].removeprefix("Value error, ")
                if err["loc"]:
                    shown = repr(err.get("input"))
                    shown = shown if len(shown) <= 120 else shown[:117] + "..."
                    problems.append(f"field '{loc}' = {shown}: {msg}")
                else:
                    problems.append(msg)
        raise RecipeError(
            f"{where}: !{cls.tag} is invalid: {'; '.join(problems)}. Fields of !{cls.tag}: "
            f"{known}. Fix or remove the named field(s)."
        ) from None
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: !{cls.tag} is invalid: {exc}.") from None
