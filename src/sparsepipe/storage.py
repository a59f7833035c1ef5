"""Local paths and ``s3://bucket/key`` URIs, read and written atomically through boto3.

    python -c "from sparsepipe.storage import localize; print(localize('s3://bucket/data', __import__('pathlib').Path('.cache')))"

The S3 client is resolved once per distinct environment (``AWS_ENDPOINT_URL_S3``, else
``AWS_ENDPOINT_URL``, else ``MLFLOW_S3_ENDPOINT_URL``; ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``;
path-style addressing whenever an endpoint is set, as SeaweedFS and MinIO need) or passed in
explicitly with ``client=``.

Atomicity:
  * downloads go to a temporary name beside the destination and are renamed into place, so a
    failed or killed download never leaves a half file (or half folder) that a later step trusts;
  * ``upload_dir`` is "upload then commit": it writes an ``_UPLOADING`` marker, the objects,
    then a ``_SUCCESS`` manifest (JSON: relative path -> size) LAST, then removes the marker.
    ``download_prefix`` checks the manifest when there is one, and refuses a prefix whose upload
    started (marker present) but never committed.

Every failure raises :class:`~sparsepipe.errors.StorageError` with one paragraph naming the URI
or path and the fix. Secret values never appear in messages or logs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from sparsepipe.errors import StorageError
from sparsepipe.results import atomic_copy, atomic_write_text, publish_mode

__all__ = [
    "MANIFEST_NAME",
    "UPLOADING_NAME",
    "download_file",
    "download_prefix",
    "get_client",
    "is_s3_uri",
    "localize",
    "make_client",
    "publish",
    "split_s3_uri",
    "upload_dir",
    "upload_file",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "_SUCCESS"  # written last by upload_dir: {"files": {relpath: size}, ...}
UPLOADING_NAME = "_UPLOADING"  # written first by upload_dir, removed after the commit
MANIFEST_FORMAT = "sparsepipe-upload/1"
_MARKERS = (MANIFEST_NAME, UPLOADING_NAME)
_CREDENTIAL_VARS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
_CONNECT_TIMEOUT_S = 5  # an unreachable endpoint fails in seconds, not minutes
_READ_TIMEOUT_S = 60
_MAX_ATTEMPTS = 3  # botocore "standard" retry mode, including the first try


# ------------------------------------------------------------------------------ URIs


def is_s3_uri(s: str) -> bool:
    """True for ``s3://...`` strings (case-insensitive scheme), False for anything else."""
    return isinstance(s, str) and s[:5].lower() == "s3://"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; the key may be empty."""
    if not is_s3_uri(uri):
        raise StorageError(
            f"'{uri}' is not an S3 URI: expected the form s3://BUCKET/KEY (for example "
            "s3://my-bucket/datasets/shapes). Use a local path or fix the scheme."
        )
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-_]{1,254}", bucket):
        raise StorageError(
            f"'{uri}' has no valid bucket name after s3:// (got '{bucket}'): bucket names are "
            "3-63 characters of lowercase letters, digits, dots and dashes. Fix the URI."
        )
    return bucket, key


def _join_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _prefix_of(key: str) -> str:
    """A folder-like prefix: '' stays '', 'a/b' and 'a/b/' become 'a/b/'."""
    key = key.strip("/")
    return f"{key}/" if key else ""


# ---------------------------------------------------------------------------- client


def _endpoint_from_env(env: os._Environ[str] | dict[str, str]) -> tuple[str | None, str | None]:
    for name in _ENDPOINT_VARS:
        value = env.get(name, "").strip()
        if value:
            return value, name
    return None, None


def make_client(
    *,
    endpoint_url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    region: str | None = None,
) -> Any:
    """A boto3 S3 client with short connect timeouts; path-style when ``endpoint_url`` is set.

    Credentials left as ``None`` are found by boto3's usual chain (profile, instance role...).
    """
    import boto3  # heavy: boto3
    from botocore.config import Config  # heavy: botocore

    config = Config(
        connect_timeout=_CONNECT_TIMEOUT_S,
        read_timeout=_READ_TIMEOUT_S,
        retries={"max_attempts": _MAX_ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url or None,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        aws_session_token=session_token or None,
        region_name=region or "us-east-1",
        config=config,
    )


@functools.lru_cache(maxsize=8)
def _cached_client(
    endpoint_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
    region: str | None,
) -> Any:
    return make_client(
        endpoint_url=endpoint_url,
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token,
        region=region,
    )


_client_lock = threading.Lock()


def get_client(client: Any = None) -> Any:
    """``client`` if given, else the client for the current environment (built once per env)."""
    if client is not None:
        return client
    env = os.environ
    endpoint, _ = _endpoint_from_env(env)
    with _client_lock:
        return _cached_client(
            endpoint,
            env.get("AWS_ACCESS_KEY_ID") or None,
            env.get("AWS_SECRET_ACCESS_KEY") or None,
            env.get("AWS_SESSION_TOKEN") or None,
            env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        )


def _endpoint_name(client: Any) -> str:
    url = getattr(getattr(client, "meta", None), "endpoint_url", None) or "the AWS S3 endpoint"
    return _redact_url(str(url))


def _redact_url(url: str) -> str:
    """Drop any user:password@ part of a URL before it goes into a message."""
    return re.sub(r"(?<=://)[^/@]*@", "", url)


# --------------------------------------------------------------------------- errors

_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidSecurity",
    "403",
    "401",
}


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    if not code:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status or "")
    return code


def _bucket_exists(client: Any, bucket: str) -> bool | None:
    """True/False when the server says so; None when it cannot tell (auth, network)."""
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except Exception as exc:  # noqa: BLE001 - classified below
        code = _error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return False
        return None


def _storage_error(
    exc: BaseException,
    uri: str,
    action: str,
    client: Any = None,
    *,
    missing: str = "object",
) -> StorageError:
    """Translate a boto3/botocore/OS exception into one StorageError paragraph (no secrets)."""
    from botocore.exceptions import (  # heavy: botocore
        ClientError,
        ConnectionError as BotoConnectionError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, StorageError):
        return exc
    inner = exc.__cause__ or exc.__context__
    if type(exc).__name__ in ("S3UploadFailedError", "RetriesExceededError") and inner is not None:
        return _storage_error(inner, uri, action, client, missing=missing)  # boto3 wraps these
    endpoint = _endpoint_name(client) if client is not None else "the S3 endpoint"
    env_endpoint, env_name = _endpoint_from_env(os.environ)
    endpoint_hint = (
        f"(from {env_name})"
        if env_endpoint
        else "(set AWS_ENDPOINT_URL, or MLFLOW_S3_ENDPOINT_URL, for a non-AWS server)"
    )
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(
            f"Cannot {action} {uri}: no S3 credentials were found. Set {_CREDENTIAL_VARS} "
            f"(and AWS_ENDPOINT_URL for a non-AWS server such as SeaweedFS or MinIO)."
        )
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, BotoConnectionError)):
        return StorageError(
            f"Cannot {action} {uri}: the S3 endpoint {endpoint} {endpoint_hint} is unreachable "
            f"({type(exc).__name__}). Check that the server is running and the URL and port are "
            "right, or fix AWS_ENDPOINT_URL."
        )
    if isinstance(exc, ReadTimeoutError):
        return StorageError(
            f"Cannot {action} {uri}: the S3 endpoint {endpoint} stopped answering (read timeout). "
            "Check the server's health and retry."
        )
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        bucket = split_s3_uri(uri)[0] if is_s3_uri(uri) else ""
        if code in _AUTH_CODES:
            return StorageError(
                f"Cannot {action} {uri}: access denied by {endpoint} ({code}). The credentials "
                f"are wrong or lack permission on bucket '{bucket}': set {_CREDENTIAL_VARS} "
                "to a key pair that may read and write it (and AWS_SESSION_TOKEN for temporary "
                "credentials)."
            )
        if code in ("NoSuchBucket",) or (
            code in ("404", "NotFound", "NoSuchKey") and client is not None and bucket
            and _bucket_exists(client, bucket) is False
        ):
            return StorageError(
                f"Cannot {action} {uri}: bucket '{bucket}' does not exist on {endpoint}. Create "
                "it (for example `aws s3 mb s3://" + bucket + "` with --endpoint-url for a "
                "non-AWS server) or fix the bucket name in the URI."
            )
        if code in ("404", "NotFound", "NoSuchKey"):
            return StorageError(
                f"Cannot {action} {uri}: no such {missing} in bucket '{bucket}' on {endpoint}. "
                "Check the key (S3 keys are case-sensitive) or upload it first."
            )
        if code == "InvalidBucketName":
            return StorageError(
                f"Cannot {action} {uri}: '{bucket}' is not a valid bucket name (3-63 lowercase "
                "letters, digits, dots, dashes). Fix the URI."
            )
        message = str(exc.response.get("Error", {}).get("Message", "") or code)
        return StorageError(
            f"Cannot {action} {uri}: {endpoint} answered {code or 'an error'} ({message}). "
            "Check the URI and the server's log."
        )
    if isinstance(exc, OSError):
        return StorageError(
            f"Cannot {action} {uri}: local file system error ({exc.strerror or exc}). Check the "
            "path exists, is writable and the disk has space."
        )
    return StorageError(f"Cannot {action} {uri}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _progress(total_bytes: int, n_files: int, desc: str) -> Iterator[Any]:
    """A tqdm byte bar for multi-file transfers (off when stderr is no TTY or tqdm is absent)."""
    bar = None
    if n_files > 1:
        try:
            from tqdm import tqdm  # optional: tqdm

            bar = tqdm(
                total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=None, leave=False,
            )
        except ImportError:  # tqdm is a dependency; stay quiet if an install lacks it
            bar = None
    try:
        yield (bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def _list_objects(client: Any, bucket: str, prefix: str, uri: str) -> list[dict[str, Any]]:
    """All objects under ``prefix`` as dicts with Key, Size, ETag."""
    objects: list[dict[str, Any]] = []
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []) or []:
                objects.append(
                    {"Key": item["Key"], "Size": int(item.get("Size", 0)),
                     "ETag": str(item.get("ETag", ""))}
                )
    except Exception as exc:  # noqa: BLE001 - translated
        raise _storage_error(exc, uri, "list", client) from None
    return objects


def _safe_relpath(rel: str, dest_dir: Path, uri: str) -> Path:
    """``dest_dir / rel`` after proving ``rel`` cannot escape ``dest_dir``."""
    pure = PurePosixPath(rel)
    bad = (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or "\x00" in rel
        or any(part in ("..", ".", "") for part in rel.split("/"))
        or pure.is_absolute()
    )
    target = (dest_dir / Path(*pure.parts)) if not bad else dest_dir
    if not bad:
        try:
            target.resolve().relative_to(dest_dir.resolve())
        except ValueError:
            bad = True
    if bad:
        raise StorageError(
            f"Refusing to download {uri}: it holds an object whose relative key '{rel}' would "
            f"land outside {dest_dir} or is ambiguous (an absolute path, a '..', '.' or empty "
            "path segment, or a backslash). Remove or rename that object, or download a "
            "narrower prefix."
        )
    return target


def _tmp_sibling_dir(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    publish_mode(tmp)  # renamed into place: follow the umask, not mkdtemp's 0700
    return tmp


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``; an old ``dest`` is swapped out first."""
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir() or dest.is_symlink():
            raise StorageError(
                f"Cannot write the folder {dest}: a file (or link) of that name is in the way. "
                "Remove it or choose another destination."
            )
        trash = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, trash)
        try:
            os.replace(tmp, dest)
        except BaseException:
            os.replace(trash, dest)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, dest)


