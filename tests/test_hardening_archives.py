"""Untrusted dataset archives: traversal, links, bombs, checksums, and no partial dataset left behind.

    .venv/bin/python -m pytest tests/test_hardening_archives.py -q

Every archive is crafted for real (zip and tar.gz), served by a local http server (or SeaweedFS
S3) and fed to the data step as a user would; after each refusal nothing escaped the target,
nothing is left in the cache and no ``--out`` dataset exists.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from sparsepipe.cli import main
from sparsepipe.data import DataConfig, prepare_data
from sparsepipe.errors import ConfigError, DataError

DATA_YAML = b"train: images/train\nval: images/val\nnames: [a]\n"


@pytest.fixture()
def www(tmp_path):
    """A folder served over http on 127.0.0.1: yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def good_tree(tmp_path_factory) -> Path:
    """A valid 2+2 image dataset folder to pack into archives."""
    out = tmp_path_factory.mktemp("good") / "ds"
    prepare_data("synthetic:train=2,val=2,size=64,seed=1", out, DataConfig(progress=False))
    return out


def _zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tgz(path: Path, entries: dict[str, bytes], links: list[tuple[str, bytes, str]] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, kind, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return path


def _pack_good(tree: Path, path: Path) -> Path:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for p in sorted(tree.rglob("*")):
                zf.write(p, Path("ds") / p.relative_to(tree))
    else:
        with tarfile.open(path, "w:gz") as tf:
            tf.add(tree, arcname="ds")
    return path


def _assert_nothing_left(tmp_path: Path, cache: Path) -> None:
    assert not (tmp_path / "out").exists(), "a partial dataset was left at --out"
    left = [p for p in cache.rglob("*")] if cache.exists() else []
    assert left == [], f"left in the cache: {left[:5]}"
    assert not list(tmp_path.rglob("escaped*")), "a member was written outside the target"


def _refused(url: str, tmp_path: Path, match: str, **config) -> str:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=match) as info:
        prepare_data(url, tmp_path / "out", DataConfig(cache_dir=cache, progress=False, **config))
    message = str(info.value)
    assert "\n" not in message.strip() and "Traceback" not in message
    _assert_nothing_left(tmp_path, cache)
    return message


# ---------------------------------------------------------------------- traversal and links

EVIL = {
    "dotdot.zip": (lambda p: _zip(p, {"ds/data.yaml": DATA_YAML, "ds/../../escaped.txt": b"x"}), "'..'"),
    "dotdot.tar.gz": (lambda p: _tgz(p, {"ds/data.yaml": DATA_YAML, "../escaped.txt": b"x"}), "'..'"),
    "abs.zip": (lambda p: _zip(p, {"ds/data.yaml": DATA_YAML, "/tmp/escaped-abs.txt": b"x"}), "absolute path"),
    "abs.tar.gz": (lambda p: _tgz(p, {"ds/data.yaml": DATA_YAML, "/tmp/escaped-abs.txt": b"x"}), "absolute path"),
    "symlink.zip": (lambda p: _zip(p, {"ds/data.yaml": DATA_YAML}, {"ds/images": "../../../etc"}),
                    "symbolic link"),
    "symlink.tar.gz": (lambda p: _tgz(p, {"ds/data.yaml": DATA_YAML}, [("ds/images", tarfile.SYMTYPE, "../../..")]),
                       "links outside"),
    "symlink-abs.tar.gz": (lambda p: _tgz(p, {"ds/data.yaml": DATA_YAML}, [("ds/images", tarfile.SYMTYPE, "/etc")]),
                           "absolute path"),
    "hardlink.tar.gz": (lambda p: _tgz(p, {"ds/data.yaml": DATA_YAML}, [("ds/pw", tarfile.LNKTYPE, "/etc/passwd")]),
                        "absolute path"),
    "hardlink-up.tar.gz": (lambda p: _tgz(p, {"ds/data.yaml": DATA_YAML},
                                          [("ds/up", tarfile.LNKTYPE, "../outside.txt")]), "links outside"),
    "fifo.tar.gz": (lambda p: _tgz(p, {"ds/data.yaml": DATA_YAML}, [("ds/pipe", tarfile.FIFOTYPE, "")]),
                    "special file"),
}


