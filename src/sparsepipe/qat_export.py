"""INT8 ONNX export of a QAT checkpoint: convert, export, then place QDQ with the ranges QAT learned.

    python -c "from sparsepipe.qat_export import export_int8_onnx; export_int8_onnx('runs/qat/train/model.pt', 'model_int8.onnx', 320)"

:func:`export_int8_onnx` converts a prepared model (:func:`sparsepipe.qat_modules.convert_for_export`)
and writes a QDQ ONNX that onnxruntime runs with integer convolution kernels; the ONNX graph
surgery it needs (integer initializers, requantized conv inputs, the QDQ plan handed to PTQ)
and the inspection of onnxruntime's optimized graph (:func:`optimized_graph_ops`) live here
too. See ``docs/qat.md``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from sparsepipe.errors import ConfigError, SparsepipeError
from sparsepipe.models import load_yolo
from sparsepipe.ptq import QuantizeConfig, quantize_onnx, sample_images, train_images
from sparsepipe.qat_modules import AddInput, FakeQuant, FoldedConv, QATBottleneck, convert_for_export, is_prepared
from sparsepipe.trust import load_checkpoint


def int8_initializers(path: str | Path) -> int:
    """Fold ``QuantizeLinear(float initializer)`` into integer initializers, in place.

    torch's exporter writes the quantized weights as float + QuantizeLinear; storing the
    integers makes the file ~4x smaller and makes the INT8 weights inspectable. Returns how many.
    """
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {}
    for node in graph.node:  # exporter may write scale / zero point as Constant nodes
        if node.op_type == "Constant" and node.attribute:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    identity = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}

    def value(name: str):
        while name in identity:
            name = identity[name]
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    uses: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    folded, keep, renames = 0, [], {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in inits:
            x, scale = value(node.input[0]), value(node.input[1])
            zero = value(node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
            if x is not None and scale is not None and zero is not None:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                if scale.ndim == 1 and x.ndim > 1:
                    shape = [1] * x.ndim
                    shape[axis] = -1
                    scale_b, zero_b = scale.reshape(shape), zero.reshape(shape).astype(np.int32)
                else:
                    scale_b, zero_b = scale, zero.astype(np.int32)
                info = np.iinfo(zero.dtype)
                q = np.clip(np.rint(x / scale_b) + zero_b, info.min, info.max).astype(zero.dtype)
                # named after the float weight (``model.2.cv1.conv.weight_int8``), read by DequantizeLinear
                name = f"{node.input[0]}_int8"
                graph.initializer.append(numpy_helper.from_array(q, name))
                renames[node.output[0]] = name
                folded += 1
                uses[node.input[0]] -= 1
                continue
        keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    del graph.node[:]
    graph.node.extend(keep)
    unused = [i for i in graph.initializer if uses.get(i.name, 0) <= 0 and i.name not in
              {n for node in keep for n in node.input}]
    for init in unused:
        graph.initializer.remove(init)
    onnx.save(model, str(path))
    return folded


# ops that move values without changing them: a tensor on a quantization grid stays on it
_MOVE_OPS = {"Split", "Reshape", "Transpose", "Slice", "MaxPool", "Identity", "Squeeze", "Unsqueeze",
             "Flatten", "ReorderInput", "ReorderOutput"}


def _dq_source(name: str, producers: dict[str, Any]) -> Any:
    """The DequantizeLinear that ``name`` comes from through value-preserving ops only, or None."""
    node = producers.get(name)
    while node is not None and (node.op_type in _MOVE_OPS or (node.op_type == "Resize" and any(
            a.name == "mode" and a.s in (b"nearest", "nearest") for a in node.attribute))):
        node = producers.get(node.input[0])
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def requantize_conv_inputs(path: str | Path) -> int:
    """Give every conv with quantized weights a QDQ pair on its input when the input is an
    already-quantized tensor that only passed through value-preserving ops (a ``Split`` of a
    C2f, a ``MaxPool``...); returns how many.

    Recipes written for DeepSparse switch such inputs' quantizers off (``input_activations:
    null``: "quantized upstream"); onnxruntime only fuses ``DQ -> Conv -> Q``. The inserted pair
    reuses the upstream scale and zero point, so it changes no value.
    """
    model = onnx.load(str(path))
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    nodes, added = [], 0
    for node in graph.node:
        if (node.op_type == "Conv" and len(node.input) > 1 and node.input[0] in producers
                and producers[node.input[0]].op_type != "DequantizeLinear"
                and getattr(producers.get(node.input[1]), "op_type", "") == "DequantizeLinear"):
            dq = _dq_source(node.input[0], producers)
            if dq is not None and len(dq.input) >= 2:
                source = node.input[0]
                q_out, dq_out = f"{source}_requant_q_{added}", f"{source}_requant_{added}"
                qparams = list(dq.input[1:3])
                nodes.append(helper.make_node("QuantizeLinear", [source, *qparams], [q_out],
                                              name=f"{node.name}/requant_q"))
                nodes.append(helper.make_node("DequantizeLinear", [q_out, *qparams], [dq_out],
                                              name=f"{node.name}/requant_dq"))
                node.input[0] = dq_out
                added += 1
        nodes.append(node)
    if added:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(path))
    return added


def optimized_graph_ops(path: str | Path, threads: int = 1) -> dict[str, Any]:
    """Ops of the onnxruntime-optimized graph: integer/float conv counts and stray DQ -> Conv."""
    import onnxruntime as ort  # heavy: onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(opt)
        so.intra_op_num_threads = threads
        so.log_severity_level = 3  # the "hardware specific optimizations" warning is expected
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(opt)).graph
    ops: dict[str, int] = {}
    for n in graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    int_ops = {"QLinearConv", "ConvInteger", "NhwcQLinearConv", "QLinearConvTranspose"}
    float_conv = {"Conv", "FusedConv", "NhwcFusedConv"}
    int_convs = sum(c for op, c in ops.items() if op in int_ops)
    float_convs = sum(c for op, c in ops.items() if op in float_conv)
    # convs the export meant to be integer (quantized weights) that onnxruntime left in float
    exported = onnx.load(str(path), load_external_data=False).graph
    ex_producers = {o: n for n in exported.node for o in n.output}
    meant = {o for n in exported.node if n.op_type == "Conv" and len(n.input) > 1
             and getattr(ex_producers.get(n.input[1]), "op_type", "") == "DequantizeLinear" for o in n.output}
    stray = [n.name for n in graph.node if n.op_type in float_conv and n.output
             and n.output[0].removesuffix("_nchwc") in meant]
    return {"ops": ops, "int8_conv_nodes": int_convs, "float_conv_nodes": float_convs, "stray_dq_conv": stray,
            "float_hot_path": float_hot_path(graph)}


# ops of an optimized graph that pass their input's element type through (uint8 in, uint8 out)
_TYPE_PRESERVING_OPS = {"Split", "Resize", "Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Flatten",
                        "Identity", "MaxPool", "Concat", "Gather"}
_INT_CONV_OPS = {"QLinearConv", "ConvInteger", "NhwcQLinearConv", "QLinearConvTranspose"}


def float_hot_path(graph: Any) -> list[str]:
    """Nodes of an onnxruntime-optimized graph that compute in float *between* integer convs:
    their output is float and an integer conv is reachable from it (e.g. a float Sigmoid/Mul of a
    SiLU whose output is quantized again for the next QLinearConv). Empty = one integer path
    from the first QuantizeLinear to the head's float decode."""
    integer: dict[str, bool] = {i.name: False for i in graph.input}
    for init in graph.initializer:
        integer[init.name] = init.data_type not in (1, 10, 11, 16)  # float, float16, double, bfloat16
    for node in graph.node:  # the optimized graph is topologically sorted
        if node.op_type == "QuantizeLinear" or node.op_type.startswith(("QLinear", "Nhwc")) or node.op_type in _INT_CONV_OPS:
            out = True
        elif node.op_type in _TYPE_PRESERVING_OPS and node.input:
            out = integer.get(node.input[0], False)
        else:
            out = False
        for name in node.output:
            integer[name] = out
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def feeds_int_conv(node: Any) -> bool:
        return any(reaches.get(user.name, False) for out in node.output for user in consumers.get(out, []))

    reaches: dict[str, bool] = {}
    for node in reversed(graph.node):  # reverse topological order: users before producers
        reaches[node.name] = node.op_type in _INT_CONV_OPS or feeds_int_conv(node)
    return [n.name for n in graph.node if n.output and not integer.get(n.output[0], False)
            and n.op_type not in _INT_CONV_OPS and n.op_type != "DequantizeLinear" and feeds_int_conv(n)]


