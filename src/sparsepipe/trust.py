"""Checkpoint trust policy: scan a ``.pt`` pickle for what it would import, before torch loads it.

    python -c "from sparsepipe.trust import checkpoint_globals; print(checkpoint_globals('runs/train/model.pt'))"

A ``.pt`` checkpoint is a zip holding a pickle (``<archive>/data.pkl``); unpickling it calls any
importable function the pickle names, so loading a stranger's checkpoint runs their code.
sparsepipe's policy (see SECURITY.md):

1. Every ``.pt`` that sparsepipe is asked to load is scanned WITHOUT unpickling: the pickle opcodes
   are read with :mod:`pickletools` and every global it references (``GLOBAL``/``INST``/
   ``STACK_GLOBAL``) must be on the allowlist below: ``torch.nn``/``torch.ao``/``ultralytics.nn``/
   ``sparsepipe``/``torch_pruning`` classes that are ``torch.nn.Module`` subclasses, torch's tensor
   and storage rebuild helpers, dtypes, a few containers (``collections.OrderedDict``, ``set``...),
   numpy arrays, paths and dates. ``os.system``, ``builtins.eval``, ``subprocess``, ``posix``,
   ``getattr`` and everything else are refused. A global that cannot be resolved statically is
   refused too. Non-zip (pre torch 1.6) checkpoints cannot be scanned and are refused.
2. A ``.pt`` fetched from S3 or the MLflow registry must also match the SHA-256 that sparsepipe
   recorded when it wrote it (the object's ``sha256`` metadata / ``_SUCCESS`` manifest, or the
   model version's ``sparsepipe.sha256.<file>`` tag); a remote file without one is refused.
3. ``--trust-checkpoint`` (CLI) or ``SPARSEPIPE_TRUST_CHECKPOINT=1`` (components, Python) skips
   both checks for files the user vouches for; torch then unpickles with ``weights_only=False``
   as ultralytics does, which runs whatever the pickle says.

Local checkpoints written by sparsepipe (train, sparsify, QAT) pass the scan without any flag.
"""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import functools
import importlib
import logging
import os
import pickletools
import secrets
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from sparsepipe.errors import ModelError

log = logging.getLogger(__name__)

FORCE_WEIGHTS_ONLY_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # torch's switch: weights_only=True for every load
TRUST_ENV = "SPARSEPIPE_TRUST_CHECKPOINT"  # "1"/"true"/"yes": skip the scan and checksum policy
PICKLE_SUFFIXES = (".pt", ".pth")  # files torch unpickles; .onnx/.yaml are not pickles

#: Plain builtins a checkpoint may construct (no getattr/eval/exec/open/__import__/type).
SAFE_BUILTINS = frozenset(
    "set frozenset dict list tuple slice complex float int bool bytes bytearray str object range".split()
)
#: Exact ``module.name`` globals allowed besides the rules of :func:`_allowed`.
SAFE_GLOBALS = frozenset({
    "collections.OrderedDict", "collections.defaultdict", "collections.Counter", "collections.deque",
    "copyreg._reconstructor", "_codecs.encode",
    "torch.Size", "torch.device", "torch.Tensor",
    "torch._tensor._rebuild_from_type_v2",
    "numpy.dtype", "numpy.ndarray",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "ultralytics.utils.IterableSimpleNamespace", "types.SimpleNamespace", "argparse.Namespace",
    "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
    "datetime.datetime", "datetime.date", "datetime.timedelta", "datetime.timezone",
})
#: Packages whose ``torch.nn.Module`` subclasses (and ``torch.nn.Parameter``) may be rebuilt.
MODULE_PACKAGES = ("torch.nn", "torch.ao", "ultralytics.nn", "sparsepipe", "torch_pruning")
#: Module classes in those packages whose constructor loads other files (a second, unscanned
#: checkpoint or TorchScript) or downloads: refused even though they are nn.Modules.
DENIED_MODULES = ("ultralytics.nn.autobackend", "ultralytics.nn.text_model")

_TRUST: contextvars.ContextVar[bool] = contextvars.ContextVar("sparsepipe_trust_checkpoint", default=False)
_STRING_OPS = frozenset({
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING",
})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
UNRESOLVED = "<unresolved STACK_GLOBAL>"


class UntrustedCheckpointError(ModelError):
    """A checkpoint failed the trust policy (names the file, the reason and the opt-in)."""


