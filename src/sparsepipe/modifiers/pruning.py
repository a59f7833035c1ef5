"""Pruning modifiers (gradual magnitude, global magnitude, constant) and mask helpers.

    python -c "from sparsepipe.modifiers.pruning import GMPruningModifier as G; print(G(init_sparsity=0.05, final_sparsity=0.8, start_epoch=0, end_epoch=10, params=['__ALL_PRUNABLE__']).sparsity_at(5))"

Schedule per tensor (recipes.md section 4): ``x = (epoch - start) / (end - start)``;
``y = x`` (linear), ``1 - (1 - x)**3`` (cubic), ``1 - (1 - x)**(1/3)`` (inverse_cubic);
``sparsity = init + y (final - init)``, equal to ``init`` for ``x <= 0`` and ``final`` for
``x >= 1``. Masks are recomputed at the first step at/after ``start_epoch``, then whenever
``epoch >= last_update + update_frequency`` (``-1`` = every step), and once more at
``end_epoch`` (:meth:`GMPruningModifier.should_update`).

Masks (:func:`magnitude_mask`): ``True`` keeps a weight. ``unstructured`` zeroes exactly
``round(s * numel)`` weights with the smallest ``|w|`` (ties: lower flat index first);
``block4`` zeroes whole blocks of 4 consecutive input channels (``round(s * n_blocks)`` blocks,
smallest mean ``|w|``); ``N:M`` (e.g. ``2:4``) keeps at least N of every M consecutive input
channels and zeroes exactly ``round(s * numel)`` weights, so ``s`` may be at most ``1 - N/M``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from sparsepipe.modifiers.base import Modifier, check_fraction
from sparsepipe.modifiers.registry import register

if TYPE_CHECKING:
    import torch

ALL_PRUNABLE = "__ALL_PRUNABLE__"
ALL = "__ALL__"
EPS = 1e-9  # tolerance when comparing fractional epochs built from step counts

InterFunc = Literal["linear", "cubic", "inverse_cubic"]
_NM_RE = re.compile(r"^(\d+):(\d+)$")


def interpolate(x: float, inter_func: str) -> float:
    """Fraction ``y`` of the way from init to final sparsity at schedule position ``x``."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if inter_func == "linear":
        return x
    if inter_func == "cubic":
        return 1 - (1 - x) ** 3
    if inter_func == "inverse_cubic":
        return 1 - (1 - x) ** (1 / 3)
    raise ValueError(f"unknown inter_func {inter_func!r}")


def normalize_mask_type(value: Any) -> str:
    """``unstructured`` | ``block4`` | ``N:M``; ``[1, 1]`` means unstructured, ``[1, 4]`` and
    ``block`` mean ``block4``."""
    if isinstance(value, (list, tuple)):
        if list(value) == [1, 1]:
            return "unstructured"  # SparseML's block shape of one weight
        if list(value) == [1, 4]:
            return "block4"
        raise ValueError(f"mask_type {list(value)} is not supported; use [1, 1] (= unstructured) "
                         f"or [1, 4] (= block4)")
    if not isinstance(value, str):
        raise ValueError(f"mask_type must be a string, [1, 1] or [1, 4], got {value!r}")
    text = value.strip()
    if text in ("unstructured", "block4"):
        return text
    if text == "block":
        return "block4"
    match = _NM_RE.match(text)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if not 1 <= n < m <= 64:
            raise ValueError(f"mask_type '{text}' needs 1 <= N < M <= 64")
        return f"{n}:{m}"
    raise ValueError(
        f"mask_type '{text}' is not supported; use unstructured, block4 / [1, 4], or N:M like 2:4")


def nm_of(mask_type: str) -> tuple[int, int] | None:
    """(N, M) of an ``N:M`` mask type, else None."""
    match = _NM_RE.match(mask_type)
    return (int(match.group(1)), int(match.group(2))) if match else None