EXPORT_LAYOUTS = ("integer", "qat")
# ops whose output onnxruntime's QDQ quantizer puts on its input's grid (scale shared with the input)
_SHARED_QPARAM_OPS = {"Split", "MaxPool", "Resize", "Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze",
                      "Flatten", "Identity"}


def _onnx_scope(name: str) -> str:
    """ONNX node-name scope torch's exporter gives module ``name``: ``model.2.m.0.cv1`` ->
    ``/model.2/m.0/cv1``; an index into an indexed child opens a level: ``model.22.cv2.0.0`` ->
    ``/model.22/cv2.0/cv2.0.0``."""
    levels: list[str] = []
    indexed = False  # the last level ends in an index
    for part in name.split("."):
        if part.isdigit() and levels:
            if indexed:
                levels.append(f"{levels[-1]}.{part}")
            else:
                levels[-1] += f".{part}"
            indexed = True
        else:
            levels.append(part)
            indexed = False
    return "/" + "/".join(levels)


def _uint8_qparams(fq: nn.Module | None) -> tuple[float, int] | None:
    """A frozen per-tensor activation quantizer as a uint8 ``(scale, zero point)`` (None if off).

    A symmetric int8 grid ``s * [-128, 127]`` is the uint8 grid ``s * ([0, 255] - 128)``: same values."""
    if not isinstance(fq, FakeQuant) or not fq.frozen or fq.per_channel:
        return None
    scale, zero = float(fq.scale), int(fq.zero_point)
    return (scale, zero - fq.quant_min) if fq.quant_min < 0 else (scale, zero)


