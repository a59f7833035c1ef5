"""Untrusted checkpoints: a .pt is a pickle, so sparsepipe scans it before torch loads it.

    .venv/bin/python -m pytest tests/test_hardening_checkpoints.py -q

A crafted checkpoint that runs code when unpickled (it would create a marker file) is refused by
every command that loads a .pt, without running; ``--trust-checkpoint`` lets it load (and run).
Remote checkpoints (S3, the MLflow registry) must match the SHA-256 sparsepipe recorded when it
wrote them. Real SeaweedFS and MLflow servers; nothing is mocked.
"""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from sparsepipe.cli import main
from sparsepipe.trust import (UNRESOLVED, UntrustedCheckpointError, check_checkpoint, checkpoint_globals,
                              checkpoint_trust, disallowed_globals, pickle_globals)


class _Payload:
    """Unpickling this runs ``builtins.exec`` on code that writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"model": _Payload(marker), "train_args": {}}, path)
    return path


@pytest.fixture(scope="module")
def clean_checkpoint(tmp_path_factory) -> Path:
    """A yolov8n built from its YAML and saved the way ultralytics does (model in half precision)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    path = tmp_path_factory.mktemp("ckpt") / "clean.pt"
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False).half()
    torch.save({"model": model, "epoch": -1, "train_args": {"imgsz": 64}, "date": "2026-01-01"}, path)
    return path


# ------------------------------------------------------------------------------ the scanner


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_scanner_names_dangerous_globals_in_every_protocol(protocol, tmp_path):
    for payload, expected in ((_Payload(tmp_path / "m"), "builtins.exec"), (_System(), "posix.system")):
        names = pickle_globals(pickle.dumps({"x": payload}, protocol=protocol))
        if protocol < 3:  # Python 2 compatible protocols spell the builtins module __builtin__
            expected = expected.replace("builtins.", "__builtin__.")
        assert expected in names
        assert disallowed_globals(names) == [expected]
    assert not (tmp_path / "m").exists()  # scanning never unpickles


def test_stack_global_tricks_are_unresolved_and_refused():
    # STACK_GLOBAL whose operands were pushed earlier and hidden below other values: the scanner
    # must not believe the two strings right before it ("torch", "Size") name the global; it
    # simulates the stack (issue 15), so it sees the real one.
    ops = (b"\x80\x04" + b"\x8c\x02os" + b"\x8c\x06system" + b"\x8c\x05torch" + b"\x8c\x04Size"
           + b"0" + b"0" + b"\x93" + b"\x8c\x04true" + b"\x85R" + b".")  # POP POP STACK_GLOBAL ...
    assert pickle_globals(ops) == ["os.system"]
    # operands that are not string constants cannot be named: refused
    computed = b"\x80\x04" + b"\x8c\x02os" + b"\x8c\x06system" + b"\x86" + b"0" + b"N" + b"N" + b"\x93" + b"."
    assert pickle_globals(computed) == [UNRESOLVED]
    assert disallowed_globals([UNRESOLVED]) == [UNRESOLVED]
    # operands fetched from the memo are followed
    memo = (b"\x80\x04" + b"\x8c\x05torch\x94" + b"\x8c\x04Size\x94" + b"0" + b"0" + b"h\x00h\x01\x93" + b".")
    assert pickle_globals(memo) == ["torch.Size"]


def test_allowlist_accepts_model_classes_only():
    ok = ["torch.nn.modules.conv.Conv2d", "ultralytics.nn.tasks.DetectionModel", "torch._utils._rebuild_tensor_v2",
          "collections.OrderedDict", "torch.HalfStorage", "torch.float16", "builtins.set",
          "torch.per_tensor_affine", "torch.quint8"]
    bad = ["builtins.eval", "builtins.getattr", "subprocess.Popen", "posix.system", "os.system",
           "torch.load", "torch.hub.load", "numpy.testing._private.utils.runstring", "ultralytics.YOLO",
           "ultralytics.utils.SettingsManager", "sparsepipe.cli.main", "torch.nn.functional.relu",
           "ultralytics.nn.autobackend.AutoBackend", "ultralytics.nn.text_model.MobileCLIP", "torch.fx.GraphModule"]
    assert disallowed_globals(ok) == []
    assert disallowed_globals(bad) == bad


def test_clean_checkpoint_passes_and_loads(clean_checkpoint):
    names = checkpoint_globals(clean_checkpoint)
    assert "ultralytics.nn.tasks.DetectionModel" in names and disallowed_globals(names) == []
    check_checkpoint(clean_checkpoint)  # no error
    from sparsepipe.models import load_yolo

    assert load_yolo(str(clean_checkpoint)).model.yaml["nc"] == 2


def test_legacy_and_damaged_files_are_refused(tmp_path):
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"model": 1}, protocol=2))  # not a zip: torch would unpickle it raw
    with pytest.raises(UntrustedCheckpointError, match="not a zip-format"):
        check_checkpoint(legacy)
    import zipfile

    empty = tmp_path / "empty.pt"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("x/version", "3")
    with pytest.raises(UntrustedCheckpointError, match="no data.pkl"):
        check_checkpoint(empty)
    with checkpoint_trust():
        check_checkpoint(legacy)  # the user vouched for it


