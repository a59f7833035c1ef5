"""Describe the CPU a benchmark ran on: model, cores, and the ISA features that decide speed.

    python -m sparsepipe.hardware

INT8 kernels are fast with AVX-512 VNNI / AVX-VNNI and fastest with AMX; without VNNI an
INT8 model can be slower than FP32. Every benchmark result records these flags so numbers
from different machines are never compared blindly.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

ISA_FLAGS = {
    "avx2": "avx2",
    "avx512f": "avx512",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}


def _cpuinfo(text: str | None = None) -> tuple[str, set[str], int | None]:
    if text is None:
        path = Path("/proc/cpuinfo")
        text = path.read_text(errors="replace") if path.is_file() else ""
    model, flags, cores = "", set(), set()
    physical = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and not model:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
            cores.add((physical, core))
    return model, flags, (len(cores) or None)


def cpu_info(cpuinfo_text: str | None = None) -> dict:
    """CPU model, logical/physical/usable cores and ISA features, as a JSON-able dict."""
    model, flags, physical = _cpuinfo(cpuinfo_text)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    isa = {name: (flag in flags) for flag, name in ISA_FLAGS.items()}
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count() or 1,
        "physical_cores": physical,
        "usable_cores": usable,
        "isa": isa,
        "int8_hint": (
            "AMX" if isa["amx_int8"] else "VNNI" if (isa["avx512_vnni"] or isa["avx_vnni"]) else "no VNNI: INT8 may not beat FP32"
        ),
    }


def engine_versions() -> dict[str, str]:
    """Versions of the inference engines importable here."""
    versions = {}
    for name in ("onnxruntime", "openvino", "onnx", "torch"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            continue
    return versions


if __name__ == "__main__":
    print(json.dumps({**cpu_info(), "engines": engine_versions()}, indent=2))