SHA256_METADATA = "sha256"  # object metadata key holding the hex SHA-256 of the uploaded bytes


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a local file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verify(local: Path, expected: str | None, uri: str) -> None:
    """Raise if ``local``'s SHA-256 differs from the one recorded at upload (None: not recorded)."""
    if expected and file_sha256(local) != expected:
        raise StorageError(
            f"Checksum mismatch for {uri}: the downloaded bytes' SHA-256 differs from the one "
            "recorded when it was uploaded, so the object was corrupted or changed afterwards. "
            "Nothing was written at the destination; re-upload it (re-run the step that wrote it)."
        )


def _get_to_file(client: Any, bucket: str, key: str, target: Path, callback: Any) -> None:
    with open(target, "wb") as handle:
        client.download_fileobj(bucket, key, handle, Callback=callback)
        handle.flush()
        os.fsync(handle.fileno())


# -------------------------------------------------------------------------- download


def download_file(uri: str, dest: Path, *, client: Any = None) -> Path:
    """Download one object to ``dest`` (a file path) via a temporary name and a rename."""
    bucket, key = split_s3_uri(uri)
    if not key or key.endswith("/"):
        raise StorageError(
            f"{uri} names a bucket or folder, not a file: use download_prefix for folders, or "
            "add the object key to the URI."
        )
    client = get_client(client)
    dest = Path(dest)
    if dest.is_dir():
        raise StorageError(
            f"Cannot download {uri} to {dest}: that is a folder. Pass the file path to create "
            f"(for example {dest / posixpath.basename(key)})."
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise _storage_error(exc, str(dest), "create the download target", None) from None
    tmp = Path(tmp_name)
    try:
        expected = (client.head_object(Bucket=bucket, Key=key).get("Metadata") or {}).get(SHA256_METADATA)
        _get_to_file(client, bucket, key, tmp, None)
        _verify(tmp, expected, uri)
        publish_mode(tmp)
        os.replace(tmp, dest)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, StorageError):
            raise
        if isinstance(exc, Exception):
            raise _storage_error(exc, uri, "download", client) from None
        raise
    log.debug("downloaded %s -> %s", uri, dest)
    return dest


