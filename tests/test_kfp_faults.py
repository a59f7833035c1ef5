"""Faults of a pipeline step against real servers: S3 stopped and restarted, wrong credentials,
missing bucket, MLflow down.

    .venv/bin/python -m pytest tests/test_kfp_faults.py -q

Steps run through ``sparsepipe.kfp_support`` (what the components call) with a run context that
publishes to S3. The stop/start test has its own SeaweedFS server (function scope), started with
the helpers of ``tests/service_fixtures.py`` and restarted on the same ports and data folder.
"""

import hashlib
import json
import time
from pathlib import Path

import pytest
from service_fixtures import _Proc, _start_weed, _wait_s3_ready, free_port

from sparsepipe.errors import SparsepipeError
from sparsepipe.kfp_support import RunContext, run_data, run_train
from sparsepipe.storage import StorageError
from sparsepipe.tracking import TrackingError

SOURCE = "synthetic:train=4,val=2,size=64,seed={seed}"


@pytest.fixture()
def own_s3(tmp_path, monkeypatch):
    """A SeaweedFS server for this test only; ``restart()`` brings it back on the same ports and data."""
    proc, server = _start_weed(tmp_path / "weed")
    _wait_s3_ready(proc, server)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    state = {"proc": proc}

    def stop():
        state["proc"].stop()

    def restart():
        old = state["proc"]
        state["proc"] = _Proc("SeaweedFS (restarted)", list(old.popen.args), old.popen_env, tmp_path / "weed2.log",
                              cwd=tmp_path / "weed")
        _wait_s3_ready(state["proc"], server)
        client, deadline = server.client(), time.monotonic() + 60
        while True:  # the filer answers before the volume server has re-registered its volumes
            try:
                for key in _objects(client, server.bucket, ""):
                    client.get_object(Bucket=server.bucket, Key=key)["Body"].read()
                return
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    proc.popen_env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("AWS_")}
    server.stop, server.restart = stop, restart
    try:
        yield server
    finally:
        state["proc"].stop()


def _objects(client, bucket, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def _check_committed(client, bucket, prefix, local: Path):
    """The folder under ``prefix`` is exactly the manifest's files, byte-identical to ``local``."""
    keys = _objects(client, bucket, prefix)
    manifest = json.loads(client.get_object(Bucket=bucket, Key=prefix + "_SUCCESS")["Body"].read())
    assert set(keys) == {prefix + rel for rel in manifest["files"]} | {prefix + "_SUCCESS"}  # no extra, no dup
    for rel, size in manifest["files"].items():
        body = client.get_object(Bucket=bucket, Key=prefix + rel)["Body"].read()
        assert len(body) == size, rel
        assert hashlib.md5(body).hexdigest() == hashlib.md5((local / rel).read_bytes()).hexdigest(), rel
    return manifest


def test_s3_stopped_mid_pipeline_then_retry_succeeds(own_s3, tmp_path):
    bucket = own_s3.bucket
    context = RunContext(publish_root=f"s3://{bucket}/faults/run1", s3_endpoint_url=own_s3.endpoint_url).to_json()
    client = own_s3.client()

    first = run_data(SOURCE.format(seed=0), str(tmp_path / "attempt0"), context)  # an earlier step: published
    assert first.extra["published"] == f"s3://{bucket}/faults/run1/data"
    before = _check_committed(client, bucket, "faults/run1/data/", tmp_path / "attempt0")

    own_s3.stop()  # the server goes away while the pipeline runs
    started = time.monotonic()
    with pytest.raises(StorageError) as failure:
        run_data(SOURCE.format(seed=1), str(tmp_path / "attempt1"), context)
    message = str(failure.value)
    assert "unreachable" in message and own_s3.endpoint_url.split("//")[1] in message
    assert "Check that the server is running" in message
    assert own_s3.secret_key not in message and own_s3.access_key not in message
    assert time.monotonic() - started < 60  # seconds of retries, not minutes

    own_s3.restart()
    client = own_s3.client()
    assert _check_committed(client, bucket, "faults/run1/data/", tmp_path / "attempt0") == before  # intact
    retried = run_data(SOURCE.format(seed=1), str(tmp_path / "attempt1"), context)  # KFP's retry of the step
    after = _check_committed(client, bucket, "faults/run1/data/", tmp_path / "attempt1")
    assert after["upload_id"] != before["upload_id"]
    assert not any(k.endswith("_UPLOADING") for k in _objects(client, bucket, "faults/"))
    assert retried.extra["published"] == first.extra["published"]


def test_wrong_credentials_and_missing_bucket_are_clear(s3_env, tmp_path, monkeypatch):
    context = RunContext(publish_root=f"s3://{s3_env.bucket}/faults/creds", s3_endpoint_url=s3_env.endpoint_url)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3_env.secret_key[:8])
    with pytest.raises(StorageError, match="access denied") as failure:
        run_data(SOURCE.format(seed=0), str(tmp_path / "a"), context.to_json())
    assert "credentials" in str(failure.value) and "AWS_SECRET_ACCESS_KEY" in str(failure.value)
    assert "wrong-" not in str(failure.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)

    missing = RunContext(publish_root="s3://no-such-bucket-sparsepipe/x", s3_endpoint_url=s3_env.endpoint_url)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-sparsepipe' does not exist"):
        run_data(SOURCE.format(seed=0), str(tmp_path / "b"), missing.to_json())


