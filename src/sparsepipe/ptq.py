"""Post-training quantization (PTQ) internals: settings, calibration data, the calibrated QDQ pass.

    python -c "from sparsepipe.ptq import QuantizeConfig; print(QuantizeConfig())"

The quantize step (:mod:`sparsepipe.quantize`, ``sparsepipe quantize --method ptq``) and the QAT
export (:mod:`sparsepipe.qat_export`) both run :func:`quantize_onnx`.

The model is a ``.pt`` checkpoint (or a train/sparsify out folder; it is exported to FP32 ONNX
first, opset 17, static batch 1, into ``<out>/fp32``) or an FP32 ``.onnx`` (or an export out
folder). Calibration images are a deterministic sample of the dataset's TRAIN split,
preprocessed exactly as ultralytics feeds an ONNX model (letterbox to ``imgsz`` with grey 114
padding, BGR -> RGB, /255, NCHW float32). onnxruntime's ``quant_pre_process`` then
``quantize_static`` write a QDQ model with symmetric per-channel int8 weights (zero point 0,
so pruned weights stay exactly 0) and uint8 activations; onnxruntime fuses each
DequantizeLinear -> Conv -> QuantizeLinear group into an integer ``QLinearConv``.

By default the Detect head's last convolutions (the box and class outputs of each scale) and
the DFL convolution stay in float: they produce the raw box distances and logits, where an
8-bit grid costs mAP and the convs are a tiny share of the compute. They are found from the
graph (the Conv nodes whose output only reaches a layout op: no activation, no other conv;
and the Conv fed by the Softmax of the DFL), not by name.

The written ``model_int8.onnx`` uses only the default ONNX domain at the FP32 file's opset
(the extra opset imports that ``quant_pre_process`` stamps are removed, so DeepSparse reads it
too) and carries ultralytics' metadata, so ``YOLO("model_int8.onnx").val()`` works. Its mAP is
measured through the file itself (:func:`sparsepipe.evaluate.evaluate`).

"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from sparsepipe.errors import ConfigError, DataError, ModelError, SparsepipeError
from sparsepipe.limits import check_input_size
from sparsepipe.results import atomic_write_with

METHODS = ("ptq", "qat")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
WEIGHT_TYPES = ("int8",)
#: Op types ``op_types`` may name: those onnxruntime's QDQ quantizer can quantize (the
#: element-wise ones let SiLU / residual adds / concats stay in int8 between convs).
QUANTIZABLE_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose", "Sigmoid", "Mul", "Add", "Concat",
                   "MaxPool", "Resize", "Split")
#: Nodes that mark a graph as already quantized.
QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
     "MatMulInteger", "DynamicQuantizeLinear", "QGemm", "DynamicQuantizeMatMul"}
)
#: Integer convolution kernels in an onnxruntime-optimized graph (any domain).
INT8_CONV_OPS = frozenset({"QLinearConv", "ConvInteger"})
#: Float convolution kernels in an onnxruntime-optimized graph (ONNX Conv, FusedConv, NCHWc Conv).
FLOAT_CONV_OPS = frozenset({"Conv", "FusedConv"})
#: Ops that only move or reshape data: a Conv whose output reaches only these is an output conv.
LAYOUT_OPS = frozenset(
    {"Reshape", "Concat", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Split",
     "Slice", "ReorderInput", "ReorderOutput"}
)
log = logging.getLogger(__name__)
DEFAULT_IMGSZ = 320  # export size for .pt inputs when imgsz is None (the export step's default)


@dataclasses.dataclass
class QuantizeConfig:
    """Settings of the PTQ quantize step (QAT: :class:`sparsepipe.qat.QATConfig`)."""

    method: str = "ptq"  # ptq (calibrated static INT8 of the FP32 ONNX); qat runs through sparsepipe.qat
    calibration_images: int = 64  # train images sampled (deterministically, by seed) for calibration
    # percentile (clip each activation's range at ``percentile``): within 1.5 % of FP32 mAP at 320 and 640 px
    # where minmax lost 6.5 % at 640 (docs/quantize.md); minmax is ~10x faster; entropy = minmax here
    calibration_method: str = "percentile"
    percentile: float = 99.999  # share of each activation's calibration values kept (both tails cut equally)
    per_channel: bool = True  # one weight scale per output channel (per tensor loses mAP on YOLO)
    # Op types quantized where the graph has them. The element-wise ops keep SiLU (Sigmoid*x), the
    # residual adds, concats, pooling and upsampling in int8 between convs: 1.72x vs 1.32x for
    # convs only (YOLOv8n 320 px, 1 thread, docs/benchmarks.md). The head's decode stays float.
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "Split")
    exclude_head: bool = True  # keep the Detect head's output convs and the DFL conv in float
    exclude_nodes: tuple[str, ...] = ()  # further ONNX node names kept in float
    activation_type: str = "uint8"  # uint8 (asymmetric; the fast U8S8 kernels) | int8 (symmetric)
    weight_type: str = "int8"  # int8 only: symmetric, zero point 0, so a pruned 0 stays exactly 0
    imgsz: int | None = None  # pixels; None = the ONNX's static size, or 320 when exporting a .pt
    opset: int = 17  # opset of the FP32 export of a .pt input (<= 17 keeps DeepSparse happy)
    seed: int = 0  # seed of the calibration sample
    evaluate: bool = True  # measure mAP50/mAP50-95 of the INT8 file on the val split
    variant: str = ""  # default: "ptq", or "<source variant>-ptq" for a non-baseline source

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r} is not a quantization method; choose ptq or qat.")
        if isinstance(self.calibration_images, bool) or not isinstance(self.calibration_images, int) \
                or self.calibration_images < 1:  # fmt: skip
            raise ConfigError(
                f"calibration_images={self.calibration_images!r} must be a positive integer "
                f"(64 to 512 train images are usual)."
            )
        self.calibration_method = str(self.calibration_method).lower()
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"calibration_method={self.calibration_method!r} is unknown; choose one of "
                f"{', '.join(CALIBRATION_METHODS)} (MinMax is the fastest, Entropy/Percentile clip outliers)."
            )
        if not 90.0 <= float(self.percentile) < 100.0:
            raise ConfigError(f"percentile={self.percentile!r} must be in [90, 100), e.g. 99.999.")
        if isinstance(self.op_types, str):
            self.op_types = tuple(t.strip() for t in self.op_types.split(",") if t.strip())
        self.op_types = tuple(self.op_types)
        unknown = [t for t in self.op_types if t not in QUANTIZABLE_OPS]
        if not self.op_types or unknown:
            raise ConfigError(
                f"op_types={list(self.op_types)!r}: each must be one of {', '.join(QUANTIZABLE_OPS)} "
                f"(default Conv,MatMul,Gemm)."
            )
        if isinstance(self.exclude_nodes, str):
            self.exclude_nodes = tuple(t.strip() for t in self.exclude_nodes.split(",") if t.strip())
        self.exclude_nodes = tuple(self.exclude_nodes)
        if self.activation_type not in ACTIVATION_TYPES:
            raise ConfigError(f"activation_type={self.activation_type!r}: choose uint8 (default) or int8.")
        if self.imgsz is not None:
            if isinstance(self.imgsz, bool) or not isinstance(self.imgsz, int) or self.imgsz < 32 or self.imgsz % 32:
                raise ConfigError(f"imgsz={self.imgsz!r} must be a multiple of 32 (e.g. 320 or 640), or unset.")
            check_input_size(1, self.imgsz, "calibration")
        if self.weight_type not in WEIGHT_TYPES:
            raise ConfigError(
                f"weight_type={self.weight_type!r}: only int8 is supported (symmetric weights keep "
                f"pruned zeros exactly zero and use the integer kernels)."
            )
        if self.imgsz is not None and (isinstance(self.imgsz, bool) or not isinstance(self.imgsz, int)
                                       or self.imgsz < 32 or self.imgsz % 32):  # fmt: skip
            raise ConfigError(f"imgsz={self.imgsz!r} must be a multiple of 32 (e.g. 320 or 640), or None.")
        if not isinstance(self.opset, int) or not 13 <= self.opset <= 21:
            raise ConfigError(f"opset={self.opset!r} must be between 13 and 21 (17 is a safe default).")


# --------------------------------------------------------------------------- graph inspection


def quantized_nodes(model: Any) -> list[str]:
    """``op_type`` of every node that shows ``model`` (an onnx ModelProto) is already quantized."""
    return [n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS]


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _producers(graph: Any) -> dict[str, Any]:
    return {name: node for node in graph.node for name in node.output}


def head_float_nodes(model: Any) -> list[str]:
    """Names of the Conv nodes kept in float by ``exclude_head``, found from the graph.

    * output convs: a Conv whose output, followed forwards, only reaches layout ops
      (Reshape/Concat/Transpose...) before another Conv or the graph output, i.e. a conv with no
      activation after it: in YOLOv8 the box (``cv2.*.2``) and class (``cv3.*.2``) convs of
      every scale, which feed the head's Concat and the DFL;
    * the DFL conv: a Conv whose data input comes (through layout ops) from a Softmax.
    """
    graph = model.graph
    consumers, producers = _consumers(graph), _producers(graph)
    outputs = {o.name for o in graph.output}
    chosen: list[str] = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        # DFL: Softmax -> (layout ops) -> Conv
        src = producers.get(node.input[0])
        while src is not None and src.op_type in LAYOUT_OPS and src.input:
            src = producers.get(src.input[0])
        if src is not None and src.op_type == "Softmax":
            chosen.append(node.name)
            continue
        # Output conv: follow layout ops downstream; every path must pass a Concat (the head's) and
        # end in the head's decode (Softmax of the DFL, Sigmoid of the classes) or a graph output.
        # A conv with an activation (Sigmoid+Mul, Relu...) or feeding arithmetic is not one.
        frontier, seen, ok, concat = [node.output[0]], set(), True, False
        while frontier and ok:
            tensor = frontier.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            users = consumers.get(tensor, [])
            if not users and tensor not in outputs:
                ok = False
            for user in users:
                if user.op_type in LAYOUT_OPS:
                    concat = concat or user.op_type == "Concat"
                    frontier.extend(user.output)
                elif not (concat and user.op_type in ("Softmax", "Sigmoid")):
                    ok = False
        if ok and concat:
            chosen.append(node.name)
    return chosen


def downstream_nodes(model: Any, names: list[str]) -> list[str]:
    """Every node fed, directly or not, by the nodes ``names`` (the head's decode after its
    output convs: DFL softmax, box arithmetic, class sigmoid, the output Concat). Quantizing those
    would put pixel-unit boxes and [0, 1] class scores under one int8 scale."""
    consumers = _consumers(model.graph)
    by_name = {n.name: n for n in model.graph.node}
    frontier = [out for name in names if name in by_name for out in by_name[name].output]
    found: dict[str, None] = {}
    while frontier:
        for user in consumers.get(frontier.pop(), []):
            if user.name not in found and user.name not in names:
                found[user.name] = None
                frontier.extend(user.output)
    return list(found)


def conv_kernel_counts(model: Any) -> dict[str, int]:
    """Integer vs float conv kernels of an onnxruntime-optimized ModelProto (any op domain)."""
    int8 = sum(1 for n in model.graph.node if n.op_type in INT8_CONV_OPS)
    fp = sum(1 for n in model.graph.node if n.op_type in FLOAT_CONV_OPS)
    return {"int8_conv_nodes": int8, "float_conv_nodes": fp}


def dq_fed_float_convs(model: Any) -> list[str]:
    """Float convs of an optimized graph with an input produced by DequantizeLinear (through
    layout ops): such a pair means onnxruntime did NOT fuse the QDQ group into an integer kernel."""
    producers = _producers(model.graph)
    bad = []
    for node in model.graph.node:
        if node.op_type not in FLOAT_CONV_OPS:
            continue
        for name in node.input:
            src = producers.get(name)
            while src is not None and src.op_type in LAYOUT_OPS and src.input:
                src = producers.get(src.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                bad.append(node.name)
                break
    return bad


def optimized_graph(path: str | Path, threads: int = 1) -> Any:
    """The graph onnxruntime actually runs for ``path`` (CPU, ORT_ENABLE_ALL), as a ModelProto."""
    import onnx  # heavy: onnx
    import onnxruntime as ort  # heavy: onnxruntime

    with tempfile.TemporaryDirectory(prefix="sparsepipe-ortopt-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # the "hardware specific optimizations" warning is expected
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(Path(tmp) / "optimized.onnx"))


def strip_extra_opsets(model: Any, opset: int | None = None) -> Any:
    """Keep only the default ONNX domain (at ``opset`` if given) in ``model.opset_import``.

    ``quant_pre_process`` stamps imports such as ``ai.onnx.ml`` 5 and ``com.microsoft`` 1 that no
    node uses; DeepSparse refuses such files. A domain some node does use is an error here.
    """
    used = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    if used:
        raise ModelError(
            f"The quantized graph uses operators outside the default ONNX domain ({', '.join(sorted(used))}); "
            f"sparsepipe writes only standard-domain QDQ models. Report this with the input model."
        )
    default = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    version = opset if opset is not None else max((o.version for o in default), default=17)
    del model.opset_import[:]
    entry = model.opset_import.add()
    entry.domain, entry.version = "", version
    return model


def _input_shape(model: Any) -> tuple[str, list[int | str]]:
    tensor = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.type.tensor_type.shape.dim]
    return tensor.name, dims


# --------------------------------------------------------------------------- calibration data


def train_images(data: str) -> list[Path]:
    """All images of the TRAIN split of a data SOURCE (sorted; none -> DataError)."""
    from sparsepipe.data import resolve_data, split_images  # heavy: cv2 (via sparsepipe.data)

    yaml_path = Path(resolve_data(data))
    images = split_images(yaml_path, "train")
    if not images:
        raise DataError(
            f"PTQ needs calibration images, but the train split of {yaml_path} has none. Point --data at a "
            f"dataset whose train split holds images (a sample of them calibrates the activation ranges)."
        )
    return images


def sample_images(images: list[Path], count: int, seed: int) -> list[Path]:
    """``count`` images (all if fewer) chosen by ``seed``, in a stable order."""
    if len(images) <= count:
        return list(images)
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(images), size=count, replace=False).tolist())
    return [images[i] for i in picked]


def preprocess(path: Path, imgsz: int) -> np.ndarray:
    """One image as ultralytics feeds a static ONNX: letterbox, RGB, /255, NCHW float32 (1x3xSxS)."""
    import cv2  # heavy: cv2
    from ultralytics.data.augment import LetterBox  # heavy: ultralytics

    image = cv2.imread(str(path))
    if image is None:
        raise DataError(f"{path}: cannot decode this calibration image; fix or remove it (`sparsepipe data` checks images).")
    boxed = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=32)(image=image)
    chw = boxed[..., ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW
    return (np.ascontiguousarray(chw, dtype=np.float32) / 255.0)[None]


class _Reader:
    """onnxruntime ``CalibrationDataReader``: one preprocessed image per call."""

    def __init__(self, input_name: str, images: list[Path], imgsz: int) -> None:
        self.input_name, self.images, self.imgsz = input_name, images, imgsz
        self._iter: Iterator[Path] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._iter, None)
        return None if path is None else {self.input_name: preprocess(path, self.imgsz)}

    def rewind(self) -> None:
        self._iter = iter(self.images)

    def __iter__(self):  # onnxruntime >= 1.19 also iterates readers
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item

    def __len__(self) -> int:
        return len(self.images)


def _histogram_ranges(pre: Path, staging: Path, input_name: str, images: list[Path], imgsz: int,
                      op_types: list[str], config: QuantizeConfig) -> dict[str, tuple[float, float]]:
    """Activation ranges by onnxruntime's percentile/entropy calibrator, fed 8 images at a time.

    ``quantize_static`` keeps every intermediate tensor of every calibration image in memory
    before building histograms (~15 GB for yolov8n at 640 px, 64 images); the calibrator merges
    histograms across ``collect_data`` calls, so chunks bound that to 8 images.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator  # heavy: onnxruntime

    method = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[config.calibration_method]
    options = {"percentile": float(config.percentile)} if config.calibration_method == "percentile" else {}
    calibrator = create_calibrator(str(pre), op_types, augmented_model_path=str(staging / "augmented.onnx"),
                                   calibrate_method=method, extra_options=options)
    try:
        for start in range(0, len(images), 8):
            calibrator.collect_data(_Reader(input_name, images[start:start + 8], imgsz))
        data = calibrator.compute_data()
    finally:
        del calibrator
    return {name: (float(td.range_value[0]), float(td.range_value[1])) for name, td in data.items()}


