"""Quantization-aware training modules: fake quantizers, QAT conv blocks, the training controller.

    python -c "from ultralytics import YOLO; from sparsepipe.qat_modules import prepare_qat_; from sparsepipe.recipe import load_recipe; from sparsepipe.qat_modules import quant_modifier; m = YOLO('yolov8n.yaml').model; prepare_qat_(m, quant_modifier(load_recipe('recipes/yolov8n-quick-test.yaml'))); print(m.model[0])"

The algorithm behind ``sparsepipe quantize --method qat`` (the step is :mod:`sparsepipe.qat`,
the INT8 ONNX export :mod:`sparsepipe.qat_export`; see ``docs/qat.md``):

* :func:`prepare_qat_` rewrites an ultralytics model in place: every ``Conv`` (conv + bn + act)
  becomes a :class:`QATConv` with its own activation module and fake quantizers, folding batch
  norm into the weight on the fly; every residual ``Bottleneck`` becomes a
  :class:`QATBottleneck` whose two add inputs go through named modules ``add_input_0/1``.
  Parameter names do not change (``model.2.cv1.conv.weight``), so pruning masks keep working.
* :class:`QATController` switches fake quantization, observers and batch-norm statistics on
  the recipe's schedule during training (ultralytics callbacks + :func:`qat_trainer_class`).
* :func:`convert_for_export` turns the QAT modules into plain convolutions with folded weights
  and fixed quantization parameters.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules.block import Bottleneck
from ultralytics.nn.modules.conv import Conv, DWConv

from sparsepipe.controllers import Controller, TrainingContext, register_controller
from sparsepipe.errors import SparsepipeError
from sparsepipe.modifiers.quantization import QUANTIZATION_MODIFIERS, QuantizationScheme
from sparsepipe.recipe.schedule import qat_state
from sparsepipe.splitfree import is_splitfree
from sparsepipe.torch_utils import unwrap

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
    mods = recipe.modifiers_of(*QUANTIZATION_MODIFIERS)
    if len(mods) > 1:
        raise SparsepipeError(f"The recipe has {len(mods)} QuantizationModifiers; QAT supports one "
                              f"(merge their ignore/scheme_overrides into one modifier).")
    return mods[0] if mods else None


def resolve_scheme(modifier: Any, name: str, class_name: str, role: str) -> Any:
    """Scheme of module ``name`` (class ``class_name``) in ``role`` conv | act | add; None = float."""
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
@register_controller(order=20, wrap_order=30)  # its trainer wraps last: it prepares whatever model the others build
class QATController(Controller):
    """Prepares the trained model and follows the recipe's QAT schedule through callbacks."""

    modifiers = QUANTIZATION_MODIFIERS

    @classmethod
    def check(cls, context: TrainingContext) -> None:
        quant_modifier(context.recipe)  # more than one QuantizationModifier is an error
        if not context.resume and is_prepared(context.yolo.model):
            raise SparsepipeError(
                f"'{context.model}' is already quantized (it holds fake-quantization modules from a QAT run): "
                f"pruning or quantizing it again is not supported. Start from the float (sparse) "
                f"checkpoint the QAT run started from, or export this one with `sparsepipe quantize`."
            )

    @classmethod
    def create(cls, context: TrainingContext) -> QATController | None:
        return cls(context.recipe, context.session) if quant_modifier(context.recipe) is not None else None

    def trainer_class(self, base: type, task: str) -> type:
        return qat_trainer_class(base, self)

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


# ------------------------------------------------------------------------------ export form
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
