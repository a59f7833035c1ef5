"""Split-free ``C2f`` / ``C3k2`` blocks: the same numbers without ``chunk``, so channels can be pruned.

    python -c "from ultralytics import YOLO; from sparsepipe.splitfree import to_splitfree; print(to_splitfree(YOLO('yolov8n.yaml').model))"

Ultralytics' ``C2f`` (and YOLO11's ``C3k2``, a ``C2f`` subclass) computes one 1x1 ``Conv``
with ``2c`` outputs and splits the result in two halves with ``chunk``. A tensor split hides
which channel belongs to which half from torch-pruning's dependency tracing. Because a 1x1
``Conv`` (conv + batch norm + activation) treats every output channel independently, the block
is exactly the same function when ``cv1`` is replaced by two ``Conv`` modules holding the two
halves of its weights and batch-norm statistics: :class:`SplitFreeC2f`. :func:`to_splitfree`
swaps every such block of a model in place; the test suite checks outputs before and after.

The new class lives here (importable), so pickled checkpoints of converted or pruned models
reload with ``YOLO(path)``. ``Bottleneck``/``C3k`` children are kept as they are.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

ROUTING_ATTRS = ("f", "i", "type", "np")  # ultralytics' per-layer routing attributes


def _half(conv_block: nn.Module, lo: int, hi: int) -> nn.Module:
    """A copy of ultralytics ``Conv`` ``conv_block`` keeping output channels ``lo:hi``."""
    new = copy.deepcopy(conv_block)
    conv, bn = new.conv, new.bn
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight[lo:hi].clone())
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias[lo:hi].clone())
        conv.out_channels = hi - lo
        bn.weight = nn.Parameter(bn.weight[lo:hi].clone())
        bn.bias = nn.Parameter(bn.bias[lo:hi].clone())
        bn.running_mean = bn.running_mean[lo:hi].clone()
        bn.running_var = bn.running_var[lo:hi].clone()
        bn.num_features = hi - lo
    return new


class SplitFreeC2f(nn.Module):
    """``C2f``/``C3k2`` with ``cv1`` split into ``cv1a`` (first half) and ``cv1b`` (second half).

    ``forward(x) = cv2(cat([cv1a(x), cv1b(x), m0(cv1b(x)), m1(m0(...)), ...]))``, exactly
    what ``C2f.forward`` computes with ``cv1(x).chunk(2, 1)``.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        for attr in ROUTING_ATTRS:
            if attr in block.__dict__:
                self.__dict__[attr] = block.__dict__[attr]
        c = block.cv1.conv.out_channels // 2
        self.source = type(block).__name__  # "C2f" or "C3k2", for reports
        self.cv1a = _half(block.cv1, 0, c)
        self.cv1b = _half(block.cv1, c, 2 * c)
        self.cv2 = block.cv2
        self.m = block.m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1a(x), self.cv1b(x)]
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


def splittable_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``C2f`` / ``C3k2`` that :func:`to_splitfree` would swap."""
    from ultralytics.nn.modules.block import C2f  # heavy: ultralytics

    out = []
    for name, module in model.named_modules():
        # C2f subclasses with other forwards (C2fAttn, C2fCIB, ...) are left alone
        if isinstance(module, C2f) and type(module).forward is C2f.forward:
            out.append((name, module))
    return out


def to_splitfree(model: nn.Module) -> int:
    """Swap every ``C2f``/``C3k2`` of ``model`` for :class:`SplitFreeC2f`, in place; return how many."""
    count = 0
    for name, block in splittable_blocks(model):
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        new = SplitFreeC2f(block)
        new.train(block.training)
        if isinstance(owner, (nn.Sequential, nn.ModuleList)):
            owner[int(leaf)] = new
        else:
            setattr(owner, leaf, new)
        count += 1
    return count


def is_splitfree(model: Any) -> bool:
    """True when ``model`` holds split-free blocks (its architecture is not the YAML's)."""
    return isinstance(model, nn.Module) and any(isinstance(m, SplitFreeC2f) for m in model.modules())
