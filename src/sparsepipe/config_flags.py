"""Command-line flags derived from a step's config dataclass, so the CLI cannot drift from the config.

    python -c "from sparsepipe.config_flags import config_fields; from sparsepipe.training import TrainConfig; print(config_fields(TrainConfig))"

One flag per dataclass field: the name is the field's (``max_epochs`` -> ``--max-epochs``), the
type comes from its annotation, the help from ``field.metadata["help"]`` or else the comment
that documents the field in the class source (on its line, continued on following lines
indented after ``#``, or the comment block just above it), the default shown in the help is
the field's default. Booleans become switches: a field that defaults to True gets
``--no-<name>``, one that defaults to False gets ``--<name>``. ``tuple[str, ...]`` fields take a
comma list, ``dict`` fields a repeatable ``KEY=VALUE`` flag (values read as YAML).

A field whose type is itself a config dataclass (``QATConfig.train``: a ``SparsifyConfig``) has
no flag of its own: its fields get flags, named after them as if they were the outer config's
(``--lr0``, ``--optimizer``, ``--ultralytics-arg``), and :func:`config_from_args` builds the nested
config from them. Where an outer field and a nested one share a name (``QATConfig.variant`` and
``SparsifyConfig.variant``), the outer field's flag is the one; the nested value is what the outer
config derives from it (a nested config starts as the outer config builds it from the given
values, then takes the given nested values). Two nested configs with a field of the same name
are an error: one flag cannot feed two places.

A flag not given on the command line leaves its field out of the config, so the config's own
default applies (``argparse.SUPPRESS``): one parser can carry the flags of two configs (the
quantize verb: PTQ and QAT) and each gets its own defaults. :class:`Flag` adjusts one field's
flag for a verb (another name, aliases, choices, a help prefix) and ``exclude`` leaves a field
out with the reason (tests/test_cli_config_flags.py fails on a field with neither).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import linecache
import re
import tokenize
import types
import typing
from typing import Any, Mapping

import yaml

from sparsepipe.errors import ConfigError, SparsepipeError

__all__ = ["DeferredParser", "Flag", "FieldInfo", "add_config_flags", "config_fields", "config_from_args", "field_help",
           "flag_registry", "parse_key_values", "flag_name"]


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one field's flag differs from the derived one (every attribute optional)."""

    name: str | None = None  # flag instead of --<field-name>, e.g. "--data-sha256" or "--per-tensor"
    aliases: tuple[str, ...] = ()  # further option strings, e.g. ("--workers",)
    choices: tuple[Any, ...] | None = None  # allowed values (argparse choices)
    help: str | None = None  # replaces the derived help text
    help_prefix: str = ""  # put before the derived help, e.g. "QAT: "
    metavar: str | None = None
    empty_is_default: bool = False  # "" on the command line means the config's default (--variant "")


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """A config field as the CLI sees it."""

    name: str
    kind: str  # "bool", "int", "float", "str", "list" (tuple[str, ...]), "dict"
    default: Any
    help: str
    optional: bool  # None is a valid value (and then usually the default)
    path: tuple[str, ...] = ()  # the nested config fields it sits in: ("train",) for QATConfig's lr0

    @property
    def qualname(self) -> str:
        """``train.lr0``: where the value goes in the outer config."""
        return ".".join((*self.path, self.name))


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


# ------------------------------------------------------------------------------ reading the class


def _comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the class source: the comment on the field's line (plus continuation
    lines: comment-only lines whose text is indented after the ``#``), else the block just above."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        source = _class_source(klass)
        if source is not None:
            found.update(_comments_in(source))
    return found