def _read_json_object(client: Any, bucket: str, key: str, uri: str) -> dict[str, Any]:
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:  # noqa: BLE001
        raise _storage_error(exc, _join_uri(bucket, key), "read", client) from None
    try:
        data = json.loads(body.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (UnicodeDecodeError, ValueError) as exc:
        raise StorageError(
            f"The upload manifest {_join_uri(bucket, key)} of {uri} is not valid JSON ({exc}). "
            "Re-upload the folder (sparsepipe.storage.upload_dir writes it)."
        ) from None


def _plan_prefix(
    client: Any, bucket: str, prefix: str, uri: str, *, require_manifest: bool = False
) -> tuple[list[dict[str, Any]], str]:
    """Objects to fetch for ``prefix`` (after manifest checks) and a digest of their state."""
    objects = _list_objects(client, bucket, prefix, uri)
    if not objects:
        exists = _bucket_exists(client, bucket)
        if exists is False:
            raise StorageError(
                f"Cannot download {uri}: bucket '{bucket}' does not exist on "
                f"{_endpoint_name(client)}. Create it or fix the bucket name in the URI."
            )
        raise StorageError(
            f"Cannot download {uri}: there are no objects under that prefix in bucket "
            f"'{bucket}' on {_endpoint_name(client)}. Check the path (keys are case-sensitive) "
            "or upload the folder first."
        )
    by_rel = {obj["Key"][len(prefix):]: obj for obj in objects}
    manifest_obj = by_rel.get(MANIFEST_NAME)
    uploading_obj = by_rel.get(UPLOADING_NAME)
    if manifest_obj is None:
        if uploading_obj is not None:
            raise StorageError(
                f"Refusing to download {uri}: its upload started but never committed (an "
                f"'{UPLOADING_NAME}' marker and no '{MANIFEST_NAME}' manifest), so the folder "
                "may be partial. Re-run the step that uploads it, or wait until it finishes."
            )
        if require_manifest:
            raise StorageError(
                f"Refusing to download {uri}: it has no '{MANIFEST_NAME}' manifest, so there is "
                "no proof the upload finished. Upload it with sparsepipe (upload_dir / publish)."
            )
        files = [o for o in objects if not o["Key"].endswith("/")]  # skip folder markers
        digest = hashlib.sha256(
            json.dumps([(o["Key"], o["Size"], o["ETag"]) for o in files]).encode()
        ).hexdigest()
        return files, digest
    manifest = _read_json_object(client, bucket, prefix + MANIFEST_NAME, uri)
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise StorageError(
            f"The manifest {_join_uri(bucket, prefix + MANIFEST_NAME)} has no 'files' map. "
            "Re-upload the folder with sparsepipe.storage.upload_dir."
        )
    if uploading_obj is not None:
        marker = _read_json_object(client, bucket, prefix + UPLOADING_NAME, uri)
        if marker.get("upload_id") != manifest.get("upload_id"):
            raise StorageError(
                f"Refusing to download {uri}: a newer upload into it started after the last "
                f"commit and has not committed ('{UPLOADING_NAME}' marker present), so objects "
                "may be half replaced. Wait for it or re-run the step that uploads it."
            )
    problems = []
    files = []
    for rel, size in sorted(listed.items()):
        obj = by_rel.get(rel)
        if obj is None:
            problems.append(f"'{rel}' is missing")
        elif not isinstance(size, int) or size != obj["Size"]:
            problems.append(f"'{rel}' has {obj['Size']} bytes, the manifest says {size}")
        else:
            files.append(obj)
    if problems:
        shown = "; ".join(problems[:5])
        if len(problems) > 5:
            shown += f"; and {len(problems) - 5} more"
        raise StorageError(
            f"Refusing to download {uri}: it does not match its '{MANIFEST_NAME}' manifest "
            f"({shown}), so the upload is partial or was changed afterwards. Re-upload it."
        )
    digest = hashlib.sha256(
        (manifest_obj["ETag"] + json.dumps(sorted(listed.items()))).encode()
    ).hexdigest()
    return files, digest


def download_prefix(
    uri: str, dest_dir: Path, *, client: Any = None, require_manifest: bool = False
) -> Path:
    """Download every object under the prefix ``uri`` into ``dest_dir``, keeping relative paths.

    The files go into a temporary folder beside ``dest_dir`` that is renamed into place at the
    end (an existing ``dest_dir`` is replaced). A ``_SUCCESS`` manifest, when present, decides
    which files belong to the folder and is checked (names and sizes); an upload that started
    but never committed is refused. ``require_manifest=True`` also refuses foreign prefixes.
    """
    bucket, key = split_s3_uri(uri)
    client = get_client(client)
    prefix = _prefix_of(key)
    files, _ = _plan_prefix(client, bucket, prefix, uri, require_manifest=require_manifest)
    checksums = _manifest_checksums(client, bucket, prefix, uri, files)
    return _download_planned(client, bucket, prefix, files, Path(dest_dir), uri, checksums)


def _manifest_checksums(client: Any, bucket: str, prefix: str, uri: str, files: list[dict[str, Any]]) -> dict[str, str]:
    """``{relative path: sha256}`` from the folder's manifest ({} for foreign or older uploads)."""
    if not any(o["Key"] == prefix + MANIFEST_NAME for o in _list_objects(client, bucket, prefix + MANIFEST_NAME, uri)):
        return {}
    manifest = _read_json_object(client, bucket, prefix + MANIFEST_NAME, uri)
    sums = manifest.get("sha256")
    return dict(sums) if isinstance(sums, dict) else {}


def _download_planned(
    client: Any, bucket: str, prefix: str, files: list[dict[str, Any]], dest_dir: Path, uri: str,
    checksums: dict[str, str] | None = None,
) -> Path:
    targets = []
    for obj in files:
        rel = obj["Key"][len(prefix):]
        if rel in _MARKERS:
            continue
        targets.append((obj, _safe_relpath(rel, dest_dir, uri)))  # all checked before any I/O
    try:
        tmp = _tmp_sibling_dir(dest_dir)
    except OSError as exc:
        raise _storage_error(exc, str(dest_dir), "create the download folder", None) from None
    total = sum(obj["Size"] for obj, _ in targets)
    current = uri
    try:
        with _progress(total, len(targets), f"download {uri}") as callback:
            for obj, target in targets:
                current = _join_uri(bucket, obj["Key"])
                local = tmp / target.relative_to(dest_dir)
                local.parent.mkdir(parents=True, exist_ok=True)
                _get_to_file(client, bucket, obj["Key"], local, callback)
                _verify(local, (checksums or {}).get(obj["Key"][len(prefix):]), current)
        _replace_dir(tmp, dest_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, StorageError):
            raise
        if isinstance(exc, Exception):
            raise _storage_error(exc, current, "download", client) from None
        raise
    log.info("downloaded %d files (%d bytes) from %s to %s", len(targets), total, uri, dest_dir)
    return dest_dir


# ---------------------------------------------------------------------------- upload


def upload_file(path: str | os.PathLike[str], uri: str, *, client: Any = None) -> str:
    """Upload one local file to ``uri`` and return the object's URI.

    A URI ending in ``/`` is a folder: the file's name is appended. S3 makes an object visible
    only once it is complete, so a reader never sees half a file.
    """
    path = Path(path)
    if not path.is_file():
        raise StorageError(
            f"Cannot upload {path} to {uri}: no such local file. Check the path (a folder "
            "needs upload_dir)."
        )
    bucket, key = split_s3_uri(uri)
    if not key or key.endswith("/"):
        key = key + path.name
    client = get_client(client)
    target = _join_uri(bucket, key)
    try:
        client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {SHA256_METADATA: file_sha256(path)}})
    except Exception as exc:  # noqa: BLE001
        raise _storage_error(exc, target, "upload to", client) from None
    log.debug("uploaded %s -> %s", path, target)
    return target


