"""Distillation in the sparsify step, with real ultralytics training on the tiny generated data.

    .venv/bin/python -m pytest tests/test_distillation.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sparsepipe.distillation import SESSION_ATTR, DistillationSession, resolve_teacher
from sparsepipe.errors import SparsepipeError
from sparsepipe.sparsify import SparsifyConfig, sparsify
from sparsepipe.tracking import Tracker

HERE = Path(__file__).parent / "sparsify"
LAYERS = HERE / "distill-layers.yaml"  # per-layer, 3 epochs, neck outputs model.15/18/21
OUTPUT = HERE / "distill-output.yaml"  # output distillation, 2 epochs
CONFIG = {"imgsz": 64, "batch": 8, "workers": 0, "plots": False, "extra": {"nbs": 8}}  # nbs=batch: a step per batch


class RecordingTracker(Tracker):
    """The no-op tracker, remembering the metrics logged to it."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[dict, int | None]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((dict(metrics), step))

    def series(self, name: str) -> list[tuple[int | None, float]]:
        return [(step, m[name]) for m, step in self.metrics if name in m]


def run_distill(trained, out: Path, recipe: Path, teacher: str | None):
    """sparsify with distillation; returns (result, session, tracker, projections at the start)."""
    seen: dict = {}

    def on_train_start(trainer) -> None:
        session = trainer.model.__dict__[SESSION_ATTR]
        seen["session"] = session
        seen["start"] = {k: v.detach().clone().cpu() for k, v in session.projections.state_dict().items()}

    tracker = RecordingTracker()
    result = sparsify(str(trained.train_dir), str(trained.data_dir), str(recipe), out, SparsifyConfig(**CONFIG),
                      teacher=teacher, tracker=tracker, callbacks={"on_train_start": [on_train_start]})
    return result, seen["session"], tracker, seen["start"]


@pytest.fixture(scope="module")
def layers_self(trained, tmp_path_factory):
    return run_distill(trained, tmp_path_factory.mktemp("distill") / "layers", LAYERS, "self")


def test_per_layer_loss_is_nonzero_decreasing_and_logged(layers_self):
    _, session, tracker, _ = layers_self
    assert len(session.history) == 3
    assert all(math.isfinite(v) and v > 0 for v in session.history), session.history
    print("per-layer distill_loss by epoch:", session.history)
    assert session.history[-1] < session.history[0], session.history
    assert tracker.series("train/distill_loss") == list(zip([1, 2, 3], session.history))


def test_projections_are_trained(layers_self):
    _, session, _, start = layers_self
    assert len(start) == 3  # one 1x1 conv per layer pair
    end = {k: v.detach().cpu() for k, v in session.projections.state_dict().items()}
    for name, weight in start.items():
        assert weight.shape[2:] == (1, 1)
        assert not torch.equal(weight, end[name]), f"projection {name} did not change"


def test_published_checkpoint_is_plain_and_validates_and_exports(layers_self, tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    from sparsepipe.export import ExportConfig, export_onnx
    from sparsepipe.models import load_yolo

    result = layers_self[0]
    model = load_yolo(result.files["weights"]).model
    assert type(model) is DetectionModel  # no sparsepipe class, no projections in the checkpoint
    assert not any("distill" in k or "projection" in k for k in model.state_dict())
    assert math.isfinite(result.metrics["map50_95"])  # the step validated model.pt
    exported = export_onnx(result.out_dir, tmp_path / "export", ExportConfig(imgsz=64))
    assert Path(exported.files["onnx"]).is_file()


def test_output_distillation_from_a_checkpoint_teacher(trained, tmp_path):
    _, session, tracker, start = run_distill(trained, tmp_path / "output", OUTPUT, str(trained.train_dir))
    assert start == {}  # output distillation learns no projection
    assert len(session.history) == 2
    assert all(math.isfinite(v) and v > 0 for v in session.history), session.history
    assert [s for s, _ in tracker.series("train/distill_loss")] == [1, 2]


@pytest.fixture(scope="module")
def p2_teacher(tmp_path_factory) -> Path:
    """A yolov8n-p2 (extra stride-4 head level) built from its config and saved untrained."""
    from sparsepipe.models import load_yolo

    path = tmp_path_factory.mktemp("p2") / "yolov8n-p2.pt"
    load_yolo("yolov8n-p2.yaml").save(str(path))
    return path


@pytest.mark.parametrize("recipe, message", [
    (LAYERS, "spatial sizes differ.*different architecture"),
    (OUTPUT, "anchors"),
])
def test_teacher_with_another_architecture_fails_before_training(trained, p2_teacher, tmp_path, recipe, message):
    out = tmp_path / "out"
    with pytest.raises(SparsepipeError, match=message):
        sparsify(str(trained.train_dir), str(trained.data_dir), str(recipe), out, SparsifyConfig(**CONFIG),
                 teacher=str(p2_teacher))
    assert not (out / "ultralytics").exists()  # nothing trained


def test_recipe_needing_a_teacher_without_one_fails_clearly(trained, tmp_path):
    with pytest.raises(SparsepipeError, match="needs a teacher: pass --teacher"):
        sparsify(str(trained.train_dir), str(trained.data_dir), str(LAYERS), tmp_path / "o", SparsifyConfig(**CONFIG))
    assert not (tmp_path / "o" / "ultralytics").exists()


def test_channel_mismatch_needs_project_features(trained, p2_teacher):
    from sparsepipe.models import load_yolo
    from sparsepipe.recipe import load_recipe_string

    recipe = load_recipe_string(
        "version: 1.1.0\nmodifiers:\n  - !PerLayerDistillationModifier\n    start_epoch: 0\n    end_epoch: 1\n"
        "    student_layer_names: [model.4]\n    teacher_layer_names: [model.14]\n    project_features: false\n")
    with pytest.raises(SparsepipeError, match="project_features"):
        DistillationSession.create(recipe, load_yolo(str(trained.train_dir)), "self", None)


def test_teacher_from_the_model_registry(trained, mlflow_server, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    from sparsepipe.models import load_yolo
    from sparsepipe.results import read_result

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "cache"))
    checkpoint = read_result(trained.train_dir).path("weights")
    client = MlflowClient(mlflow_server.tracking_uri)
    run = client.create_run(client.create_experiment("distill-teacher"))
    client.log_artifact(run.info.run_id, str(checkpoint), "teacher")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("tiny-teacher")
    from sparsepipe.storage import file_sha256  # the checksum sparsepipe.registry records (SECURITY.md)

    version = client.create_model_version("tiny-teacher", f"runs:/{run.info.run_id}/teacher", run.info.run_id,
                                          tags={f"sparsepipe.sha256.{checkpoint.name}": file_sha256(checkpoint)})
    client.set_registered_model_alias("tiny-teacher", "champion", version.version)

    student = load_yolo(str(trained.train_dir))
    expected = {k: v.float() for k, v in load_yolo(str(checkpoint)).model.state_dict().items()}
    for uri in (f"models:/tiny-teacher/{version.version}", "models:/tiny-teacher@champion"):
        teacher = resolve_teacher(uri, student)
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        got = teacher.state_dict()
        assert all(torch.equal(got[k].float(), v) for k, v in expected.items())
    with pytest.raises(SparsepipeError, match="no such model version"):
        resolve_teacher("models:/tiny-teacher/99", student)
