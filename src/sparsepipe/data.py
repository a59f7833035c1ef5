"""The data step: turn one SOURCE string into a validated, self-contained ultralytics dataset.

    sparsepipe data --source synthetic:train=64,val=16,size=160 --out runs/data

SOURCE (accepted by every step that takes data) is one of

* ``synthetic`` or ``synthetic:train=64,val=16,seed=0,size=160,classes=6,task=detect,objects=8``
  (the built-in generator, :mod:`sparsepipe.synthetic`), or a named preset with overrides:
  ``synthetic:preset=demo`` / ``synthetic:preset=bench,val=1024`` (also ``min_radius``,
  ``max_radius``, ``clutter``, ``camouflage``);
* a local folder holding a data YAML, the ``--out`` folder of an earlier ``sparsepipe data``
  step, a local data YAML file, or a local ``.zip``/``.tar.gz``/``.tgz`` archive;
* an ``http(s)://`` URL of a ``.zip``/``.tar.gz``/``.tgz`` archive holding a data YAML;
* an ``s3://bucket/prefix`` holding a dataset (or ``s3://bucket/key.zip``).

:func:`resolve_data` turns a SOURCE into a local data YAML that ``ultralytics`` accepts
(downloads and generated data are cached under ``$SPARSEPIPE_CACHE/data``, default
``~/.cache/sparsepipe/data``); :func:`prepare_data` (the step) copies it into ``--out`` as a
relocatable dataset, validates it and writes ``result.json``; :func:`validate_dataset` checks
images and label rows and raises one :class:`~sparsepipe.errors.DataError` listing the problems.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from sparsepipe import storage
from sparsepipe.core import cache as core_cache
from sparsepipe.core.files import replace_dir
from sparsepipe.core.redaction import redact_url
from sparsepipe.errors import ConfigError, DataError, SparsepipeError
from sparsepipe.results import RESULT_FILE, StepResult, atomic_write_text, publish_mode, read_result
from sparsepipe.synthetic import GENERATOR_VERSION, PRESETS, SyntheticConfig, generate_dataset, progress_bar

DATA_YAML = "data.yaml"
#: Image suffixes ultralytics loads (lower case, without the dot).
IMAGE_SUFFIXES = frozenset(
    "avif bmp dng heic heif jp2 jpeg jpg mpo png tif tiff webp pfm".split()
)
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "val", "test")
#: Coordinate tolerance, the same as ultralytics' label check (it accepts -0.01..1.01).
COORD_EPS = 0.01
#: ``synthetic:key=value`` keys and the SyntheticConfig field each one sets.
SYNTHETIC_KEYS = {
    "train": "train_images",
    "val": "val_images",
    "seed": "seed",
    "size": "image_size",
    "classes": "num_classes",
    "task": "task",
    "objects": "max_objects",
    "min_radius": "min_radius",
    "max_radius": "max_radius",
    "clutter": "clutter",
    "camouflage": "camouflage",
}
#: Keys of ``synthetic:`` whose values are fractions, not integers.
SYNTHETIC_FLOAT_KEYS = frozenset({"min_radius", "max_radius", "camouflage"})
SOURCE_FORMS = (
    "SOURCE must be one of: 'synthetic' or 'synthetic:preset=demo|bench,train=N,val=N,seed=N,"
    "size=PX,classes=N,task=detect|segment,objects=N,min_radius=F,max_radius=F,clutter=N,"
    "camouflage=F' (generated); a local folder holding a data YAML or the --out "
    "folder of an earlier 'sparsepipe data' step; a local data YAML file; a local or http(s):// "
    ".zip/.tar.gz/.tgz archive holding a data YAML; or an s3://bucket/prefix holding one."
)
_SOURCE_MARKER = ".sparsepipe-source.json"
#: Default limits of an archive SOURCE (untrusted input): total uncompressed bytes (also the most
#: bytes one http(s) download may bring) and number of members. COCO 2017 (~20 GB, ~250k files)
#: fits; a decompression bomb does not. Raise them in DataConfig for bigger datasets.
MAX_ARCHIVE_BYTES = 50 * 2**30
MAX_ARCHIVE_FILES = 1_000_000


def default_cache_dir() -> Path:
    """``$SPARSEPIPE_CACHE/data`` when the variable is set, else ``~/.cache/sparsepipe/data``."""
    return core_cache.cache_dir("data")


@dataclasses.dataclass
class DataConfig:
    """How the data step fetches and checks a dataset."""

    validate: bool = True  # decode every image and check every label row; False: structure only
    cache_dir: Path | str | None = None  # downloads + generated data; None -> default_cache_dir()
    max_listed_errors: int = 10  # problems listed in one DataError (the rest are only counted)
    download_timeout_s: float = 60.0  # socket timeout of each http(s) read, in seconds
    refresh: bool = False  # re-download / re-generate even when the cache already holds it
    progress: bool = True  # tqdm progress bars on stderr
    sha256: str | None = None  # expected hex SHA-256 of an archive SOURCE (http/s3/local .zip/.tar.gz); None: unchecked
    max_archive_bytes: int = MAX_ARCHIVE_BYTES  # refuse archives that download or unpack to more bytes than this
    max_archive_files: int = MAX_ARCHIVE_FILES  # refuse archives with more members than this

    def __post_init__(self) -> None:
        if isinstance(self.max_listed_errors, bool) or not isinstance(self.max_listed_errors, int) \
                or self.max_listed_errors < 1:  # fmt: skip
            raise ConfigError(
                f"DataConfig.max_listed_errors={self.max_listed_errors!r}: use an integer >= 1."
            )
        if not isinstance(self.download_timeout_s, (int, float)) or self.download_timeout_s <= 0:
            raise ConfigError(
                f"DataConfig.download_timeout_s={self.download_timeout_s!r}: use a number of "
                f"seconds > 0."
            )
        for name in ("max_archive_bytes", "max_archive_files"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DataConfig.{name}={value!r}: use an integer >= 1.")
        if not self.sha256:
            self.sha256 = None
        else:
            digest = str(self.sha256).strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ConfigError(
                    f"DataConfig.sha256 / --data-sha256 {str(self.sha256)[:80]!r} is not a SHA-256: give the 64 "
                    f"hex digits printed by 'sha256sum ARCHIVE'."
                )
            self.sha256 = digest
        self.cache_dir = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


@dataclasses.dataclass
class DatasetSummary:
    """What :func:`validate_dataset` found."""

    data_yaml: Path
    names: dict[int, str]
    task: str  # "detect", "segment", "pose" or "empty" (no label rows at all)
    images: dict[str, int]  # images per split
    instances: dict[str, int]  # label rows per split
    instances_per_class: dict[int, int]  # over all splits
    background_images: int = 0  # images without a label file or with an empty one

    @property
    def nc(self) -> int:
        return len(self.names)

    @property
    def total_instances(self) -> int:
        return sum(self.instances.values())


# --------------------------------------------------------------------------- SOURCE parsing


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed SOURCE string: ``kind`` is synthetic, local, archive, http or s3."""

    kind: str
    value: str
    synthetic: SyntheticConfig | None = None


