"""Every step that takes --data checks it like ``sparsepipe data`` does (issue 15, items 4, 5, 7).

    .venv/bin/python -m pytest tests/test_hardening_data.py -q

``train --data <folder>`` used to hand the folder straight to ultralytics, which drops a label
with class id 99, a 4-column row or a truncated JPEG with a warning and trains on; ``data``
accepted a dataset without labels. Each case here is a real generated dataset, damaged one way,
passed to the real CLI: the step must refuse it naming the file, exit 2, print no traceback and
leave ``--out`` untouched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sparsepipe.cli import main
from sparsepipe.synthetic import SyntheticConfig, generate_dataset

CONFIG = SyntheticConfig(train_images=3, val_images=2, image_size=64, seed=11)


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


def _class_99(root: Path) -> Path:
    label = _first(root / "labels" / "train", "*.txt")
    label.write_text("99 0.5 0.5 0.1 0.1\n")
    return label


def _four_columns(root: Path) -> Path:
    label = _first(root / "labels" / "train", "*.txt")
    label.write_text("1 0.5 0.5 0.1\n")
    return label


def _truncated_jpeg(root: Path) -> Path:
    image = _first(root / "images" / "train", "*.jpg")
    image.write_bytes(image.read_bytes()[:200])
    return image


def _no_labels(root: Path) -> Path:
    shutil.rmtree(root / "labels")
    return root / "labels"


def _label_is_a_folder(root: Path) -> Path:
    label = _first(root / "labels" / "train", "*.txt")
    label.unlink()
    label.mkdir()
    return label


DAMAGE = {
    "class id 99": (_class_99, "class id 99 is out of range"),
    "4-column label": (_four_columns, "4 values, expected 5"),
    "truncated jpeg": (_truncated_jpeg, "image cannot be decoded"),
    "no labels folder": (_no_labels, "no label files"),
    "label path is a folder": (_label_is_a_folder, "is a folder, not a label file"),
}

STEPS = {
    "data": ["data", "--source", "{data}"],
    "train": ["train", "--model", "yolov8n.yaml", "--data", "{data}", "--epochs", "1", "--imgsz", "64",
              "--workers", "0", "--no-track"],
    "sparsify": ["sparsify", "--model", "yolov8n.yaml", "--data", "{data}", "--recipe", "{recipe}",
                 "--imgsz", "64", "--workers", "0", "--no-track"],
    "quantize": ["quantize", "--model", "{model}", "--data", "{data}", "--no-track"],
    "evaluate": ["evaluate", "--model", "{model}", "--data", "{data}", "--no-track"],
}


@pytest.fixture()
def damaged(request, tmp_path) -> tuple[Path, Path, str]:
    """A generated dataset folder damaged one way: (folder, damaged path, expected words)."""
    damage, expected = DAMAGE[request.param]
    yaml_path = generate_dataset(tmp_path / "ds", CONFIG, progress=False)
    return yaml_path.parent, damage(yaml_path.parent), expected


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
@pytest.mark.parametrize("step", list(STEPS))
def test_every_step_refuses_a_damaged_dataset(step, damaged, tmp_path, capsys):
    folder, bad_path, expected = damaged
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("training_modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}\n")
    model = tmp_path / "model.onnx"  # never opened: the data is checked first
    model.write_bytes(b"\0" * 16)
    out = tmp_path / "out"
    argv = [a.format(data=folder, recipe=recipe, model=model) for a in STEPS[step]]
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and str(bad_path) in err and expected in err, err
    assert not out.exists() or not any(out.iterdir()), "a refused step wrote into --out"


def test_a_checked_dataset_is_checked_again_after_a_change(tmp_path):
    """The validation stamp skips re-decoding unchanged files, never a changed one."""
    from sparsepipe.data import DataConfig, resolve_data
    from sparsepipe.errors import DataError

    yaml_path = generate_dataset(tmp_path / "ds", CONFIG, progress=False)
    config = DataConfig(cache_dir=tmp_path / "cache", progress=False)
    assert resolve_data(str(yaml_path.parent), config=config) == yaml_path.resolve()
    assert len(list((tmp_path / "cache" / "validated").iterdir())) == 1
    label = _class_99(yaml_path.parent)
    with pytest.raises(DataError, match=f"{label.name}:1: class id 99"):
        resolve_data(str(yaml_path.parent), config=config)


# ------------------------------------------------------------------ item 7: host files


def _host_dataset(tmp_path: Path) -> Path:
    """A valid dataset outside the archive ("host files"), whose images an archive must not reach."""
    yaml_path = generate_dataset(tmp_path / "host", CONFIG, progress=False)
    return yaml_path.parent


def _archive(path: Path, data_yaml: str, extra: dict[str, bytes] | None = None) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tf:
        for name, blob in {"ds/data.yaml": data_yaml.encode(), **(extra or {})}.items():
            member = tarfile.TarInfo(name)
            member.size = len(blob)
            tf.addfile(member, io.BytesIO(blob))
    return path


@pytest.mark.parametrize("how", ["absolute split", "dotdot split", "absolute path key", "txt list"])
def test_archive_data_yaml_cannot_reach_host_files(how, tmp_path, capsys):
    host = _host_dataset(tmp_path)
    depth = "../" * 12
    yamls = {
        "absolute split": f"train: {host}/images/train\nval: {host}/images/val\nnames: [a, b, c, d, e, f]\n",
        "dotdot split": f"train: {depth}{host}/images/train\nval: {depth}{host}/images/val\nnames: [a, b, c, d, e, f]\n",
        "absolute path key": f"path: {host}\ntrain: images/train\nval: images/val\nnames: [a, b, c, d, e, f]\n",
        "txt list": "train: train.txt\nval: train.txt\nnames: [a, b, c, d, e, f]\n",
    }
    listed = "".join(f"{p}\n" for p in sorted((host / "images" / "train").glob("*.jpg")))
    archive = _archive(tmp_path / "evil.tar.gz", yamls[how], {"ds/train.txt": listed.encode()})
    out = tmp_path / "out"
    code = main(["data", "--source", str(archive), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "outside the dataset" in err, err
    assert not out.exists(), "host images were copied into --out"
    for step in (["train", "--model", "yolov8n.yaml", "--epochs", "1", "--imgsz", "64", "--no-track"],):
        assert main([*step, "--data", str(archive), "--out", str(tmp_path / "t")]) == 2
        assert "outside the dataset" in capsys.readouterr().err


def test_symlinked_label_outside_the_dataset_is_never_quoted(tmp_path, capsys):
    yaml_path = generate_dataset(tmp_path / "ds", CONFIG, progress=False)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:$6$SECRET-HASH:19000:0:99999:7:::\n")
    label = _first(yaml_path.parent / "labels" / "train", "*.txt")
    label.unlink()
    label.symlink_to(secret)
    code = main(["data", "--source", str(yaml_path.parent), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "SECRET" not in err and "root:" not in err, err
    assert f"{label}:1: non-numeric value in (not quoted: the file is a link to outside the dataset)" in err, err
