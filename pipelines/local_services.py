"""A SeaweedFS S3 server and an MLflow server on 127.0.0.1, for ``pipelines.run_local``.

    .venv/bin/python -m pipelines.run_local

Same recipe as ``tests/service_fixtures.py`` (which is pytest-bound): free ports, a generated
key pair checked by the server, each server in its own process group, stopped by that group's
id (SIGTERM, then SIGKILL) when the ``with`` block ends.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BUCKET = "sparsepipe"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(cmd, env, log: Path, cwd: Path) -> subprocess.Popen:
    handle = open(log, "wb")  # noqa: SIM115 - the server writes to it until stopped
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
    raise RuntimeError(f"{what} did not come up (log {log}):\n{tail}")


@contextlib.contextmanager
def local_services(root: Path):
    """Yield the environment (AWS_*, MLFLOW_TRACKING_URI) of fresh local S3 + MLflow servers."""
    import boto3
    from botocore.config import Config

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    access, secret = "SPLOCAL" + secrets.token_hex(6).upper(), secrets.token_urlsafe(24)
    identities = root / "s3-identities.json"
    identities.write_text(json.dumps({"identities": [{"name": "local", "credentials": [
        {"accessKey": access, "secretKey": secret}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    identities.chmod(0o600)
    ports = {n: free_port() for n in ("s3", "s3.grpc", "master", "master.grpc", "volume", "volume.grpc",
                                      "filer", "filer.grpc", "mlflow")}
    (root / "weed").mkdir(exist_ok=True)
    cmd = [weed, "server", f"-dir={root / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
           "-master.volumeSizeLimitMB=64", f"-volume.port={ports['volume']}",
           f"-volume.port.grpc={ports['volume.grpc']}", "-volume.max=32", f"-filer.port={ports['filer']}",
           f"-filer.port.grpc={ports['filer.grpc']}", "-s3", f"-s3.port={ports['s3']}",
           f"-s3.port.grpc={ports['s3.grpc']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           f"-s3.config={identities}"]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    procs = []
    try:
        procs.append(_start(cmd, base_env, root / "weed.log", root))
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                          region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, connect_timeout=2))

        def bucket_ready() -> bool:
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket=BUCKET)
            s3.head_bucket(Bucket=BUCKET)
            return True

        _wait(bucket_ready, "SeaweedFS", procs[0], root / "weed.log", 60)
        mlflow = str(Path(sys.executable).parent / "mlflow")
        mlflow_env = {**base_env, "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": access,
                      "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
                      "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        procs.append(_start([mlflow, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", "1"],
                            mlflow_env, root / "mlflow.log", root))
        uri = f"http://127.0.0.1:{ports['mlflow']}"
        _wait(lambda: urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200,  # noqa: S310
              "MLflow server", procs[1], root / "mlflow.log", 90)
        yield {**env, "MLFLOW_TRACKING_URI": uri, "SPARSEPIPE_LOCAL_BUCKET": BUCKET}
    finally:
        for proc in reversed(procs):
            _stop(proc)
