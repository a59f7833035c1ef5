"""An ONNX file as an MLflow model (ONNX flavour + signature) that MLflow, MLServer and KServe can load.

    python -c "from sparsepipe.mlflow_model import save_onnx_model; print(save_onnx_model('model.onnx', 'mlmodel'))"

:func:`save_onnx_model` writes an MLflow model folder (``MLmodel``, ``conda.yaml``,
``python_env.yaml``, ``requirements.txt``) around a byte-identical copy of the ONNX file under
its own name (``model_int8.onnx`` stays ``model_int8.onnx``, so SHA-256 tags recorded for the
raw file still verify it). The signature is read from the graph: one tensor spec per graph
input and output, dynamic dimensions as ``-1``. Then ``mlflow.pyfunc.load_model(uri).predict(x)``
with ``x`` a float32 array ``(N, 3, H, W)`` returns ``{output name: array}``, and ``mlflow
models serve`` / KServe's MLflow runtime serve the folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sparsepipe.errors import ConfigError

__all__ = ["onnx_signature", "save_onnx_model"]

FLAVOR = "onnx"


def onnx_signature(model: Any) -> Any:
    """The MLflow ``ModelSignature`` (tensor specs) of an ``onnx.ModelProto``'s graph inputs and outputs."""
    from mlflow.models import ModelSignature  # heavy: mlflow
    from mlflow.types.schema import Schema, TensorSpec  # heavy: mlflow
    from onnx import helper  # heavy: onnx

    initializers = {t.name for t in model.graph.initializer}

    def spec(value: Any) -> Any:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim)
        return TensorSpec(np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)), shape, value.name)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([spec(v) for v in model.graph.output]))


def save_onnx_model(onnx_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Write the MLflow model folder ``dest`` (must not exist) for ``onnx_path``; return ``dest``."""
    import mlflow.onnx  # heavy: mlflow
    import onnx  # heavy: onnx
    from mlflow.models import Model  # heavy: mlflow

    source = Path(onnx_path)
    dest = Path(dest)
    if source.suffix != ".onnx" or not source.is_file():
        raise ConfigError(f"Cannot save '{source}' as an MLflow ONNX model: not an existing .onnx file.")
    if dest.exists():
        raise ConfigError(f"'{dest}' exists; give a new folder for the MLflow model.")
    proto = onnx.load(str(source), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix=".mlmodel-", dir=dest.parent if dest.parent.is_dir() else None) as tmp:
        staged = Path(tmp) / "model"
        # Explicit requirements: MLflow would otherwise infer them by loading the model in a subprocess.
        mlflow.onnx.save_model(proto, str(staged), signature=onnx_signature(proto),
                               pip_requirements=mlflow.onnx.get_default_pip_requirements(),
                               save_as_external_data=False)
        (staged / "model.onnx").unlink()  # the re-serialised copy: keep the original bytes instead
        shutil.copyfile(source, staged / source.name)
        meta = Model.load(str(staged / "MLmodel"))
        meta.flavors[FLAVOR]["data"] = source.name
        meta.flavors["python_function"]["data"] = source.name
        meta.save(str(staged / "MLmodel"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(dest)
    return dest