def parse_synthetic(spec: str) -> SyntheticConfig:
    """``synthetic`` or ``synthetic:preset=bench,train=64,...`` -> SyntheticConfig.

    ``preset=NAME`` (see :data:`sparsepipe.synthetic.PRESETS`) sets the starting values wherever
    it is written; every other key overrides one field of it.
    """
    _, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    preset: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key == "max_objects":
            key = "objects"
        if key != "preset" and key not in SYNTHETIC_KEYS:
            raise DataError(
                f"Unknown key {key!r} in SOURCE {spec!r}. Known keys: preset, {', '.join(SYNTHETIC_KEYS)} "
                f"(e.g. synthetic:preset=demo or synthetic:train=64,val=16,seed=0,size=160,classes=6)."
            )
        if not eq or not value:
            raise DataError(f"Key {key!r} in SOURCE {spec!r} has no value: write {key}=VALUE.")
        if key == "preset":
            if value not in PRESETS:
                raise DataError(
                    f"preset={value!r} in SOURCE {spec!r} is not a known preset: use one of "
                    f"{', '.join(PRESETS)} (e.g. synthetic:preset=demo)."
                )
            preset = dict(PRESETS[value])
            continue
        field = SYNTHETIC_KEYS[key]
        if field == "task":
            kwargs[field] = value
            continue
        number = float if key in SYNTHETIC_FLOAT_KEYS else int
        try:
            kwargs[field] = number(value)
        except ValueError:
            kind, example = ("a decimal number", "0.1") if number is float else ("an integer", "16")
            raise DataError(f"{key}={value!r} in SOURCE {spec!r} is not {kind}: write e.g. {key}={example}.") from None
    try:
        return SyntheticConfig(**{**preset, **kwargs})
    except ConfigError as exc:
        raise DataError(f"In SOURCE {spec!r}: {exc}") from None


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def parse_source(source: str | os.PathLike) -> Source:
    """Classify a SOURCE string (no I/O beyond checking a local path exists)."""
    text = os.fspath(source).strip()
    if not text:
        raise DataError(f"Empty data SOURCE. {SOURCE_FORMS}")
    if text == "synthetic" or text.startswith("synthetic:"):
        return Source("synthetic", text, parse_synthetic(text))
    lowered = text.lower()
    if lowered.startswith(("http://", "https://")):
        if not _is_archive(urllib.parse.urlparse(text).path):
            raise DataError(
                f"The URL {text} does not name a .zip, .tar.gz or .tgz archive. Point --source at "
                f"an archive that holds a data YAML with its images and labels."
            )
        return Source("http", text)
    if lowered.startswith("s3://"):
        return Source("s3", text)
    if "://" in text:
        raise DataError(f"Unsupported URL scheme in {text!r}. {SOURCE_FORMS}")
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"No data YAML or dataset folder at {path}. {SOURCE_FORMS}")
    if path.is_file() and _is_archive(path.name):
        return Source("archive", str(path.resolve()))
    return Source("local", str(path.resolve()))