def trust_requested() -> bool:
    """Whether the caller vouched for its checkpoints (``checkpoint_trust`` or ``$SPARSEPIPE_TRUST_CHECKPOINT``)."""
    if _TRUST.get():
        return True
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def checkpoint_trust(enabled: bool = True) -> Iterator[None]:
    """Within the block, checkpoints load without scan or checksum policy when ``enabled``."""
    token = _TRUST.set(bool(enabled) or _TRUST.get())
    try:
        yield
    finally:
        _TRUST.reset(token)


# ------------------------------------------------------------------------------- pickle scan


class _Global(str):
    """A ``module.name`` pushed by GLOBAL/STACK_GLOBAL while simulating the pickle stack."""


def pickle_scan(data: bytes) -> tuple[list[str], list[str]]:
    """``(globals, calls)`` of a pickle, WITHOUT unpickling it.

    ``globals``: every ``module.name`` the pickle would import, in order. ``calls``: the globals it
    would CALL with arguments taken from the file (``REDUCE``, ``INST``, ``OBJ``), as opposed to
    instances it creates with ``cls.__new__`` and fills with ``BUILD`` (``NEWOBJ``), which runs no
    constructor. The stack is simulated symbolically from :mod:`pickletools`' opcode table; an
    operand that is not a string constant (pushed or fetched from the memo) gives ``UNRESOLVED``.
    Raises ``ValueError`` for bytes that are not a well-formed pickle.
    """
    found: list[str] = []
    calls: list[str] = []
    stack: list[object] = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name == "MARK":
            marks.append(len(stack))
            continue
        if name in ("MEMOIZE", *_PUT_OPS):  # store the top of the stack, change nothing
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1] if stack else None
            continue
        if name == "DUP":
            stack.append(stack[-1] if stack else None)
            continue
        before = op.stack_before
        if pickletools.markobject in before:
            below = before.index(pickletools.markobject)
            top = marks.pop() if marks else 0
            operands = stack[max(top - below, 0):]
            del stack[max(top - below, 0):]
        else:
            operands = stack[len(stack) - len(before):] if before else []
            del stack[len(stack) - len(before):]
            operands = [None] * (len(before) - len(operands)) + operands
        pushed: object = None
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            pushed = _Global(f"{module}.{attr}")
            found.append(pushed)
            if name == "INST":
                calls.append(pushed)
                pushed = None
        elif name == "STACK_GLOBAL":
            mod, attr = operands[-2], operands[-1]
            ok = isinstance(mod, str) and isinstance(attr, str) and not isinstance(mod, _Global)
            pushed = _Global(f"{mod}.{attr}") if ok else _Global(UNRESOLVED)
            found.append(pushed)
        elif name == "REDUCE":
            calls.append(operands[0] if isinstance(operands[0], _Global) else UNRESOLVED)
        elif name == "OBJ":
            target = operands[below] if len(operands) > below else None
            calls.append(target if isinstance(target, _Global) else UNRESOLVED)
        elif name in _STRING_OPS:
            pushed = arg.decode("latin-1") if isinstance(arg, bytes) else arg
        elif name in _GET_OPS:
            pushed = memo.get(int(arg))
        if op.stack_after:
            stack.extend([pushed] + [None] * (len(op.stack_after) - 1))
    return [str(n) for n in found], [str(c) for c in calls]


def pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` a pickle would import, in order (see :func:`pickle_scan`)."""
    return pickle_scan(data)[0]


def checkpoint_globals(path: str | os.PathLike[str]) -> list[str]:
    """The globals of every pickle inside a zip-format torch checkpoint (sorted, unique)."""
    return checkpoint_scan(path)[0]


def _starts_like_a_zip(path: Path) -> bool:
    """True when the file begins with a zip member header (torch >= 1.6 checkpoints do)."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def checkpoint_scan(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """``(globals, calls)`` of every pickle inside a zip-format torch checkpoint (sorted, unique)."""
    path = Path(path)
    if not zipfile.is_zipfile(path) and _starts_like_a_zip(path):
        raise UntrustedCheckpointError(
            f"Checkpoint {path} is truncated: it starts like a torch checkpoint but its end is missing (the write "
            f"that made it was cut, e.g. by a full disk or a kill). Free space and re-run the step that wrote it."
        )
    if not zipfile.is_zipfile(path):
        raise UntrustedCheckpointError(
            f"Checkpoint {path} is not a zip-format torch file (torch >= 1.6 writes zip), so sparsepipe "
            f"cannot check what it would run when loaded. Re-save it with a current torch, or pass "
            f"--trust-checkpoint (env {TRUST_ENV}=1) if you trust its origin."
        )
    names: set[str] = set()
    calls: set[str] = set()
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [i for i in zf.infolist() if i.filename.endswith(".pkl")]
            if not pickles:
                raise UntrustedCheckpointError(
                    f"Checkpoint {path} holds no data.pkl: it is not a torch checkpoint. Point --model at a "
                    f".pt written by torch.save (e.g. a train step's model.pt)."
                )
            for info in pickles:
                found, called = pickle_scan(zf.read(info))
                names.update(found)
                calls.update(called)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise UntrustedCheckpointError(
            f"Checkpoint {path} is damaged ({type(exc).__name__}: {exc}); re-run the step that wrote it."
        ) from None
    return sorted(names), sorted(calls)


def _allowed(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    if not module or not attr:
        return False
    if name in SAFE_GLOBALS:
        return True
    if module in ("builtins", "__builtin__"):
        return attr in SAFE_BUILTINS
    if module == "torch._utils":
        return attr.startswith("_rebuild_")
    if module == "torch":
        return attr.endswith("Storage") or _is_torch_constant(attr)
    if module == "torch.nn.parameter":
        return attr in ("Parameter", "Buffer")
    if any(module == d or module.startswith(d + ".") for d in DENIED_MODULES):
        return False
    if any(module == p or module.startswith(p + ".") for p in MODULE_PACKAGES):
        return _is_module_class(module, attr)
    return False


def _is_torch_constant(attr: str) -> bool:
    import torch  # heavy: torch

    value = getattr(torch, attr, None)
    return isinstance(value, (torch.dtype, torch.layout, torch.memory_format, torch.qscheme))


def _is_module_class(module: str, attr: str) -> bool:
    """Whether ``module.attr`` is a torch.nn.Module subclass of an already imported model module.

    Nothing named by the file is imported: :data:`MODEL_MODULES` are imported once (ours or our
    dependencies'), and only modules then present in ``sys.modules`` are looked at, so a pickle
    naming ``sparsepipe.__main__.X`` is refused instead of re-running the CLI during the scan.
    """
    import torch  # heavy: torch

    _import_model_modules()
    obj = getattr(sys.modules[module], attr, None) if module in sys.modules else None
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


#: Modules defining the layers sparsepipe's checkpoints hold; imported (by us) before a scan.
#: QAT checkpoints name ``sparsepipe.qat_modules.QATConv``...; those written before the QAT split
#: name ``sparsepipe.qat.QATConv``, which the QAT step module still re-exports (so it is listed too).
MODEL_MODULES = ("torch.nn", "torch.ao.nn.quantized", "torch.ao.nn.qat", "torch.ao.nn.intrinsic",
                 "torch.ao.quantization", "ultralytics.nn.tasks", "sparsepipe.qat_modules", "sparsepipe.qat",
                 "sparsepipe.splitfree")


@functools.cache
def _import_model_modules() -> None:
    for name in MODEL_MODULES:
        importlib.import_module(name)


def disallowed_globals(names: list[str]) -> list[str]:
    """The names from :func:`checkpoint_globals` that the allowlist refuses."""
    return [n for n in names if n == UNRESOLVED or not _allowed(n)]


def disallowed_calls(calls: list[str]) -> list[str]:
    """Call targets from :func:`pickle_scan` that would run a constructor or function on file data.

    Only tensor/storage rebuild helpers, containers, dtypes, paths and dates may be called. Model
    classes (``DetectionModel`` evaluates its config's ``activation``) may only be created with
    ``__new__`` and filled by ``BUILD``; ``copyreg._reconstructor`` would call ``base.__init__``.
    """
    bad = set()
    for name in calls:
        module = name.rpartition(".")[0]
        in_models = module != "torch.nn.parameter" and any(
            module == p or module.startswith(p + ".") for p in MODULE_PACKAGES)
        if name in (UNRESOLVED, "copyreg._reconstructor") or in_models or not _allowed(name):
            bad.add(name)
    return sorted(bad)


# ------------------------------------------------------------------------------------ policy


def check_checkpoint(path: str | os.PathLike[str], *, origin: str = "", verified: bool = True) -> None:
    """Refuse to let torch load ``path`` unless it passes the policy (module docstring).

    ``origin`` is the URI a remote file came from ("" for a local file); ``verified`` says whether
    its bytes matched a SHA-256 recorded by sparsepipe. Files that are not pickles pass.
    """
    path = Path(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return
    if trust_requested():
        log.warning("loading %s without checks: the checkpoint was trusted explicitly", origin or path)
        return
    if origin and not verified:
        raise UntrustedCheckpointError(
            f"Refusing to load checkpoint {origin}: it was fetched without a SHA-256 recorded by sparsepipe "
            f"when it was written (S3 object metadata or _SUCCESS manifest, or the registry version's "
            f"sparsepipe.sha256.* tag), so sparsepipe cannot tell that it is the file it wrote, and loading "
            f"a .pt runs code. Publish it with sparsepipe (upload/register), or pass --trust-checkpoint "
            f"(env {TRUST_ENV}=1) if you trust where it came from."
        )
    names, calls = checkpoint_scan(path)
    bad = disallowed_globals(names)
    called = disallowed_calls(calls)
    if called and not bad:
        raise UntrustedCheckpointError(
            f"Refusing to load checkpoint {origin or path}: its pickle calls {', '.join(called[:6])} with "
            f"arguments stored in the file. A checkpoint written by torch.save only recreates model classes "
            f"without calling them (a model's constructor can evaluate strings from its config, so this "
            f"would run code). If you know and trust this file, pass --trust-checkpoint (env "
            f"{TRUST_ENV}=1); otherwise obtain the checkpoint from its author again."
        )
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise UntrustedCheckpointError(
            f"Refusing to load checkpoint {origin or path}: its pickle references {shown}, outside "
            f"sparsepipe's allowlist of model classes and tensor helpers. Loading it would run that code. "
            f"If you know and trust this file, pass --trust-checkpoint (env {TRUST_ENV}=1); otherwise "
            f"obtain the checkpoint from its author again."
        )


# ------------------------------------------------------------------------------------ loading


_BUILD_NAME = f"sparsepipe-build-{secrets.token_hex(16)}"  # unguessable: a file cannot name it


@functools.cache
def _new_only(cls: type) -> type:
    """A stand-in registered under ``cls``'s name: creating it, even called with arguments from the
    file (``REDUCE``), gives ``cls.__new__(cls)`` and never runs ``cls.__init__``."""

    class NewOnly:
        def __new__(_proxy, *_args, **_kwargs):  # noqa: N804 - a stand-in, not a real class
            return cls.__new__(cls)

    return NewOnly


def _safe_objects(names: list[str]) -> list[tuple[object, str]]:
    """``(object, "module.name")`` for torch's allowlist, resolved without importing anything new.

    Model classes are registered as :func:`_new_only` stand-ins under their own name (and the real
    class under an unguessable name, which ``BUILD`` needs), so torch's unpickler can create them
    but never call their constructor with data from the file.
    """
    import torch  # heavy: torch

    _import_model_modules()
    out: list[tuple[object, str]] = []
    for name in names:
        if name == UNRESOLVED or not _allowed(name):
            continue
        module, _, attr = name.rpartition(".")
        holder = builtins if module in ("builtins", "__builtin__") else sys.modules.get(module)
        obj = getattr(holder, attr, None) if holder is not None else None
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj is not torch.nn.Parameter:
            out += [(_new_only(obj), name), (obj, f"{_BUILD_NAME}.{name}")]
        elif obj is not None:
            out.append((obj, name))
    return out


@contextlib.contextmanager
def enforcing_loads(path: str | os.PathLike[str]) -> Iterator[None]:
    """Within the block, every ``torch.load`` (ultralytics' too) uses torch's enforcing unpickler.

    The globals ``path`` needs (already checked by :func:`check_checkpoint`) are registered with
    ``torch.serialization.add_safe_globals`` (process-wide, as torch's context manager is not
    thread-safe) and ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` overrides the ``weights_only=False`` that
    ultralytics passes. With trust requested nothing changes.
    """
    if trust_requested() or Path(path).suffix.lower() not in PICKLE_SUFFIXES:
        yield
        return
    import torch  # heavy: torch

    torch.serialization.add_safe_globals(_safe_objects(checkpoint_scan(path)[0]))
    previous = os.environ.get(FORCE_WEIGHTS_ONLY_ENV)
    os.environ[FORCE_WEIGHTS_ONLY_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY_ENV, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY_ENV] = previous


def load_checkpoint(path: str | os.PathLike[str]) -> object:
    """``torch.load`` a checkpoint after :func:`check_checkpoint`, with the enforcing unpickler."""
    import torch  # heavy: torch

    check_checkpoint(path)
    with enforcing_loads(path):
        return torch.load(str(path), map_location="cpu", weights_only=not trust_requested())
