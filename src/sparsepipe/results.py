"""Typed step results and the ``result.json`` convention.

    python -c "from sparsepipe.results import read_result; print(read_result('runs/demo/train'))"

Every step writes ``<out>/result.json``: the step name, the variant it belongs to, the paths
of everything it produced (relative to the out dir, so the folder can be moved or uploaded),
its metrics (names shared with MLflow, KFP and the report) and its config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from sparsepipe.errors import SparsepipeError, StorageError

RESULT_FILE = "result.json"


def current_umask() -> int:
    """This process's umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile`` (0600/0700) the mode a plain ``open``/``mkdir`` gives.

    Steps write through temporary names and rename; without this their outputs would be readable by
    their owner only, unlike everything else the user's umask allows others to read.
    """
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A killed process leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Text flavour of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, write: "Callable[[str], None]") -> Path:
    """Call ``write(temporary_path)`` in ``path``'s folder, then rename the result onto ``path``.

    For writers that want a file name rather than bytes (``torch.save``, ``onnx.save``...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def begin_step(out: str | os.PathLike) -> Path:
    """Create a step's out folder and remove any previous ``result.json`` (its commit marker).

    A step writes ``result.json`` last, so a folder without one never holds a result that a
    later step would trust. Steps that check their arguments first call :func:`check_out` at the
    start and :func:`claim_out` (this) only right before their first write.
    """
    return claim_out(check_out(out))


def check_out(out: str | os.PathLike) -> Path:
    """The resolved out folder, refused if it is an existing file; nothing is created or removed."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise StorageError(f"--out {out} is an existing file, not a folder; give a folder path (it is created).")
    return out


def claim_out(out: str | os.PathLike) -> Path:
    """Create ``out`` and remove its previous ``result.json``: the step is about to overwrite files.

    Called after every argument check, so a re-run refused for bad input leaves a good folder as it was.
    """
    out = check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / RESULT_FILE).unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"Cannot write to --out {out}: {exc.strerror or exc}. Choose a writable folder.") from None
    return out


def inherited_variant(model: str | os.PathLike, explicit: str = "") -> str:
    """``explicit`` if set, else the variant of the step whose out folder ``model`` is (or "")."""
    if explicit:
        return explicit
    if Path(model).is_dir() and (Path(model) / RESULT_FILE).is_file():
        return read_result(model).variant
    return ""


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a file to ``dst`` via a temporary name in the destination folder and a rename."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        publish_mode(tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


@dataclasses.dataclass
class StepResult:
    """What a step produced: ``files`` maps a role (``onnx``, ``weights``...) to a path.

    Paths inside ``out_dir`` are stored relative to it; :meth:`path` resolves them again.
    """

    step: str
    out_dir: str
    variant: str = ""
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def path(self, role: str) -> Path:
        """Absolute path of the file produced under ``role`` (raises if the step made none)."""
        if role not in self.files:
            raise SparsepipeError(
                f"The {self.step} result in {self.out_dir} has no '{role}' file "
                f"(it has: {', '.join(sorted(self.files)) or 'none'}). Point the next step at "
                f"the output of the step that produces a '{role}'."
            )
        p = Path(self.files[role])
        return p if p.is_absolute() else Path(self.out_dir) / p

    def to_dict(self) -> dict[str, Any]:
        data = _jsonable(self)
        out = Path(self.out_dir).resolve()
        rel = {}
        for role, value in self.files.items():
            p = Path(value)
            try:
                rel[role] = str(p.resolve().relative_to(out)) if p.is_absolute() else str(p)
            except ValueError:
                rel[role] = str(p)
        data["files"] = rel
        return data

    def write(self) -> Path:
        """Write ``<out_dir>/result.json`` atomically and return its path."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        return atomic_write_text(Path(self.out_dir) / RESULT_FILE, text)


def produced_file(location: str | os.PathLike, roles: tuple[str, ...]) -> Path | None:
    """The first of ``roles`` produced by the step whose out folder is ``location`` (else None).

    Lets a step say which file of an earlier step it wants, e.g. ``("int8_onnx", "onnx")``
    for a benchmark of a quantize folder that also holds ``weights`` and ``fp32_onnx``.
    """
    if not Path(location).is_dir() or not (Path(location) / RESULT_FILE).is_file():
        return None
    result = read_result(location)
    for role in roles:
        if role in result.files:
            return result.path(role)
    return None


def _check_result_document(data: Any, path: Path) -> None:
    """Refuse JSON that is not a step result: not an object, or a metric that is not a number."""
    if not isinstance(data, dict) or not isinstance(data.get("step"), str):
        raise SparsepipeError(
            f"{path} is not a sparsepipe result: a result.json is a JSON object with a 'step' name, metrics and "
            f"files. Pass the --out folder of a sparsepipe step."
        )
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise SparsepipeError(f"{path}: 'metrics' must be an object of name -> number; re-run the step that wrote it.")
    for name, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):  # None: not measured
            raise SparsepipeError(
                f"{path}: metric '{name}' is {json.dumps(value)[:60]}, not a number. Fix or remove it, or re-run "
                f"the step that wrote it."
            )


def read_result(location: str | os.PathLike) -> StepResult:
    """Read a step's ``result.json`` from its out dir (or the file itself)."""
    path = Path(location)
    if path.is_dir():
        path = path / RESULT_FILE
    if not path.is_file():
        raise SparsepipeError(
            f"No step result at {path}: expected the --out folder of an earlier sparsepipe step "
            f"(it holds {RESULT_FILE}). Run that step first or fix the path."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError (a PNG) are ValueErrors
        raise SparsepipeError(
            f"{path} is not a sparsepipe result: it cannot be read as JSON ({type(exc).__name__}: "
            f"{str(exc)[:120]}). Pass the --out folder of a step, or its result.json; re-run the step if that is it."
        ) from None
    _check_result_document(data, path)
    fields = {f.name for f in dataclasses.fields(StepResult)}
    data = {k: v for k, v in data.items() if k in fields}
    data["out_dir"] = str(path.parent)
    return StepResult(**data)
