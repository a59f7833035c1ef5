"""Reuse a finished step when its inputs have not changed: content-keyed step folders.

    .venv/bin/python benchmarks/sparsify_bench.py --out runs/bench-sparsify   # its steps go through here

Long benchmark runs (a converged baseline, one fine-tuned checkpoint per recipe) must survive a
stopped session: run again, and every step whose folder holds a finished ``result.json`` *made
from the same inputs* is reused. "Same inputs" is a content key: a SHA-256 over a canonical JSON
of everything that decides the output (model config, dataset definition, training settings, the
recipe file's text, the starting checkpoint's bytes, sparsepipe's version). Change any of them
and the old folder is moved aside (``<name>.stale-<time>``, never deleted) and the step re-runs.
A folder without ``result.json`` is an interrupted run; it is made again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from sparsepipe import __version__
from sparsepipe.errors import SparsepipeError
from sparsepipe.results import RESULT_FILE, StepResult, atomic_write_text, read_result

KEY_FILE = "content_key.json"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_digest(folder: str | Path) -> str:
    """SHA-256 over every file of a dataset folder (relative name + bytes; result.json and caches
    left out): a step trained on it is reused only while the images and labels are the same."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in (RESULT_FILE, KEY_FILE) or rel.endswith(".cache") or rel.startswith("."):
            continue
        digest.update(rel.encode() + b"\0" + file_digest(path).encode() + b"\n")
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return {"file_sha256": file_digest(value)} if value.is_file() else str(value)
    return value


def content_key(**parts: Any) -> dict[str, Any]:
    """``{"key": sha256, "parts": canonical parts}``; a ``Path`` to a file counts by its bytes."""
    canonical = _canonical({**parts, "sparsepipe": __version__})
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return {"key": hashlib.sha256(text.encode()).hexdigest(), "parts": canonical}


def recorded_key(folder: Path) -> str | None:
    """The content key a finished folder was made with (None: unfinished or unkeyed)."""
    path = Path(folder) / KEY_FILE
    if not (Path(folder) / RESULT_FILE).is_file() or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None


def cached_step(folder: str | Path, key: dict[str, Any], make: Callable[[], StepResult],
                log: Callable[[str], None] = print, seed: str | Path | None = None) -> StepResult:  # fmt: skip
    """``make()``'s result, or the folder's finished result when it was made from the same ``key``.

    ``seed``: a finished step folder kept elsewhere (e.g. a checkpoint committed with the
    benchmarks, so that a new machine need not train it again); copied in when ``folder`` holds
    no finished result and the seed was made from the same key.
    """
    folder = Path(folder)
    if seed is not None and recorded_key(folder) is None and recorded_key(Path(seed)) == key["key"]:
        log(f"{folder.name}: copied from {seed} (finished elsewhere from the same inputs)")
        if folder.exists():
            folder.rename(folder.with_name(f"{folder.name}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}"))
        shutil.copytree(seed, folder.with_name(folder.name + ".seeding"))
        folder.with_name(folder.name + ".seeding").rename(folder)
    found = recorded_key(folder)
    if found == key["key"]:
        log(f"reuse {folder.name}: finished, same inputs (key {key['key'][:12]})")
        return read_result(folder)
    if folder.exists() and ((folder / RESULT_FILE).is_file() or found is not None):
        stale = folder.with_name(f"{folder.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        log(f"{folder.name}: made from other inputs (key {str(found)[:12]} != {key['key'][:12]}); moved to {stale.name}")
        folder.rename(stale)
    result = make()
    atomic_write_text(folder / KEY_FILE, json.dumps(key, indent=2, sort_keys=True) + "\n")
    return result


def adopt(folder: str | Path, key: dict[str, Any]) -> None:
    """Record ``key`` for a finished folder made outside :func:`cached_step` (same inputs, checked by the caller)."""
    folder = Path(folder)
    if not (folder / RESULT_FILE).is_file():
        raise SparsepipeError(f"{folder} has no {RESULT_FILE}: only a finished step can be adopted.")
    atomic_write_text(folder / KEY_FILE, json.dumps(key, indent=2, sort_keys=True) + "\n")
