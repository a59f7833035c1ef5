"""Content-keyed reuse of finished steps (what makes `make bench` resumable).

    .venv/bin/python -m pytest tests/test_step_cache.py
"""

from __future__ import annotations

import pytest

from sparsepipe.errors import SparsepipeError
from sparsepipe.results import StepResult
from sparsepipe.step_cache import adopt, cached_step, content_key, recorded_key
from sparsepipe.training import TrainConfig


def _maker(folder, calls, value):
    def make():
        calls.append(value)
        folder.mkdir(parents=True, exist_ok=True)
        result = StepResult(step="train", out_dir=str(folder), variant="x", metrics={"value": value})
        result.write()
        return result

    return make


def test_same_inputs_reuse_changed_inputs_redo_and_keep_the_old_folder(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("num_epochs: 10\n")
    folder = tmp_path / "step"
    calls: list[int] = []
    key = content_key(config=TrainConfig(epochs=3), recipe=recipe)
    assert cached_step(folder, key, _maker(folder, calls, 1), log=lambda _: None).metrics["value"] == 1
    # Same inputs (a fresh but equal config object): reused, make() not called.
    again = content_key(config=TrainConfig(epochs=3), recipe=recipe)
    assert again["key"] == key["key"]
    assert cached_step(folder, again, _maker(folder, calls, 2), log=lambda _: None).metrics["value"] == 1
    assert calls == [1]
    # The recipe's TEXT changed (same path): another key; the old folder is moved aside, not deleted.
    recipe.write_text("num_epochs: 11\n")
    changed = content_key(config=TrainConfig(epochs=3), recipe=recipe)
    assert changed["key"] != key["key"]
    assert cached_step(folder, changed, _maker(folder, calls, 3), log=lambda _: None).metrics["value"] == 3
    assert calls == [1, 3]
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("step.stale-")]
    assert len(stale) == 1 and (stale[0] / "result.json").is_file()
    # A setting changed: another key too.
    assert content_key(config=TrainConfig(epochs=4), recipe=recipe)["key"] != changed["key"]


def test_an_interrupted_step_is_made_again(tmp_path):
    folder = tmp_path / "step"
    folder.mkdir()
    (folder / "partial.bin").write_bytes(b"half")  # killed before result.json was written
    calls: list[int] = []
    key = content_key(step="x")
    assert recorded_key(folder) is None
    cached_step(folder, key, _maker(folder, calls, 1), log=lambda _: None)
    assert calls == [1] and recorded_key(folder) == key["key"]


def test_adopt_needs_a_finished_step(tmp_path):
    with pytest.raises(SparsepipeError, match="result.json"):
        adopt(tmp_path, content_key(step="x"))


def test_a_seed_with_the_same_key_is_copied_in_and_one_with_another_is_ignored(tmp_path):
    calls: list[int] = []
    seed = tmp_path / "seed"
    key = content_key(step="train", epochs=60)
    cached_step(seed, key, _maker(seed, calls, 7), log=lambda _: None)
    folder = tmp_path / "runs" / "baseline"
    assert cached_step(folder, key, _maker(folder, calls, 8), log=lambda _: None, seed=seed).metrics["value"] == 7
    assert calls == [7] and recorded_key(folder) == key["key"]
    other = tmp_path / "runs" / "other"
    changed = content_key(step="train", epochs=61)
    assert cached_step(other, changed, _maker(other, calls, 9), log=lambda _: None, seed=seed).metrics["value"] == 9
    assert calls == [7, 9]


def test_dataset_digest_follows_the_bytes_not_the_folder(tmp_path):
    from sparsepipe.step_cache import dataset_digest

    for name in ("a", "b"):
        (tmp_path / name / "labels").mkdir(parents=True)
        (tmp_path / name / "labels" / "x.txt").write_text("0 0.5 0.5 0.1 0.1\n")
        (tmp_path / name / "result.json").write_text(name)  # step bookkeeping does not count
    assert dataset_digest(tmp_path / "a") == dataset_digest(tmp_path / "b")
    (tmp_path / "b" / "labels" / "x.txt").write_text("1 0.5 0.5 0.1 0.1\n")
    assert dataset_digest(tmp_path / "a") != dataset_digest(tmp_path / "b")
