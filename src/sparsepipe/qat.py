"""Quantization-aware training (QAT) from a recipe's ``!QuantizationModifier``, and INT8 QDQ export.

    sparsepipe quantize --method qat --model runs/pruned75 --data synthetic --recipe recipes/yolov8n-quick-test.yaml --out runs/qat

Three parts (see ``docs/qat.md``):

* :func:`prepare_qat_` rewrites an ultralytics model in place: every ``Conv`` (conv + bn + act)
  becomes a :class:`QATConv` with its own activation module and fake quantizers, folding batch
  norm into the weight on the fly; every residual ``Bottleneck`` becomes a
  :class:`QATBottleneck` whose two add inputs go through named modules ``add_input_0/1``.
  Parameter names do not change (``model.2.cv1.conv.weight``), so pruning masks keep working.
* :class:`QATController` switches fake quantization, observers and batch-norm statistics on
  the recipe's schedule during training (ultralytics callbacks + :func:`qat_trainer_class`).
* :func:`convert_for_export` turns the QAT modules into plain convolutions with folded weights
  and fixed quantization parameters; :func:`export_int8_onnx` writes a QDQ ONNX that
  onnxruntime runs with integer convolution kernels, and :func:`qat` does the whole step.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules.block import Bottleneck

from sparsepipe.errors import SparsepipeError
from sparsepipe.recipe_lookup import resolve_recipe
from sparsepipe.sparsify import SparsifyConfig

PREPARED_ATTR = "_sparsepipe_qat"  # set on a prepared model: {"dialect": ..., "modules": n}
ACT_AVERAGING = 0.01  # moving-average constant of activation range observers


# ------------------------------------------------------------------------------ fake quantizer
def _qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


class FakeQuant(nn.Module):
    """Fake quantization of one tensor (per tensor, or per output channel for weights).

    Weights (``per_channel``) take their range from the tensor itself at every call; activations
    keep a moving-average min/max in buffers (``min_val``, ``max_val``, ``observed``) that
    ``observing`` updates in training mode only. ``enabled`` False = identity. Symmetric ranges
    are ``[-(2^(b-1)-1), 2^(b-1)-1]`` times scale (zero point 0, so zeros stay exactly zero);
    asymmetric ``[0, 2^b-1]``. After :meth:`freeze_qparams` the scale/zero point are fixed buffers
    and the module exports to ONNX QuantizeLinear/DequantizeLinear.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, per_channel: bool = False,
                 weight: bool = False) -> None:
        super().__init__()
        self.bits, self.symmetric, self.per_channel = int(bits), bool(symmetric), bool(per_channel)
        self.weight = bool(weight or per_channel)  # range from the tensor itself, not observed
        self.quant_min, self.quant_max = _qrange(self.bits, self.symmetric)
        self.enabled = False
        self.observing = False
        self.frozen = False  # export mode: fixed scale / zero_point buffers
        if not self.weight:
            self.register_buffer("min_val", torch.zeros(()))
            self.register_buffer("max_val", torch.zeros(()))
            self.register_buffer("observed", torch.zeros(()))

    def extra_repr(self) -> str:
        kind = "channel" if self.per_channel else "tensor"
        return (f"bits={self.bits}, symmetric={self.symmetric}, per_{kind}, enabled={self.enabled}, "
                f"observing={self.observing}")

    def qparams(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale (float) and zero point (int32) for the range ``[lo, hi]`` (always contains 0)."""
        lo = torch.clamp(lo.detach().float(), max=0.0)
        hi = torch.clamp(hi.detach().float(), min=0.0)
        if self.symmetric:
            amax = torch.maximum(-lo, hi)
            # an all-zero (fully pruned) channel gets scale 1: any scale quantizes 0 to 0, and a
            # tiny one would overflow the int32 bias onnxruntime derives (bias / (s_in * s_w))
            scale = torch.where(amax > 0, amax / float(self.quant_max), torch.ones_like(amax))
            zero = torch.zeros_like(scale, dtype=torch.int32)
        else:
            scale = (hi - lo) / float(self.quant_max - self.quant_min)
            scale = torch.clamp(scale, min=1e-8)
            zero = torch.clamp(self.quant_min - torch.round(lo / scale), self.quant_min, self.quant_max)
            zero = zero.to(torch.int32)
        return torch.clamp(scale, min=1e-8), zero

    def _range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.weight:
            flat = x.detach().reshape(x.shape[0] if self.per_channel else 1, -1)
            lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
            return (lo, hi) if self.per_channel else (lo[0], hi[0])
        # observe while observers run; a quantizer that has never observed anything takes the
        # first training batch's range even when frozen (it needs a range to quantize with)
        if self.training and (self.observing or float(self.observed) == 0.0):
            lo, hi = x.detach().min().float(), x.detach().max().float()
            if float(self.observed) == 0.0:
                self.min_val.copy_(lo)
                self.max_val.copy_(hi)
                self.observed.fill_(1.0)
            else:
                self.min_val.add_(ACT_AVERAGING * (lo - self.min_val))
                self.max_val.add_(ACT_AVERAGING * (hi - self.max_val))
        return self.min_val, self.max_val

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            return self._fake(x, self.scale, self.zero_point)
        if not self.enabled:
            return x
        lo, hi = self._range(x)
        if not self.weight and float(self.observed) == 0.0:
            return x  # nothing observed yet (eval before the first training batch)
        scale, zero = self.qparams(lo, hi)
        return self._fake(x, scale, zero)

    def _fake(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype  # the kernels want float32 (autocast may hand in half)
        x = x if dtype == torch.float32 else x.float()
        if self.per_channel:
            y = torch.fake_quantize_per_channel_affine(x, scale.float(), zero, 0, self.quant_min, self.quant_max)
        else:
            y = torch.fake_quantize_per_tensor_affine(x, scale.float().reshape(()), zero.reshape(()),
                                                      self.quant_min, self.quant_max)
        return y if dtype == torch.float32 else y.to(dtype)

    def freeze_qparams(self, weight: torch.Tensor | None = None) -> bool:
        """Fix scale / zero point (from ``weight`` for weight quantizers, else the observed range).

        Returns False when there is nothing to quantize with (never enabled / never observed).
        """
        if self.weight:
            if weight is None:
                raise ValueError("weight fake quantization needs the weight to freeze")
            scale, zero = self.qparams(*self._range(weight))
        else:
            if float(self.observed) == 0.0:
                return False
            scale, zero = self.qparams(self.min_val, self.max_val)
        if self.bits != 8:
            raise SparsepipeError(
                f"ONNX QuantizeLinear stores 8-bit integers; a {self.bits}-bit quantizer cannot be "
                f"exported. Use num_bits: 8 (activation_bits/weight_bits: 8 in the legacy dialect).")
        self.register_buffer("scale", scale.reshape(-1) if self.per_channel else scale.reshape(()))
        self.register_buffer("zero_point", zero.reshape(-1) if self.per_channel else zero.reshape(()))
        self.frozen = True
        self.enabled = True
        self.observing = False
        return True


def _quantizer(args: Any, weight: bool = False) -> nn.Module:
    if args is None:
        return nn.Identity()
    strategy = args.strategy or ("channel" if weight else "tensor")
    if strategy == "channel" and not weight:
        raise SparsepipeError("strategy: channel is supported for weights only; activations are "
                              "quantized per tensor (remove strategy or use strategy: tensor).")
    return FakeQuant(args.num_bits, args.symmetric, per_channel=strategy == "channel", weight=weight)


# ------------------------------------------------------------------------------ QAT modules
class QATConv(nn.Module):
    """Ultralytics ``Conv`` (conv + bn + act) for QAT, batch norm folded into the weight.

    ``input_quant`` -> conv with ``weight_quant(W * gamma / sigma)`` -> + folded bias ->
    ``act_input_quant`` (the conv output) -> ``act`` (its own instance) -> ``output_quant``.
    While batch norm still trains, the conv output is scaled back by ``sigma / gamma`` and
    normalised with batch statistics (running statistics keep updating); once frozen (or in
    eval mode) the folded form is used directly, which is exactly what is exported.
    Deliberately not a subclass of ``Conv``: ultralytics' ``fuse()`` must leave it alone.
    """

    def __init__(self, block: nn.Module, schemes: dict[str, Any]) -> None:
        super().__init__()
        for attr in ("f", "i", "type", "np"):  # ultralytics' per-layer routing attributes
            if attr in block.__dict__:
                self.__dict__[attr] = block.__dict__[attr]
        self.conv: nn.Conv2d = block.conv
        self.bn: nn.BatchNorm2d = block.bn
        self.act = copy.deepcopy(block.act)  # its own instance (ultralytics shares default_act)
        conv_s, act_s = schemes.get("conv"), schemes.get("act")
        self.input_quant = _quantizer(conv_s.input_activations if conv_s else None)
        self.weight_quant = _quantizer(conv_s.weights if conv_s else None, weight=True)
        pre = (conv_s.output_activations if conv_s else None) or (act_s.input_activations if act_s else None)
        self.act_input_quant = _quantizer(pre)
        self.output_quant = _quantizer(act_s.output_activations if act_s else None)
        self.bn_frozen = False

    def _bn_scale(self) -> torch.Tensor:
        sigma = torch.sqrt(self.bn.running_var + self.bn.eps)
        gamma = self.bn.weight
        scale = gamma / sigma
        # a channel whose gamma is exactly 0 would divide by 0 when scaled back
        return torch.where(scale.abs() < 1e-12, torch.full_like(scale, 1e-12), scale)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        wq = self.weight_quant
        if not getattr(wq, "enabled", False) and not getattr(wq, "frozen", False):
            y = self.bn(self.conv(x))  # plain conv + bn (the module call lets torch-pruning trace it)
        else:
            scale = self._bn_scale()
            weight = wq(self.conv.weight * scale.reshape(-1, 1, 1, 1))
            if self.training and not self.bn_frozen:
                y = self._conv(x, weight, None) / scale.reshape(1, -1, 1, 1)
                if self.conv.bias is not None:
                    y = y + self.conv.bias.reshape(1, -1, 1, 1)
                y = self.bn(y)  # batch statistics, running statistics updated
            else:
                bias = self.bn.bias - self.bn.running_mean * scale
                if self.conv.bias is not None:
                    bias = bias + self.conv.bias * scale
                y = self._conv(x, weight, bias)
        y = self.act_input_quant(y)
        return self.output_quant(self.act(y))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias with batch norm (running statistics) folded in."""
        with torch.no_grad():
            scale = self._bn_scale()
            weight = self.conv.weight * scale.reshape(-1, 1, 1, 1)
            bias = self.bn.bias - self.bn.running_mean * scale
            if self.conv.bias is not None:
                bias = bias + self.conv.bias * scale
        return weight.detach().clone(), bias.detach().clone()


class AddInput(nn.Module):
    """Named identity on one input of a residual add; fake-quantizes it per its scheme."""

    def __init__(self, scheme: Any) -> None:
        super().__init__()
        args = (scheme.input_activations or scheme.output_activations) if scheme else None
        self.quant = _quantizer(args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(x)


class QATBottleneck(Bottleneck):
    """Residual ``Bottleneck`` whose add inputs pass through ``add_input_0`` / ``add_input_1``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return self.add_input_0(x) + self.add_input_1(y) if self.add else y


# ------------------------------------------------------------------------------ scheme resolution
def quant_modifier(recipe: Any) -> Any:
    """The recipe's one QuantizationModifier, or None; more than one is an error."""
    from sparsepipe.modifiers.quantization import QUANTIZATION_MODIFIERS

    mods = recipe.modifiers_of(*QUANTIZATION_MODIFIERS)
    if len(mods) > 1:
        raise SparsepipeError(f"The recipe has {len(mods)} QuantizationModifiers; QAT supports one "
                              f"(merge their ignore/scheme_overrides into one modifier).")
    return mods[0] if mods else None


def resolve_scheme(modifier: Any, name: str, class_name: str, role: str) -> Any:
    """Scheme of module ``name`` (class ``class_name``) in ``role`` conv | act | add; None = float."""
    from sparsepipe.modifiers.quantization import QuantizationScheme

    if modifier.dialect == "current":
        return modifier.scheme_for(name, class_name)
    # legacy dialect
    if modifier.submodules and not any(name == s or name.startswith(s + ".") for s in modifier.submodules):
        return None
    if class_name in modifier.exclude_module_types:
        return None
    base = modifier.as_scheme()
    if role == "conv":
        return QuantizationScheme(input_activations=base.input_activations, weights=base.weights,
                                  output_activations=base.input_activations
                                  if modifier.quantize_conv_activations else None)
    if role == "act":
        if class_name in modifier.custom_quantizable_module_types:
            return QuantizationScheme(input_activations=base.input_activations, weights=None,
                                      output_activations=base.input_activations)
        return None
    return QuantizationScheme(input_activations=base.input_activations, weights=None)


# ------------------------------------------------------------------------------ prepare
def is_prepared(model: Any) -> bool:
    """True for a model prepared by :func:`prepare_qat_` (or carrying ultralytics/ModelOpt QAT)."""
    if not isinstance(model, nn.Module):
        return False
    if getattr(model, PREPARED_ATTR, None):
        return True
    return any(isinstance(m, (QATConv, AddInput, FakeQuant)) or type(m).__name__ in
               ("TensorQuantizer", "FakeQuantize", "FusedMovingAvgObsFakeQuantize") for m in model.modules())


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def prepare_qat_(model: nn.Module, modifier: Any) -> nn.Module:
    """Prepare an ultralytics ``DetectionModel``/``SegmentationModel`` for QAT, in place.

    Fake quantizers are created disabled; :class:`QATController` (or :func:`set_qat_state`)
    switches them on. Returns ``model``.
    """
    from ultralytics.nn.modules.conv import Conv, DWConv

    if is_prepared(model):
        raise SparsepipeError("The model is already prepared for quantization-aware training (it holds "
                              "fake-quantization modules); quantize a float checkpoint instead.")
    convs = [(n, m) for n, m in model.named_modules()
             if type(m) in (Conv, DWConv) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)]
    count = 0
    for name, block in convs:
        schemes = {
            "conv": resolve_scheme(modifier, f"{name}.conv", type(block.conv).__name__, "conv"),
            "act": resolve_scheme(modifier, f"{name}.act", type(block.act).__name__, "act"),
        }
        _set_submodule(model, name, QATConv(block, schemes))
        count += 1
    for name, block in list(model.named_modules()):
        if type(block) is Bottleneck and getattr(block, "add", False):
            block.__class__ = QATBottleneck  # same state, forward routes the add through named modules
            for i in (0, 1):
                scheme = resolve_scheme(modifier, f"{name}.add_input_{i}", "AddInput", "add")
                block.add_module(f"add_input_{i}", AddInput(scheme))
    setattr(model, PREPARED_ATTR, {"dialect": modifier.dialect, "convs": count})
    return model


def fake_quantizers(model: nn.Module) -> Iterator[FakeQuant]:
    return (m for m in model.modules() if isinstance(m, FakeQuant))


def set_qat_state(model: nn.Module, active: bool, observers_frozen: bool, bn_frozen: bool) -> None:
    """Switch fake quantization / observers / batch-norm statistics of a prepared model."""
    for fq in fake_quantizers(model):
        if not fq.frozen:
            fq.enabled = active
            fq.observing = active and not observers_frozen
    for m in model.modules():
        if isinstance(m, QATConv):
            m.bn_frozen = bool(active and bn_frozen)


def sync_ranges(src: nn.Module, dst: nn.Module) -> None:
    """Copy activation ranges from the trained model to its EMA (ultralytics' EMA averages only
    float tensors, slowly, which would leave the EMA's ranges near their initial zeros)."""
    dst_q = {n: m for n, m in dst.named_modules() if isinstance(m, FakeQuant)}
    for name, fq in src.named_modules():
        if isinstance(fq, FakeQuant) and not fq.weight and name in dst_q:
            for buf in ("min_val", "max_val", "observed"):
                getattr(dst_q[name], buf).copy_(getattr(fq, buf))


# ------------------------------------------------------------------------------ training integration
class QATController:
    """Prepares the trained model and follows the recipe's QAT schedule through callbacks."""

    def __init__(self, recipe: Any, session: Any) -> None:
        self.recipe = recipe
        self.modifier = quant_modifier(recipe)
        self.session = session  # RecipeSession: its fractional epoch drives the schedule
        self.last: dict[str, bool] | None = None
        self.tracker = getattr(session, "tracker", None)

    def prepare(self, model: nn.Module) -> nn.Module:
        return prepare_qat_(model, self.modifier)

    def state(self) -> dict[str, Any]:
        return {"qat_prepared": True, "qat": dict(self.last or {})}

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        return {"on_train_start": self.apply, "on_train_batch_start": self.apply,
                "on_train_batch_end": self.sync, "on_train_epoch_end": self.sync}

    def apply(self, trainer: Any) -> None:
        from sparsepipe.masks import unwrap
        from sparsepipe.recipe.schedule import qat_state

        state = qat_state(self.recipe, self.session.epoch)
        if state == self.last:
            return
        self.last = state
        models = [unwrap(trainer.model)]
        if getattr(trainer, "ema", None) is not None:
            models.append(trainer.ema.ema)
        for model in models:
            set_qat_state(model, state["active"], state["observers_frozen"], state["bn_frozen"])

    def sync(self, trainer: Any) -> None:
        from sparsepipe.masks import unwrap

        if getattr(trainer, "ema", None) is not None and self.last and self.last["active"]:
            sync_ranges(unwrap(trainer.model), trainer.ema.ema)


def qat_trainer_class(base: type, controller: QATController) -> type:
    """Subclass of ``base`` (any sparsepipe trainer) whose ``get_model`` returns a prepared model.

    Resume: ultralytics hands ``get_model`` the checkpoint's (prepared, pickled) model as
    ``weights``; a fresh model is built by ``base``, prepared the same way, and that state loaded.
    """

    def get_model(trainer: Any, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        prepared = weights if is_prepared(weights) else None
        if prepared is not None and getattr(base, "keeps_architecture", False):
            from sparsepipe.channel_pruning import is_splitfree

            if is_splitfree(prepared):  # channel-pruned: the YAML no longer builds this architecture
                model = copy.deepcopy(prepared).float()
                for p in model.parameters():
                    p.requires_grad_(True)
                return model
        model = base.get_model(trainer, cfg=cfg, weights=None if prepared is not None else weights,
                               verbose=verbose)
        controller.prepare(model)
        if prepared is not None:
            model.load_state_dict(prepared.float().state_dict())
            for (name, fq), (_, old) in zip(model.named_modules(), prepared.named_modules()):
                if isinstance(fq, FakeQuant) and isinstance(old, FakeQuant):
                    fq.enabled, fq.observing = old.enabled, old.observing
        return model

    return type(f"QAT{base.__name__}", (base,), {"get_model": get_model})


# ------------------------------------------------------------------------------ export
class FoldedConv(nn.Module):
    """Export form of :class:`QATConv`: one conv with folded weight/bias and fixed quantizers."""

    def __init__(self, qat: QATConv) -> None:
        super().__init__()
        for attr in ("f", "i", "type", "np"):
            if attr in qat.__dict__:
                self.__dict__[attr] = qat.__dict__[attr]
        weight, bias = qat.folded()
        c = qat.conv
        self.conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                              c.dilation, c.groups, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)
        self.input_quant = _frozen(qat.input_quant)
        self.weight_quant = qat.weight_quant
        if isinstance(self.weight_quant, FakeQuant) and (self.weight_quant.enabled or self.weight_quant.frozen):
            self.weight_quant.freeze_qparams(weight)
        else:
            self.weight_quant = nn.Identity()
        self.act_input_quant = _frozen(qat.act_input_quant)
        self.act = qat.act
        self.output_quant = _frozen(qat.output_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        c = self.conv
        y = F.conv2d(x, self.weight_quant(c.weight), c.bias, c.stride, c.padding, c.dilation, c.groups)
        return self.output_quant(self.act(self.act_input_quant(y)))


def _frozen(q: nn.Module) -> nn.Module:
    if isinstance(q, FakeQuant) and (q.enabled or q.frozen) and (q.frozen or q.freeze_qparams()):
        return q
    return nn.Identity()


def convert_for_export(model: nn.Module) -> nn.Module:
    """Replace QAT modules by their export form, in place (call on a copy, in eval mode)."""
    if not is_prepared(model):
        raise SparsepipeError("The model was not prepared for QAT (no QAT modules); nothing to convert.")
    model.eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, QATConv):
            _set_submodule(model, name, FoldedConv(module))
        elif isinstance(module, AddInput):
            module.quant = _frozen(module.quant)
    return model


def int8_initializers(path: str | Path) -> int:
    """Fold ``QuantizeLinear(float initializer)`` into integer initializers, in place.

    torch's exporter writes the quantized weights as float + QuantizeLinear; storing the
    integers makes the file ~4x smaller and makes the INT8 weights inspectable. Returns how many.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

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
    import onnx
    from onnx import helper

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
    import onnx
    import onnxruntime as ort

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
    from sparsepipe.trust import load_checkpoint

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
    from sparsepipe.models import load_yolo

    if layout not in EXPORT_LAYOUTS:
        from sparsepipe.errors import ConfigError

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
        from sparsepipe.quantize import QuantizeConfig, quantize_onnx, sample_images, train_images

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


# ------------------------------------------------------------------------------ the step
@dataclasses.dataclass
class QATConfig(SparsifyConfig):
    """Settings of QAT: those of sparsify (training) plus the export."""

    variant: str = "qat_int8"
    opset: int = 17  # ONNX opset of the INT8 export (>= 13 for per-channel QuantizeLinear)
    # integer: QDQ at every point PTQ quantizes (learned ranges reused, the rest calibrated on 64 train
    # images), onnxruntime's fast integer path; qat: QDQ only where the recipe fake-quantized (docs/qat.md)
    export_layout: str = "integer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.export_layout not in EXPORT_LAYOUTS:
            from sparsepipe.errors import ConfigError

            raise ConfigError(f"export_layout={self.export_layout!r}: choose integer (onnxruntime's integer "
                              f"path, default) or qat (QDQ only where the recipe fake-quantized).")
        if not isinstance(self.opset, int) or not 13 <= self.opset <= 21:
            from sparsepipe.errors import ConfigError

            raise ConfigError(f"opset={self.opset!r} must be between 13 and 21 for QDQ export.")


def qat(model: str, data: str, recipe: str | None, out: str | Path, config: QATConfig | SparsifyConfig | None = None,
        recipe_args: Any = None, tracker: Any = None, *, teacher: str | None = None,
        resume: bool = False) -> Any:
    """Quantization-aware training under ``recipe`` then INT8 QDQ export: ``<out>/model_int8.onnx``.

    Training runs as sparsify into ``<out>/train`` (its own result.json, ``model.pt`` = the QAT
    checkpoint); the INT8 ONNX is evaluated through onnxruntime with ultralytics' validator.
    Returns a StepResult (step "quantize", files ``int8_onnx``, ``weights``).
    """
    from sparsepipe.evaluate import EvaluateConfig, evaluate
    from sparsepipe.recipe import load_recipe, parse_recipe_args
    from sparsepipe.results import StepResult, check_out, claim_out
    from sparsepipe.sizes import file_sizes
    from sparsepipe.sparsify import sparsify
    from sparsepipe.tracking import Tracker

    config = config or QATConfig()
    if not isinstance(config, QATConfig):
        config = QATConfig(**dataclasses.asdict(config))
    tracker = tracker or Tracker()
    out = check_out(out)  # a run refused below leaves a good --out as it was (claim_out)
    if not resume:
        from sparsepipe.models import resolve_model_path

        if Path(resolve_model_path(model)).suffix == ".onnx":
            raise SparsepipeError(
                f"QAT trains a PyTorch checkpoint, but '{model}' is an ONNX model (it may already be "
                f"quantized). Pass the float (sparse) .pt checkpoint or its train/sparsify out folder.")
        if not recipe:
            raise SparsepipeError("QAT needs --recipe RECIPE with a !QuantizationModifier.")
        loaded = load_recipe(resolve_recipe(recipe), recipe_args=parse_recipe_args(recipe_args))
        if quant_modifier(loaded) is None:
            raise SparsepipeError(f"The recipe {recipe} has no !QuantizationModifier: QAT needs one "
                                  f"(see recipes/yolov8n-quick-test.yaml), or use --method ptq.")
    train_cfg = SparsifyConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(SparsifyConfig)})
    claim_out(out)
    trained = sparsify(model, data, recipe, out / "train", train_cfg, recipe_args=recipe_args,
                       teacher=teacher, resume=resume, tracker=tracker)
    weights = trained.path("weights")
    target = export_int8_onnx(weights, out / "model_int8.onnx", config.imgsz, config.opset,
                              data=trained.files["data_yaml"], layout=config.export_layout)
    graph = optimized_graph_ops(target)
    evaluated = evaluate(str(target), trained.files["data_yaml"], out / "evaluate",
                         EvaluateConfig(imgsz=config.imgsz, device="cpu", variant=config.variant))
    metrics = {
        **file_sizes(target),
        "int8_conv_nodes": float(graph["int8_conv_nodes"]),
        "float_conv_nodes": float(graph["float_conv_nodes"]),
        "params": trained.metrics.get("params", math.nan),
        "stray_dq_conv": float(len(graph["stray_dq_conv"])),
        "float_hot_path_ops": float(len(graph["float_hot_path"])),
        **{k: v for k, v in evaluated.metrics.items() if k in ("map50", "map50_95", "mask_map50", "mask_map50_95")},
        "fake_quant_map50_95": trained.metrics.get("map50_95", math.nan),
        "sparsity": trained.metrics.get("sparsity", 0.0),
        "train_time_s": trained.metrics.get("train_time_s", 0.0),
    }
    result = StepResult(
        step="quantize", out_dir=str(out), variant=config.variant,
        files={"int8_onnx": str(target), "weights": str(weights), "train_result": str(Path(trained.out_dir)),
               "data_yaml": trained.files["data_yaml"]},
        metrics=metrics,
        config={"method": "qat", "model": model, "data": data, "recipe": recipe, "resume": resume,
                **dataclasses.asdict(config)},
        extra={"ops": graph["ops"], "stray_dq_conv": graph["stray_dq_conv"], "float_hot_path": graph["float_hot_path"]},
    )
    tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)})
    tracker.log_artifact(str(target), "quantize")
    result.write()
    return result