def learned_points(model: nn.Module) -> tuple[dict[tuple[str, str], tuple[float, int]], list[tuple[str, str]]]:
    """What QAT learned on a converted model (:func:`convert_for_export`), by module and point.

    Returns ``(ranges, float_points)``: ``ranges[(module, point)] = (scale, uint8 zero point)`` for
    point ``input`` / ``conv_out`` / ``act_out`` of each conv block and ``add_0`` / ``add_1`` of
    each residual add; ``float_points``: ``(module, "conv" | "act" | "add")`` the recipe kept in
    float (no weight quantizer; no activation quantizer; an add input without quantizer).
    """
    ranges: dict[tuple[str, str], tuple[float, int]] = {}
    floats: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        if isinstance(module, FoldedConv):
            for point, fq in (("input", module.input_quant), ("conv_out", module.act_input_quant),
                              ("act_out", module.output_quant)):
                qp = _uint8_qparams(fq)
                if qp is not None:
                    ranges[(name, point)] = qp
            if not isinstance(module.weight_quant, FakeQuant):
                floats.append((name, "conv"))
            if not isinstance(module.act_input_quant, FakeQuant) and not isinstance(module.output_quant, FakeQuant):
                floats.append((name, "act"))
        elif isinstance(module, QATBottleneck) and module.add:
            for i in (0, 1):
                add_input = getattr(module, f"add_input_{i}", None)
                qp = _uint8_qparams(getattr(add_input, "quant", None))
                if qp is None:
                    floats.append((name, "add"))
                else:
                    ranges[(name, f"add_{i}")] = qp
    return ranges, list(dict.fromkeys(floats))


def _strip_quantizers(model: nn.Module) -> nn.Module:
    """The float form of a converted model: every fake quantizer replaced by identity, in place."""
    for module in model.modules():
        if isinstance(module, FoldedConv):
            module.input_quant = module.weight_quant = nn.Identity()
            module.act_input_quant = module.output_quant = nn.Identity()
        elif isinstance(module, AddInput):
            module.quant = nn.Identity()
    return model


def qdq_plan(graph_model: Any, ranges: dict[tuple[str, str], tuple[float, int]],
             floats: list[tuple[str, str]]) -> tuple[list[str], dict[str, tuple[float, int]]]:
    """Map learned points onto the float ONNX graph: ``(nodes kept float, {tensor: (scale, zero)})``.

    A learned input range goes on the tensor the conv (or add) reads, followed back through ops
    whose output shares its input's grid (Split, MaxPool, nearest Resize...). Where two learned
    ranges land on one tensor (Detect's box and class branches read the same feature map), the
    wider one is kept, so neither clips. A learned point the graph lacks is an error.
    """
    graph = graph_model.graph
    nodes = {n.name: n for n in graph.node}
    producers = {o: n for n in graph.node for o in n.output}

    def node(name: str) -> Any:
        if name not in nodes:
            raise SparsepipeError(
                f"The QAT export cannot find ONNX node '{name}' to carry the learned quantization range to; "
                f"the module names of the checkpoint do not match its export. Use export_layout='qat'.")
        return nodes[name]

    def root(tensor: str) -> str:
        src = producers.get(tensor)
        while src is not None and src.op_type in _SHARED_QPARAM_OPS and src.input:
            tensor = src.input[0]
            src = producers.get(tensor)
        return tensor

    overrides: dict[str, tuple[float, int]] = {}

    def put(tensor: str, qp: tuple[float, int]) -> None:
        if tensor not in overrides or overrides[tensor][0] < qp[0]:
            overrides[tensor] = qp

    for (module, point), qp in ranges.items():
        scope = _onnx_scope(module)
        if point == "input":
            put(root(node(f"{scope}/Conv").input[0]), qp)
        elif point == "conv_out":
            put(node(f"{scope}/Conv").output[0], qp)
        elif point == "act_out":
            put(node(f"{scope}/act/Mul").output[0], qp)
        else:
            put(root(node(f"{scope}/Add").input[int(point[-1])]), qp)
    excluded: list[str] = []
    for module, kind in floats:
        scope = _onnx_scope(module)
        names = {"conv": [f"{scope}/Conv"], "act": [f"{scope}/act/Sigmoid", f"{scope}/act/Mul"],
                 "add": [f"{scope}/Add"]}[kind]
        excluded += [node(n).name for n in names]
    return excluded, overrides