# ------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("argv", [
    ["export", "--imgsz", "64"],
    ["evaluate", "--data", "synthetic:train=2,val=2,size=64"],
    ["train", "--epochs", "1", "--imgsz", "64", "--no-track", "--data", "synthetic:train=2,val=2,size=64"],
    ["quantize", "--imgsz", "64", "--data", "synthetic:train=2,val=2,size=64"],
    ["sparsify", "--recipe", "tests/sparsify/prune-quick.yaml", "--data", "synthetic:train=2,val=2,size=64"],
])
def test_code_running_checkpoint_is_refused_by_every_command(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SPARSEPIPE_TRUST_CHECKPOINT", raising=False)
    marker = tmp_path / "marker"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    args = [argv[0], "--model", str(evil), *argv[1:], "--out", str(tmp_path / "out")]
    if argv[0] != "train":
        args.append("--no-track")
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Refusing to load checkpoint" in err and "builtin__.exec" in err and "--trust-checkpoint" in err
    assert "Traceback" not in err
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "out" / "result.json").exists()


def test_trust_flag_loads_it_and_the_payload_runs(tmp_path, capsys, monkeypatch):
    """Documented: --trust-checkpoint hands the file to torch.load, which runs what it says."""
    monkeypatch.delenv("SPARSEPIPE_TRUST_CHECKPOINT", raising=False)
    marker = tmp_path / "marker"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    code = main(["export", "--model", str(evil), "--trust-checkpoint", "--no-track", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert marker.read_text() == "pwned"
    assert code == 2 and "Traceback" not in err  # not a model after all: a clear ModelError


def test_environment_variable_trusts_in_a_subprocess(tmp_path):
    """Components have no CLI flags: SPARSEPIPE_TRUST_CHECKPOINT=1 is their opt-in."""
    marker = tmp_path / "marker"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    code = ("import sys\nfrom sparsepipe.models import resolve_model_path\n"
            "from sparsepipe.errors import SparsepipeError\n"
            "try:\n    resolve_model_path(sys.argv[1])\nexcept SparsepipeError as e:\n    print(e); sys.exit(2)\n")
    env = {k: v for k, v in os.environ.items() if k != "SPARSEPIPE_TRUST_CHECKPOINT"}
    refused = subprocess.run([sys.executable, "-c", code, str(evil)], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "Refusing" in refused.stdout
    trusted = subprocess.run([sys.executable, "-c", code, str(evil)], capture_output=True, text=True,
                             env={**env, "SPARSEPIPE_TRUST_CHECKPOINT": "1"})
    assert trusted.returncode == 0, trusted.stderr
    assert not marker.exists()  # resolving only checks the policy; loading would run it


# ----------------------------------------------------------------------- remote checkpoints


def test_s3_checkpoint_needs_the_recorded_checksum(s3_env, clean_checkpoint, tmp_path):
    from sparsepipe import storage
    from sparsepipe.models import resolve_model_path

    client = s3_env.client()
    good = storage.upload_file(clean_checkpoint, f"s3://{s3_env.bucket}/trust/{tmp_path.name}/good.pt")
    assert Path(resolve_model_path(good, tmp_path / "c1")).read_bytes() == clean_checkpoint.read_bytes()

    foreign = f"trust/{tmp_path.name}/foreign.pt"  # uploaded by someone else: no sha256 metadata
    client.put_object(Bucket=s3_env.bucket, Key=foreign, Body=clean_checkpoint.read_bytes())
    with pytest.raises(UntrustedCheckpointError, match="without a SHA-256 recorded"):
        resolve_model_path(f"s3://{s3_env.bucket}/{foreign}", tmp_path / "c2")
    with checkpoint_trust():
        resolve_model_path(f"s3://{s3_env.bucket}/{foreign}", tmp_path / "c3")

    # bytes replaced after upload while the recorded checksum stayed: refused, nothing cached
    tampered = f"trust/{tmp_path.name}/tampered.pt"
    meta = client.head_object(Bucket=s3_env.bucket, Key=good.split("/", 3)[3])["Metadata"]
    client.put_object(Bucket=s3_env.bucket, Key=tampered, Body=clean_checkpoint.read_bytes() + b"x", Metadata=meta)
    from sparsepipe.errors import StorageError

    with pytest.raises(StorageError, match="Checksum mismatch"):
        resolve_model_path(f"s3://{s3_env.bucket}/{tampered}", tmp_path / "c4")
    assert not [p for p in (tmp_path / "c4").rglob("*.pt")]


def test_registry_checkpoint_is_verified_against_its_version_tags(mlflow_server, s3_env, clean_checkpoint,
                                                                  tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from sparsepipe.models import resolve_model_path
    from sparsepipe.registry import CHECKSUM_TAG_PREFIX, RegistryError, register_model
    from sparsepipe.storage import file_sha256

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    name = f"trust-{tmp_path.name}"
    mv = register_model(clean_checkpoint, name, experiment="hardening", variant="baseline")
    assert mv.tags[f"{CHECKSUM_TAG_PREFIX}clean.pt"] == file_sha256(clean_checkpoint)
    local = resolve_model_path(f"models:/{name}/{mv.version}", tmp_path / "cache")
    assert Path(local).read_bytes() == clean_checkpoint.read_bytes()

    # A version created outside sparsepipe (no checksum tags): its .pt needs --trust-checkpoint.
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    foreign = client.create_model_version(name, source=mv.source, run_id=mv.run_id)
    with pytest.raises(UntrustedCheckpointError, match="without a SHA-256"):
        resolve_model_path(f"models:/{name}/{foreign.version}", tmp_path / "cache")
    with checkpoint_trust():
        resolve_model_path(f"models:/{name}/{foreign.version}", tmp_path / "cache")

    # The stored artifact replaced behind MLflow's back (straight in the S3 bucket): refused, not cached.
    s3 = s3_env.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_env.bucket, Prefix="mlflow/").get("Contents", [])
            if o["Key"].endswith("/registry/baseline/clean.pt") and mv.run_id in o["Key"]]
    assert len(keys) == 1
    s3.put_object(Bucket=s3_env.bucket, Key=keys[0], Body=clean_checkpoint.read_bytes() + b"tampered")
    with pytest.raises(RegistryError, match="was recorded when it was registered"):
        resolve_model_path(f"models:/{name}/{mv.version}", tmp_path / "fresh-cache")
    assert not list((tmp_path / "fresh-cache").rglob("*.pt"))


def test_tracker_records_and_verifies_artifact_checksums(mlflow_server, s3_env, clean_checkpoint, tmp_path):
    from sparsepipe.tracking import TrackingError, download_verified_artifact, resolve_tracker

    with resolve_tracker("hardening", "checksums", tracking_uri=mlflow_server.tracking_uri) as tracker:
        tracker.log_artifact(clean_checkpoint, "weights")
        run_id = tracker.run_id
        (tmp_path / "notes.txt").write_text("not a model file: no checksum tag")
        tracker.log_artifact(tmp_path / "notes.txt")
    got = download_verified_artifact(run_id, "weights/clean.pt", tmp_path / "dl", mlflow_server.tracking_uri)
    assert got.read_bytes() == clean_checkpoint.read_bytes()
    with pytest.raises(TrackingError, match="no sparsepipe.sha256.notes.txt tag"):
        download_verified_artifact(run_id, "notes.txt", tmp_path / "dl2", mlflow_server.tracking_uri)
    s3 = s3_env.client()
    (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_env.bucket, Prefix="mlflow/").get("Contents", [])
              if run_id in o["Key"] and o["Key"].endswith("weights/clean.pt")]
    s3.put_object(Bucket=s3_env.bucket, Key=key, Body=b"not the checkpoint")
    with pytest.raises(TrackingError, match="changed or corrupted"):
        download_verified_artifact(run_id, "weights/clean.pt", tmp_path / "dl3", mlflow_server.tracking_uri)
    assert not (tmp_path / "dl3" / "clean.pt").exists()



@pytest.mark.parametrize("command", ["export", "evaluate", "quantize"])
def test_step_folder_holding_a_code_running_checkpoint_is_refused(command, tmp_path, capsys, monkeypatch):
    """--model STEP_FOLDER (result.json naming model.pt) goes through the same check before any torch.load."""
    from sparsepipe.results import StepResult

    monkeypatch.delenv("SPARSEPIPE_TRUST_CHECKPOINT", raising=False)
    marker = tmp_path / "marker"
    folder = tmp_path / "train"
    folder.mkdir()
    _evil_checkpoint(folder / "model.pt", marker)
    StepResult(step="train", out_dir=str(folder), files={"weights": "model.pt"}).write()
    argv = [command, "--model", str(folder), "--no-track", "--out", str(tmp_path / "out")]
    if command != "export":
        argv += ["--data", "synthetic:train=2,val=2,size=64"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Refusing to load checkpoint" in err, err
    assert not marker.exists()


def test_recipe_commands_check_the_model_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SPARSEPIPE_TRUST_CHECKPOINT", raising=False)
    marker = tmp_path / "marker"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    code = main(["recipe", "validate", "tests/sparsify/prune-quick.yaml", "--model", str(evil)])
    err = capsys.readouterr().err
    assert code == 2 and "Refusing to load checkpoint" in err and not marker.exists(), err
    code = main(["recipe", "validate", "tests/sparsify/prune-quick.yaml", "--model", str(evil), "--trust-checkpoint"])
    err = capsys.readouterr().err
    assert marker.exists()  # trusted: torch ran the payload, as documented
    assert code == 2 and "Traceback" not in err  # and then it was not a model: a clear error
