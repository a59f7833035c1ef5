"""The data step: every SOURCE form, caching, atomic replacement, safe extraction, validation.

    .venv/bin/python -m pytest tests/test_data.py -q

Everything is real: datasets are generated, archives are served by ``http.server`` on
127.0.0.1, ``s3://`` goes to the SeaweedFS fixture from ``service_fixtures.py``.
"""

from __future__ import annotations

import functools
import http.server
import io
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from sparsepipe.data import (
    DataConfig,
    DatasetSummary,
    parse_source,
    prepare_data,
    resolve_data,
    safe_extract,
    validate_dataset,
)
from sparsepipe.errors import ConfigError, DataError
from sparsepipe.results import read_result
from sparsepipe.synthetic import SyntheticConfig, generate_dataset

TINY = "synthetic:train=4,val=2,size=64,seed=7"
TINY_CONFIG = SyntheticConfig(train_images=4, val_images=2, image_size=64, seed=7)


def _cfg(tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(cache_dir=tmp_path / "cache", progress=False, **kw)


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """A small generated dataset folder (not a step output): returns its data.yaml."""
    return generate_dataset(tmp_path / "src", TINY_CONFIG, progress=False)


def _assert_clean_message(exc: BaseException) -> str:
    """What the CLI prints: one paragraph, no traceback, no chained exception."""
    message = str(exc)
    assert "Traceback" not in message and 'File "' not in message
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__
    return message


# ------------------------------------------------------------------ SOURCE parsing / config


def test_synthetic_spec_parses_into_config():
    src = parse_source("synthetic:train=64,val=16,seed=3,size=160,classes=4,task=segment,objects=5")
    assert src.kind == "synthetic"
    assert src.synthetic == SyntheticConfig(64, 16, 160, 4, 3, "segment", 5)
    assert parse_source("synthetic").synthetic == SyntheticConfig()


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("synthetic:train=4,colour=red", "Known keys: preset, train, val, seed, size, classes, task"),
        ("synthetic:train=many", "not an integer"),
        ("synthetic:val=0", "val_images=0"),
        ("synthetic:task=pose", "task"),
        ("ftp://host/data.zip", "SOURCE must be one of"),
        ("https://example.com/data.rar", ".zip, .tar.gz or .tgz"),
    ],
)
def test_bad_source_strings_say_what_works(spec, expected):
    with pytest.raises(DataError) as info:
        parse_source(spec)
    assert expected in _assert_clean_message(info.value)


def test_data_config_validates_and_reads_cache_env(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="max_listed_errors"):
        DataConfig(max_listed_errors=0)
    with pytest.raises(ConfigError, match="download_timeout_s"):
        DataConfig(download_timeout_s=0)
    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "c"))
    assert DataConfig().cache_dir == tmp_path / "c" / "data"


# ------------------------------------------------------------------ the step, synthetic + local


def test_prepare_synthetic_writes_relocatable_validated_dataset(tmp_path):
    from ultralytics.data.utils import check_det_dataset

    out = tmp_path / "runs" / "data"
    result = prepare_data(TINY, out, _cfg(tmp_path))
    assert result.metrics["train_images"] == 4 and result.metrics["val_images"] == 2
    assert result.metrics["classes"] == 6 and result.metrics["instances"] > 0
    stored = read_result(out)
    assert stored.step == "data" and stored.files == {"data_yaml": "data.yaml"}
    assert stored.config["synthetic"]["seed"] == 7
    doc = yaml.safe_load((out / "data.yaml").read_text())
    assert "path" not in doc and doc["train"] == "images/train"
    # Relocatable: move the folder and ultralytics still finds everything.
    moved = tmp_path / "elsewhere"
    shutil.move(str(out), moved)
    info = check_det_dataset(str(resolve_data(str(moved))))
    assert info["nc"] == 6 and Path(info["val"]) == (moved / "images" / "val").resolve()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == []  # no temp folders left