@functools.lru_cache(maxsize=None)
def _class_source(cls: type) -> str | None:
    """The source of ``cls``'s body. A module-level class is cut from its file's lines (its ``class``
    line to the next line at column 0): ``inspect.getsource`` parses the whole module to find a
    class, which made building every verb's flags cost a second."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:  # pragma: no cover - built-in classes
        return None
    lines = linecache.getlines(path) if path else []
    start = re.compile(rf"class\s+{re.escape(cls.__name__)}\b")
    heads = [i for i, line in enumerate(lines) if start.match(line)] if cls.__qualname__ == cls.__name__ else []
    if len(heads) != 1:  # nested in a function or class, defined twice, or no file: ask inspect
        try:
            return inspect.getsource(cls)
        except (OSError, TypeError):  # pragma: no cover - classes built at run time
            return None
    end = next((i for i in range(heads[0] + 1, len(lines)) if lines[i][:1] not in ("", " ", "\t", "\n", "\r")),
               len(lines))
    return "".join(lines[heads[0]:end])


_FIELD = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:[^=]*(=.*)?$")


def _comments_in(source: str) -> dict[str, str]:
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string[1:]
    lines = source.splitlines()
    out: dict[str, str] = {}
    above: list[str] = []
    current: str | None = None  # the field whose trailing comment may continue on the next lines
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        comment = by_line.get(number)
        if stripped.startswith("#"):
            text = comment or ""
            if current is not None and re.match(r"\s{2,}\S", text):
                out[current] += " " + text.strip()
                continue
            current = None
            above.append(text.strip())
            continue
        code = line.split("#", 1)[0] if comment is not None else line
        match = _FIELD.match(code) if not stripped.startswith(("def ", "class ", "@", "return")) else None
        if match and line.startswith("    ") and not line.startswith("     "):
            name = match.group(1)
            if comment is not None:
                out[name] = comment.strip()
                current = name
            elif above:
                out[name] = " ".join(above)
                current = None
            above = []
            continue
        above = []
        current = None
    return out


def _kind(annotation: Any) -> tuple[str, bool]:
    """(kind, optional) of a resolved annotation."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        names = {getattr(a, "__name__", str(a)) for a in args}
        if len(args) == 1:
            kind, _ = _kind(args[0])
            return kind, optional
        if "str" in names:  # Path | str: a text value
            return "str", optional
        raise TypeError(f"no CLI kind for {annotation!r}")
    if annotation is bool:
        return "bool", optional
    if annotation is int:
        return "int", optional
    if annotation is float:
        return "float", optional
    if annotation is str or getattr(annotation, "__name__", "") in ("Path", "PosixPath"):
        return "str", optional
    if origin is tuple and typing.get_args(annotation)[:1] == (str,):
        return "list", optional
    if origin is tuple and typing.get_args(annotation)[:1] == (int,):
        return "intlist", optional
    if origin is dict or annotation is dict:
        return "dict", optional
    raise TypeError(f"no CLI kind for {annotation!r}")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _nested_config(annotation: Any) -> type | None:
    """The config dataclass a field holds (``train: SparsifyConfig``), else None."""
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def config_fields(cls: type) -> list[FieldInfo]:
    """The fields of the dataclass ``cls`` that get a flag, with their CLI kind, default and help text.

    Init fields only; a nested config field is replaced by its own fields (``path`` says where they
    sit), less those an outer field of the same name stands for (see the module docstring).
    """
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    own = [f for f in dataclasses.fields(cls) if f.init]
    outer = {f.name for f in own if _nested_config(hints[f.name]) is None}
    fields: list[FieldInfo] = []
    for field in own:
        nested = _nested_config(hints[field.name])
        if nested is not None:
            fields += [dataclasses.replace(info, path=(field.name, *info.path))
                       for info in config_fields(nested) if info.name not in outer]
            continue
        kind, optional = _kind(hints[field.name])
        help_text = field.metadata.get("help") or comments.get(field.name, "")
        fields.append(FieldInfo(field.name, kind, _default(field), help_text, optional))
    seen: dict[str, str] = {}
    for info in fields:
        if info.name in seen:
            raise TypeError(f"{cls.__name__}: {seen[info.name]} and {info.qualname} would share the flag "
                            f"{flag_name(info.name)}; rename one of them")
        seen[info.name] = info.qualname
    return fields