# --------------------------------------------------------------------------- YAML helpers


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise DataError(
            f"{where}: not valid YAML ({problem}). Fix the syntax of the data YAML "
            f"(keys train:, val:, names:)."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the data YAML ({exc}).") from None


class NoDataYaml(DataError):
    """A folder holds no data YAML at all (raised by :func:`find_data_yaml`)."""


def _looks_like_data_yaml(path: Path) -> bool:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except Exception:  # noqa: BLE001 - any unreadable YAML is simply not a candidate
        return False
    return isinstance(doc, dict) and "train" in doc and ("names" in doc or "nc" in doc)


def find_data_yaml(folder: Path, max_depth: int = 3) -> Path:
    """The data YAML of a dataset folder (or of a ``sparsepipe data`` out folder)."""
    folder = Path(folder)
    result = folder / RESULT_FILE
    if result.is_file():
        try:
            res = read_result(result)
        except SparsepipeError:
            res = None
        if res is not None and res.step == "data" and "data_yaml" in res.files:
            return res.path("data_yaml").resolve()
    named_data: list[Path] = []  # data.yaml/data.yml files, even unparseable or incomplete ones
    for depth in range(max_depth + 1):
        found = []
        for root, dirs, files in os.walk(folder):
            rel = Path(root).relative_to(folder)
            level = 0 if rel == Path(".") else len(rel.parts)
            dirs[:] = sorted(
                d for d in dirs
                if level < depth and not d.startswith(".") and d not in ("images", "labels")
            )  # fmt: skip
            if level != depth:
                continue
            named_data += [Path(root) / n for n in sorted(files) if n.lower() in ("data.yaml", "data.yml")]
            for name in sorted(files):
                if name.lower().endswith((".yaml", ".yml")) and _looks_like_data_yaml(
                    Path(root) / name
                ):
                    found.append(Path(root) / name)
        if found:
            preferred = [p for p in found if p.name in ("data.yaml", "data.yml")]
            if len(found) == 1 or len(preferred) == 1:
                return (preferred or found)[0].resolve()
            raise DataError(
                f"{folder} holds several data YAMLs ({', '.join(str(p) for p in found[:5])}): "
                f"pass the one you mean as --source."
            )
    if named_data:  # a data.yaml with a syntax error or a missing key: _load_yaml / _scan say which
        return named_data[0].resolve()
    raise NoDataYaml(
        f"No data YAML (a YAML with train:, val: and names:) in {folder} or its subfolders "
        f"(down to {max_depth} levels). {SOURCE_FORMS}"
    )


def _names(data: dict, yaml_path: Path) -> dict[int, str]:
    names = data.get("names")
    if names is None:
        nc = data.get("nc")
        if isinstance(nc, int) and nc > 0:
            return {i: f"class_{i}" for i in range(nc)}
        raise DataError(
            f"{yaml_path}: no 'names:' key. Add the class names, e.g. names: {{0: person, 1: car}}."
        )
    if isinstance(names, (list, tuple)):
        out = {i: str(n) for i, n in enumerate(names)}
    elif isinstance(names, dict):
        try:
            out = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(
                f"{yaml_path}: 'names:' keys must be class ids 0..N-1, got {list(names)[:5]}."
            ) from None
        if sorted(out) != list(range(len(out))):
            raise DataError(
                f"{yaml_path}: 'names:' ids must be 0..{len(out) - 1} without gaps, got "
                f"{sorted(out)[:10]}."
            )
    else:
        raise DataError(f"{yaml_path}: 'names:' must be a list or a mapping of id -> name.")
    if not out:
        raise DataError(f"{yaml_path}: 'names:' is empty; list at least one class.")
    nc = data.get("nc")
    if nc is not None and nc != len(out):
        raise DataError(
            f"{yaml_path}: nc: {nc} does not match the {len(out)} entries of names:. Remove nc: "
            f"or make it equal."
        )
    return dict(sorted(out.items()))


def _dataset_root(data: dict, yaml_path: Path) -> Path:
    """Folder the split paths are relative to (``path:`` if given, else the YAML's folder)."""
    ydir = yaml_path.parent.resolve()
    value = data.get("path")
    if not value:
        return ydir
    p = Path(str(value)).expanduser()
    if p.is_absolute():
        return p
    for base in (ydir, Path.cwd()):
        if (base / p).exists():
            return (base / p).resolve()
    return ydir


def _split_entries(data: dict, root: Path, split: str) -> list[Path] | None:
    value = data.get(split)
    if not value:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        text = str(item)
        p = Path(text).expanduser()
        if not p.is_absolute():
            p = root / text
            if not p.exists() and text.startswith("../"):  # ultralytics' fallback
                p = root / text[3:]
        out.append(p.resolve())
    return out


def _is_image(path: Path) -> bool:
    return path.suffix[1:].lower() in IMAGE_SUFFIXES


def _entry_images(entry: Path) -> list[tuple[Path, Path]]:
    """(image, name to store it under) for one split entry: a folder, a .txt list or an image."""
    if entry.is_dir():
        return [(p, p.relative_to(entry)) for p in sorted(entry.rglob("*")) if p.is_file() and _is_image(p)]
    if entry.suffix.lower() == ".txt":
        out = []
        for line in entry.read_text(encoding="utf-8-sig").splitlines():
            line = line.strip()
            if not line:
                continue
            p = Path(line[2:]) if line.startswith("./") else Path(line)
            if not p.is_absolute():
                p = entry.parent / p if (entry.parent / p).exists() else Path.cwd() / p
            if _is_image(p):
                out.append((p.resolve(), _name_under_images(p)))
        return out
    if entry.is_file() and _is_image(entry):
        return [(entry, Path(entry.name))]
    return []


def _name_under_images(path: Path) -> Path:
    parts = path.parts
    if "images" in parts:
        idx = len(parts) - 1 - parts[::-1].index("images")
        rest = parts[idx + 1 :]
        if rest:
            return Path(*rest)
    return Path(path.name)


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` becomes ``/labels/``, the suffix ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = sb.join(os.fspath(image).rsplit(sa, 1))
    return Path(text.rsplit(".", 1)[0] + ".txt")


# --------------------------------------------------------------------------- validation


class _Problems:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.listed: list[str] = []
        self.count = 0

    def add(self, where: str, what: str) -> None:
        self.count += 1
        if len(self.listed) < self.limit:
            self.listed.append(f"{where}: {what}")


def _check_image(path: Path) -> str | None:
    from PIL import Image  # heavy: PIL

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() leaves the image unusable: open it again
            im.load()
            if im.size[0] < 2 or im.size[1] < 2:
                return f"image is only {im.size[0]}x{im.size[1]} pixels"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return f"image cannot be decoded ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return None


def _check_labels(path: Path, nc: int, kpt_values: int | None, problems: _Problems,
                  per_class: Counter, quote: bool = True) -> tuple[int, str | None]:  # fmt: skip
    """Check one label file; returns (rows, task of its rows or None when empty).

    ``quote=False`` (a label reached through a link to outside the dataset) keeps its text out of
    the messages: a link to ``/etc/shadow`` must not print its lines.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(str(path), f"label file cannot be read ({exc})")
        return 0, None
    rows = [(i + 1, line.split()) for i, line in enumerate(lines) if line.strip()]
    segment_file = kpt_values is None and any(len(r) > 6 for _, r in rows)
    tasks = set()
    good = 0
    for lineno, parts in rows:
        where = f"{path}:{lineno}"
        try:
            values = [float(v) for v in parts]
        except ValueError:
            shown = repr(" ".join(parts)[:60]) if quote else "(not quoted: the file is a link to outside the dataset)"
            problems.add(where, f"non-numeric value in {shown}")
            continue
        n = len(values)
        if kpt_values is not None:
            if n != 5 + kpt_values:
                problems.add(where, f"{n} values, expected {5 + kpt_values} (class, box, keypoints)")
                continue
            coords, task = values[1:5], "pose"
        elif segment_file:
            if n < 7 or (n - 1) % 2:
                problems.add(
                    where,
                    f"{n} values; in a segmentation label every row is a class id and an even "
                    f"number (>= 6) of polygon coordinates",
                )
                continue
            coords, task = values[1:], "segment"
        else:
            if n != 5:
                problems.add(where, f"{n} values, expected 5 (class x_center y_center width height)")
                continue
            coords, task = values[1:], "detect"
        cls = values[0]
        if not cls.is_integer():
            problems.add(where, f"class id {parts[0]} is not an integer")
            continue
        if not 0 <= cls < nc:
            problems.add(where, f"class id {int(cls)} is out of range [0, {nc - 1}] ({nc} names in the YAML)")
            continue
        bad = [v for v in coords if not -COORD_EPS <= v <= 1 + COORD_EPS]
        if bad:
            problems.add(
                where,
                f"coordinate {bad[0]:g} outside [0, 1] (coordinates are normalized by the image "
                f"size)",
            )
            continue
        if task != "segment" and (coords[2] <= 0 or coords[3] <= 0):
            problems.add(where, f"box width/height must be > 0, got {coords[2]:g} x {coords[3]:g}")
            continue
        tasks.add(task)
        per_class[int(cls)] += 1
        good += 1
    return good, (tasks.pop() if len(tasks) == 1 else ("segment" if tasks else None))


def _scan(data_yaml: Path, check_files: bool, max_listed_errors: int) -> DatasetSummary:
    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise DataError(f"No data YAML at {data_yaml}. {SOURCE_FORMS}")
    data = _load_yaml(data_yaml)
    if not isinstance(data, dict):
        raise DataError(
            f"{data_yaml}: a data YAML must be a mapping with train:, val: and names: keys."
        )
    names = _names(data, data_yaml)
    for key in ("train", "val"):
        if not data.get(key):
            raise DataError(
                f"{data_yaml}: no '{key}:' key. A data YAML needs train: and val: (folders of "
                f"images relative to the YAML, e.g. {key}: images/{key}) and names:."
            )
    kpt = data.get("kpt_shape")
    kpt_values = int(kpt[0]) * int(kpt[1]) if isinstance(kpt, (list, tuple)) and len(kpt) == 2 else None
    root = _dataset_root(data, data_yaml)
    problems = _Problems(max_listed_errors)
    images: dict[str, int] = {}
    instances: dict[str, int] = {}
    per_class: Counter = Counter()
    tasks: set[str] = set()
    background = 0
    for split in SPLITS:
        entries = _split_entries(data, root, split)
        if entries is None:
            continue
        files: list[Path] = []
        for entry in entries:
            if not entry.exists():
                problems.add(str(data_yaml), f"{split}: {entry} does not exist")
                continue
            files.extend(p for p, _ in _entry_images(entry))
        if not files and all(e.exists() for e in entries):
            problems.add(
                str(data_yaml),
                f"{split} split is empty: no images ({', '.join(sorted(IMAGE_SUFFIXES)[:6])}...) "
                f"in {', '.join(str(e) for e in entries)}",
            )
        images[split] = len(files)
        instances[split] = 0
        labelled = 0
        for img in files:
            if check_files:
                msg = _check_image(img)
                if msg:
                    problems.add(str(img), msg)
            lbl = label_path(img)
            if lbl.is_dir():
                problems.add(str(lbl), "is a folder, not a label file (one .txt of rows per image)")
                continue
            if not lbl.is_file():
                background += 1
                continue
            labelled += 1
            if check_files:
                quote = _inside_dataset(lbl, root)
                rows, task = _check_labels(lbl, len(names), kpt_values, problems, per_class, quote)
            else:
                rows, task = _count_labels(lbl, per_class)
            instances[split] += rows
            if task:
                tasks.add(task)
            else:
                background += 1
        _check_split_has_labels(split, files, labelled, data_yaml, problems)
    if problems.count:
        more = problems.count - len(problems.listed)
        listing = "\n  ".join(problems.listed)
        raise DataError(
            f"The dataset {data_yaml} has {problems.count} problem(s):\n  {listing}"
            + (f"\n  ... and {more} more." if more > 0 else "")
            + "\nFix or remove these files (labels are 'class x_center y_center width height' "
            f"with class ids 0..{len(names) - 1} and coordinates normalized to [0, 1]; every split "
            "needs at least one readable image), then run again."
        )
    task = tasks.pop() if len(tasks) == 1 else ("segment" if "segment" in tasks else "empty")
    return DatasetSummary(
        data_yaml=data_yaml.resolve(),
        names=names,
        task=task,
        images=images,
        instances=instances,
        instances_per_class={i: per_class.get(i, 0) for i in names},
        background_images=background,
    )


def _inside_dataset(path: Path, root: Path) -> bool:
    """False when ``path`` is reached through a symbolic link that leads outside the dataset ``root``."""
    real = path.resolve()
    return real == Path(os.path.abspath(path)) or real.is_relative_to(root.resolve())


def _check_split_has_labels(split: str, files: list[Path], labelled: int, data_yaml: Path,
                            problems: _Problems) -> None:  # fmt: skip
    """A train or val split whose images have no label file at all cannot be trained or scored."""
    if split == "test" or not files or labelled:
        return
    problems.add(
        str(data_yaml),
        f"{split} split has no label files: none of its {len(files)} images has one (the first "
        f"would be {label_path(files[0])}); put one .txt per image in a labels/ folder beside "
        f"images/ (ultralytics' layout)",
    )


def _count_labels(path: Path, per_class: Counter) -> tuple[int, str | None]:
    rows = 0
    task = None
    for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            per_class[int(float(parts[0]))] += 1
        except ValueError:
            pass
        rows += 1
        task = "segment" if len(parts) > 6 else "detect"
    return rows, task


def split_images(data_yaml: str | os.PathLike, split: str) -> list[Path]:
    """Every image of ``split`` ("train", "val", "test") of a data YAML, sorted; [] if none.

    Reads the split exactly as the data step and ultralytics do (folders, .txt lists, ``path:``).
    """
    yaml_path = Path(data_yaml)
    spec = _load_yaml(yaml_path)
    if not isinstance(spec, dict):
        return []
    entries = _split_entries(spec, _dataset_root(spec, yaml_path), split) or []
    return sorted({image for entry in entries for image, _ in _entry_images(entry)})


def class_names(data_yaml: str | os.PathLike) -> dict[int, str]:
    """``{class id: name}`` of a data YAML (``names:`` as a list or mapping, or ``nc:``)."""
    yaml_path = Path(data_yaml)
    spec = _load_yaml(yaml_path)
    return _names(spec if isinstance(spec, dict) else {}, yaml_path)


def validate_dataset(data_yaml: Path, max_listed_errors: int = 10) -> DatasetSummary:
    """Check a dataset: YAML, splits, every image decodes, every label row is well formed.

    Raises one :class:`DataError` listing up to ``max_listed_errors`` problems as
    ``file:line: what is wrong`` (plus how many more) and how to fix them.
    """
    return _scan(Path(data_yaml), check_files=True, max_listed_errors=max_listed_errors)


# --------------------------------------------------------------------------- fetching


def _refuse(archive: str, member: str, why: str) -> DataError:
    return DataError(
        f"Refusing to extract {archive}: its member {member!r} {why}. The archive may be "
        f"malicious or broken; rebuild it with paths relative to its top folder."
    )


def _check_member(archive: str, name: str, dest: Path) -> None:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise _refuse(archive, name, "has an absolute path")
    if ".." in PurePosixPath(norm).parts:
        raise _refuse(archive, name, "climbs out of the target folder with '..'")
    if not (dest / norm).resolve().is_relative_to(dest):
        raise _refuse(archive, name, "resolves outside the target folder")


def _check_totals(label: str, count: int, total: int, max_bytes: int, max_files: int) -> None:
    """Refuse decompression bombs before anything is written: member count and declared sizes."""
    if count > max_files:
        raise DataError(
            f"Refusing to extract {label}: it has more than {max_files} members (limit "
            f"DataConfig.max_archive_files), which looks like a decompression bomb. Raise the limit if you "
            f"trust the archive."
        )
    if total > max_bytes:
        raise DataError(
            f"Refusing to extract {label}: it unpacks to more than {max_bytes} bytes ({total} declared; limit "
            f"DataConfig.max_archive_bytes), which looks like a decompression bomb. Raise the limit if you "
            f"trust the archive."
        )


def verify_sha256(path: Path, expected: str | None, label: str) -> None:
    """Raise a DataError when ``path``'s SHA-256 differs from ``expected`` (None: nothing to check)."""
    if not expected:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise DataError(
            f"Checksum mismatch for {label}: its SHA-256 is {digest.hexdigest()}, but --data-sha256 "
            f"(DataConfig.sha256) expects {expected}. The download is corrupt or the file changed; nothing "
            f"was extracted. Check the URL and the expected checksum."
        )


def safe_extract(archive: Path, dest: Path, *, max_bytes: int = MAX_ARCHIVE_BYTES,
                 max_files: int = MAX_ARCHIVE_FILES) -> Path:  # fmt: skip
    """Extract a .zip / .tar(.gz) into ``dest``, refusing absolute paths, ``..``, escaping links and bombs.

    Every member is checked before anything is written: no absolute path or ``..``, no symlink in a
    zip, tar links only to targets inside ``dest``, no device/fifo, at most ``max_files`` members
    and ``max_bytes`` uncompressed bytes in total (zip and tar headers declare each member's size,
    and extraction never writes more than declared).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    label = archive.name
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                _check_totals(label, len(infos), sum(i.file_size for i in infos), max_bytes, max_files)
                for info in infos:
                    _check_member(label, info.filename, dest)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise _refuse(label, info.filename, "is a symbolic link")
                zf.extractall(dest)
            return dest
        with tarfile.open(archive, "r:*") as tf:
            members = []
            total = 0
            for m in tf:  # streamed, so a header bomb stops at the count limit
                members.append(m)
                total += m.size
                _check_totals(label, len(members), total, max_bytes, max_files)
            for m in members:
                _check_member(label, m.name, dest)
                if m.issym() or m.islnk():
                    target = m.linkname.replace("\\", "/")
                    if target.startswith("/"):
                        raise _refuse(label, m.name, f"links to the absolute path {target!r}")
                    base = dest / PurePosixPath(m.name).parent if m.issym() else dest
                    if not (base / target).resolve().is_relative_to(dest):
                        raise _refuse(label, m.name, f"links outside the target folder ({target!r})")
                elif not (m.isfile() or m.isdir()):
                    raise _refuse(label, m.name, "is a device, fifo or other special file")
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tf.extractall(dest, members=members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(
            f"{label} is not a readable .zip or .tar.gz archive ({exc}). Download it again or "
            f"check the URL."
        ) from None
    return dest


def download(url: str, dest: Path, timeout_s: float = 60.0, progress: bool = True,
             max_bytes: int = MAX_ARCHIVE_BYTES) -> Path:  # fmt: skip
    """Download ``url`` to ``dest`` through a temporary ``.part`` file and a rename (at most ``max_bytes``)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    request = urllib.request.Request(url, headers={"User-Agent": "sparsepipe"})
    safe_url = redact_url(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp, open(tmp, "wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = progress_bar(total=total, desc=f"download {Path(urllib.parse.urlparse(url).path).name}",
                               unit="B", unit_scale=True, disable=not progress)  # fmt: skip
            try:
                written = 0
                while chunk := resp.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        raise DataError(
                            f"Downloading {safe_url} stopped after {max_bytes} bytes (DataConfig.max_archive_bytes): "
                            f"the server sends more than the limit. Raise the limit if the dataset really is "
                            f"that big."
                        )
                    fh.write(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
        os.replace(tmp, dest)
    except urllib.error.HTTPError as exc:
        raise DataError(
            f"Downloading {safe_url} failed: HTTP {exc.code} {exc.reason}. Check the URL and that "
            f"the file is public (or use an s3:// SOURCE with credentials)."
        ) from None
    except (urllib.error.URLError, OSError, TimeoutError, ValueError, http.client.HTTPException) as exc:  # malformed URL too
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"Downloading {safe_url} failed ({reason}). Check the URL and the network, or "
            f"download the archive yourself and pass its local path as --source."
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _cache_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _make_relocatable(yaml_path: Path) -> None:
    """Rewrite a data YAML so its splits are relative to its folder and it has no ``path:``."""
    data = _load_yaml(yaml_path)
    if not isinstance(data, dict):
        return
    root = _dataset_root(data, yaml_path)
    ydir = yaml_path.parent.resolve()
    changed = "path" in data
    for split in SPLITS:
        entries = _split_entries(data, root, split)
        if entries is None:
            continue
        rel = []
        for e in entries:
            rel.append(os.path.relpath(e, ydir) if e.is_relative_to(ydir) else str(e))
        new = rel if isinstance(data[split], (list, tuple)) else rel[0]
        changed |= new != data[split]
        data[split] = new
    if changed:
        data.pop("path", None)
        data.pop("download", None)
        atomic_write_text(yaml_path, yaml.safe_dump(data, sort_keys=False))


def _fill_cache_entry(final: Path, fill, refresh: bool) -> Path:
    """Create cache folder ``final`` by filling a temporary sibling and renaming it."""
    if final.is_dir() and not refresh:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    publish_mode(tmp)
    try:
        fill(tmp)
        if final.exists():
            replace_dir(tmp, final)
        else:
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished the same entry first
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _fetched_entry(source: Source, cache_dir: Path, config: DataConfig) -> Path:
    """Download / extract a remote or archive SOURCE into the cache; returns its data YAML."""

    limits = {"max_bytes": config.max_archive_bytes, "max_files": config.max_archive_files}

    def fill(tmp: Path) -> None:
        tree = tmp / "dataset"
        if source.kind == "s3":
            if _is_archive(source.value):
                archive = tmp / Path(urllib.parse.urlparse(source.value).path).name
                storage.download_file(source.value, archive)
                verify_sha256(archive, config.sha256, source.value)
                safe_extract(archive, tree, **limits)
                archive.unlink()
            else:
                if config.sha256:
                    raise ConfigError(
                        f"--data-sha256 checks an archive, but {source.value} is an S3 folder (its files are "
                        f"checked against the _SUCCESS manifest instead). Drop --data-sha256 or point at a .zip/.tar.gz."
                    )
                got = storage.download_prefix(source.value, tree)
                tree = Path(got) if got else tree
        else:
            name = Path(urllib.parse.urlparse(source.value).path).name or "archive"
            if source.kind == "http":
                archive = download(source.value, tmp / name, config.download_timeout_s, config.progress,
                                   max_bytes=config.max_archive_bytes)
            else:
                archive = Path(source.value)
            verify_sha256(archive, config.sha256, redact_url(source.value) if source.kind == "http" else source.value)
            safe_extract(archive, tree, **limits)
            if source.kind == "http":
                archive.unlink()
        try:
            yaml_path = find_data_yaml(tree)
        except NoDataYaml:  # its message would name the temporary extraction folder in the cache
            raise NoDataYaml(
                f"{redact_url(source.value) if source.kind == 'http' else source.value} holds no data YAML (a YAML "
                f"with train:, val: and names:) within 3 folder levels. Put a data.yaml at the top of the "
                f"archive (or prefix). {SOURCE_FORMS}"
            ) from None
        _check_paths_inside(yaml_path, tree, redact_url(source.value) if source.kind == "http" else source.value)
        _make_relocatable(yaml_path)
        marker = {"source": redact_url(source.value) if source.kind == "http" else source.value,
                  "data_yaml": os.path.relpath(yaml_path, tmp)}  # fmt: skip
        (tmp / _SOURCE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")

    key = source.value
    if source.kind == "archive":  # a local archive that changes must not hit a stale entry
        st = Path(source.value).stat()
        key += f"|{st.st_size}|{st.st_mtime_ns}"
    if config.sha256:  # a checked entry never reuses one filled without the check
        key += f"|sha256={config.sha256}"
    final = cache_dir / f"{source.kind}-{_cache_key(key)}"
    final = _fill_cache_entry(final, fill, config.refresh)
    try:
        marker = json.loads((final / _SOURCE_MARKER).read_text())
        return (final / marker["data_yaml"]).resolve()
    except (OSError, ValueError, KeyError):
        return find_data_yaml(final)


def _escaping_paths(yaml_path: Path, inside: Path) -> list[str]:
    """The ``path:``, split entries and listed images of a data YAML that resolve outside ``inside``."""
    data = _load_yaml(yaml_path)
    if not isinstance(data, dict):
        return []  # _scan explains what a data YAML must hold
    root = _dataset_root(data, yaml_path)
    found = [] if root.resolve().is_relative_to(inside) else [f"path: {data.get('path')}"]
    for split in SPLITS:
        for entry in _split_entries(data, root, split) or []:
            if not entry.is_relative_to(inside):
                found.append(f"{split}: {entry}")
            elif entry.suffix.lower() == ".txt" and entry.is_file():
                found += [f"{split}: {entry.name} lists {image}" for image, _ in _entry_images(entry)
                          if not image.resolve().is_relative_to(inside)][:1]
    return found


def _check_paths_inside(yaml_path: Path, tree: Path, source: str) -> None:
    """Refuse a fetched dataset whose data YAML reaches files outside its own folder (host files)."""
    escaping = _escaping_paths(yaml_path, tree.resolve())
    if escaping:
        raise DataError(
            f"The data YAML of {source} points outside the dataset ({'; '.join(escaping[:3])}): a downloaded or "
            f"extracted dataset may only use paths inside its own folder. Make its paths relative to the data "
            f"YAML (train: images/train, val: images/val) and drop absolute 'path:' values."
        )


def _check_sha256_applies(src: Source, config: DataConfig) -> None:
    if config.sha256 and src.kind not in ("http", "s3", "archive"):
        raise ConfigError(
            f"--data-sha256 checks an archive SOURCE (.zip/.tar.gz: local, http(s) or s3), but {src.value[:200]!r} "
            f"is a {src.kind} source. Drop --data-sha256, or pass the archive itself."
        )


def resolve_data(source: str | os.PathLike, cache_dir: Path | None = None, *,
                 config: DataConfig | None = None) -> Path:  # fmt: skip
    """A local data YAML for SOURCE that ``ultralytics`` accepts as ``data=`` (absolute path).

    Synthetic specs are generated into the cache (keyed by a hash of the spec and generator
    version), remote and archive sources are downloaded/extracted into the cache (keyed by a
    hash of the URI), local folders and YAMLs are used in place (a ``sparsepipe data`` out
    folder gives its ``data.yaml``). A local YAML with a relative ``path:`` (which ultralytics
    would resolve against its own datasets folder) gets a normalized copy in the cache.

    Every step that takes ``--data`` resolves it here, so every step checks it the way the data
    step does (:func:`validate_dataset`, unless ``config.validate`` is False): a bad image or label
    row is a :class:`DataError` before any model is loaded, not an ultralytics warning.
    """
    config = config or DataConfig(cache_dir=cache_dir)
    cache = Path(cache_dir).expanduser() if cache_dir else Path(config.cache_dir)
    yaml_path = _resolve(source, cache, config)
    if config.validate:
        _validate_once(yaml_path, cache, config.max_listed_errors)
    return yaml_path


def _validation_stamp(yaml_path: Path) -> str:
    """A digest of the data YAML's bytes and the path, size and mtime of every image and label."""
    digest = hashlib.sha256(yaml_path.read_bytes())
    for split in SPLITS:
        for image in split_images(yaml_path, split):
            for path in (image, label_path(image)):
                try:
                    st = path.stat()
                except OSError:
                    digest.update(f"{split}|{path}|missing\n".encode())
                    continue
                digest.update(f"{split}|{path}|{st.st_mode}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _validate_once(yaml_path: Path, cache: Path, max_listed_errors: int) -> None:
    """:func:`validate_dataset`, skipped when these exact files already passed (a stamp in the cache).

    Decoding every image takes minutes on a large dataset and every step would repeat it; the
    stamp covers each file's size and modification time, so any change is checked again.
    """
    stamp = cache / "validated" / _validation_stamp(yaml_path)
    if stamp.is_file():
        return
    validate_dataset(yaml_path, max_listed_errors)
    try:
        atomic_write_text(stamp, f"{yaml_path}\n")
    except OSError:  # a read-only cache only costs a re-check next time
        pass


def _resolve(source: str | os.PathLike, cache: Path, config: DataConfig) -> Path:
    """The data YAML of SOURCE (see :func:`resolve_data`), not yet validated."""
    src = parse_source(source)
    _check_sha256_applies(src, config)
    if src.kind == "synthetic":
        assert src.synthetic is not None
        spec = json.dumps(
            {"config": dataclasses.asdict(src.synthetic), "generator": GENERATOR_VERSION},
            sort_keys=True,
        )
        final = cache / f"synthetic-{_cache_key(spec)}"
        _fill_cache_entry(
            final, lambda tmp: generate_dataset(tmp, src.synthetic, config.progress), config.refresh
        )
        return (final / DATA_YAML).resolve()
    if src.kind in ("http", "s3", "archive"):
        return _fetched_entry(src, cache, config)
    path = Path(src.value)
    yaml_path = find_data_yaml(path) if path.is_dir() else path
    if yaml_path.suffix.lower() not in (".yaml", ".yml"):
        raise DataError(f"{yaml_path} is neither a folder nor a .yaml data file. {SOURCE_FORMS}")
    data = _load_yaml(yaml_path)
    if isinstance(data, dict) and data.get("path") and not Path(str(data["path"])).is_absolute():
        return _normalized_copy(yaml_path, data, cache)
    return yaml_path.resolve()


def _normalized_copy(yaml_path: Path, data: dict, cache: Path) -> Path:
    root = _dataset_root(data, yaml_path)
    doc = dict(data)
    doc.pop("path", None)
    for split in SPLITS:
        entries = _split_entries(data, root, split)
        if entries is not None:
            doc[split] = [str(e) for e in entries] if isinstance(data[split], list) else str(entries[0])
    out = cache / f"local-{_cache_key(str(yaml_path.resolve()))}" / DATA_YAML
    atomic_write_text(out, yaml.safe_dump(doc, sort_keys=False))
    return out.resolve()


# --------------------------------------------------------------------------- the step


def _materialize(src_yaml: Path, dest: Path) -> None:
    """Copy the splits of ``src_yaml`` (images + labels) into ``dest`` with a relocatable YAML."""
    data = _load_yaml(src_yaml)
    names = _names(data, src_yaml)
    root = _dataset_root(data, src_yaml)
    doc: dict[str, Any] = {}
    for split in SPLITS:
        entries = _split_entries(data, root, split)
        if entries is None:
            continue
        used: set[Path] = set()
        for entry in entries:
            for img, rel in _entry_images(entry):
                if rel in used:
                    rel = rel.with_name(f"{len(used)}_{rel.name}")
                used.add(rel)
                dst_img = dest / "images" / split / rel
                dst_img.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(img, dst_img)
                lbl = label_path(img)
                if lbl.is_file():
                    dst_lbl = label_path(dst_img)
                    dst_lbl.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(lbl, dst_lbl)
        doc[split] = f"images/{split}"
    skip = {"path", "download", "train", "val", "test", "minival", "names", "nc", "yaml_file"}
    doc.update({k: v for k, v in data.items() if k not in skip})
    doc["names"] = names
    (dest / DATA_YAML).write_text(yaml.safe_dump(doc, sort_keys=False))


def _check_out_dir(out: Path) -> None:
    if out.is_file():
        raise DataError(f"--out {out} is a file; give a folder for the dataset.")
    if out.is_dir() and any(out.iterdir()):
        ours = (out / DATA_YAML).is_file()
        if (out / RESULT_FILE).is_file():
            try:
                ours = read_result(out).step == "data"
            except SparsepipeError:
                ours = False
        if not ours:
            raise DataError(
                f"--out {out} already holds files that are not a sparsepipe dataset; refusing to "
                f"replace them. Choose a new or empty folder."
            )


def prepare_data(source: str | os.PathLike, out: str | os.PathLike,
                 config: DataConfig | None = None, tracker: Any = None) -> StepResult:  # fmt: skip
    """The data step: materialize SOURCE as a self-contained dataset in ``out``.

    Writes ``out/data.yaml`` (splits relative to it, no ``path:``), ``out/images/<split>``,
    ``out/labels/<split>`` and ``out/result.json``. The dataset is built in a temporary sibling
    folder and renamed into place, so an interrupted step never leaves a half dataset at ``out``;
    re-running replaces an earlier result. ``tracker`` (a :class:`sparsepipe.tracking.Tracker`)
    gets the params ``data.source`` (redacted) and ``data.validate``, the metrics and ``data.yaml``.
    """
    config = config or DataConfig()
    out = Path(out).expanduser().absolute()
    src = parse_source(source)
    _check_sha256_applies(src, config)
    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    publish_mode(tmp)  # mkdtemp makes it 0700; the renamed --out follows the umask
    try:
        if src.kind == "synthetic":
            generate_dataset(tmp, src.synthetic, progress=config.progress)
            summary = _scan(tmp / DATA_YAML, config.validate, config.max_listed_errors)
        else:
            src_yaml = resolve_data(source, config=dataclasses.replace(config, validate=False))  # _scan below
            # Validate the source, so errors name the user's own files, then copy.
            summary = _scan(src_yaml, config.validate, config.max_listed_errors)
            _materialize(src_yaml, tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    step_config: dict[str, Any] = {
        "source": redact_url(src.value) if src.kind == "http" else src.value,
        "validate": config.validate,
        "max_listed_errors": config.max_listed_errors,
        "sha256": config.sha256,
    }
    if src.synthetic is not None:
        step_config["synthetic"] = dataclasses.asdict(src.synthetic)
    result = StepResult(
        step="data",
        out_dir=str(out),
        files={"data_yaml": DATA_YAML},
        metrics={
            "train_images": summary.images.get("train", 0),
            "val_images": summary.images.get("val", 0),
            "instances": summary.total_instances,
            "classes": summary.nc,
        },
        config=step_config,
        extra={
            "names": summary.names,
            "task": summary.task,
            "images": summary.images,
            "instances_per_split": summary.instances,
            "instances_per_class": {summary.names[i]: n for i, n in summary.instances_per_class.items()},
            "background_images": summary.background_images,
        },
    )
    result.write()
    if tracker is not None:
        tracker.log_params({"data.source": step_config["source"], "data.validate": config.validate})
        tracker.log_metrics(result.metrics)
        tracker.log_artifact(str(result.path("data_yaml")), "data")
    return result