@pytest.mark.parametrize("name", sorted(EVIL))
def test_malicious_archive_is_refused_over_http(name, www, tmp_path):
    root, base = www
    make, match = EVIL[name]
    make(root / name)
    message = _refused(f"{base}/{name}", tmp_path, match)
    assert name in message  # names the archive


# ---------------------------------------------------------------------------- bombs and caps


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_decompression_bomb_limits(suffix, www, tmp_path):
    root, base = www
    pack = _zip if suffix == ".zip" else _tgz
    # 8 MiB of zeros compresses to a few KiB: the declared size is what the limit sees.
    bomb = pack(root / f"bomb{suffix}", {"ds/data.yaml": DATA_YAML, "ds/zeros.bin": bytes(8 << 20)})
    assert bomb.stat().st_size < 64 << 10
    message = _refused(f"{base}/{bomb.name}", tmp_path, "decompression bomb", max_archive_bytes=4 << 20)
    assert "max_archive_bytes" in message
    many = pack(root / f"many{suffix}", {"ds/data.yaml": DATA_YAML, **{f"ds/f{i}.txt": b"" for i in range(50)}})
    message = _refused(f"{base}/{many.name}", tmp_path, "more than 20 members", max_archive_files=20)
    assert "max_archive_files" in message


def test_download_size_is_capped(www, tmp_path, good_tree):
    root, base = www
    archive = _pack_good(good_tree, root / "big.zip")
    _refused(f"{base}/big.zip", tmp_path, "stopped after", max_archive_bytes=archive.stat().st_size // 2)


def test_default_limits_are_stated():
    config = DataConfig()
    assert config.max_archive_bytes == 50 * 2**30 and config.max_archive_files == 1_000_000
    for bad in ({"max_archive_bytes": 0}, {"max_archive_files": "many"}, {"max_archive_files": True}):
        with pytest.raises(ConfigError, match="integer >= 1"):
            DataConfig(**bad)


# --------------------------------------------------------------------------------- checksums


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_checksum_over_http(suffix, www, tmp_path, good_tree):
    root, base = www
    archive = _pack_good(good_tree, root / f"ds{suffix}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    wrong = hashlib.sha256(b"something else").hexdigest()
    message = _refused(f"{base}/{archive.name}", tmp_path, "Checksum mismatch", sha256=wrong)
    assert digest in message and wrong in message and "nothing was extracted" in message
    result = prepare_data(f"{base}/{archive.name}", tmp_path / "out",
                          DataConfig(cache_dir=tmp_path / "cache", progress=False, sha256=digest.upper()))
    assert result.metrics["train_images"] == 2 and result.config["sha256"] == digest


def test_checksum_of_an_s3_archive(s3_env, tmp_path, good_tree):
    from sparsepipe import storage

    archive = _pack_good(good_tree, tmp_path / "ds.tar.gz")
    uri = storage.upload_file(archive, f"s3://{s3_env.bucket}/hardening/{tmp_path.name}/ds.tar.gz")
    _refused(uri, tmp_path, "Checksum mismatch", sha256="0" * 64)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    result = prepare_data(uri, tmp_path / "out", DataConfig(cache_dir=tmp_path / "cache", progress=False,
                                                            sha256=digest))
    assert result.metrics["val_images"] == 2


def test_checksum_option_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="not a SHA-256"):
        DataConfig(sha256="abc")
    with pytest.raises(ConfigError, match="checks an archive SOURCE"):
        prepare_data("synthetic", tmp_path / "out", DataConfig(sha256="a" * 64))
    assert main(["data", "--source", "http://127.0.0.1:9/x.zip", "--data-sha256", "x" * 300,
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a SHA-256" in err and "Traceback" not in err and len(err) < 600
