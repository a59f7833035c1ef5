"""sparsepipe.storage against a real SeaweedFS S3 server on loopback (no mocks).

    .venv/bin/python -m pytest tests/test_storage.py -q
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from sparsepipe import storage
from sparsepipe.errors import StorageError
from service_fixtures import S3Server, free_port


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "weights/best.pt": os.urandom(3000),
        "weights/last.pt": b"last",
        "result.json": b'{"step": "train"}\n',
        "deep/a/b/c.txt": b"nested",
        "empty.bin": b"",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
    }


def _leftovers(folder: Path) -> list[str]:
    """Hidden temporary names (``.name.*.tmp`` / ``.name.old-*``) left beside outputs."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []


def test_uri_helpers() -> None:
    assert storage.is_s3_uri("s3://bucket/key")
    assert storage.is_s3_uri("S3://bucket")
    assert not storage.is_s3_uri("/data/s3://x")
    assert not storage.is_s3_uri("gs://bucket/key")
    assert storage.split_s3_uri("s3://my-bucket/a/b.pt") == ("my-bucket", "a/b.pt")
    assert storage.split_s3_uri("s3://my-bucket") == ("my-bucket", "")
    assert storage.split_s3_uri("s3://my-bucket/") == ("my-bucket", "")
    with pytest.raises(StorageError, match="not an S3 URI"):
        storage.split_s3_uri("/local/path")
    with pytest.raises(StorageError, match="no valid bucket"):
        storage.split_s3_uri("s3:///key")


def test_file_round_trip(s3_env: S3Server, tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(os.urandom(10_000))
    base = f"s3://{s3_env.bucket}/files-{_uid()}"
    uri = storage.upload_file(src, f"{base}/model.onnx")
    assert uri == f"{base}/model.onnx"
    # a trailing slash means "into this folder, under the file's own name"
    assert storage.upload_file(src, f"{base}/copy/") == f"{base}/copy/model.onnx"

    dest = tmp_path / "out" / "model.onnx"
    assert storage.download_file(uri, dest) == dest
    assert dest.read_bytes() == src.read_bytes()
    assert _leftovers(dest.parent) == []
    storage.download_file(f"{base}/copy/model.onnx", dest)  # overwrite in place
    assert dest.read_bytes() == src.read_bytes()


def test_dir_round_trip_writes_manifest_last(s3_env: S3Server, tmp_path: Path) -> None:
    src = tmp_path / "train"
    files = _make_tree(src)
    uri = storage.upload_dir(src, f"s3://{s3_env.bucket}/runs-{_uid()}/train/")
    bucket, prefix = storage.split_s3_uri(uri)
    assert not uri.endswith("/")

    client = s3_env.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]
    keys = {o["Key"][len(prefix) + 1:] for o in listed}
    assert keys == set(files) | {storage.MANIFEST_NAME}  # the _UPLOADING marker is gone
    manifest = json.loads(
        client.get_object(Bucket=bucket, Key=f"{prefix}/{storage.MANIFEST_NAME}")["Body"].read()
    )
    assert manifest["files"] == {rel: len(data) for rel, data in files.items()}
    # the commit object is the newest one: every file was uploaded before it
    newest = max(listed, key=lambda o: o["LastModified"])
    assert newest["Key"].endswith(storage.MANIFEST_NAME) or all(
        o["LastModified"] <= newest["LastModified"] for o in listed
    )

    dest = tmp_path / "copy" / "train"
    assert storage.download_prefix(uri, dest) == dest
    assert _read_tree(dest) == files  # markers are not part of the folder
    assert _leftovers(dest.parent) == []

    # downloading again replaces the folder (stale local files disappear)
    (dest / "stale.txt").write_text("old")
    storage.download_prefix(uri + "/", dest)
    assert _read_tree(dest) == files
    assert _leftovers(dest.parent) == []


