"""The core layer: atomic folder replacement, URL redaction and the one cache root.

    .venv/bin/python -m pytest tests/test_core.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsepipe.core.cache import cache_dir, cache_root
from sparsepipe.core.files import replace_dir
from sparsepipe.core.redaction import redact_url
from sparsepipe.errors import StorageError


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "f.txt").write_text(text)
    return path


def test_replace_dir_swaps_and_leaves_nothing_beside(tmp_path):
    target = _folder(tmp_path / "out", "old")
    replace_dir(_folder(tmp_path / ".new", "new"), target)
    assert (target / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    replace_dir(_folder(tmp_path / ".fresh", "first"), tmp_path / "absent")
    assert (tmp_path / "absent" / "f.txt").read_text() == "first"


def test_replace_dir_rolls_back_when_the_new_folder_cannot_be_put_in_place(tmp_path):
    target = _folder(tmp_path / "out", "old")
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / ".vanished", target)  # a real failing rename, after the old one moved aside
    assert (target / "f.txt").read_text() == "old"  # the old folder is back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_dir_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(StorageError, match="in the way"):
        replace_dir(_folder(tmp_path / ".new", "new"), tmp_path / "out")
    assert (tmp_path / "out").read_text() == "a file"


@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:tok@host.example/a/b.zip?X-Amz-Signature=abc#frag", "https://host.example/a/b.zip"),
    ("http://u:p@ss@host:9000/bucket", "http://host:9000/bucket"),  # an '@' inside the password
    ("postgresql://mlflow:pw@db/mlflow?password=pw", "postgresql://db/mlflow"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("./mlruns", "./mlruns"),
])
def test_redact_url_drops_credentials_and_query(url, shown):
    assert redact_url(url) == shown


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" and cache_dir("models") == tmp_path / "c" / "models"
    monkeypatch.setenv("SPARSEPIPE_CACHE", "  ")
    assert cache_root() == Path.home() / ".cache" / "sparsepipe"
    with pytest.raises(ValueError, match="not one of"):
        cache_dir("weights")


def test_every_cache_user_resolves_the_same_root(tmp_path, monkeypatch):
    from sparsepipe.data import DataConfig, default_cache_dir

    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == DataConfig().cache_dir == tmp_path / "c" / "data"


def test_s3_model_is_cached_under_sparsepipe_cache(s3_env, tmp_path, monkeypatch):
    """Regression: s3:// models were cached in ~/.cache/sparsepipe/models whatever $SPARSEPIPE_CACHE said."""
    import onnx
    from onnx import TensorProto, helper

    from sparsepipe import storage
    from sparsepipe.models import resolve_model_path

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    local = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(local))
    uri = storage.upload_file(local, f"s3://{s3_env.bucket}/core-cache/{tmp_path.name}/model.onnx")
    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "cache"))
    got = Path(resolve_model_path(uri))
    assert got.is_relative_to(tmp_path / "cache" / "models"), got
    assert got.read_bytes() == local.read_bytes()