def field_help(cls: type, name: str) -> str:
    return next(f.help for f in config_fields(cls) if f.name == name)


# ------------------------------------------------------------------------------ flags


def parse_key_values(items: list[str] | None, flag: str = "--ultralytics-arg") -> dict[str, Any]:
    """``["mosaic=0.5", "name=x"]`` -> ``{"mosaic": 0.5, "name": "x"}`` (values read as YAML)."""
    extra: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise SparsepipeError(f"{flag} '{item}' must look like key=value, e.g. {flag} mosaic=0.5.")
        try:
            extra[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SparsepipeError(
                f"{flag} {item[:200]!r}: the value is not valid YAML ({problem}). Quote it, e.g. "
                f"{flag} 'name=\"text\"'."
            ) from None
    return extra


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _shown(value: Any, kind: str) -> str:
    if kind in ("list", "intlist"):
        return ",".join(str(v) for v in value) or "none"
    if kind == "dict":
        return "none"
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return str(value)


#: Parser default (so also an attribute of the parsed args) holding what :func:`add_config_flags`
#: added: ``{field: {"configs": [class names], "options": [option strings], ...}}``.
_REGISTRY_ATTR = "config_flags"


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    flags: Mapping[str, Flag] | None = None,
    exclude: Mapping[str, str] | None = None,
    help_prefix: str = "",
    group: Any = None,
) -> list[str]:
    """Add one flag per field of ``cls`` to ``parser`` (into ``group``, an argument group, when given).

    ``flags`` adjusts single fields (:class:`Flag`); ``exclude`` maps a field to the reason it has
    no flag here (it must then be set by hand). A field whose flag the parser already has (a verb
    built from two configs) is shared, not added twice. ``help_prefix`` goes before every help
    text of this call. Returns the field names that have flags.
    """
    flags = dict(flags or {})
    exclude = dict(exclude or {})
    known = {info.name for info in config_fields(cls)}
    unknown = set(exclude) - known  # (flags may name fields of other configs: one dict serves several calls)
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    registry: dict[str, dict[str, Any]] = parser.get_default(_REGISTRY_ATTR) or {}
    parser.set_defaults(**{_REGISTRY_ATTR: registry})  # args carry it: config_from_args reads it
    target = group if group is not None else parser
    names = []
    for info in config_fields(cls):
        if info.name in exclude:
            continue
        names.append(info.name)
        if info.name in registry:  # shared with a config added before (same dest)
            registry[info.name]["configs"].append(cls.__name__)
            continue
        spec = flags.get(info.name, Flag())
        text = spec.help if spec.help is not None else info.help
        text = f"{help_prefix}{spec.help_prefix}{text}".strip() or info.name.replace("_", " ")
        kwargs: dict[str, Any] = {"dest": info.name, "default": argparse.SUPPRESS}
        name = spec.name or flag_name(info.name)
        if info.kind == "bool":  # a switch to the other value: --no-<name> for fields on by default
            if spec.name is None and info.default:
                name = "--no-" + info.name.replace("_", "-")
            if info.default and spec.help is None:
                text = f"{help_prefix}{spec.help_prefix}turn off: {info.help}".strip()
            kwargs["action"] = "store_const"
            kwargs["const"] = not bool(info.default)
            note = ""
        elif info.kind == "dict":
            kwargs["action"] = "append"
            kwargs["metavar"] = spec.metavar or "KEY=VALUE"
            note = " (repeatable)"
        else:
            kwargs["type"] = {"int": int, "float": float}.get(info.kind, str)
            if spec.choices is not None:
                kwargs["choices"] = list(spec.choices)
            if spec.metavar:
                kwargs["metavar"] = spec.metavar
            if info.default is dataclasses.MISSING:
                kwargs["required"] = True
                note = ""
            elif re.search(r"\(default|default:", text):  # the help says it (a default that depends on the input)
                note = ""
            else:
                note = f" (default: {_shown(info.default, info.kind)})"
            if info.kind in ("list", "intlist"):
                text, note = text.rstrip(". "), f"; a comma list{note}"
        target.add_argument(name, *spec.aliases, help=_escape(text + note), **kwargs)
        registry[info.name] = {"configs": [cls.__name__], "options": [name, *spec.aliases], "kind": info.kind,
                               "empty_is_default": spec.empty_is_default}
    return names


