"""Moved to :mod:`sparsepipe.modifiers.registry` (modifiers register themselves there); kept for one release."""
from sparsepipe.modifiers.registry import build_modifier, construct, known_tags, lookup, register, register_factory  # noqa: F401
