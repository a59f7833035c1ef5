"""Pruning masks on a live model: computed on the recipe's schedule, enforced exactly.

    python -c "from sparsepipe.masks import MaskManager, sparsity_table"

:class:`MaskManager` owns one keep-mask per pruned tensor. ``step(epoch)`` recomputes masks
when a pruning modifier's schedule says so (GMP family: magnitude at the scheduled sparsity;
ConstantPruning: whatever is zero when it starts); ``apply(module)`` zeroes the pruned
weights of a module with the same parameter names (the trained model, or ultralytics' EMA).

How masks stay exact without masking the EMA every step (see :mod:`sparsepipe.recipe_session`):
the masks are applied to the model right after every optimizer step (a torch optimizer
post-step hook), so momentum, weight decay and AMP can never leave a pruned weight non-zero.
Ultralytics' EMA update ``ema = d * ema + (1 - d) * model`` then keeps a zero at zero, so the
EMA needs masking only when the masks change (a handful of times per run), not every step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sparsepipe.modifiers.pruning import (
    ConstantPruningModifier,
    GMPruningModifier,
    global_magnitude_masks,
    magnitude_mask,
)
from sparsepipe.modifiers.second_order import SECOND_ORDER_MODIFIERS, second_order_prune
from sparsepipe.recipe.schedule import MaskSchedule
from sparsepipe.recipe.validate import resolve_pruning
from sparsepipe.torch_utils import unwrap

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from sparsepipe.recipe.recipe import Recipe


class MaskManager:
    """Keep-masks of every tensor a recipe prunes, their schedules and enforcement windows."""

    def __init__(self, model: "torch.nn.Module", recipe: "Recipe") -> None:
        self.model = unwrap(model)
        self.params = dict(self.model.named_parameters())
        self.pruners: list[tuple[GMPruningModifier, dict[str, float], MaskSchedule]] = []
        self.constants: list[tuple[ConstantPruningModifier, list[str]]] = []
        for modifier in recipe.modifiers:
            if isinstance(modifier, GMPruningModifier):
                self.pruners.append((modifier, resolve_pruning(modifier, self.model), MaskSchedule(modifier)))
            elif isinstance(modifier, ConstantPruningModifier):
                self.constants.append((modifier, list(resolve_pruning(modifier, self.model))))
        self.constant_started = [False] * len(self.constants)
        self.reset_momentum = False  # AC/DC: a dense phase follows a compressed one
        # OBS / M-FAC: recent training gradients of their tensors, index -> name -> [flat grads]
        self.grads: dict[int, dict[str, list["torch.Tensor"]]] = {
            i: {n: [] for n in names} for i, (m, names, _) in enumerate(self.pruners)
            if isinstance(m, SECOND_ORDER_MODIFIERS)}
        self.masks: dict[str, "torch.Tensor"] = {}  # name -> bool keep-mask currently enforced
        self.owners: dict[str, tuple[str, int]] = {}  # name -> ("gmp" | "constant", modifier index)

    @property
    def targets(self) -> dict[str, float]:
        """Final sparsity of every tensor a GMP-family modifier prunes."""
        out: dict[str, float] = {}
        for _, names, _ in self.pruners:
            out.update(names)
        return out

    # ------------------------------------------------------------------ schedule
    def step(self, epoch: float) -> bool:
        """Recompute masks due at ``epoch`` and drop expired ones; True if anything changed."""
        import torch  # heavy: torch

        changed = False
        for index, (modifier, names, schedule) in enumerate(self.pruners):
            if schedule.modifier.should_update(epoch, schedule.last_update):
                if (getattr(modifier, "momentum_buffer_reset", False) and schedule.last_update is not None
                        and modifier.sparsity_at(schedule.last_update) > 0 and modifier.sparsity_at(epoch) == 0):
                    self.reset_momentum = True
                schedule.last_update = epoch
                by_final: dict[float, list[str]] = {}
                for name, final in names.items():
                    by_final.setdefault(final, []).append(name)
                for final, group in by_final.items():
                    sparsity = min(max(modifier.sparsity_at(epoch, final), 0.0), 1.0)
                    if index in self.grads:
                        buffers = self.grads[index]
                        new = second_order_prune(
                            modifier, {n: self.params[n] for n in group},
                            {n: torch.stack(buffers[n]) if buffers[n] else None for n in group},
                            {n: self.masks[n] for n in group if n in self.masks},
                            {n: sparsity for n in group})
                        for n in group:
                            buffers[n].clear()  # fresh gradients for the next step, as SparseML
                    elif modifier.global_sparsity:
                        new = global_magnitude_masks({n: self.params[n] for n in group}, sparsity)
                    else:
                        new = {n: magnitude_mask(self.params[n], sparsity, modifier.mask_type) for n in group}
                    for name, keep in new.items():
                        self.masks[name] = keep.to(device=self.params[name].device, dtype=torch.bool)
                        self.owners[name] = ("gmp", index)
                changed = True
            if not modifier.enforced(epoch) and schedule.last_update is not None:
                changed |= self._release("gmp", index)
        for index, (modifier, names) in enumerate(self.constants):
            if not self.constant_started[index] and modifier.is_active(epoch):
                for name in names:
                    if self.owners.get(name, ("", -1))[0] != "gmp":
                        self.masks[name] = self.params[name].detach() != 0
                        self.owners[name] = ("constant", index)
                self.constant_started[index] = True
                changed = True
            elif self.constant_started[index] and not modifier.is_active(epoch):
                changed |= self._release("constant", index)
        return changed

    @property
    def needs_gradients(self) -> bool:
        return bool(self.grads)

    def collect_gradients(self, epoch: float, steps_per_epoch: int) -> None:
        """Keep the gradients of the last ``num_grads`` steps before each OBS/M-FAC update.

        Called before every optimizer step (gradients are unscaled then). The gradient of a
        weight that is already pruned is stored as zero, which restricts the Fisher to the
        weights still alive.
        """
        for index, buffers in self.grads.items():
            modifier, names, schedule = self.pruners[index]
            last = schedule.last_update
            if last is not None and last + 1e-9 >= modifier.end_epoch:
                continue  # no update left
            if last is None:
                nxt = max(modifier.start_epoch, epoch)
            elif modifier.update_frequency == -1:
                nxt = epoch
            else:
                nxt = min(last + modifier.update_frequency, modifier.end_epoch)
            sparsity = modifier.sparsity_at(nxt)
            wanted = modifier.grads_for(sparsity)
            if (nxt - epoch) * steps_per_epoch > wanted + 1e-6:
                continue  # too early: only the most recent gradients are kept
            for name in names:
                grad = self.params[name].grad
                if grad is None:
                    continue
                g = grad.detach().reshape(-1).float().cpu().clone()
                keep = self.masks.get(name)
                if keep is not None:
                    g.mul_(keep.reshape(-1).cpu())
                bucket = buffers[name]
                bucket.append(g)
                del bucket[: max(0, len(bucket) - wanted)]

    def reset_momentum_buffers(self, optimizer: Any) -> int:
        """Zero every SGD momentum buffer of ``optimizer`` (AC/DC entering a dense phase).

        Weights pruned in the compressed phase would otherwise restart with stale momentum.
        Returns how many buffers were zeroed.
        """
        self.reset_momentum = False
        count = 0
        for state in optimizer.state.values():
            buffer = state.get("momentum_buffer") if isinstance(state, dict) else None
            if buffer is not None:
                buffer.zero_()
                count += 1
        return count

    def _release(self, kind: str, index: int) -> bool:
        names = [n for n, owner in self.owners.items() if owner == (kind, index)]
        for name in names:
            self.masks.pop(name, None)
            self.owners.pop(name, None)
        return bool(names)

    # ------------------------------------------------------------------ enforcement
    def apply(self, module: "torch.nn.Module | None" = None) -> None:
        """Zero the pruned weights of ``module`` (default: the trained model) in place."""
        import torch  # heavy: torch

        if not self.masks:
            return
        params = self.params if module is None else dict(unwrap(module).named_parameters())
        with torch.no_grad():
            for name, keep in self.masks.items():
                param = params.get(name)
                if param is not None:
                    param.mul_(keep.to(device=param.device, dtype=param.dtype))

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Schedule positions (JSON-able); the masks themselves are the zeros of the weights."""
        return {
            "last_update": [s.last_update for _, _, s in self.pruners],
            "constant_started": list(self.constant_started),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: restore schedule positions and rebuild the masks from the weights' zeros."""
        for (modifier, names, schedule), last in zip(self.pruners, state.get("last_update", [])):
            schedule.last_update = last
            if last is not None and modifier.enforced(last):
                index = next(i for i, p in enumerate(self.pruners) if p[0] is modifier)
                for name, final in names.items():
                    if modifier.sparsity_at(last, final) == 0:
                        continue  # a dense mask (AC/DC decompressed phase, or init_sparsity 0)
                    self.masks[name] = self.params[name].detach() != 0
                    self.owners[name] = ("gmp", index)
        for index, started in enumerate(state.get("constant_started", [])[: len(self.constants)]):
            if started:
                self.constant_started[index] = True
                for name in self.constants[index][1]:
                    if name not in self.masks:
                        self.masks[name] = self.params[name].detach() != 0
                        self.owners[name] = ("constant", index)


def sparsity_table(model: "torch.nn.Module", names: list[str] | None = None, min_numel: int = 1) -> dict[str, dict[str, float]]:
    """``{name: {"zeros", "numel", "sparsity"}}`` for conv/linear weights (or ``names``)."""
    model = unwrap(model)
    table = {}
    for name, param in model.named_parameters():
        if names is not None:
            if name not in names:
                continue
        elif not (name.endswith(".weight") and param.dim() >= 2):
            continue
        numel = param.numel()
        if numel < min_numel:
            continue
        zeros = int((param.detach() == 0).sum())
        table[name] = {"zeros": zeros, "numel": numel, "sparsity": zeros / numel}
    return table


def overall_sparsity(table: dict[str, dict[str, float]]) -> float:
    """Fraction of zeros over every tensor of a :func:`sparsity_table`."""
    numel = sum(row["numel"] for row in table.values())
    return sum(row["zeros"] for row in table.values()) / numel if numel else 0.0


def expected_zeros(sparsity: float, numel: int) -> int:
    """Zeros a tensor of ``numel`` has at ``sparsity`` (``round(s * numel)``, as the masks use)."""
    return int(round(sparsity * numel)) if not math.isnan(sparsity) else 0
