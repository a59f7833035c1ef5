"""Small helpers for torch modules that need no torch import themselves.

    python -c "from sparsepipe.torch_utils import unwrap; print(unwrap(object()))"
"""

from __future__ import annotations

from typing import Any


def unwrap(model: Any) -> Any:
    """The bare module inside DDP / DataParallel wrappers."""
    return model.module if hasattr(model, "module") and not hasattr(model, "yaml") else model
