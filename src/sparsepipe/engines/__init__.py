"""Inference engines: how sparsepipe opens an ONNX model on onnxruntime, OpenVINO or DeepSparse.

    python -c "from sparsepipe.engines import SessionSettings, openvino_properties; print(openvino_properties('openvino', SessionSettings(threads=2)))"

Every session and compiled model that benchmark, predict, serve, the quantize/QAT graph
inspection and the hardware probes open is built here, from one :class:`SessionSettings`, so an
engine name means the same configuration everywhere (``sparsepipe benchmark --engine openvino``
times what ``sparsepipe predict --engine openvino`` and ``serve`` run):

- ``options``   engine names, :class:`SessionSettings`, onnxruntime ``SessionOptions`` and OpenVINO
                compile properties (threads, graph optimization level, execution mode, streams,
                pinning, OpenVINO inference precision);
- ``sessions``  open them: onnxruntime sessions, OpenVINO compiled models, the optimized graph;
- ``kernels``   the op-set table that counts integer vs float conv kernels of an optimized graph;
- ``deepsparse`` / ``deepsparse_predict``  DeepSparse 1.8 through a worker in its own venv.

OpenVINO precision: ``openvino`` compiles with ``INFERENCE_PRECISION_HINT=f32`` (on AMX / AVX512-BF16
CPUs OpenVINO's default would run float layers in bf16); ``openvino-bf16`` asks for bf16 and is
named so wherever it runs. docs/engines.md has the measured effect.

Importing this package imports no engine: onnxruntime and openvino are imported inside the
functions that need them, DeepSparse never (it lives in another venv).
"""

from sparsepipe.engines.options import (
    DEEPSPARSE,
    ENGINE_NAMES,
    ONNXRUNTIME,
    OPENVINO,
    OPENVINO_BF16,
    OPENVINO_ENGINES,
    OPENVINO_PRECISION,
    SessionSettings,
    available_engines,
    openvino_properties,
    ort_session_options,
    usable_cpus,
)

__all__ = [
    "DEEPSPARSE", "ENGINE_NAMES", "ONNXRUNTIME", "OPENVINO", "OPENVINO_BF16", "OPENVINO_ENGINES",
    "OPENVINO_PRECISION", "SessionSettings", "available_engines", "openvino_properties",
    "ort_session_options", "usable_cpus",
]