def test_mlflow_down_fails_before_training(tmp_path, monkeypatch):
    """Design: the step probes MLflow before any work, so no trained model can be lost to it."""
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the server is down
    context = RunContext(tracking_uri=dead, parent_run_id="0" * 32).to_json()
    out = tmp_path / "train"
    started = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable"):
        run_train("yolov8n.yaml", str(tmp_path / "no-data-needed"), str(out), context, epochs=1, imgsz=64)
    assert time.monotonic() - started < 30
    assert not (out / "model.pt").exists()  # nothing was trained, so nothing was lost
    assert isinstance(TrackingError("x"), SparsepipeError)


def test_publish_root_outside_the_namespace_prefix_fails_before_the_work(s3_env, tmp_path, monkeypatch):
    """Credentials allowed to write only under private/team-a/ (a KFP 2.17 namespace): refused in seconds."""
    from sparsepipe.kfp_support import open_run

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.scoped_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.scoped_secret_key)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outside = RunContext(publish_root=f"s3://{s3_env.bucket}/sparsepipe/run1", s3_endpoint_url=s3_env.endpoint_url)
    with pytest.raises(StorageError, match="may not write there") as failure:
        run_data(SOURCE.format(seed=0), str(tmp_path / "a"), outside.to_json())
    assert "private/<namespace>" in str(failure.value) and s3_env.scoped_secret_key not in str(failure.value)
    assert not (tmp_path / "a").exists()  # refused before the step's work
    with pytest.raises(StorageError, match="may not write there"):  # the first task already refuses it
        open_run(publish_root=f"s3://{s3_env.bucket}/sparsepipe", kfp_run_id="r1", s3_endpoint_url=s3_env.endpoint_url)

    root = open_run(publish_root=f"s3://{s3_env.bucket}/{s3_env.scoped_prefix}sparsepipe", kfp_run_id="r2",
                    s3_endpoint_url=s3_env.endpoint_url)
    result = run_data(SOURCE.format(seed=0), str(tmp_path / "b"), root)
    prefix = f"{s3_env.scoped_prefix}sparsepipe/r2/data/"
    keys = _objects(s3_env.client(), s3_env.bucket, f"{s3_env.scoped_prefix}sparsepipe/")
    assert result.extra["published"].endswith("r2/data") and prefix + "_SUCCESS" in keys
    assert not [k for k in keys if ".sparsepipe-write-check" in k]  # the probe object was removed


def test_namespace_publish_root_defaults():
    import sys

    root = str(Path(__file__).resolve().parents[1])  # pipelines/ lives at the repository root
    if root not in sys.path:
        sys.path.insert(0, root)
    from pipelines.submit import cluster_defaults
    from sparsepipe.errors import ConfigError
    from sparsepipe.kfp_support import namespace_publish_root

    assert cluster_defaults("team-a")["publish_root"] == "s3://mlpipeline/private/team-a/sparsepipe"
    assert namespace_publish_root("") == "s3://mlpipeline/shared/sparsepipe"
    assert "s3_endpoint_url" in cluster_defaults(None)
    with pytest.raises(ConfigError, match="namespace"):
        namespace_publish_root("a/../b")
