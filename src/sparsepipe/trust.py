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

import contextlib
import contextvars
import importlib
import logging
import os
import pickletools
import zipfile
from collections.abc import Iterator
from pathlib import Path

from sparsepipe.errors import ModelError

log = logging.getLogger(__name__)

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
_NO_STACK_OPS = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"})
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


def pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` a pickle would import, in order, WITHOUT unpickling it.

    A ``STACK_GLOBAL`` whose two operands are not string constants pushed right before it (or
    fetched from the memo, where such a constant was stored) is reported as ``UNRESOLVED``.
    Raises ``ValueError`` for bytes that are not a well-formed pickle.
    """
    found: list[str] = []
    memo: dict[int, object] = {}
    recent: list[object] = []  # values pushed by the ops since the last stack-consuming op
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.append(f"{module}.{attr}")
            recent = [None]
        elif name == "STACK_GLOBAL":
            if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                found.append(f"{recent[-2]}.{recent[-1]}")
            else:
                found.append(UNRESOLVED)
            recent = [None]
        elif name in _STRING_OPS:
            value = arg.decode("latin-1") if isinstance(arg, bytes) else arg
            recent.append(value)
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in _PUT_OPS:
            memo[int(arg)] = recent[-1] if recent else None
        elif name in _GET_OPS:
            recent.append(memo.get(int(arg)))
        elif name in _NO_STACK_OPS:
            pass
        else:
            recent = [None]  # anything else may reshuffle the stack: forget what we knew
    return found


def checkpoint_globals(path: str | os.PathLike[str]) -> list[str]:
    """The globals of every pickle inside a zip-format torch checkpoint (sorted, unique)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise UntrustedCheckpointError(
            f"Checkpoint {path} is not a zip-format torch file (torch >= 1.6 writes zip), so sparsepipe "
            f"cannot check what it would run when loaded. Re-save it with a current torch, or pass "
            f"--trust-checkpoint (env {TRUST_ENV}=1) if you trust its origin."
        )
    names: set[str] = set()
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [i for i in zf.infolist() if i.filename.endswith(".pkl")]
            if not pickles:
                raise UntrustedCheckpointError(
                    f"Checkpoint {path} holds no data.pkl: it is not a torch checkpoint. Point --model at a "
                    f".pt written by torch.save (e.g. a train step's model.pt)."
                )
            for info in pickles:
                names.update(pickle_globals(zf.read(info)))
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise UntrustedCheckpointError(
            f"Checkpoint {path} is damaged ({type(exc).__name__}: {exc}); re-run the step that wrote it."
        ) from None
    return sorted(names)


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
    import torch

    value = getattr(torch, attr, None)
    return isinstance(value, (torch.dtype, torch.layout, torch.memory_format, torch.qscheme))


def _is_module_class(module: str, attr: str) -> bool:
    """Whether ``module.attr`` is a torch.nn.Module subclass (importing only allowlisted packages)."""
    import torch

    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except Exception:  # noqa: BLE001 - an unimportable module is simply not allowed
        return False
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def disallowed_globals(names: list[str]) -> list[str]:
    """The names from :func:`checkpoint_globals` that the allowlist refuses."""
    return [n for n in names if n == UNRESOLVED or not _allowed(n)]


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
    bad = disallowed_globals(checkpoint_globals(path))
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise UntrustedCheckpointError(
            f"Refusing to load checkpoint {origin or path}: its pickle references {shown}, outside "
            f"sparsepipe's allowlist of model classes and tensor helpers. Loading it would run that code. "
            f"If you know and trust this file, pass --trust-checkpoint (env {TRUST_ENV}=1); otherwise "
            f"obtain the checkpoint from its author again."
        )
