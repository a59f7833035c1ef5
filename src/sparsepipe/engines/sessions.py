"""Open an ONNX model on an engine: onnxruntime sessions and OpenVINO compiled models.

    python -c "from sparsepipe.engines.sessions import ort_session; print(ort_session('runs/export/model.onnx').get_providers())"

Options come from :mod:`sparsepipe.engines.options` only; a file an engine cannot read is a
:class:`~sparsepipe.errors.ModelError` that names it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sparsepipe.engines.options import OPENVINO, SessionSettings, openvino_properties, ort_session_options
from sparsepipe.errors import ModelError

_HINT = "Check it is a complete ONNX file written by `sparsepipe export` or `sparsepipe quantize`."


def ort_session(path: str | Path, settings: SessionSettings | None = None, **options: Any) -> Any:
    """An onnxruntime CPU ``InferenceSession`` of ``path`` with :func:`ort_session_options`
    (``options`` are its keyword arguments: ``optimized_model_path``, ``profile_prefix``)."""
    import onnxruntime as ort  # heavy: onnxruntime

    session_options = ort_session_options(settings, **options)
    try:
        return ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot load '{path}': {exc}. {_HINT}") from None


def openvino_read(path: str | Path) -> Any:
    """OpenVINO's model of the ONNX file ``path`` (not compiled yet: reshape it first if needed)."""
    import openvino as ov  # heavy: openvino

    try:
        return ov.Core().read_model(str(path))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
        raise ModelError(f"OpenVINO cannot read '{path}': {exc}. {_HINT}") from None


def openvino_compile(model: Any, engine: str = OPENVINO, settings: SessionSettings | None = None, *,
                     perf_count: bool = False) -> Any:
    """``model`` (an OpenVINO model or an ONNX path) compiled for the CPU with :func:`openvino_properties`."""
    import openvino as ov  # heavy: openvino

    if isinstance(model, (str, Path)):
        model = openvino_read(model)
    return ov.Core().compile_model(model, "CPU", openvino_properties(engine, settings, perf_count=perf_count))


def openvino_precision(compiled: Any) -> str:
    """The inference precision a compiled model actually runs its float layers in (``f32``, ``bf16``...).

    It can differ from the hint: a CPU without bf16 support runs ``openvino-bf16`` in f32."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
    return str(value.to_string() if hasattr(value, "to_string") else value).lower()


def ort_settings_of(session: Any) -> dict[str, Any]:
    """The options a live onnxruntime session runs with (what tests and result files compare)."""
    options = session.get_session_options()
    return {"intra_op_threads": options.intra_op_num_threads, "inter_op_threads": options.inter_op_num_threads,
            "execution_mode": str(options.execution_mode), "graph_optimization": str(options.graph_optimization_level),
            "providers": list(session.get_providers())}


def openvino_settings_of(compiled: Any) -> dict[str, Any]:
    """The properties a compiled OpenVINO model runs with (threads, hint, streams, precision)."""
    return {"threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
            "streams": int(compiled.get_property("NUM_STREAMS")),
            "precision": openvino_precision(compiled)}


def optimized_graph(path: str | Path, threads: int = 1) -> Any:
    """The graph onnxruntime actually runs for ``path`` (the same options as every session), as a ModelProto."""
    import onnx  # heavy: onnx

    with tempfile.TemporaryDirectory(prefix="sparsepipe-ortopt-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        ort_session(path, SessionSettings(threads=threads), optimized_model_path=str(out))
        return onnx.load(str(out))
