"""Which kernels an onnxruntime-optimized graph runs: the one op-set table for integer vs float convs.

    python -c "from sparsepipe.engines.kernels import conv_kernel_counts; from sparsepipe.engines.sessions import optimized_graph; print(conv_kernel_counts(optimized_graph('runs/ptq/model_int8.onnx')))"

PTQ (:mod:`sparsepipe.ptq`, the :mod:`sparsepipe.quantize` step) and the QAT export
(:mod:`sparsepipe.qat_export`) both report ``int8_conv_nodes`` / ``float_conv_nodes`` from here,
so the two numbers mean the same thing.
onnxruntime fuses a DequantizeLinear -> Conv -> QuantizeLinear group into ``QLinearConv`` (in
NHWC layout ``com.microsoft.NhwcQLinearConv``); dynamic quantization gives ``ConvInteger``. A float
conv is ONNX ``Conv``/``ConvTranspose`` or one of onnxruntime's fused forms (``FusedConv``, the
NCHWc ``com.microsoft.nchwc.Conv`` keeps the name ``Conv``, ``NhwcFusedConv``). Op domains are ignored.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

#: Integer convolution kernels of an onnxruntime-optimized graph (any op domain).
INT_CONV_OPS = frozenset({"QLinearConv", "NhwcQLinearConv", "ConvInteger", "QLinearConvTranspose"})
#: Float convolution kernels of an onnxruntime-optimized graph (any op domain).
FLOAT_CONV_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose"})


def op_counts(graph: Any) -> dict[str, int]:
    """Nodes per ``op_type`` of an ONNX GraphProto (or ModelProto)."""
    graph = getattr(graph, "graph", graph)
    return dict(Counter(node.op_type for node in graph.node))


def conv_kernel_counts(graph: Any) -> dict[str, int]:
    """``{"int8_conv_nodes": n, "float_conv_nodes": m}`` of an optimized GraphProto or ModelProto."""
    ops = op_counts(graph)
    return {"int8_conv_nodes": sum(n for op, n in ops.items() if op in INT_CONV_OPS),
            "float_conv_nodes": sum(n for op, n in ops.items() if op in FLOAT_CONV_OPS)}