def quantize_onnx(fp32: Path, target: Path, images: list[Path], imgsz: int, config: QuantizeConfig,
                  plan: Callable[[Any], tuple[list[str], dict[str, tuple[float, int]]]] | None = None,
                  fallback: list[str] | None = None) -> tuple[Path, list[str], list[str]]:
    """Calibrated static QDQ quantization of the FP32 ONNX ``fp32`` into ``target`` (atomic).

    ``plan(preprocessed ModelProto) -> (node names kept float, {tensor: (scale, zero point)})``:
    the QAT export's learned ranges, used instead of calibrated ones for those tensors.
    Returns ``(target, float nodes, quantized op types)``. A histogram method (percentile,
    entropy) that cannot build its histograms falls back to MinMax, with a warning, and the method
    used is appended to ``fallback`` when a list is given.
    """
    import onnx  # heavy: onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # heavy: onnxruntime
    from onnxruntime.quantization.shape_inference import quant_pre_process  # heavy: onnxruntime

    fallback = [] if fallback is None else fallback
    fp32_model = onnx.load(str(fp32))
    input_name, _ = _input_shape(fp32_model)
    opset = max((o.version for o in fp32_model.opset_import if o.domain in ("", "ai.onnx")), default=17)
    staging = Path(tempfile.mkdtemp(prefix=".quantize-", dir=target.parent))
    try:
        pre = staging / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        pre_model = strip_extra_opsets(onnx.load(str(pre)), opset)
        onnx.save(pre_model, str(pre))
        present = {n.op_type for n in pre_model.graph.node}
        op_types = [t for t in config.op_types if t in present]
        if not op_types:
            raise ModelError(f"'{fp32}' has none of the op types to quantize ({', '.join(config.op_types)}).")
        names = {n.name for n in pre_model.graph.node}
        missing = [n for n in config.exclude_nodes if n not in names]
        if missing:
            raise ConfigError(
                f"exclude_nodes {missing} name no node of '{fp32.name}'; use ONNX node names such as "
                f"'/model.22/cv2.0/cv2.0.2/Conv' (see the graph in Netron)."
            )
        head = head_float_nodes(pre_model) if config.exclude_head else []
        head += downstream_nodes(pre_model, head)
        exclude, overrides = plan(pre_model) if plan is not None else ([], {})
        method = config.calibration_method
        ranges: dict[str, tuple[float, float]] = {}
        if method != "minmax":
            try:
                ranges = _histogram_ranges(pre, staging, input_name, images, imgsz, op_types, config)
            except ValueError as exc:
                if "bins" not in str(exc):
                    raise
                # a histogram needs spread: (nearly) constant activations, as in a barely trained model
                log.warning("%s calibration of '%s' failed (%s; some activation is nearly constant over the "
                            "calibration images); calibrated with minmax instead", method, fp32.name, exc)
                fallback.append("minmax")
        excluded = list(dict.fromkeys(head + list(config.exclude_nodes) + list(exclude)))
        extra: dict[str, Any] = {
            "WeightSymmetric": True,  # zero point 0: exact zeros stay 0, U8S8/S8S8 kernels
            "ActivationSymmetric": config.activation_type == "int8",
        }
        act_type = np.uint8 if config.activation_type == "uint8" else np.int8
        pinned: dict[str, list[dict[str, Any]]] = {
            name: [{"rmin": np.array(lo, dtype=np.float32), "rmax": np.array(hi, dtype=np.float32)}]
            for name, (lo, hi) in ranges.items()
        }
        pinned.update({
            name: [{"scale": np.array(scale, dtype=np.float32), "zero_point": np.array(zero, dtype=act_type)}]
            for name, (scale, zero) in overrides.items()
        })
        if pinned:
            extra["TensorQuantOverrides"] = pinned
        quantized = staging / "int8.onnx"

        def run(method: str) -> None:
            quantize_static(
                str(pre),
                str(quantized),
                _Reader(input_name, images, imgsz),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=config.per_channel,
                activation_type=QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }[method],
                extra_options=extra,
            )

        # histogram ranges (computed above, image by image) are passed as rmin/rmax overrides; the
        # MinMax pass only covers tensors the histograms did not (and costs ReduceMin/Max only)
        run("minmax")
        int8_model = strip_extra_opsets(onnx.load(str(quantized)), opset)
        del int8_model.metadata_props[:]
        for prop in fp32_model.metadata_props:
            int8_model.metadata_props.add(key=prop.key, value=prop.value)
        target = atomic_write_with(target, lambda tmp: onnx.save(int8_model, tmp))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, excluded, op_types