def _local_files(local_dir: Path) -> list[tuple[str, Path, int]]:
    files = []
    for root, dirs, names in os.walk(local_dir, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            rel = path.relative_to(local_dir).as_posix()
            if rel in _MARKERS:
                continue  # a folder downloaded earlier may still carry old markers
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise StorageError(
                    f"Cannot upload {local_dir}: {path} cannot be read ({exc.strerror}). Fix or "
                    "remove it (a dangling link?) and retry."
                ) from None
            if not path.is_file():
                continue  # sockets, fifos
            files.append((rel, path, size))
    return files


def upload_dir(local_dir: str | os.PathLike[str], uri: str, *, client: Any = None) -> str:
    """Upload a folder under the prefix ``uri`` ("upload then commit"); return the prefix URI.

    Order: an ``_UPLOADING`` marker, the old ``_SUCCESS`` removed, every file, a new
    ``_SUCCESS`` manifest (relative paths, sizes and SHA-256s) LAST, then the marker removed. A reader
    (``download_prefix``) therefore sees either a committed folder or a refused partial one.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise StorageError(
            f"Cannot upload {local_dir} to {uri}: no such local folder. Check the path (a "
            "single file needs upload_file)."
        )
    bucket, key = split_s3_uri(uri)
    prefix = _prefix_of(key)
    base = _join_uri(bucket, prefix.rstrip("/"))
    files = _local_files(local_dir)
    if not files:
        raise StorageError(
            f"Cannot upload {local_dir} to {base}: the folder has no files. Check that the "
            "step that fills it ran."
        )
    client = get_client(client)
    upload_id = uuid.uuid4().hex
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    marker = json.dumps({"format": MANIFEST_FORMAT, "upload_id": upload_id, "started": started})
    current = base
    total = sum(size for _, _, size in files)
    try:
        current = _join_uri(bucket, prefix + UPLOADING_NAME)
        client.put_object(Bucket=bucket, Key=prefix + UPLOADING_NAME, Body=marker.encode())
        current = _join_uri(bucket, prefix + MANIFEST_NAME)
        client.delete_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)
        sums = {}
        with _progress(total, len(files), f"upload {base}") as callback:
            for rel, path, _ in files:
                current = _join_uri(bucket, prefix + rel)
                sums[rel] = file_sha256(path)
                client.upload_file(str(path), bucket, prefix + rel, Callback=callback,
                                   ExtraArgs={"Metadata": {SHA256_METADATA: sums[rel]}})
        manifest = {
            "format": MANIFEST_FORMAT,
            "upload_id": upload_id,
            "started": started,
            "committed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {rel: size for rel, _, size in files},
            "sha256": sums,  # verified by download_prefix / download_file
        }
        current = _join_uri(bucket, prefix + MANIFEST_NAME)
        client.put_object(
            Bucket=bucket,
            Key=prefix + MANIFEST_NAME,
            Body=json.dumps(manifest, indent=1, sort_keys=True).encode(),
            ContentType="application/json",
        )
        current = _join_uri(bucket, prefix + UPLOADING_NAME)
        client.delete_object(Bucket=bucket, Key=prefix + UPLOADING_NAME)
    except Exception as exc:  # noqa: BLE001
        raise _storage_error(exc, current, "upload to", client) from None
    log.info("uploaded %d files (%d bytes) from %s to %s", len(files), total, local_dir, base)
    return base


# ------------------------------------------------------------------- localize/publish


def _cache_name(uri: str) -> str:
    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    bucket, key = split_s3_uri(uri)
    tail = posixpath.basename(key.rstrip("/")) or bucket
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", tail)[:80].lstrip(".") or "object"
    return f"{tail}-{digest}"


def _read_source(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def localize(uri_or_path: str, cache_dir: Path, *, client: Any = None) -> Path:
    """A local path for a local path or an ``s3://`` URI.

    Local paths (and ``file://`` URIs) are returned as they are once they exist. S3 URIs are
    downloaded under ``cache_dir/<name>-<hash of the URI>/<name>``; whether the URI is a file or
    a folder is decided by the server (an object of that exact key, else objects under it).
    A second call with unchanged remote content (same ETag/size, or the same manifest) reuses
    the cached copy without downloading again.
    """
    text = str(uri_or_path)
    if not is_s3_uri(text):
        if text.startswith("file://"):
            text = text[len("file://"):]
        path = Path(text).expanduser()
        if not path.exists():
            raise StorageError(
                f"{path} does not exist. Check the path, or pass an s3://BUCKET/KEY URI for "
                "remote data."
            )
        return path
    uri = text
    bucket, key = split_s3_uri(uri)
    client = get_client(client)
    slot = Path(cache_dir) / _cache_name(uri)
    source_file = slot / "source.json"
    name = posixpath.basename(key.rstrip("/")) or bucket
    target = slot / name
    head = None
    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            if _error_code(exc) not in ("404", "NotFound", "NoSuchKey"):
                raise _storage_error(exc, uri, "read", client) from None
    if head is not None:
        state = f"file:{head.get('ETag', '')}:{head.get('ContentLength', '')}"
        if _read_source(source_file).get("state") == state and target.is_file():
            log.debug("localize: cache hit for %s at %s", uri, target)
            return target
        download_file(uri, target, client=client)
    else:
        prefix = _prefix_of(key)
        try:
            files, digest = _plan_prefix(client, bucket, prefix, uri)
        except StorageError as exc:
            if "no objects under that prefix" in str(exc):
                raise StorageError(
                    f"Cannot localize {uri}: there is neither an object with that key nor any "
                    f"object under it in bucket '{bucket}' on {_endpoint_name(client)}. Check "
                    "the URI (keys are case-sensitive) or upload the data first."
                ) from None
            raise
        state = f"prefix:{digest}"
        if _read_source(source_file).get("state") == state and target.is_dir():
            log.debug("localize: cache hit for %s at %s", uri, target)
            return target
        _download_planned(client, bucket, prefix, files, target, uri)

    atomic_write_text(source_file, json.dumps({"uri": uri, "state": state}) + "\n")
    return target


def _copy_dir_atomic(src: Path, dest: Path) -> Path:
    tmp = _tmp_sibling_dir(dest)
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=False)
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def publish(local_path: str | os.PathLike[str], dest: str, *, client: Any = None) -> str:
    """Copy a file or folder to a local path, or upload it to S3, atomically either way.

    Local: written under a temporary name beside ``dest`` and renamed (an existing ``dest`` is
    replaced). S3: a file is one PUT; a folder goes through :func:`upload_dir` (committed with a
    manifest). Returns the destination (the URI, or the absolute local path).
    """
    src = Path(local_path)
    if not src.exists():
        raise StorageError(
            f"Cannot publish {src} to {dest}: it does not exist. Check that the step that "
            "writes it ran."
        )
    dest = str(dest)
    if is_s3_uri(dest):
        if src.is_dir():
            return upload_dir(src, dest, client=client)
        return upload_file(src, dest, client=client)
    if dest.startswith("file://"):
        dest = dest[len("file://"):]
    target = Path(dest).expanduser().absolute()
    if target.resolve() == src.resolve():
        return str(target)
    try:
        if src.is_dir():
            _copy_dir_atomic(src, target)
        else:
            if target.is_dir():  # an existing folder receives the file under its own name
                target = target / src.name

            atomic_copy(src, target)
    except StorageError:
        raise
    except OSError as exc:
        raise _storage_error(exc, str(target), "publish to", None) from None
    return str(target)

