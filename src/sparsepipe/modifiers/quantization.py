"""``!QuantizationModifier`` (quantization-aware training), in its two dialects.

    python -c "from sparsepipe.modifiers.quantization import QuantizationModifier as Q; print(Q(start_epoch=3).scheme)"

The dialect is chosen by the keys a recipe uses (recipes.md section 4):

* current (YOLOv8-era): ``scheme``, ``scheme_overrides``, ``ignore``, ``strict``,
  ``model_fuse_fn_name`` -> :class:`QuantizationModifier`;
* legacy (YOLOv3/v5/YOLACT-era): ``submodules``, ``exclude_module_types``,
  ``custom_quantizable_module_types``, ``quantize_conv_activations``, ``activation_bits``,
  ``weight_bits``, ``tensorrt``, ... -> :class:`LegacyQuantizationModifier`.

Both share ``start_epoch``, ``end_epoch``, ``disable_quantization_observer_epoch`` and
``freeze_bn_stats_epoch``; a recipe mixing keys of both dialects is an error. Both are written
back under the one tag ``!QuantizationModifier``.

Matching (current dialect): a module's scheme comes from the ``ignore`` entry or
``scheme_overrides`` key that is the longest *dotted* prefix of its name (``model.2`` matches
``model.2.cv1.act`` but not ``model.22``); if none, an exact class-name match (``Upsample``);
else ``scheme``. An override is complete on its own: fields it leaves out take the defaults of
:class:`QuantizationScheme`, not the recipe's ``scheme``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sparsepipe.modifiers.base import Modifier
from sparsepipe.errors import RecipeError
from sparsepipe.modifiers.registry import construct, register_factory


class QuantizationArgs(BaseModel):
    """How one tensor kind is fake-quantized."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_bits: int = Field(8, ge=2, le=16, description="bits per value")
    symmetric: bool = Field(True, description="symmetric (zero point 0) or asymmetric range")
    strategy: Literal["tensor", "channel"] | None = Field(
        None, description="tensor | channel; None = channel for weights, tensor for activations")


_INPUT_DEFAULT = QuantizationArgs(num_bits=8, symmetric=False)
_WEIGHT_DEFAULT = QuantizationArgs(num_bits=8, symmetric=True)