def _convert(info: FieldInfo, value: Any, option: str) -> Any:
    if info.kind == "dict":
        return parse_key_values(value, option)
    if info.kind == "list":
        return tuple(part.strip() for part in str(value).split(",") if part.strip())
    if info.kind == "intlist":
        try:
            return tuple(int(part) for part in str(value).split(",") if part.strip())
        except ValueError:
            raise ConfigError(f"{option} {value!r} must be a comma list of integers, e.g. {option} 1,4,8.") from None
    return value


class _Given(dict):
    """The values given for a nested config's fields (``{"lr0": 0.01}``), nested configs again as _Given."""


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """Build ``cls`` from the flags given on the command line plus ``fixed`` values (``cls``'s own fields).

    Fields whose flag was not given are left out, so the config's defaults apply; a nested config
    none of whose flags was given is left out too.
    """
    registry = getattr(args, _REGISTRY_ATTR, None) or {}
    values: dict[str, Any] = {}
    for info in config_fields(cls):
        top = info.path[0] if info.path else info.name
        if top in fixed or not hasattr(args, info.name) or (registry and info.name not in registry):
            continue  # not given (the config's default applies), or a hand-written flag of the same name
        entry = registry.get(info.name, {})
        option = (entry.get("options") or [flag_name(info.name)])[0]
        value = getattr(args, info.name)
        if entry.get("empty_is_default") and value == "":
            continue
        target = values
        for name in info.path:
            target = target.setdefault(name, _Given())
        target[info.name] = _convert(info, value, option)
    values.update(fixed)
    return _build(cls, values)


def _build(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)``, where a :class:`_Given` value becomes that nested config.

    The nested config starts as ``cls`` itself builds it from the other values (QATConfig names its
    training run after its own variant) and takes the given values on top; a nested field without a
    default starts from its class's defaults.
    """
    given = {name: value for name, value in values.items() if isinstance(value, _Given)}
    plain = {name: value for name, value in values.items() if not isinstance(value, _Given)}
    if not given:
        return cls(**plain)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    defaulted = all(fields[name].default is not dataclasses.MISSING
                    or fields[name].default_factory is not dataclasses.MISSING for name in given)  # type: ignore[misc]
    start = cls(**plain) if defaulted else None
    for name, sub in given.items():
        plain[name] = _replace(getattr(start, name), sub) if start is not None else _build(hints[name], sub)
    return cls(**plain)


def _replace(config: Any, given: _Given) -> Any:
    return dataclasses.replace(config, **{name: _replace(getattr(config, name), value) if isinstance(value, _Given)
                                          else value for name, value in given.items()})


def flag_registry(parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    """``{field: {"configs": [...], "options": [...], "kind": ...}}`` of a parser built with :func:`add_config_flags`."""
    return dict(parser.get_default(_REGISTRY_ATTR) or {})


class DeferredParser(argparse.ArgumentParser):
    """An ArgumentParser that adds some arguments only when it is first used (parsed, or its help shown).

    For flags whose config lives in a module that is slow to import (QAT: torch): ``sparsepipe
    data ...`` then never imports it. ``defer(builder)`` queues ``builder(parser)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[Any] = []

    def defer(self, builder: Any) -> None:
        self._deferred.append(builder)

    def build(self) -> DeferredParser:
        """Run the queued builders (once); returns the parser."""
        while self._deferred:
            self._deferred.pop(0)(self)
        return self

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        self.build()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.build()
        return super().format_help()

    def format_usage(self) -> str:
        self.build()
        return super().format_usage()
