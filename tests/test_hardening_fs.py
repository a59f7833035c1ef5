"""File-system faults are clear errors, and leave nothing a later step would trust (issue 15, item 9).

    .venv/bin/python -m pytest tests/test_hardening_fs.py -q

A read-only file system and a full disk are real: a tmpfs mounted in a private mount namespace
(``unshare -m``; skipped where that is not permitted), the CLI run inside it as a subprocess.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparsepipe.cli import main


def test_out_name_too_long(tmp_path, capsys):
    out = tmp_path / ("x" * 300)
    code = main(["export", "--model", "yolov8n.yaml", "--no-track", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "name is longer than the file system allows" in err, err


def _in_tmpfs(tmp_path: Path, size: str, script: str, read_only: bool = False) -> subprocess.CompletedProcess:
    """Run ``script`` (shell, $D is the mount) in a private mount namespace with a ``size`` tmpfs at $D."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    mount = tmp_path / "mnt"
    mount.mkdir()
    remount = "mount -o remount,ro \"$D\" &&" if read_only else ""
    shell = f'D={mount}; mount -t tmpfs -o size={size} tmpfs "$D" || exit 99; {remount} {script}; code=$?; ' \
            'ls -A "$D" > "$D.listing" 2>&1; ls -A "$D"/out >> "$D.listing" 2>&1; ' \
            'ls -A "$D"/out/ultralytics/weights > "$D.weights" 2>&1; exit $code'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", shell], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    if proc.returncode == 99 or "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr[:200]:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr[:200]}")
    proc.listing = (tmp_path / "mnt.listing").read_text()  # type: ignore[attr-defined]
    proc.listing_weights = (tmp_path / "mnt.weights").read_text()  # type: ignore[attr-defined]
    return proc


CLI = f"{sys.executable} -m sparsepipe"


def test_read_only_file_system(tmp_path):
    proc = _in_tmpfs(tmp_path, "1m", f'{CLI} data --source synthetic:train=2,val=2,size=64 --out "$D/out"',
                     read_only=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "read-only file system" in proc.stderr, proc.stderr


QUICK_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "yolov8n-quick-test.yaml"


@pytest.mark.parametrize("step", ["data", "train", "sparsify"])
def test_full_disk_leaves_no_result(step, tmp_path):
    """data fills the disk with images, train with ultralytics' last.pt (it was left truncated, and
    a later load said "re-save it with a current torch")."""
    commands = {
        "data": f'{CLI} data --source synthetic:train=24,val=8,size=256 --out "$D/out"',
        "train": f'{CLI} train --model yolov8n.yaml --data synthetic:train=4,val=2,size=64 --epochs 1 --imgsz 64 '
                 f'--batch 2 --workers 0 --no-plots --no-track --out "$D/out"',
        "sparsify": f'{CLI} sparsify --model yolov8n.yaml --data synthetic:train=4,val=2,size=64 --recipe {QUICK_RECIPE} '
                    f'--recipe-args num_epochs=1 --imgsz 64 --batch 2 --workers 0 --no-track --out "$D/out"',
    }
    proc = _in_tmpfs(tmp_path, {"data": "256k", "train": "1m", "sparsify": "1m"}[step], commands[step])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "disk is full" in proc.stderr, proc.stderr
    assert "result.json" not in proc.listing and ".tmp" not in proc.listing, proc.listing
    if step != "data":
        weights = list((tmp_path / "mnt").rglob("*.pt"))  # the tmpfs is gone: nothing may be listed
        assert "last.pt" not in proc.listing_weights, proc.listing_weights  # type: ignore[attr-defined]
        assert not weights


def test_truncated_checkpoint_is_named_truncated(tmp_path, capsys):
    """A .pt cut short (full disk, kill) used to get "re-save it with a current torch"."""
    import torch

    whole = tmp_path / "whole.pt"
    torch.save({"weights": torch.zeros(1000)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    code = main(["export", "--model", str(cut), "--no-track", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and f"Checkpoint {cut} is truncated" in err, err
    assert "Re-save it with a current torch" not in err