class _ParamsMixin(Modifier):
    params: list[str] | None = Field(
        None, description="parameter selectors: exact names, 're:<regex>' (re.match), "
        "__ALL_PRUNABLE__ (weights of Conv/Linear/Embedding) or __ALL__")
    log_types: Any = Field(None, description="accepted for SparseML compatibility; unused")

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("params")
    @classmethod
    def _params_valid(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for sel in value:
                _check_selector(sel)
        return value

    def selectors(self) -> list[str]:
        """All selectors of this modifier."""
        return list(self.params or [])


def _check_selector(sel: str) -> None:
    if not sel:
        raise ValueError("an empty parameter selector matches nothing")
    if sel.startswith("re:"):
        if len(sel) > 1000:
            raise ValueError("a regular expression selector is limited to 1000 characters")
        try:
            re.compile(sel[3:])
        except re.error as exc:
            raise ValueError(f"'{sel}' is not a valid regular expression ({exc})") from None


@register("GMPruningModifier")
class GMPruningModifier(_ParamsMixin):
    """Gradual magnitude pruning, each tensor pruned to its own target (per-layer threshold)."""

    tag = "GMPruningModifier"
    init_sparsity: float = Field(0.05, description="sparsity at start_epoch (fraction 0..1)")
    final_sparsity: float | dict[float, list[str]] = Field(
        ..., description="sparsity at end_epoch; or {sparsity: [selectors]} for tiers")
    start_epoch: float = Field(..., description="epoch pruning starts")
    end_epoch: float = Field(..., description="epoch the final sparsity is reached")
    update_frequency: float = Field(1.0, description="epochs between mask updates; -1 = every step")
    inter_func: InterFunc = Field("cubic", description="linear | cubic | inverse_cubic")
    mask_type: str = Field("unstructured", description="unstructured | block4 ([1, 4]) | N:M")
    leave_enabled: bool = Field(True, description="keep enforcing masks after end_epoch")
    global_sparsity: bool = Field(False, description="one threshold over all selected tensors")
    phased: bool = Field(False, description="legacy SparseML field; only false is accepted")
    score_type: str = Field("magnitude", description="legacy SparseML field; only magnitude")

    @field_validator("phased")
    @classmethod
    def _phased(cls, value: bool) -> bool:
        if value:
            raise ValueError("phased: true (AC/DC pruning in old SparseML) is no longer a "
                             "GMPruningModifier option; write '!ACDCPruningModifier' with "
                             "compression_sparsity, start_epoch, end_epoch, update_frequency "
                             "(the phase length) and params instead")
        return value

    @field_validator("score_type")
    @classmethod
    def _score_type(cls, value: str) -> str:
        instead = {"mfac": "'!MFACPruningModifier' (same fields plus num_grads, "
                           "fisher_block_size, damp)",
                   "obs": "'!OBSPruningModifier' (same fields plus num_grads, "
                          "fisher_block_size, damp)",
                   "movement": "nothing: movement pruning is not supported, use the magnitude "
                               "default (remove score_type)"}
        if value != "magnitude":
            hint = instead.get(str(value).lower(), "remove score_type (magnitude is the default)")
            raise ValueError(f"score_type {value!r} is no longer a GMPruningModifier option "
                             f"(SparseML removed it too); write {hint}")
        return value

    @field_validator("mask_type", mode="before")
    @classmethod
    def _mask(cls, value: Any) -> str:
        return normalize_mask_type(value)

    @field_validator("final_sparsity", mode="before")
    @classmethod
    def _final(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: ([v] if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> "GMPruningModifier":
        check_fraction(self.init_sparsity, "init_sparsity")
        finals = self.final_values()
        for f in finals:
            check_fraction(f, "final_sparsity")
            if f < self.init_sparsity:
                raise ValueError(f"final_sparsity {f} is below init_sparsity {self.init_sparsity}; "
                                 f"pruning only removes weights")
        if isinstance(self.final_sparsity, dict):
            if self.params:
                raise ValueError("give either params or a {sparsity: [names]} final_sparsity "
                                 "mapping, not both (the mapping already lists the params)")
            for sels in self.final_sparsity.values():
                for sel in sels:
                    _check_selector(sel)
            if self.global_sparsity:
                raise ValueError("a global threshold needs one final_sparsity, not a mapping")
        elif not self.params:
            raise ValueError("params is required: which tensors to prune (e.g. __ALL_PRUNABLE__)")
        if self.start_epoch < 0 or self.end_epoch < 0 or self.end_epoch < self.start_epoch:
            raise ValueError(f"needs 0 <= start_epoch <= end_epoch, got start_epoch="
                             f"{self.start_epoch}, end_epoch={self.end_epoch}")
        if self.update_frequency <= 0 and self.update_frequency != -1:
            raise ValueError("update_frequency must be > 0 epochs, or -1 for every step")
        nm = nm_of(self.mask_type)
        if nm and max(finals) > 1 - nm[0] / nm[1] + EPS:
            raise ValueError(f"mask_type {self.mask_type} allows at most {1 - nm[0] / nm[1]:.3f} "
                             f"sparsity, final_sparsity asks {max(finals)}")
        if self.global_sparsity and self.mask_type != "unstructured":
            raise ValueError("global pruning supports mask_type unstructured only")
        return self

    # -- targets --------------------------------------------------------------------------------
    def final_values(self) -> list[float]:
        """Every final sparsity this modifier uses."""
        if isinstance(self.final_sparsity, dict):
            return [float(k) for k in self.final_sparsity]
        return [float(self.final_sparsity)]

    def selector_targets(self) -> list[tuple[str, float]]:
        """(selector, final sparsity) pairs, in recipe order."""
        if isinstance(self.final_sparsity, dict):
            return [(sel, float(f)) for f, sels in self.final_sparsity.items() for sel in sels]
        return [(sel, float(self.final_sparsity)) for sel in self.params or []]

    def selectors(self) -> list[str]:
        return [sel for sel, _ in self.selector_targets()]

    def sparsity_at(self, epoch: float, final: float | None = None) -> float:
        """Target sparsity at ``epoch`` for a tensor whose final sparsity is ``final``."""
        final = self.final_values()[0] if final is None else final
        span = self.end_epoch - self.start_epoch
        x = 1.0 if span <= 0 and epoch >= self.start_epoch else (
            0.0 if span <= 0 else (epoch - self.start_epoch) / span)
        return self.init_sparsity + interpolate(x, self.inter_func) * (final - self.init_sparsity)

    def _window_decision(self, epoch: float, last_update: float | None) -> bool | None:
        """The update decisions every schedule shares (None: the subclass's own rule decides)."""
        if epoch + EPS < self.start_epoch:
            return False
        if last_update is None:
            return True
        if last_update + EPS >= self.end_epoch:
            return False  # the final update has happened
        if epoch + EPS >= self.end_epoch:
            return True  # once more at end_epoch
        return None

    def should_update(self, epoch: float, last_update: float | None) -> bool:
        """Whether masks are recomputed at a step at ``epoch``, given the previous update."""
        decided = self._window_decision(epoch, last_update)
        if decided is not None:
            return decided
        if self.update_frequency == -1:
            return True
        return epoch + EPS >= last_update + self.update_frequency

    def enforced(self, epoch: float) -> bool:
        """Whether masks are enforced at ``epoch`` (after end only while ``leave_enabled``)."""
        if epoch + EPS < self.start_epoch:
            return False
        return epoch + EPS < self.end_epoch or self.leave_enabled

    def epochs_used(self) -> list[float]:
        return [self.start_epoch, self.end_epoch]


@register("MagnitudePruningModifier")
class MagnitudePruningModifier(GMPruningModifier):
    """Same as GMPruningModifier (SparseML's newer name)."""

    tag = "MagnitudePruningModifier"


@register("GlobalMagnitudePruningModifier")
class GlobalMagnitudePruningModifier(GMPruningModifier):
    """Gradual magnitude pruning with one threshold across all selected tensors."""

    tag = "GlobalMagnitudePruningModifier"
    global_sparsity: bool = Field(True, description="always true for this modifier")

    @field_validator("global_sparsity")
    @classmethod
    def _always(cls, value: bool) -> bool:
        if not value:
            raise ValueError("GlobalMagnitudePruningModifier is always global; use "
                             "GMPruningModifier for per-layer thresholds")
        return value


@register("ConstantPruningModifier")
class ConstantPruningModifier(_ParamsMixin):
    """Keeps every weight that is zero at ``start_epoch`` at zero until ``end_epoch``."""

    tag = "ConstantPruningModifier"

    @model_validator(mode="after")
    def _check(self) -> "ConstantPruningModifier":
        if not self.params:
            raise ValueError("params is required, e.g. ['re:^((?!dfl).)*$'] or __ALL_PRUNABLE__")
        return self


@register("ACDCPruningModifier")
class ACDCPruningModifier(GMPruningModifier):
    """Alternating compressed / decompressed training (AC/DC, Peste et al. 2021).

    From ``start_epoch``, phases of ``update_frequency`` epochs alternate: decompressed (dense,
    every weight trains, phase 0, 2, ...) and compressed (magnitude masks at
    ``compression_sparsity``, computed at the phase start and enforced through it). The last
    phase before ``end_epoch`` is always compressed, and the mask computed at ``end_epoch``
    stays while ``leave_enabled``. With ``momentum_buffer_reset`` the optimizer's momentum
    buffers are zeroed when a decompressed phase follows a compressed one. Epochs and the phase
    length must be whole numbers, as in SparseML.
    """

    tag = "ACDCPruningModifier"
    compression_sparsity: float = Field(..., description="sparsity of the compressed phases")
    start_epoch: float = Field(..., description="epoch the first (decompressed) phase starts")
    end_epoch: float = Field(..., description="epoch the alternation ends (compressed after it)")
    update_frequency: float = Field(..., description="length of each phase, in whole epochs")
    global_sparsity: bool = Field(True, description="one threshold over all selected tensors")
    momentum_buffer_reset: bool = Field(True, description="zero SGD momentum entering a dense phase")

    @model_validator(mode="before")
    @classmethod
    def _as_gmp(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        gmp_only = sorted({"init_sparsity", "final_sparsity", "inter_func", "phased",
                           "score_type"} & set(data))
        if gmp_only:
            raise ValueError(f"ACDCPruningModifier has no {', '.join(gmp_only)}: it alternates "
                             f"between dense and compression_sparsity (no interpolation); set "
                             f"compression_sparsity instead")
        out = dict(data)
        if "compression_sparsity" in out:
            out["final_sparsity"] = out["compression_sparsity"]
            out["init_sparsity"] = 0.0
        return out

    @model_validator(mode="after")
    def _whole_epochs(self) -> "ACDCPruningModifier":
        for name in ("start_epoch", "end_epoch", "update_frequency"):
            value = getattr(self, name)
            if float(value) != int(value):
                raise ValueError(f"{name} must be a whole number of epochs for AC/DC, got {value}")
        if self.update_frequency < 1:
            raise ValueError("update_frequency (the phase length) must be at least 1 epoch")
        return self

    def to_tagged(self) -> Any:
        tagged = super().to_tagged()
        for name in ("final_sparsity", "init_sparsity"):
            tagged.fields.pop(name, None)
        return tagged

    def phase(self, epoch: float) -> int:
        """Index of the phase at ``epoch`` (even = decompressed unless it is the last)."""
        return int(((epoch - self.start_epoch) + EPS) // self.update_frequency)

    def sparsity_at(self, epoch: float, final: float | None = None) -> float:
        if epoch + EPS >= self.end_epoch:
            return self.compression_sparsity
        if self.phase(epoch) % 2 == 0 and epoch + EPS < self.end_epoch - self.update_frequency:
            return 0.0  # decompressed: every weight trains
        return self.compression_sparsity

    def should_update(self, epoch: float, last_update: float | None) -> bool:
        decided = self._window_decision(epoch, last_update)
        return decided if decided is not None else self.phase(epoch) != self.phase(last_update)


PRUNING_MODIFIERS = (GMPruningModifier, ConstantPruningModifier)


# ------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------
def _channels_last(t: "torch.Tensor") -> "torch.Tensor":
    """View a weight as rows of input channels: [O, I, *k] -> [O * prod(k), I]."""
    if t.dim() < 2:
        raise ValueError(f"block and N:M masks need a weight with input channels, got shape "
                         f"{tuple(t.shape)}")
    perm = [0, *range(2, t.dim()), 1]
    return t.permute(*perm).reshape(-1, t.shape[1])


def _from_channels_last(flat: "torch.Tensor", shape: tuple[int, ...]) -> "torch.Tensor":
    inner = [shape[0], *shape[2:], shape[1]]
    t = flat.reshape(inner)
    perm = [0, len(shape) - 1, *range(1, len(shape) - 1)]
    return t.permute(*perm).contiguous()


def magnitude_mask(tensor: "torch.Tensor", sparsity: float,
                   mask_type: str = "unstructured") -> "torch.Tensor":
    """Boolean keep-mask of ``tensor`` at ``sparsity`` (see the module docstring)."""
    import torch  # heavy: torch

    check_fraction(float(sparsity), "sparsity")
    mask_type = normalize_mask_type(mask_type)
    scores = tensor.detach().abs().float()
    numel = scores.numel()
    if mask_type == "unstructured":
        k = round(sparsity * numel)
        keep = torch.ones(numel, dtype=torch.bool, device=tensor.device)
        if k:
            order = torch.argsort(scores.flatten(), stable=True)
            keep[order[:k]] = False
        return keep.reshape(tensor.shape)

    rows = _channels_last(scores)
    n_rows, channels = rows.shape
    group = 4 if mask_type == "block4" else nm_of(mask_type)[1]  # type: ignore[index]
    pad = (-channels) % group
    padded = torch.nn.functional.pad(rows, (0, pad), value=float("inf"))
    groups = padded.reshape(n_rows, -1, group)  # [rows, groups, group]
    keep = torch.ones_like(groups, dtype=torch.bool)
    if mask_type == "block4":
        real = torch.isfinite(groups)
        block_scores = torch.where(real, groups, torch.zeros_like(groups)).sum(-1) / real.sum(-1)
        k = round(sparsity * block_scores.numel())
        if k:
            order = torch.argsort(block_scores.flatten(), stable=True)
            flat_keep = torch.ones(block_scores.numel(), dtype=torch.bool, device=tensor.device)
            flat_keep[order[:k]] = False
            keep = flat_keep.reshape(block_scores.shape).unsqueeze(-1).expand_as(groups).clone()
    else:
        n, m = nm_of(mask_type)  # type: ignore[misc]
        k = round(sparsity * numel)
        if k:
            idx = torch.argsort(groups, dim=-1, stable=True)[..., : m - n]  # prunable per group
            cand = torch.gather(groups, -1, idx)
            cand_flat = cand.flatten()
            order = torch.argsort(cand_flat, stable=True)
            order = order[torch.isfinite(cand_flat[order])][:k]
            chosen = torch.zeros(cand_flat.numel(), dtype=torch.bool, device=tensor.device)
            chosen[order] = True
            keep.scatter_(-1, idx, ~chosen.reshape(cand.shape))
    keep = keep.reshape(n_rows, -1)[:, :channels]
    return _from_channels_last(keep, tuple(tensor.shape))


def global_magnitude_masks(tensors: Mapping[str, "torch.Tensor"],
                           sparsity: float) -> dict[str, "torch.Tensor"]:
    """Keep-masks with one threshold over all tensors: exactly ``round(s * total)`` zeros."""
    import torch  # heavy: torch

    check_fraction(float(sparsity), "sparsity")
    names = list(tensors)
    flats = [tensors[n].detach().abs().float().flatten().cpu() for n in names]
    if not flats:
        return {}
    scores = torch.cat(flats)
    k = round(sparsity * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k:
        keep[torch.argsort(scores, stable=True)[:k]] = False
    out, offset = {}, 0
    for name, flat in zip(names, flats):
        out[name] = keep[offset: offset + flat.numel()].reshape(tensors[name].shape).to(
            tensors[name].device)
        offset += flat.numel()
    return out