def _checkpoint_data(checkpoint: Path) -> str | None:
    ckpt = load_checkpoint(checkpoint)
    args = ckpt.get("train_args") if isinstance(ckpt, dict) else None
    data = args.get("data") if isinstance(args, dict) else None
    return str(data) if data and Path(str(data)).is_file() else None


def export_int8_onnx(checkpoint: str | Path, target: str | Path, imgsz: int, opset: int = 17,
                     data: str | None = None, layout: str = "integer", calibration: Any = None) -> Path:
    """Export a QAT checkpoint (.pt of a prepared model) to a QDQ INT8 ONNX at ``target``.

    ``layout="integer"`` (default): QDQ wherever PTQ puts it (conv outputs, SiLU, residual adds,
    concats, pooling, upsampling; the head decode float), so onnxruntime runs one integer path;
    the ranges QAT learned are used as they are, the others (e.g. the sigmoid inside SiLU) are
    calibrated on ``data``'s train split (default: the data the checkpoint was trained on) with
    ``calibration`` (a :class:`sparsepipe.quantize.QuantizeConfig`). ``layout="qat"``: QDQ only
    at the points the recipe fake-quantized (the torch exporter's output). Both use
    ultralytics' exporter on the converted model, so the file carries its metadata (names,
    stride, imgsz, task) and ``YOLO(target).val()`` works.
    """
    if layout not in EXPORT_LAYOUTS:
        raise ConfigError(f"export_layout={layout!r}: choose integer (onnxruntime's integer path) or qat.")
    checkpoint, target = Path(checkpoint), Path(target)
    if layout == "integer":
        data = data or _checkpoint_data(checkpoint)
        if data is None:
            raise SparsepipeError(
                f"The integer export of '{checkpoint}' calibrates the ranges QAT did not learn on training "
                f"images, but the checkpoint names no dataset that exists here; pass --data SOURCE (or use "
                f"export_layout='qat').")
    staging = Path(tempfile.mkdtemp(prefix=".qat-export-", dir=target.parent))
    try:
        staged = staging / "model_int8.pt"
        shutil.copyfile(checkpoint, staged)
        yolo = load_yolo(str(staged))
        if not is_prepared(yolo.model):
            raise SparsepipeError(f"{checkpoint} holds no QAT model: run QAT (a recipe with a "
                                  f"QuantizationModifier) first, or use PTQ for a float checkpoint.")
        convert_for_export(yolo.model.float())
        if layout == "qat":
            exported = yolo.export(format="onnx", imgsz=imgsz, batch=1, dynamic=False, opset=opset,
                                   simplify=False, device="cpu")
            if not exported or not Path(exported).is_file():
                raise SparsepipeError(f"ultralytics did not produce an ONNX file for '{checkpoint}'.")
            int8_initializers(exported)
            requantize_conv_inputs(exported)
            Path(exported).replace(target)
            return target
        ranges, floats = learned_points(yolo.model)
        _strip_quantizers(yolo.model)
        exported = yolo.export(format="onnx", imgsz=imgsz, batch=1, dynamic=False, opset=opset,
                               simplify=True, device="cpu")
        if not exported or not Path(exported).is_file():
            raise SparsepipeError(f"ultralytics did not produce an ONNX file for '{checkpoint}'.")
        # PTQ's default (percentile): at 640 px MinMax ranges for the unlearned tensors cost 6 % mAP50-95
        config = calibration or QuantizeConfig(evaluate=False)
        images = sample_images(train_images(str(data)), config.calibration_images, config.seed)
        quantize_onnx(Path(exported), target, images, imgsz, config, plan=lambda pre: qdq_plan(pre, ranges, floats))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