class QuantizationScheme(BaseModel):
    """Input / weight / output quantization of a module; ``null`` switches one off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_activations: QuantizationArgs | None = Field(
        _INPUT_DEFAULT, description="default 8-bit asymmetric, per tensor")
    weights: QuantizationArgs | None = Field(
        _WEIGHT_DEFAULT, description="default 8-bit symmetric, per channel")
    output_activations: QuantizationArgs | None = Field(None, description="default off")


PRESETS = {
    "default": QuantizationScheme(),
    "deepsparse": QuantizationScheme(),
    "tensorrt": QuantizationScheme(input_activations=QuantizationArgs(num_bits=8, symmetric=True)),
}


def _scheme(value: Any) -> Any:
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"unknown scheme preset '{value}' (known: {', '.join(PRESETS)})")
        return PRESETS[value]
    return value


class _QuantBase(Modifier):
    extra_epoch_fields = ("disable_quantization_observer_epoch", "freeze_bn_stats_epoch")
    tag = "QuantizationModifier"
    dialect: ClassVar[str] = ""  # "current" or "legacy"

    start_epoch: float = Field(-1.0, description="epoch fake quantization starts; -1 = at once")
    disable_quantization_observer_epoch: float | None = Field(
        None, description="epoch the observers freeze (scales/zero points stop moving)")
    freeze_bn_stats_epoch: float | None = Field(
        None, description="epoch batch-norm running statistics freeze")

    def qat_active(self, epoch: float) -> bool:
        """Fake quantization on at ``epoch``."""
        return self.is_active(epoch)

    def observers_frozen(self, epoch: float) -> bool:
        """Observers frozen at ``epoch``."""
        e = self.disable_quantization_observer_epoch
        return e is not None and e >= 0 and epoch >= e

    def bn_frozen(self, epoch: float) -> bool:
        """Batch-norm statistics frozen at ``epoch``."""
        e = self.freeze_bn_stats_epoch
        return e is not None and e >= 0 and epoch >= e


class QuantizationModifier(_QuantBase):
    """Current dialect: a ``scheme`` with per-module ``scheme_overrides`` and ``ignore``."""

    dialect = "current"
    scheme: QuantizationScheme = Field(default_factory=QuantizationScheme,
                                       description="scheme for every module not overridden")
    scheme_overrides: dict[str, QuantizationScheme] = Field(
        default_factory=dict, description="module-name prefix or class name -> complete scheme")
    ignore: list[str] = Field(default_factory=list,
                              description="module-name prefixes or class names not quantized")
    model_fuse_fn_name: str | None = Field(None, description="accepted; conv+bn are always folded")
    strict: bool = Field(False, description="a scheme_overrides/ignore key matching nothing is an error")

    @field_validator("scheme", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        return _scheme(value)

    @field_validator("scheme_overrides", mode="before")
    @classmethod
    def _overrides(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _scheme(v) if v is not None else QuantizationScheme() for k, v in value.items()}
        return value

    @field_validator("ignore", mode="before")
    @classmethod
    def _ignore(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def scheme_for(self, module_name: str, class_name: str) -> QuantizationScheme | None:
        """The scheme of a module, or None when it is ignored (see module docstring)."""
        best_len, best = -1, None
        for key, value in [(k, None) for k in self.ignore] + list(self.scheme_overrides.items()):
            if key == module_name or module_name.startswith(key + "."):
                if len(key) > best_len:
                    best_len, best = len(key), (key, value)
        if best is not None:
            return best[1]
        if class_name in self.ignore:
            return None
        if class_name in self.scheme_overrides:
            return self.scheme_overrides[class_name]
        return self.scheme

    def module_keys(self) -> list[str]:
        """Every ignore entry and scheme_overrides key (to validate against a model)."""
        return list(self.ignore) + list(self.scheme_overrides)


class LegacyQuantizationModifier(_QuantBase):
    """Legacy dialect (SparseML 0.x/1.x YOLOv3/YOLOv5/YOLACT recipes)."""

    dialect = "legacy"
    submodules: list[str] | None = Field(None, description="only quantize these submodules; None = all")
    model_fuse_fn_name: str | None = Field(None, description="accepted; conv+bn are always folded")
    exclude_module_types: list[str] = Field(default_factory=list,
                                            description="class names never quantized")
    custom_quantizable_module_types: list[str] = Field(
        default_factory=list, description="extra class names to quantize (e.g. SiLU)")
    quantize_conv_activations: bool = Field(True, description="quantize conv outputs")
    quantize_linear_activations: bool = Field(True, description="quantize linear outputs")
    activation_bits: int = Field(8, ge=2, le=16, description="activation bits")
    weight_bits: int = Field(8, ge=2, le=16, description="weight bits")
    reduce_range: bool = Field(False, description="7-bit activation range (old x86 kernels)")
    exclude_batchnorm: bool = Field(True, description="accepted; batch norm is folded")
    num_calibration_steps: int | None = Field(None, description="accepted; unused")
    tensorrt: bool = Field(False, description="symmetric activations for TensorRT")

    @field_validator("submodules", "exclude_module_types", "custom_quantizable_module_types",
                     mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def module_keys(self) -> list[str]:
        return list(self.submodules or [])

    def as_scheme(self) -> QuantizationScheme:
        """The equivalent current-dialect scheme."""
        return QuantizationScheme(
            input_activations=QuantizationArgs(num_bits=self.activation_bits,
                                               symmetric=self.tensorrt),
            weights=QuantizationArgs(num_bits=self.weight_bits, symmetric=True),
        )


_COMMON = {"start_epoch", "end_epoch", "disable_quantization_observer_epoch",
           "freeze_bn_stats_epoch", "model_fuse_fn_name"}
_CURRENT_ONLY = set(QuantizationModifier.model_fields) - _COMMON
_LEGACY_ONLY = set(LegacyQuantizationModifier.model_fields) - _COMMON


def _quantization_factory(fields: dict[str, Any], where: str) -> _QuantBase:
    keys = set(fields)
    current, legacy = keys & _CURRENT_ONLY, keys & _LEGACY_ONLY
    if current and legacy:
        raise RecipeError(
            f"{where}: !QuantizationModifier mixes the current dialect ({', '.join(sorted(current))}) "
            f"with the legacy one ({', '.join(sorted(legacy))}). Use one: current keys are "
            f"{', '.join(sorted(_CURRENT_ONLY))}; legacy keys are {', '.join(sorted(_LEGACY_ONLY))}."
        )
    unknown = keys - _COMMON - _CURRENT_ONLY - _LEGACY_ONLY
    if unknown:
        raise RecipeError(
            f"{where}: !QuantizationModifier has unknown field(s) {', '.join(sorted(unknown))}. "
            f"Shared fields: {', '.join(sorted(_COMMON))}; current dialect: "
            f"{', '.join(sorted(_CURRENT_ONLY))}; legacy dialect: {', '.join(sorted(_LEGACY_ONLY))}."
        )
    cls = LegacyQuantizationModifier if legacy else QuantizationModifier
    return construct(cls, fields, where)  # type: ignore[return-value]


register_factory("QuantizationModifier", _quantization_factory)

QUANTIZATION_MODIFIERS = (QuantizationModifier, LegacyQuantizationModifier)
