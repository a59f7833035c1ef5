"""Session and compile options of every engine, in one place.

    python -c "from sparsepipe.engines.options import *; print(openvino_properties(OPENVINO_BF16, SessionSettings(threads=2, scenario='async', streams=2)))"

A :class:`SessionSettings` says how much of the machine one model gets (threads, the sync or
async scenario with its streams, CPU pinning); :func:`ort_session_options` and
:func:`openvino_properties` turn it into the options of each engine. Everything that opens a
model (benchmark, predict, serve, graph inspection, hardware probes) goes through these two
functions, so the same engine name and settings give the same session everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

from sparsepipe.engines.deepsparse import deepsparse_available

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
OPENVINO_BF16 = "openvino-bf16"
DEEPSPARSE = "deepsparse"
#: Every engine name, in the order the CLI lists them.
ENGINE_NAMES = (ONNXRUNTIME, OPENVINO, OPENVINO_BF16, DEEPSPARSE)
#: OpenVINO's ``INFERENCE_PRECISION_HINT`` per engine name. ``openvino`` is f32: on CPUs with AMX or
#: AVX512-BF16 OpenVINO's own default runs FP32 graphs' float layers in bf16, which moves scores by
#: ~1e-2 (docs/engines.md has the measured mAP and latency); bf16 is available under its own name.
#: INT8 (QDQ) layers run their int8 kernels under either hint.
OPENVINO_PRECISION = {OPENVINO: "f32", OPENVINO_BF16: "bf16"}
OPENVINO_ENGINES = tuple(OPENVINO_PRECISION)
SCENARIOS = ("sync", "async")


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    """How one model runs: threads, scenario and pinning (engine-neutral)."""

    threads: int = 1  # intra-op threads of the model (async onnxruntime: split across streams)
    scenario: str = "sync"  # sync: one request at a time (latency); async: `streams` requests in flight
    streams: int = 1  # requests in flight in the async scenario (OpenVINO NUM_STREAMS / ORT caller threads)
    pin: bool = False  # pin pool threads to the first `threads` usable CPUs (OpenVINO: ENABLE_CPU_PINNING)

    def __post_init__(self) -> None:
        for name in ("threads", "streams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario={self.scenario!r} must be one of {', '.join(SCENARIOS)}.")

    @property
    def ort_intra_threads(self) -> int:
        """Intra-op threads of one onnxruntime session: all in sync, split across streams in async."""
        return max(1, self.threads // self.streams) if self.scenario == "async" else self.threads


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def ort_session_options(settings: SessionSettings | None = None, *, optimized_model_path: str | None = None,
                        profile_prefix: str | None = None) -> Any:
    """onnxruntime ``SessionOptions`` for ``settings``: CPU, all graph optimizations, sequential
    execution, one inter-op thread, ``ort_intra_threads`` intra-op threads (pinned with ``pin``).

    ``optimized_model_path`` also writes the optimized graph there (its expected "hardware
    specific optimizations" warning is silenced); ``profile_prefix`` turns on the profiler.
    """
    import onnxruntime as ort  # heavy: onnxruntime

    settings = settings or SessionSettings()
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.ort_intra_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if settings.pin and options.intra_op_num_threads > 1:
        # ORT pins its pool threads (1-based CPU ids, one entry per thread but the caller's,
        # which the process affinity already holds) to the CPUs after the first.
        cpus = usable_cpus()[: options.intra_op_num_threads]
        options.add_session_config_entry("session.intra_op_thread_affinities", ";".join(str(c + 1) for c in cpus[1:]))
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
        options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return options


def openvino_properties(engine: str = OPENVINO, settings: SessionSettings | None = None, *,
                        perf_count: bool = False) -> dict[str, Any]:
    """OpenVINO CPU compile properties of ``engine`` (``openvino`` or ``openvino-bf16``) for ``settings``:
    threads, the precision hint of :data:`OPENVINO_PRECISION`, LATENCY (sync) or THROUGHPUT with
    ``NUM_STREAMS`` (async), ``ENABLE_CPU_PINNING`` with ``pin``, ``PERF_COUNT`` for profiling."""
    if engine not in OPENVINO_PRECISION:
        raise ValueError(f"engine={engine!r} is not an OpenVINO engine; choose one of {', '.join(OPENVINO_ENGINES)}.")
    settings = settings or SessionSettings()
    properties: dict[str, Any] = {"INFERENCE_NUM_THREADS": settings.threads, "PERFORMANCE_HINT": "LATENCY",
                                  "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[engine]}
    if settings.scenario == "async":
        properties.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": settings.streams})
    if settings.pin:
        properties["ENABLE_CPU_PINNING"] = True
    if perf_count:
        properties["PERF_COUNT"] = True
    return properties


def available_engines() -> tuple[str, ...]:
    """Engine names usable here: onnxruntime always, the OpenVINO ones when ``openvino`` imports,
    ``deepsparse`` when its venv's interpreter exists (it is not started to check)."""
    engines = [ONNXRUNTIME]
    if importlib.util.find_spec("openvino") is not None:  # found, not imported (heavy: openvino)
        engines += list(OPENVINO_ENGINES)
    if deepsparse_available():
        engines.append(DEEPSPARSE)
    return tuple(engines)