def test_partial_upload_is_refused(s3_env: S3Server, tmp_path: Path) -> None:
    """A killed upload_dir leaves objects and its _UPLOADING marker but no _SUCCESS."""
    client = s3_env.client()
    prefix = f"partial-{_uid()}"
    client.put_object(
        Bucket=s3_env.bucket,
        Key=f"{prefix}/{storage.UPLOADING_NAME}",
        Body=json.dumps({"upload_id": "dead"}).encode(),
    )
    client.put_object(Bucket=s3_env.bucket, Key=f"{prefix}/weights/best.pt", Body=b"half")
    dest = tmp_path / "dl" / "partial"
    with pytest.raises(StorageError, match="never committed") as info:
        storage.download_prefix(f"s3://{s3_env.bucket}/{prefix}", dest)
    assert prefix in str(info.value)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_manifest_mismatch_and_uncommitted_reupload_are_refused(
    s3_env: S3Server, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _make_tree(src)
    uri = storage.upload_dir(src, f"s3://{s3_env.bucket}/mismatch-{_uid()}")
    bucket, prefix = storage.split_s3_uri(uri)
    client = s3_env.client()

    # a newer upload started after the commit and never finished
    client.put_object(
        Bucket=bucket, Key=f"{prefix}/{storage.UPLOADING_NAME}",
        Body=json.dumps({"upload_id": "another"}).encode(),
    )
    with pytest.raises(StorageError, match="has not committed"):
        storage.download_prefix(uri, tmp_path / "a")
    client.delete_object(Bucket=bucket, Key=f"{prefix}/{storage.UPLOADING_NAME}")
    storage.download_prefix(uri, tmp_path / "a")  # committed again: fine

    # an object listed in the manifest disappeared / changed size
    client.delete_object(Bucket=bucket, Key=f"{prefix}/weights/last.pt")
    client.put_object(Bucket=bucket, Key=f"{prefix}/result.json", Body=b"{}")
    with pytest.raises(StorageError, match="does not match") as info:
        storage.download_prefix(uri, tmp_path / "b")
    assert "weights/last.pt' is missing" in str(info.value)
    assert "result.json' has 2 bytes" in str(info.value)
    assert not (tmp_path / "b").exists()

    with pytest.raises(StorageError, match="no '_SUCCESS' manifest"):
        client.put_object(Bucket=bucket, Key=f"foreign-{prefix}/x.txt", Body=b"x")
        storage.download_prefix(
            f"s3://{bucket}/foreign-{prefix}", tmp_path / "c", require_manifest=True
        )


def test_foreign_prefix_without_manifest_downloads_all(s3_env: S3Server, tmp_path: Path) -> None:
    client = s3_env.client()
    prefix = f"foreign-{_uid()}"
    client.put_object(Bucket=s3_env.bucket, Key=f"{prefix}/a.txt", Body=b"a")
    client.put_object(Bucket=s3_env.bucket, Key=f"{prefix}/sub/b.txt", Body=b"bb")
    dest = storage.download_prefix(f"s3://{s3_env.bucket}/{prefix}", tmp_path / "f")
    assert _read_tree(dest) == {"a.txt": b"a", "sub/b.txt": b"bb"}


def test_missing_key_leaves_no_half_file(s3_env: S3Server, tmp_path: Path) -> None:
    dest_dir = tmp_path / "out"
    uri = f"s3://{s3_env.bucket}/nope-{_uid()}/model.pt"
    with pytest.raises(StorageError, match="no such object") as info:
        storage.download_file(uri, dest_dir / "model.pt")
    assert uri in str(info.value)
    assert list(dest_dir.iterdir()) == []  # neither the file nor a temporary one

    with pytest.raises(StorageError, match="no objects under that prefix"):
        storage.download_prefix(f"s3://{s3_env.bucket}/nope-{_uid()}/", dest_dir / "folder")
    assert list(dest_dir.iterdir()) == []


def test_missing_bucket_is_named(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = f"no-such-bucket-{_uid()}"
    with pytest.raises(StorageError, match=f"bucket '{bucket}' does not exist"):
        storage.download_file(f"s3://{bucket}/a/b.pt", tmp_path / "b.pt")
    with pytest.raises(StorageError, match=f"bucket '{bucket}' does not exist"):
        storage.download_prefix(f"s3://{bucket}/a", tmp_path / "a")
    with pytest.raises(StorageError, match=f"bucket '{bucket}' does not exist"):
        storage.localize(f"s3://{bucket}/a", tmp_path / "cache")
    assert not (tmp_path / "b.pt").exists() and not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "bad_rel",
    ["../escape.txt", "sub/../../escape.txt", "/abs.txt", "a//b.txt", "./a", "", "..\\x"],
)
def test_relative_keys_that_could_escape_are_refused(tmp_path: Path, bad_rel: str) -> None:
    """The guard download_prefix applies to every key before any download.

    AWS S3 stores such keys verbatim; SeaweedFS refuses '..' keys and normalises '//' and '\\'
    itself, so the real server cannot serve one and the guard is exercised directly here.
    """
    with pytest.raises(StorageError, match="outside"):
        storage._safe_relpath(bad_rel, tmp_path / "dest", "s3://bucket/prefix")
    assert storage._safe_relpath("a/b.txt", tmp_path, "s3://b/p") == tmp_path / "a" / "b.txt"


def test_bad_credentials_name_the_variables_not_the_secret(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_secret = "WrongSecret-" + _uid()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    uri = f"s3://{s3_env.bucket}/anything.txt"
    for call in (
        lambda: storage.download_file(uri, tmp_path / "x.txt"),
        lambda: storage.download_prefix(f"s3://{s3_env.bucket}/x", tmp_path / "x"),
        lambda: storage.upload_file(__file__, uri),
    ):
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert "access denied" in message
        assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
        assert wrong_secret not in message
        assert s3_env.secret_key not in message
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "UNKNOWNKEY" + _uid())
    with pytest.raises(StorageError, match="access denied") as info:
        storage.download_file(uri, tmp_path / "x.txt")
    assert wrong_secret not in str(info.value)
    assert not (tmp_path / "x.txt").exists()


def test_unreachable_endpoint_is_named(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    start = time.monotonic()
    with pytest.raises(StorageError, match="unreachable") as info:
        storage.download_file(f"s3://{s3_env.bucket}/a.txt", tmp_path / "a.txt")
    assert endpoint in str(info.value) and "AWS_ENDPOINT_URL" in str(info.value)
    assert time.monotonic() - start < 20
    assert s3_env.secret_key not in str(info.value)


def test_mlflow_endpoint_variable_is_a_fallback(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env.endpoint_url)
    src = tmp_path / "a.txt"
    src.write_text("via mlflow endpoint")
    uri = storage.upload_file(src, f"s3://{s3_env.bucket}/fallback-{_uid()}/a.txt")
    assert storage.download_file(uri, tmp_path / "b.txt").read_text() == "via mlflow endpoint"


def test_localize_local_paths(tmp_path: Path) -> None:
    local = tmp_path / "data.yaml"
    local.write_text("x: 1")
    assert storage.localize(str(local), tmp_path / "cache") == local
    assert storage.localize(local.as_uri(), tmp_path / "cache") == local
    with pytest.raises(StorageError, match="does not exist"):
        storage.localize(str(tmp_path / "missing.yaml"), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_localize_caches_files_and_prefixes(s3_env: S3Server, tmp_path: Path) -> None:
    client = s3_env.client()
    base = f"localize-{_uid()}"
    client.put_object(Bucket=s3_env.bucket, Key=f"{base}/model.pt", Body=b"v1")
    cache = tmp_path / "cache"
    uri = f"s3://{s3_env.bucket}/{base}/model.pt"

    first = storage.localize(uri, cache)
    assert first.name == "model.pt" and first.read_bytes() == b"v1"
    assert first.is_relative_to(cache)
    inode = first.stat().st_ino
    again = storage.localize(uri, cache)
    assert again == first and again.stat().st_ino == inode  # cache hit: not re-downloaded

    client.put_object(Bucket=s3_env.bucket, Key=f"{base}/model.pt", Body=b"v2 changed")
    changed = storage.localize(uri, cache)
    assert changed == first and changed.read_bytes() == b"v2 changed"

    # a folder: decided by listing (no object has the exact key)
    src = tmp_path / "ds"
    files = _make_tree(src)
    prefix_uri = storage.upload_dir(src, f"s3://{s3_env.bucket}/{base}/dataset")
    folder = storage.localize(prefix_uri, cache)
    assert folder.is_dir() and folder.name == "dataset"
    assert _read_tree(folder) == files
    marker = folder / "result.json"
    inode = marker.stat().st_ino
    assert storage.localize(prefix_uri, cache) == folder
    assert marker.stat().st_ino == inode  # unchanged manifest: reused

    with pytest.raises(StorageError, match="neither an object with that key nor any object"):
        storage.localize(f"s3://{s3_env.bucket}/{base}/missing", cache)


def test_publish_local_and_s3(s3_env: S3Server, tmp_path: Path) -> None:
    src_dir = tmp_path / "export"
    files = _make_tree(src_dir)
    single = src_dir / "result.json"

    out = Path(storage.publish(single, str(tmp_path / "pub" / "result.json")))
    assert out.read_bytes() == single.read_bytes()
    out_dir = Path(storage.publish(src_dir, str(tmp_path / "pub" / "export")))
    assert _read_tree(out_dir) == files
    (src_dir / "weights" / "last.pt").unlink()
    storage.publish(src_dir, str(out_dir))  # replaces the old copy as a whole
    assert "weights/last.pt" not in _read_tree(out_dir)
    assert _leftovers(tmp_path / "pub") == []

    base = f"s3://{s3_env.bucket}/publish-{_uid()}"
    assert storage.publish(single, f"{base}/result.json") == f"{base}/result.json"
    dir_uri = storage.publish(src_dir, f"{base}/export")
    assert _read_tree(storage.download_prefix(dir_uri, tmp_path / "back")) == _read_tree(src_dir)

    with pytest.raises(StorageError, match="does not exist"):
        storage.publish(tmp_path / "missing", f"{base}/x")


def test_checksums_are_recorded_and_verified(s3_env: S3Server, tmp_path: Path) -> None:
    import hashlib

    src = tmp_path / "train"
    files = _make_tree(src)
    uri = storage.upload_dir(src, f"s3://{s3_env.bucket}/sums-{_uid()}/train")
    bucket, prefix = storage.split_s3_uri(uri)
    client = s3_env.client()
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/{storage.MANIFEST_NAME}")["Body"].read())
    assert manifest["sha256"] == {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}

    # Same size, different bytes (bit rot or an overwrite): the size check passes, the checksum does not.
    corrupted = bytearray(files["weights/best.pt"])
    corrupted[100] ^= 0xFF
    client.put_object(Bucket=bucket, Key=f"{prefix}/weights/best.pt", Body=bytes(corrupted))
    dest = tmp_path / "copy"
    with pytest.raises(StorageError, match="Checksum mismatch.*best.pt"):
        storage.download_prefix(uri, dest)
    assert not dest.exists() and _leftovers(tmp_path) == []

    # Single files carry their checksum as object metadata.
    one = tmp_path / "model.onnx"
    one.write_bytes(os.urandom(2048))
    file_uri = storage.upload_file(one, f"s3://{s3_env.bucket}/sums-{_uid()}/model.onnx")
    _, key = storage.split_s3_uri(file_uri)
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"][storage.SHA256_METADATA] == hashlib.sha256(one.read_bytes()).hexdigest()
    assert storage.download_file(file_uri, tmp_path / "back.onnx").read_bytes() == one.read_bytes()
    client.put_object(Bucket=bucket, Key=key, Body=b"x" * 2048, Metadata=head["Metadata"])
    with pytest.raises(StorageError, match="Checksum mismatch"):
        storage.download_file(file_uri, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
