"""Code execution through allowed classes and model configs (issue 15, item 1).

    .venv/bin/python -m pytest tests/test_hardening_exec.py -q

The scan of issue 8 checked which globals a pickle names, not what it calls: a ``.pt`` that reduces
to ``DetectionModel({"activation": "<python>"})`` named only an allowed class, and the constructor
``eval()``ed the string. Each hostile file below carries a marker file that must never appear.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import yaml

from sparsepipe.cli import main
from sparsepipe.errors import ModelError
from sparsepipe.trust import (UntrustedCheckpointError, check_checkpoint, disallowed_calls, enforcing_loads,
                              pickle_scan)

DATA = "synthetic:train=2,val=2,size=64"


def _payload(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned') or nn.SiLU()"


def _config(marker: Path) -> dict:
    import ultralytics

    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml").read_text())
    return {**cfg, "scale": "n", "nc": 2, "activation": _payload(marker)}


class _CallsModel:
    """Unpickles as ``DetectionModel(cfg)``: an allowed global, called with a config from the file."""

    def __init__(self, cfg: dict):
        self.cfg = cfg

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel

        return (DetectionModel, (self.cfg,))


def _save(obj, path: Path) -> Path:
    import torch

    torch.save({"model": obj, "train_args": {}}, path)
    return path


@pytest.fixture()
def marker(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("SPARSEPIPE_TRUST_CHECKPOINT", raising=False)
    return tmp_path / "marker"


def test_scanner_sees_what_a_pickle_calls(marker):
    names, calls = pickle_scan(pickle.dumps({"m": _CallsModel(_config(marker))}, protocol=2))
    assert "ultralytics.nn.tasks.DetectionModel" in names and "ultralytics.nn.tasks.DetectionModel" in calls
    assert disallowed_calls(calls) == ["ultralytics.nn.tasks.DetectionModel"]
    # torch's own tensor rebuilds and containers stay callable
    assert disallowed_calls(["torch._utils._rebuild_tensor_v2", "collections.OrderedDict"]) == []
    assert disallowed_calls(["copyreg._reconstructor", "torch.nn.modules.conv.Conv2d"]) == [
        "copyreg._reconstructor", "torch.nn.modules.conv.Conv2d"]
    assert not marker.exists()


@pytest.mark.parametrize("argv", [
    ["export", "--model", "{evil}", "--imgsz", "64", "--no-track"],
    ["evaluate", "--model", "{evil}", "--data", DATA, "--no-track"],
    ["train", "--model", "{evil}", "--epochs", "1", "--imgsz", "64", "--no-track", "--data", DATA],
    ["recipe", "validate", "tests/sparsify/prune-quick.yaml", "--model", "{evil}"],
    ["sparsify", "--model", "yolov8n.yaml", "--teacher", "{evil}", "--recipe", "tests/sparsify/distill-output.yaml",
     "--data", DATA, "--imgsz", "64", "--no-track"],
])
def test_checkpoint_calling_an_allowed_class_is_refused(argv, marker, tmp_path, capsys):
    evil = _save(_CallsModel(_config(marker)), tmp_path / "evil.pt")
    args = [a.replace("{evil}", str(evil)) for a in argv]
    if argv[0] != "recipe":
        args += ["--out", str(tmp_path / "out")]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "DetectionModel" in err and "calls" in err and "Traceback" not in err
    assert not marker.exists(), "the activation string ran"
    assert not (tmp_path / "out" / "result.json").exists()


def test_checkpoint_whose_model_config_runs_code_is_refused(marker, tmp_path, capsys):
    """A genuine model (rebuilt with __new__ + BUILD) carrying a hostile activation in ``model.yaml``:
    train rebuilds the model from that dict, so it is checked right after loading."""
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    model.yaml = {**model.yaml, "activation": _payload(marker)}
    ckpt = _save(model, tmp_path / "cfg.pt")
    check_checkpoint(ckpt)  # the pickle itself is clean
    code = main(["train", "--model", str(ckpt), "--epochs", "1", "--imgsz", "64", "--no-track", "--data", DATA,
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "activation" in err and "Traceback" not in err, err
    assert not marker.exists()


@pytest.mark.parametrize("field,value,message", [
    ("activation", "PAYLOAD", "activation"),
    ("activation", "nn.SiLU(__import__('os'))", "activation"),
    ("layer", "torch_load", "layer 0"),
])
def test_model_yaml_that_runs_code_is_refused(field, value, message, marker, tmp_path, capsys):
    cfg = _config(marker)
    cfg["activation"] = _payload(marker) if value == "PAYLOAD" else value
    if field == "layer":
        cfg["activation"] = "nn.ReLU()"
        cfg["backbone"][0] = [-1, 1, value, [str(marker)]]
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["train", "--model", str(path), "--epochs", "1", "--imgsz", "64", "--no-track", "--data", DATA,
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not marker.exists()


def test_plain_activations_still_build():
    from sparsepipe.models import check_model_config

    cfg = _config(Path("unused"))
    for act in ("nn.SiLU()", "torch.nn.LeakyReLU(0.1)", "nn.ReLU(inplace=True)"):
        check_model_config({**cfg, "activation": act}, "test")
    with pytest.raises(ModelError, match="activation"):
        check_model_config({**cfg, "activation": "nn.functional.relu()"}, "test")


def test_scan_never_imports_a_module_the_file_names(tmp_path, monkeypatch):
    """``sparsepipe.__main__`` runs the CLI when imported: naming it must not import it."""
    import zipfile

    monkeypatch.delitem(sys.modules, "sparsepipe.__main__", raising=False)
    evil = tmp_path / "main.pt"  # written by hand: pickle.dumps itself would import the module
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("main/data.pkl", b"\x80\x02csparsepipe.__main__\nmain\n)R.")
    with pytest.raises(UntrustedCheckpointError, match="sparsepipe.__main__.main"):
        check_checkpoint(evil)
    assert "sparsepipe.__main__" not in sys.modules


class _System:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_loads_use_torchs_enforcing_unpickler(tmp_path, marker):
    """A load that skipped the scan (ultralytics' own torch.load inside YOLO()) is still enforced:
    globals off the list are refused, and an allowed model class is created but never called."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    clean = _save(DetectionModel("yolov8n.yaml", nc=2, verbose=False), tmp_path / "clean.pt")
    evil = _save(_CallsModel(_config(marker)), tmp_path / "evil.pt")
    system = _System()
    system.marker = marker
    shell = _save(system, tmp_path / "shell.pt")
    with enforcing_loads(clean):  # registers DetectionModel, as loading the clean file needs it
        assert isinstance(torch.load(clean, weights_only=False)["model"], DetectionModel)
        made = torch.load(evil, weights_only=False)["model"]  # what ultralytics passes: forced to weights_only
        assert type(made) is DetectionModel and not hasattr(made, "yaml")  # __new__ only, no constructor
        with pytest.raises(pickle.UnpicklingError):
            torch.load(shell, weights_only=False)
    assert not marker.exists()
