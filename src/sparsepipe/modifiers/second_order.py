"""Second-order pruning: OBSPruningModifier and MFACPruningModifier (empirical-Fisher OBS).

    python -c "from sparsepipe.modifiers.second_order import OBSPruningModifier as O; print(O(final_sparsity=0.8, start_epoch=0, end_epoch=4, update_frequency=1, params='__ALL_PRUNABLE__'))"

Both follow the GMP schedule (init/final sparsity, ``inter_func``, ``update_frequency``); what
differs is *which* weights go and what happens to the others. With the empirical Fisher
``F = damp * I + (1/m) sum_j g_j g_j^T`` over the last ``m`` training minibatch gradients,
taken block-diagonal (blocks of ``fisher_block_size`` consecutive weights of one tensor):

* score of weight ``i``: ``w_i^2 / (2 [F^-1]_ii)`` (the loss increase its removal costs);
  the lowest scores are pruned (per tensor, or over all tensors with ``global_sparsity``);
* the remaining weights of the block are corrected to compensate:
  OBS solves jointly for every pruned weight of the block,
  ``dw = -F^-1[:, P] (F^-1[P, P])^-1 w_P``; M-FAC adds the single-weight corrections of the
  newly pruned weights, ``dw = -F^-1 (w_Q / diag(F^-1)_Q)`` (as SparseML's M-FAC does).

``F^-1`` is never formed from a ``B x B`` inverse of the full matrix: with ``m`` gradients a
block's inverse is ``(I - G^T (m damp I + G G^T)^-1 G) / damp`` (Woodbury), so the cost is an
``m x m`` solve per block. Gradients of already-pruned weights are zeroed before they are
stored, which restricts ``F`` to the weights still alive. With no gradient yet (an update at
the very first step) ``F^-1 = I / damp``: the scores are ``w^2`` and nothing is corrected, i.e.
magnitude pruning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from sparsepipe.modifiers.pruning import GMPruningModifier
from sparsepipe.modifiers.registry import register

if TYPE_CHECKING:  # pragma: no cover
    import torch


class _SecondOrder(GMPruningModifier):
    """Fields shared by OBS and M-FAC (SparseML's names)."""

    num_grads: int | dict[float, int] = Field(64, description="gradients in the Fisher estimate")
    damp: float = Field(1e-5, gt=0, description="dampening added to the Fisher diagonal")
    fisher_block_size: int = Field(50, ge=1, le=4096, description="weights per Fisher block")
    grad_sampler_kwargs: dict[str, Any] | None = Field(
        None, description="accepted for SparseML compatibility; training minibatches are used")

    #: OBS: joint correction of every pruned weight of a block; M-FAC: sum of single-weight ones
    joint_update: ClassVar[bool] = False

    @field_validator("num_grads")
    @classmethod
    def _grads(cls, value: Any) -> Any:
        values = value.values() if isinstance(value, dict) else [value]
        if any(int(v) < 1 for v in values):
            raise ValueError("num_grads must be at least 1")
        return value

    @model_validator(mode="after")
    def _second_order(self) -> "_SecondOrder":
        if self.mask_type != "unstructured":
            raise ValueError(f"mask_type {self.mask_type} is not implemented for {self.tag}; "
                             f"use unstructured (or GMPruningModifier for block/N:M masks)")
        return self

    def grads_for(self, sparsity: float) -> int:
        """Gradients to use at ``sparsity`` (a ``{sparsity: n}`` mapping picks the largest key <=)."""
        if not isinstance(self.num_grads, dict):
            return int(self.num_grads)
        keys = sorted(float(k) for k in self.num_grads)
        chosen = max((k for k in keys if k <= sparsity + 1e-12), default=keys[0])
        return int({float(k): v for k, v in self.num_grads.items()}[chosen])

    def max_grads(self) -> int:
        return max(self.num_grads.values()) if isinstance(self.num_grads, dict) else int(self.num_grads)


@register("OBSPruningModifier")
class OBSPruningModifier(_SecondOrder):
    """Optimal Brain Surgeon pruning (oBERT-style block Fisher), SparseML's defaults."""

    tag = "OBSPruningModifier"
    joint_update: ClassVar[bool] = True
    num_grads: int = Field(1024, ge=1, description="gradients in the Fisher estimate")
    damp: float = Field(1e-7, gt=0, description="dampening added to the Fisher diagonal")
    fisher_block_size: int = Field(50, ge=1, le=4096, description="weights per Fisher block")
    global_sparsity: bool = Field(True, description="one score threshold over all tensors")
    num_recomputations: int = Field(1, description="only 1 (one Fisher per pruning step)")

    @field_validator("num_recomputations")
    @classmethod
    def _once(cls, value: int) -> int:
        if value != 1:
            raise ValueError("num_recomputations > 1 is not implemented (sparsepipe estimates the "
                             "Fisher once per pruning step from training gradients); use 1, or "
                             "a smaller update_frequency for more, smaller steps")
        return value


@register("MFACPruningModifier")
class MFACPruningModifier(_SecondOrder):
    """M-FAC pruning (Frantar et al. 2021), SparseML's defaults; blocks of 2000 weights."""

    tag = "MFACPruningModifier"
    fisher_block_size: int = Field(2000, ge=1, le=4096, description="weights per Fisher block")
    use_gradient_buffering: bool | None = Field(None, description="accepted; gradients are always buffered")
    grads_device: str | int = Field("cpu", description="accepted; gradients are kept on the CPU")
    num_pages: int = Field(1, description="accepted; unused")
    available_devices: list[str] | None = Field(None, description="accepted; unused")


SECOND_ORDER_MODIFIERS = (OBSPruningModifier, MFACPruningModifier)


# ------------------------------------------------------------------------------------------------
# the math
# ------------------------------------------------------------------------------------------------
def _blocks(flat: "torch.Tensor", block: int) -> "torch.Tensor":
    """[..., d] -> [..., n_blocks, block], zero-padded."""
    import torch  # heavy: torch

    pad = (-flat.shape[-1]) % block
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.reshape(*flat.shape[:-1], -1, block)


class BlockFisherInverse:
    """``F^-1`` of one tensor's block-diagonal empirical Fisher (Woodbury form, float64)."""

    def __init__(self, grads: "torch.Tensor | None", numel: int, block: int, damp: float) -> None:
        import torch  # heavy: torch

        self.numel, self.block, self.damp = numel, block, damp
        self.G = None  # [n_blocks, m, block]
        if grads is not None and grads.shape[0]:
            G = _blocks(grads.double(), block).permute(1, 0, 2).contiguous()
            m = G.shape[1]
            K = G @ G.transpose(1, 2) + m * damp * torch.eye(m, dtype=G.dtype)
            self.G, self.KinvG = G, torch.linalg.solve(K, G)  # [nb, m, block]

    def diag(self) -> "torch.Tensor":
        """Diagonal of ``F^-1``, flat [numel]."""
        import torch  # heavy: torch

        if self.G is None:
            return torch.full((self.numel,), 1.0 / self.damp, dtype=torch.float64)
        d = (1.0 - (self.G * self.KinvG).sum(1)) / self.damp
        return d.reshape(-1)[: self.numel].clamp_min(1e-30)

    def mul(self, v: "torch.Tensor") -> "torch.Tensor":
        """``F^-1 v`` for a flat vector ``v``."""
        if self.G is None:
            return v.double() / self.damp
        vb = _blocks(v.double(), self.block)  # [nb, block]
        inner = (self.G @ vb.unsqueeze(-1))  # [nb, m, 1]
        out = (vb - (self.KinvG.transpose(1, 2) @ inner).squeeze(-1)) / self.damp
        return out.reshape(-1)[: self.numel]

    def joint_correction(self, w: "torch.Tensor", pruned: "torch.Tensor", chunk: int = 2048) -> "torch.Tensor":
        """``dw`` with ``dw_P = -w_P`` that least increases the loss: per block
        ``-F^-1[:, P] (F^-1[P, P])^-1 w_P`` (P = every pruned weight of the block)."""
        import torch  # heavy: torch

        wb = _blocks(w.double(), self.block)
        mb = _blocks(pruned.double(), self.block)
        out = torch.zeros_like(wb)
        eye = torch.eye(self.block, dtype=torch.float64)
        for s in range(0, wb.shape[0], chunk):
            e = slice(s, s + chunk)
            if self.G is None:
                finv = eye.expand(wb[e].shape[0], -1, -1) / self.damp
            else:
                finv = (eye - self.G[e].transpose(1, 2) @ self.KinvG[e]) / self.damp
            M = mb[e]
            A = M.unsqueeze(-1) * finv * M.unsqueeze(-2) + torch.diag_embed(1.0 - M)
            x = torch.linalg.solve(A, (M * wb[e]).unsqueeze(-1))
            out[e] = -(finv @ x).squeeze(-1)
        return out.reshape(-1)[: self.numel]


def second_order_prune(modifier: _SecondOrder, params: dict[str, "torch.Tensor"],
                       grads: dict[str, "torch.Tensor | None"], old_masks: dict[str, "torch.Tensor"],
                       targets: dict[str, float]) -> dict[str, "torch.Tensor"]:
    """Choose the weights to prune by OBS score and correct the others in place.

    ``targets`` maps each tensor to its sparsity now; ``grads[name]`` is ``[m, numel]`` (or
    None). Returns keep-masks with exactly ``round(s * numel)`` zeros per tensor (per-layer) or
    ``round(s * total)`` over all tensors (``global_sparsity``, one sparsity).
    """
    import torch  # heavy: torch

    inverses, scores = {}, {}
    for name, p in params.items():
        w = p.detach().reshape(-1).double().cpu()
        inv = BlockFisherInverse(grads.get(name), w.numel(), modifier.fisher_block_size, modifier.damp)
        score = w ** 2 / (2.0 * inv.diag())
        old = old_masks.get(name)
        if old is not None:
            score[~old.reshape(-1).cpu()] = -1.0  # already pruned: stays pruned
        inverses[name], scores[name] = inv, score
    keep: dict[str, torch.Tensor] = {}
    if modifier.global_sparsity:
        names = list(params)
        flat = torch.cat([scores[n] for n in names])
        k = round(targets[names[0]] * flat.numel())
        mask = torch.ones(flat.numel(), dtype=torch.bool)
        if k:
            mask[torch.argsort(flat, stable=True)[:k]] = False
        offset = 0
        for n in names:
            keep[n] = mask[offset: offset + scores[n].numel()]
            offset += scores[n].numel()
    else:
        for n, score in scores.items():
            k = round(targets[n] * score.numel())
            mask = torch.ones(score.numel(), dtype=torch.bool)
            if k:
                mask[torch.argsort(score, stable=True)[:k]] = False
            keep[n] = mask
    out = {}
    with torch.no_grad():
        for name, p in params.items():
            w = p.detach().reshape(-1).double().cpu()
            pruned = ~keep[name]
            inv = inverses[name]
            if modifier.joint_update:
                delta = inv.joint_correction(w, pruned)
            else:
                old = old_masks.get(name)
                newly = pruned & (old.reshape(-1).cpu() if old is not None else torch.ones_like(pruned))
                delta = -inv.mul(torch.where(newly, w / inv.diag(), torch.zeros_like(w)))
            new = torch.where(pruned, torch.zeros_like(w), w + delta)
            p.copy_(new.reshape(p.shape).to(dtype=p.dtype, device=p.device))
            out[name] = keep[name].reshape(p.shape).to(p.device)
    return out
