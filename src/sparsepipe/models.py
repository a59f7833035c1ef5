"""Load ultralytics models by config name or checkpoint, offline, with clear errors.

    python -c "from sparsepipe.models import load_yolo; print(load_yolo('yolov8n.yaml'))"

sparsepipe never downloads weights: a model is either an ultralytics model config
(``yolov8n.yaml``, ``yolo11s-seg.yaml``, ``yolov5nu.yaml``...) built from scratch, or a local
(or ``s3://``) checkpoint / ONNX file produced by an earlier step.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from sparsepipe import storage
from sparsepipe.errors import ModelError
from sparsepipe.onnx_utils import check_yolo_onnx, read_onnx
from sparsepipe.registry import resolve_registry_uri, verified_checksum
from sparsepipe.results import produced_file, read_result
from sparsepipe.trust import check_checkpoint, enforcing_loads

if TYPE_CHECKING:  # pragma: no cover
    from ultralytics import YOLO

MODEL_SUFFIXES = (".pt", ".onnx")


def known_model_configs() -> list[str]:
    """Model config names ultralytics ships (``yolov8n.yaml`` style, scale letters expanded)."""
    import ultralytics  # heavy: ultralytics

    root = Path(ultralytics.__file__).parent / "cfg" / "models"
    names: set[str] = set()
    for path in root.rglob("*.yaml"):
        stem = path.stem
        names.add(path.name)
        try:
            scales = (yaml.safe_load(path.read_text()) or {}).get("scales") or {}
        except Exception:  # noqa: BLE001 - a broken shipped file must not hide the others
            scales = {}
        for scale in scales:
            # ultralytics maps yolov8n.yaml -> yolov8.yaml with scale "n" (the letter follows the version)
            if stem.startswith("yolo"):
                head, _, tail = stem.partition("-")
                names.add(f"{head}{scale}{'-' + tail if tail else ''}.yaml")
    return sorted(names)


def _unknown_model(name: str, reason: str) -> ModelError:
    close = difflib.get_close_matches(name, known_model_configs(), n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return ModelError(
        f"Unknown model '{name}': {reason}. Give an ultralytics model config such as yolov8n.yaml, "
        f"yolo11n.yaml, yolov8n-seg.yaml or yolov5nu.yaml (trained from scratch, nothing is "
        f"downloaded), or the path of a .pt checkpoint / .onnx file written by an earlier step.{hint}"
    )


def resolve_model_path(model: str, cache_dir: Path | None = None) -> str:
    """Return a loadable reference: a config name as is, or an existing local file path.

    ``s3://`` checkpoints are downloaded into ``cache_dir`` first; MLflow registry URIs
    (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, server ``$MLFLOW_TRACKING_URI``) are
    downloaded once into ``cache_dir`` (default ``$SPARSEPIPE_CACHE/models``) and give the
    version's model file (its ``.pt`` when it holds both a ``.pt`` and an ``.onnx``).
    """
    model = str(model).strip()
    if not model:
        raise ModelError("The model is empty: pass --model yolov8n.yaml or a checkpoint path.")

    if model.startswith("models:/"):
        local = resolve_registry_uri(model, cache_dir)
        check_checkpoint(local, origin=model, verified=verified_checksum(local) is not None)
        return local
    if model.startswith("s3://"):
        local_path = storage.localize(model, cache_dir or Path.home() / ".cache" / "sparsepipe" / "models")
        check_checkpoint(local_path, origin=model, verified=_s3_verified(model, local_path))
        return str(local_path)
    path = Path(model).expanduser()
    if path.suffix in MODEL_SUFFIXES or path.is_file() or "/" in model:
        if path.is_dir():
            found = produced_file(path, ("weights", "onnx", "int8_onnx"))
            if found is not None:
                check_checkpoint(found)
                return str(found)
            result = read_result(path)  # a clear error when the folder holds no step result
            raise ModelError(
                f"{path} holds a '{result.step}' result without a model file; point --model at the "
                f"out folder of a train, sparsify, quantize or export step."
            )
        if not path.is_file():
            if path.suffix == ".pt" and "/" not in model:
                raise ModelError(
                    f"Checkpoint '{model}' does not exist here, and sparsepipe never downloads "
                    f"weights. Train from a config instead (e.g. --model {path.stem}.yaml) or give "
                    f"the path of a checkpoint you have."
                )
            raise ModelError(
                f"Model file '{model}' does not exist. Check the path, or give the --out folder of "
                f"the step that produced it."
            )
        check_checkpoint(path)  # a .pt is a pickle: refuse one that would import code (sparsepipe.trust)
        if path.suffix.lower() in (".yaml", ".yml"):
            check_model_config(_read_config(path), str(path))
        return str(path)
    if path.suffix not in (".yaml", ".yml"):
        raise _unknown_model(model, "not a .yaml config, .pt checkpoint or .onnx file")
    if path.is_file():  # a user's config (ultralytics prefers a local file over its own of that name)
        check_model_config(_read_config(path), str(path))
    return model


def _read_config(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"Model config {path} cannot be read as YAML ({type(exc).__name__}: {exc}); "
                         f"fix the file or give a config name such as yolov8n.yaml.") from None


def _plain_activation(act: str) -> bool:
    """Whether ``act`` is ``nn.Name(...)`` / ``torch.nn.Name(...)`` with only number/bool arguments."""
    import torch  # heavy: torch

    try:
        call = ast.parse(act.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return False
    if not isinstance(call, ast.Call):
        return False
    func, chain = call.func, []
    while isinstance(func, ast.Attribute):
        chain.insert(0, func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or [func.id, *chain[:-1]] not in (["nn"], ["torch", "nn"]) or not chain:
        return False
    values = [*call.args, *(k.value for k in call.keywords)]
    if any(k.arg is None for k in call.keywords) or not all(
            isinstance(v, ast.Constant) and isinstance(v.value, (int, float, bool)) for v in values):
        return False
    cls = getattr(torch.nn, chain[-1], None)
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def _layer_class(name: object) -> bool:
    """Whether a config layer name resolves to a torch.nn.Module class (as ultralytics resolves it)."""
    import torch  # heavy: torch
    from ultralytics.nn import tasks  # heavy: ultralytics

    if not isinstance(name, str):
        return False
    if name.startswith("nn."):
        obj = getattr(torch.nn, name[3:], None)
    elif name.startswith("torchvision.ops."):
        import torchvision  # heavy: torchvision

        obj = getattr(torchvision.ops, name[16:], None)
    else:
        obj = getattr(tasks, name, None)
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def check_model_config(cfg: object, source: str) -> None:
    """Refuse a model config that would make ultralytics run code while building the model.

    ultralytics ``eval()``s the ``activation`` string and calls whatever global of its ``tasks``
    module a layer names. Only ``nn.<Module>(numbers)`` activations and layers that are
    ``torch.nn.Module`` classes pass. ``source`` names the file (or checkpoint) in the error.
    """
    if not isinstance(cfg, dict):
        raise ModelError(f"Model config {source} is not a YAML mapping with 'backbone' and 'head' lists; "
                         f"start from an ultralytics config such as yolov8n.yaml.")
    act = cfg.get("activation")
    if act is not None and not (isinstance(act, str) and _plain_activation(act)):
        raise ModelError(
            f"Model config {source}: activation {str(act)[:120]!r} is not a plain torch.nn module such as "
            f"nn.SiLU(), nn.ReLU() or nn.LeakyReLU(0.1). ultralytics evaluates this string as Python, so "
            f"sparsepipe refuses anything else. Fix the 'activation' field or remove it."
        )
    for part in ("backbone", "head"):
        for i, row in enumerate(cfg.get(part) or []):
            layer = row[2] if isinstance(row, (list, tuple)) and len(row) >= 3 else None
            if not _layer_class(layer):
                raise ModelError(
                    f"Model config {source}: {part} layer {i} names {str(layer)[:80]!r}, which is not a "
                    f"torch.nn or ultralytics layer class (e.g. Conv, C2f, SPPF, Detect, nn.Upsample). "
                    f"ultralytics would call it while building the model; fix that layer."
                )


def _s3_verified(uri: str, local: Path) -> bool:
    """Whether a localized S3 object matched the SHA-256 sparsepipe stored in its metadata at upload."""
    if not local.is_file():
        return False
    bucket, key = storage.split_s3_uri(uri)
    try:
        meta = storage.get_client().head_object(Bucket=bucket, Key=key).get("Metadata") or {}
    except Exception:  # noqa: BLE001 - unreadable metadata means unverified, the policy decides
        return False
    expected = meta.get(storage.SHA256_METADATA)
    return bool(expected) and storage.file_sha256(local) == expected


def load_yolo(model: str, task: str | None = None, cache_dir: Path | None = None) -> "YOLO":
    """Build or load an ultralytics ``YOLO`` object, turning ultralytics' errors into ModelError."""
    from ultralytics import YOLO  # heavy: ultralytics

    ref = resolve_model_path(model, cache_dir)
    if str(ref).lower().endswith(".onnx") and Path(ref).is_file():
        check_yolo_onnx(read_onnx(ref), model)  # ultralytics would fail with an IndexError mid-validation
    try:
        with enforcing_loads(ref):  # torch's weights_only unpickler: no class called with file data
            yolo = YOLO(ref, task=task)
        if Path(ref).suffix.lower() == ".pt" and isinstance(getattr(yolo.model, "yaml", None), dict):
            check_model_config(yolo.model.yaml, f"inside checkpoint {model}")  # train rebuilds from it
        return yolo
    except ModelError:
        raise
    except FileNotFoundError as exc:
        raise _unknown_model(model, f"ultralytics has no such config ({exc})") from None
    except (RuntimeError, KeyError, ValueError, AttributeError, OSError) as exc:
        raise ModelError(
            f"Could not load model '{model}': {type(exc).__name__}: {exc}. Make sure the file is an "
            f"ultralytics checkpoint or ONNX export and was not truncated (re-run the step that "
            f"wrote it)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many unpickling error types
        if Path(ref).is_file():
            raise ModelError(
                f"Could not read checkpoint '{model}' ({type(exc).__name__}: {exc}). It is not a "
                f"valid ultralytics checkpoint; re-run the step that produced it."
            ) from None
        raise


def count_params(torch_model) -> int:
    """Number of parameters of a torch module."""
    return int(sum(p.numel() for p in torch_model.parameters()))