def test_rerun_replaces_out_dir_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "data"
    prepare_data(TINY, out, _cfg(tmp_path))
    prepare_data("synthetic:train=3,val=1,size=64,seed=1", out, _cfg(tmp_path))
    assert len(list((out / "images" / "train").iterdir())) == 3
    assert read_result(out).metrics["train_images"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to replace"):
        prepare_data(TINY, foreign, _cfg(tmp_path))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_local_folder_and_yaml_sources(tmp_path, dataset):
    by_folder = prepare_data(str(dataset.parent), tmp_path / "a", _cfg(tmp_path))
    by_yaml = prepare_data(str(dataset), tmp_path / "b", _cfg(tmp_path))
    assert by_folder.metrics == by_yaml.metrics
    assert by_folder.metrics["train_images"] == 4
    assert (tmp_path / "a" / "labels" / "train" / "train_000000.txt").read_bytes() == (
        dataset.parent / "labels" / "train" / "train_000000.txt"
    ).read_bytes()
    # local sources resolve in place; a step out folder resolves to its data.yaml
    assert resolve_data(str(dataset.parent)) == dataset.resolve()
    assert resolve_data(str(tmp_path / "a")) == (tmp_path / "a" / "data.yaml").resolve()


def test_yaml_with_path_key_and_txt_split_is_materialized(tmp_path, dataset):
    from ultralytics.data.utils import check_det_dataset

    root = dataset.parent
    listing = root / "val.txt"
    val_images = sorted((root / "images" / "val").iterdir())
    listing.write_text("".join(f"./images/val/{p.name}\n" for p in val_images))
    user_yaml = tmp_path / "custom.yaml"
    names = ["a", "b", "c", "d", "e", "f"]
    doc = {"path": str(root), "train": "images/train", "val": "val.txt", "names": names}
    user_yaml.write_text(yaml.safe_dump(doc))
    result = prepare_data(str(user_yaml), tmp_path / "out", _cfg(tmp_path))
    assert result.metrics["val_images"] == 2 and result.extra["names"][0] == "a"
    info = check_det_dataset(str(tmp_path / "out" / "data.yaml"))
    assert info["names"][5] == "f"
    # A relative path: key (which ultralytics would resolve against its datasets folder)
    # gets a normalized copy in the cache.
    rel_yaml = root / "rel.yaml"
    doc = {"path": ".", "train": "images/train", "val": "images/val", "names": dict(enumerate(names))}
    rel_yaml.write_text(yaml.safe_dump(doc))
    resolved = resolve_data(str(rel_yaml), cache_dir=tmp_path / "cache")
    assert resolved.is_relative_to(tmp_path / "cache")
    assert check_det_dataset(str(resolved))["train"] == str((root / "images" / "train").resolve())


def test_synthetic_resolve_is_cached_by_spec(tmp_path):
    first = resolve_data(TINY, cache_dir=tmp_path / "cache")
    stamp = first.stat().st_mtime_ns
    again = resolve_data(TINY, cache_dir=tmp_path / "cache")
    other = resolve_data(TINY.replace("seed=7", "seed=8"), cache_dir=tmp_path / "cache")
    assert again == first and first.stat().st_mtime_ns == stamp
    assert other != first and other.is_file()
    assert first.is_absolute() and first.parent.parent == (tmp_path / "cache").resolve()


# ------------------------------------------------------------------ http(s) archives


class _Server:
    def __init__(self, root: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(root)
    yield root, server
    server.close()


def _make_archives(dataset_dir: Path, www: Path) -> None:
    with zipfile.ZipFile(www / "shapes.zip", "w") as zf:
        for p in sorted(dataset_dir.rglob("*")):
            zf.write(p, Path("shapes") / p.relative_to(dataset_dir))
    with tarfile.open(www / "shapes.tar.gz", "w:gz") as tf:
        tf.add(dataset_dir, arcname="nested/shapes")


@pytest.mark.parametrize("name", ["shapes.zip", "shapes.tar.gz"])
def test_http_archive_source(tmp_path, dataset, http_root, name):
    from ultralytics.data.utils import check_det_dataset

    www, server = http_root
    _make_archives(dataset.parent, www)
    url = f"{server.url}/{name}"
    result = prepare_data(url, tmp_path / "out", _cfg(tmp_path))
    assert result.metrics["train_images"] == 4 and result.metrics["val_images"] == 2
    assert result.config["source"] == url
    # resolve_data reuses the cached download: no second request
    resolved = resolve_data(url, config=_cfg(tmp_path))
    assert server.requests == [f"/{name}"]
    assert check_det_dataset(str(resolved))["nc"] == 6
    assert not list((tmp_path / "cache").glob(".*")), "no temporary folders left in the cache"


def test_local_archive_source_and_segment_task(tmp_path, dataset):
    _make_archives(dataset.parent, tmp_path)
    result = prepare_data(str(tmp_path / "shapes.zip"), tmp_path / "out", _cfg(tmp_path))
    assert result.metrics["train_images"] == 4
    seg = prepare_data(TINY + ",task=segment", tmp_path / "seg", _cfg(tmp_path))
    assert seg.extra["task"] == "segment" and seg.config["synthetic"]["task"] == "segment"


def test_http_missing_archive_is_a_clear_error(tmp_path, http_root):
    _, server = http_root
    with pytest.raises(DataError) as info:
        prepare_data(f"{server.url}/nope.zip", tmp_path / "out", _cfg(tmp_path))
    message = _assert_clean_message(info.value)
    assert "HTTP 404" in message and "nope.zip" in message
    assert not (tmp_path / "out").exists()


def _zip_with(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_malicious_archives_are_refused(tmp_path, http_root):
    www, server = http_root
    (www / "evil.zip").write_bytes(
        _zip_with({"ds/data.yaml": b"train: a\nval: a\nnames: [x]\n", "../../escaped.txt": b"x"})
    )
    with pytest.raises(DataError) as info:
        resolve_data(f"{server.url}/evil.zip", config=_cfg(tmp_path))
    assert "'..'" in _assert_clean_message(info.value)
    assert not list(tmp_path.rglob("escaped.txt"))

    absolute = tmp_path / "abs.tar.gz"
    with tarfile.open(absolute, "w:gz") as tf:
        data = b"x"
        member = tarfile.TarInfo("/tmp/sparsepipe-absolute.txt")
        member.size = len(data)
        tf.addfile(member, io.BytesIO(data))
    with pytest.raises(DataError, match="absolute path"):
        safe_extract(absolute, tmp_path / "x1")

    linked = tmp_path / "link.tar.gz"
    with tarfile.open(linked, "w:gz") as tf:
        member = tarfile.TarInfo("ds/outside")
        member.type = tarfile.SYMTYPE
        member.linkname = "../../.."
        tf.addfile(member)
    with pytest.raises(DataError, match="links outside"):
        safe_extract(linked, tmp_path / "x2")


# ------------------------------------------------------------------ s3://


def test_s3_prefix_round_trip(tmp_path, dataset, s3_env):
    from sparsepipe import storage

    uri = f"s3://{s3_env.bucket}/datasets/shapes-{tmp_path.name}"
    storage.upload_dir(dataset.parent, uri)
    result = prepare_data(uri, tmp_path / "out", _cfg(tmp_path))
    assert result.metrics["train_images"] == 4 and result.metrics["val_images"] == 2
    for p in sorted((dataset.parent / "labels").rglob("*.txt")):
        copy = tmp_path / "out" / p.relative_to(dataset.parent)
        assert copy.read_bytes() == p.read_bytes()
    # the step's own output can go back to S3 and be used from there
    storage.upload_dir(tmp_path / "out", uri + "-prepared")
    resolved = resolve_data(uri + "-prepared", config=_cfg(tmp_path))
    assert validate_dataset(resolved).images == {"train": 4, "val": 2}


# ------------------------------------------------------------------ bad input


def _first_label(root: Path) -> Path:
    return sorted((root / "labels" / "train").glob("*.txt"))[0]


def test_missing_data_yaml(tmp_path):
    missing = tmp_path / "nowhere" / "data.yaml"
    with pytest.raises(DataError) as info:
        validate_dataset(missing)
    message = _assert_clean_message(info.value)
    assert str(missing) in message and "SOURCE must be one of" in message
    with pytest.raises(DataError) as info:
        prepare_data(str(missing), tmp_path / "out", _cfg(tmp_path))
    assert str(missing) in _assert_clean_message(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="No data YAML"):
        resolve_data(str(empty))


@pytest.mark.parametrize(
    "row, expected",
    [
        ("99 0.5 0.5 0.1 0.1", "class id 99 is out of range [0, 5]"),
        ("1 0.5 0.5 0.1", "4 values, expected 5"),
        ("0 1.5 0.5 0.1 0.1", "coordinate 1.5 outside [0, 1]"),
        ("0 0.5 0.5 0 0.1", "width/height must be > 0"),
        ("0.5 0.5 0.5 0.1 0.1", "not an integer"),
        ("a b c d e", "non-numeric"),
    ],
)
def test_bad_label_row_names_file_and_line(tmp_path, dataset, row, expected):
    label = _first_label(dataset.parent)
    rows = label.read_text().splitlines()
    label.write_text("\n".join(["0 0.5 0.5 0.2 0.2", row, *rows]) + "\n")
    with pytest.raises(DataError) as info:
        validate_dataset(dataset)
    message = _assert_clean_message(info.value)
    assert f"{label}:2: " in message and expected in message
    assert "1 problem(s)" in message
    # the step reports the user's file (not a temporary copy) and leaves no output behind
    with pytest.raises(DataError, match=f"{label.name}:2"):
        prepare_data(str(dataset), tmp_path / "out", _cfg(tmp_path))
    assert not (tmp_path / "out").exists()


def test_corrupt_jpeg_is_named(tmp_path, dataset):
    image = sorted((dataset.parent / "images" / "val").glob("*.jpg"))[1]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        validate_dataset(dataset)
    message = _assert_clean_message(info.value)
    assert f"{image}: image cannot be decoded" in message


def test_empty_val_split(tmp_path, dataset):
    for p in (dataset.parent / "images" / "val").iterdir():
        p.unlink()
    with pytest.raises(DataError) as info:
        validate_dataset(dataset)
    message = _assert_clean_message(info.value)
    assert str(dataset) in message and "val split is empty" in message


def test_error_list_is_capped(tmp_path, dataset):
    label = _first_label(dataset.parent)
    label.write_text("".join("42 0.5 0.5 0.1 0.1\n" for _ in range(15)))
    with pytest.raises(DataError) as info:
        validate_dataset(dataset, max_listed_errors=10)
    message = _assert_clean_message(info.value)
    assert "15 problem(s)" in message and "... and 5 more." in message
    assert f"{label}:10:" in message and f"{label}:11:" not in message


def test_validate_summary_counts(dataset):
    summary = validate_dataset(dataset)
    assert isinstance(summary, DatasetSummary)
    assert summary.images == {"train": 4, "val": 2} and summary.nc == 6 and summary.task == "detect"
    rows = sum(len(p.read_text().splitlines()) for p in (dataset.parent / "labels").rglob("*.txt"))
    assert summary.total_instances == rows == sum(summary.instances_per_class.values())


def test_cli_data_error_has_no_traceback(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "sparsepipe", "data", "--source", str(tmp_path / "missing.yaml"),
         "--out", str(tmp_path / "out")],  # fmt: skip
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "missing.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_synthetic_presets_and_overrides():
    from sparsepipe.data import parse_synthetic
    from sparsepipe.synthetic import PRESETS

    demo = parse_synthetic("synthetic:preset=demo")
    assert (demo.num_classes, demo.clutter, demo.camouflage, demo.image_size) == (3, 0, 0.0, 160)
    # keys written after (or before) the preset override one field each
    bench = parse_synthetic("synthetic:val=600,preset=bench,min_radius=0.08,camouflage=0.1")
    assert (bench.val_images, bench.min_radius, bench.camouflage, bench.train_images) == (600, 0.08, 0.1, 512)
    assert parse_synthetic("synthetic:preset=default") == parse_synthetic("synthetic")
    assert set(PRESETS) == {"default", "demo", "bench"}
    with pytest.raises(DataError, match="preset='hard'.*demo"):
        parse_synthetic("synthetic:preset=hard")
    with pytest.raises(DataError, match="camouflage='lots'.*decimal"):
        parse_synthetic("synthetic:camouflage=lots")
    with pytest.raises(DataError, match="min_radius=0.3 is larger than max_radius"):
        parse_synthetic("synthetic:min_radius=0.3,max_radius=0.2")
