"""Measure CPU latency and throughput of ONNX models with onnxruntime or OpenVINO.

    sparsepipe benchmark --model runs/export --batch 1 --threads 2 --iterations 200 --out runs/bench
    sparsepipe benchmark --engine openvino --model runs/ptq --baseline runs/export --out runs/bench-ov

One session per model, fixed threads, warm-up first, then either a fixed number of
iterations or a duration. With ``--baseline``, the baseline model is timed in the same run,
interleaved in rounds with the candidate so machine drift hits both equally, and
``speedup_vs_baseline`` is the ratio of their medians. Performance claims come from these
printed ratios, never from timed assertions in tests.

Engines: ``onnxruntime`` (CPU execution provider, all graph optimizations) and, when the
``openvino`` package imports, ``openvino`` (reads the same ONNX file, QDQ INT8 included, and
compiles it for the CPU with a latency hint; nothing is re-quantized), and, when its own venv
exists (``make deepsparse-env``), ``deepsparse`` (DeepSparse 1.8 in a worker subprocess, see
:mod:`sparsepipe.deepsparse_engine`; community licence, non-production).

``--engine`` takes a comma list (``deepsparse,onnxruntime``): the model (and the baseline) are
then timed on every listed engine, all interleaved in the same rounds; the first engine's numbers
are the step's metrics and ``speedup_vs_<engine>`` is the other engine's p50 / the first one's.

Scenarios (``--scenario``): ``sync`` (default) times one request at a time: latency. ``async``
keeps ``--streams`` requests in flight (onnxruntime: that many threads calling ``run`` on one
session, each with ``threads // streams`` intra-op threads, at least 1; OpenVINO: an
``AsyncInferQueue`` of ``streams`` jobs on a model compiled with the THROUGHPUT hint and
``NUM_STREAMS=streams``); one timed iteration is one request per stream, so ``latency_ms_*`` is
the wall time of that wave and ``throughput_ips`` counts ``streams x batch`` images per wave.
``--batch 1,4,8`` sweeps batch sizes (dynamic-batch ONNX, ``sparsepipe export --dynamic``): one
row per batch in ``extra["sweep"]``, ``throughput_ips_b<N>`` in the metrics, the first batch's
numbers as the step's metrics. ``--pin`` pins the process to the first ``threads`` usable CPUs
(``os.sched_setaffinity``), onnxruntime's pool threads one per CPU
(``session.intra_op_thread_affinities``) and asks OpenVINO for ``ENABLE_CPU_PINNING``. Every result.json
records the engines' versions, the CPU's ISA features, scenario, streams and pinning; with
``--floor`` it also measures the machine's INT8 peak (:func:`sparsepipe.hardware.measure_peak`)
and reports ``floor_ms`` = the model's FLOPs / peak and ``latency_vs_floor`` = p50 / floor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import openvino as ov

from sparsepipe.deepsparse_engine import DeepSparseRunner, deepsparse_available, require_deepsparse_python
from sparsepipe.errors import ConfigError, ModelError
from sparsepipe.hardware import cpu_info, engine_versions, measure_peak
from sparsepipe.limits import check_input_size, check_threads
from sparsepipe.models import resolve_model_path
from sparsepipe.results import StepResult, check_out, claim_out, inherited_variant, produced_file
from sparsepipe.sizes import file_sizes
from sparsepipe.tracking import Tracker

def _available_engines() -> tuple[str, ...]:
    engines = ["onnxruntime"]
    try:
        import openvino  # noqa: F401  # optional: openvino
    except ImportError:
        pass
    else:
        engines.append("openvino")
    if deepsparse_available():  # its interpreter exists; deepsparse itself is never imported here
        engines.append("deepsparse")
    return tuple(engines)


ENGINES = _available_engines()


@dataclasses.dataclass
class BenchmarkConfig:
    """Settings of the benchmark step."""

    engine: str = "onnxruntime"  # engine(s): onnxruntime, openvino, deepsparse; a comma list times each
    batch: int = 1  # images per inference; must match a static ONNX batch
    batches: tuple[int, ...] = ()  # batch sweep (dynamic-batch ONNX): one row per batch; () = just `batch`
    scenario: str = "sync"  # sync: one request at a time (latency); async: `streams` requests in flight
    streams: int = 1  # concurrent requests in the async scenario (OpenVINO NUM_STREAMS / ORT caller threads)
    pin: bool = False  # pin to the first `threads` usable CPUs (+ OpenVINO ENABLE_CPU_PINNING)
    floor: bool = False  # measure the INT8 peak and report floor_ms = FLOPs / peak, latency_vs_floor
    imgsz: int | None = None  # pixels, only used for dynamic ONNX axes; None = 640
    threads: int = 1  # intra-op threads; pin to the CPUs you deploy on
    warmup: int = 10  # untimed iterations per model before measuring
    iterations: int = 100  # timed iterations per model (ignored when duration_s is set)
    duration_s: float | None = None  # time budget per model in seconds instead of a count
    rounds: int = 5  # interleaving rounds when a baseline is timed in the same run
    seed: int = 0  # seed of the random input tensor
    variant: str = ""  # variant name; default: the producing step's variant

    def __post_init__(self) -> None:
        names = self.engines
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"engine={self.engine!r} must name one engine or a comma list of distinct engines.")
        available = _available_engines() if "deepsparse" in names else ENGINES
        for name in names:
            if name not in available:
                if name == "deepsparse":
                    require_deepsparse_python()  # raises with the `make deepsparse-env` hint
                hint = " (install the openvino package for --engine openvino)" if name == "openvino" else ""
                raise ConfigError(f"engine={name!r} is not available; choose one of {', '.join(available)}{hint}.")
        for name in ("batch", "threads", "rounds", "streams"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer.")
        self.batches = tuple(self.batches)
        if any(not isinstance(b, int) or b < 1 for b in self.batches) or len(set(self.batches)) != len(self.batches):
            raise ConfigError(f"batches={self.batches!r} must be distinct positive integers, e.g. --batch 1,4,8.")
        check_threads("threads", self.threads)
        check_threads("streams", self.streams)
        if self.imgsz is not None and (not isinstance(self.imgsz, int) or self.imgsz < 32):
            raise ConfigError(f"imgsz={self.imgsz!r} must be an integer of at least 32 pixels (or unset: 640).")
        for batch in self.batch_list:
            check_input_size(batch, self.imgsz or 640, "inference")
        if self.scenario not in ("sync", "async"):
            raise ConfigError(f"scenario={self.scenario!r} must be 'sync' (latency) or 'async' (throughput with --streams).")
        if self.scenario == "sync" and self.streams != 1:
            raise ConfigError(f"streams={self.streams} needs --scenario async (the sync scenario runs one request at a time).")
        if self.scenario == "async" and "deepsparse" in names:
            raise ConfigError("The async scenario runs on onnxruntime and openvino; drop deepsparse from --engine.")
        if self.pin and self.threads > len(usable_cpus()):
            raise ConfigError(f"pin=True with threads={self.threads} but only {len(usable_cpus())} CPUs are usable here; "
                              f"lower --threads or drop --pin.")
        if self.warmup < 0:
            raise ConfigError(f"warmup={self.warmup!r} must be 0 or more.")
        if self.duration_s is None and self.iterations < 1:
            raise ConfigError(f"iterations={self.iterations!r} must be positive (or set duration_s).")
        if self.duration_s is not None and not 0 < self.duration_s < float("inf"):  # nan fails too
            raise ConfigError(f"duration_s={self.duration_s!r} must be a positive finite number of seconds.")


    @property
    def batch_list(self) -> list[int]:
        """The batch sizes to time: ``batches`` when set, else ``[batch]``."""
        return list(self.batches) or [self.batch]

    @property
    def engines(self) -> list[str]:
        """The engines of ``engine`` (a name or a comma list), in order."""
        return [name.strip() for name in str(self.engine).split(",") if name.strip()]


def latency_stats(latencies_ms: list[float], batch: int) -> dict[str, float]:
    """Mean/median/p90/p99/std/min of per-inference latencies and images per second."""
    arr = np.asarray(latencies_ms, dtype=np.float64)
    mean = float(arr.mean())
    return {
        "latency_ms_mean": round(mean, 4),
        "latency_ms_p50": round(float(np.percentile(arr, 50)), 4),
        "latency_ms_p90": round(float(np.percentile(arr, 90)), 4),
        "latency_ms_p99": round(float(np.percentile(arr, 99)), 4),
        "latency_ms_std": round(float(arr.std()), 4),
        "latency_ms_min": round(float(arr.min()), 4),
        "throughput_ips": round(batch * 1000.0 / mean, 3),
        "iterations": float(arr.size),
    }


def feed_shape(dims: list[int | None], config: BenchmarkConfig, path: Path) -> list[int]:
    """The NCHW input to feed: static dims as they are, dynamic ones from the config
    (batch, 3 channels, imgsz or 640); a static batch that differs from ``config.batch`` is an error."""
    shape = [
        dim if dim is not None else (config.batch if i == 0 else 3 if i == 1 else (config.imgsz or 640))
        for i, dim in enumerate(dims)
    ]
    if shape[0] != config.batch:
        raise ConfigError(
            f"'{path.name}' has a static batch of {shape[0]} but batch={config.batch} was asked; "
            f"re-export with --batch {config.batch} or --dynamic, or benchmark with --batch {shape[0]}."
        )
    return shape


class OrtRunner:
    """An onnxruntime CPU session fed with a fixed random input."""

    def __init__(self, path: Path, config: BenchmarkConfig) -> None:
        import onnxruntime as ort  # heavy: onnxruntime

        options = ort.SessionOptions()
        options.intra_op_num_threads = _ort_intra_threads(config)
        options.inter_op_num_threads = 1
        if config.pin and options.intra_op_num_threads > 1:
            # ORT pins its pool threads (1-based CPU ids, one entry per thread but the caller's,
            # which the process affinity already holds) to the CPUs after the first.
            cpus = usable_cpus()[: options.intra_op_num_threads]
            options.add_session_config_entry("session.intra_op_thread_affinities", ";".join(str(c + 1) for c in cpus[1:]))
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelError(
                f"onnxruntime cannot load '{path}': {exc}. Check it is a complete ONNX file written by "
                f"`sparsepipe export` or `sparsepipe quantize`."
            ) from None
        meta = self.session.get_inputs()[0]
        shape = feed_shape([d if isinstance(d, int) else None for d in meta.shape], config, path)
        rng = np.random.default_rng(config.seed)
        self.feed = {meta.name: rng.random(shape, dtype=np.float32)}
        self.input_shape = shape
        self.streams = config.streams if config.scenario == "async" else 1
        self.pool = ThreadPoolExecutor(self.streams) if self.streams > 1 else None

    def _run(self) -> None:
        self.session.run(None, self.feed)

    def __call__(self) -> float:
        started = time.perf_counter_ns()
        if self.pool is None:
            self.session.run(None, self.feed)
        else:  # one request per stream, concurrently, on the same session
            for future in [self.pool.submit(self._run) for _ in range(self.streams)]:
                future.result()
        return (time.perf_counter_ns() - started) / 1e6

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


class OpenVinoRunner:
    """An OpenVINO CPU compiled model of the same ONNX file, fed with a fixed random input."""

    def __init__(self, path: Path, config: BenchmarkConfig) -> None:
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            raise ModelError(
                f"OpenVINO cannot read '{path}': {exc}. Check it is a complete ONNX file written by "
                f"`sparsepipe export` or `sparsepipe quantize`."
            ) from None
        port = model.inputs[0]
        pshape = port.get_partial_shape()
        shape = feed_shape([d.get_length() if d.is_static else None for d in pshape], config, path)
        if pshape.is_dynamic:
            model.reshape({port.get_any_name(): ov.PartialShape(shape)})
        properties: dict[str, Any] = {"INFERENCE_NUM_THREADS": config.threads, "PERFORMANCE_HINT": "LATENCY"}
        self.streams = config.streams if config.scenario == "async" else 1
        if config.scenario == "async":
            properties.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": config.streams})
        if config.pin:
            properties["ENABLE_CPU_PINNING"] = True
        self.compiled = core.compile_model(model, "CPU", properties)
        rng = np.random.default_rng(config.seed)
        self.feed = {0: rng.random(shape, dtype=np.float32)}
        self.input_shape = shape
        self.request = self.compiled.create_infer_request()
        self.queue = ov.AsyncInferQueue(self.compiled, self.streams) if self.streams > 1 else None

    def __call__(self) -> float:
        started = time.perf_counter_ns()
        if self.queue is None:
            self.request.infer(self.feed)
        else:  # one request per stream in flight at once
            for _ in range(self.streams):
                self.queue.start_async(self.feed)
            self.queue.wait_all()
        return (time.perf_counter_ns() - started) / 1e6


def _deepsparse_runner(path: Path, config: BenchmarkConfig) -> Any:
    return DeepSparseRunner(path, config)


def _ort_intra_threads(config: BenchmarkConfig) -> int:
    """Intra-op threads of one ORT session: all of them in sync, split across streams in async."""
    if config.scenario == "async":
        return max(1, config.threads // config.streams)
    return config.threads


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


@contextmanager
def pinned(config: BenchmarkConfig) -> Iterator[list[int] | None]:
    """With ``config.pin``: restrict the process to the first ``threads`` usable CPUs (restored after)."""
    if not config.pin or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = usable_cpus()
    cpus = before[: config.threads]
    os.sched_setaffinity(0, cpus)
    try:
        yield cpus
    finally:
        os.sched_setaffinity(0, before)


RUNNERS = {"onnxruntime": OrtRunner, "openvino": OpenVinoRunner, "deepsparse": _deepsparse_runner}


def _measure(runners: list[Any], config: BenchmarkConfig) -> list[list[float]]:
    """Warm up every runner, then time them round-robin in ``rounds`` chunks."""
    from tqdm import tqdm  # heavy: tqdm

    for runner in runners:
        if hasattr(runner, "run_many"):
            if config.warmup:
                runner.run_many(config.warmup)
            continue
        for _ in range(config.warmup):
            runner()
    latencies: list[list[float]] = [[] for _ in runners]
    rounds = config.rounds if len(runners) > 1 else 1
    if config.duration_s is not None:
        budget = config.duration_s / rounds
        for _ in tqdm(range(rounds), desc="benchmark rounds", disable=rounds == 1):
            for i, runner in enumerate(runners):
                deadline = time.perf_counter() + budget
                while time.perf_counter() < deadline:
                    latencies[i].append(runner())
    else:
        per_round = max(1, config.iterations // rounds)
        total = per_round * rounds * len(runners)
        with tqdm(total=total, desc="benchmark", unit="it", leave=False) as bar:
            for _ in range(rounds):
                for i, runner in enumerate(runners):
                    if hasattr(runner, "run_many"):  # out-of-process engine: one request per round
                        latencies[i].extend(runner.run_many(per_round))
                    else:
                        for _ in range(per_round):
                            latencies[i].append(runner())
                    bar.update(per_round)
    return latencies


def time_interleaved(candidates: list[tuple[Any, str, Path]], config: BenchmarkConfig,
                     label: str = "") -> dict[Any, list[float]]:
    """Latencies (ms) of every ``(key, engine, path)`` candidate, all timed in the same interleaved rounds.

    An engine that refuses a file is a result too: that candidate is left out with a printed
    reason (``label`` says where). Runners are closed afterwards even when timing fails.
    """
    keys, runners = [], []
    for key, engine, path in candidates:
        try:
            runners.append(RUNNERS[engine](path, config))
            keys.append(key)
        except Exception as exc:  # noqa: BLE001 - reported and skipped, see docstring
            print(f"skip {key} on {engine}{label}: {str(exc)[:300]}", flush=True)
    try:
        latencies = _measure(runners, config)
    finally:
        for runner in runners:
            getattr(runner, "close", lambda: None)()
    return dict(zip(keys, latencies))


def _onnx_path(model: str) -> tuple[Path, str]:
    variant = inherited_variant(model)
    # A quantize step's folder also holds weights / an FP32 file: time the INT8 one.
    path = produced_file(model, ("int8_onnx", "onnx")) or Path(resolve_model_path(model))
    if path.suffix != ".onnx":
        raise ModelError(
            f"The benchmark runs ONNX models; '{model}' is not one. Run `sparsepipe export` first and "
            f"pass its --out folder or model.onnx."
        )
    return path, variant


def benchmark(
    model: str,
    out: str | Path,
    config: BenchmarkConfig | None = None,
    baseline: str | None = None,
    tracker: Any = None,
) -> StepResult:
    """Time ``model`` (and ``baseline`` interleaved, if given) and write ``<out>/result.json``."""
    config = config or BenchmarkConfig()
    tracker = tracker or Tracker()
    out = check_out(out)  # a run refused for its model leaves a good --out as it was (claim_out below)

    path, variant = _onnx_path(model)
    base_path = _onnx_path(baseline)[0] if baseline else None
    claim_out(out)  # the old result goes before timing: a killed run never leaves it beside new files
    models = [path] if base_path is None else [path, base_path]
    sweep: list[dict[str, Any]] = []
    with pinned(config) as cpus:
        for batch in config.batch_list:
            batch_config = dataclasses.replace(config, batch=batch, batches=())
            runners: list[Any] = []
            try:
                for engine in config.engines:  # runners[k * len(models) + m]: engine k, model m
                    for model_path in models:
                        runners.append(RUNNERS[engine](model_path, batch_config))
                latencies = _measure(runners, batch_config)
            finally:
                for runner in runners:
                    close = getattr(runner, "close", None)
                    if close is not None:
                        close()
            sweep.append({"batch": batch, "runners": runners, "latencies": latencies})

    images = config.streams if config.scenario == "async" else 1  # images per iteration = streams x batch
    first = sweep[0]
    runners, latencies = first["runners"], first["latencies"]
    metrics = latency_stats(latencies[0], first["batch"] * images)
    metrics.update(file_sizes(path))
    versions = engine_versions()
    for runner in runners:
        if getattr(runner, "info", None) and "deepsparse" in runner.info:
            versions["deepsparse"] = str(runner.info["deepsparse"])
    extra: dict[str, Any] = {
        "hardware": cpu_info(), "engines": versions, "input_shape": runners[0].input_shape,
        "scenario": config.scenario, "streams": config.streams, "pinned_cpus": cpus,
    }
    if len(sweep) > 1:
        extra["sweep"] = []
        for entry in sweep:
            stats = latency_stats(entry["latencies"][0], entry["batch"] * images)
            extra["sweep"].append({"batch": entry["batch"], **stats})
            metrics[f"throughput_ips_b{entry['batch']}"] = stats["throughput_ips"]
    if config.floor:
        macs = onnx_macs(path)
        peak = measure_peak(config.threads)
        floor_ms = 2.0 * macs * first["batch"] / peak["int8_ops_s"] * 1000.0
        metrics.update({"gmacs": round(macs / 1e9, 4), "floor_ms": round(floor_ms, 4),
                        "latency_vs_floor": round(metrics["latency_ms_p50"] / floor_ms, 3)})
        extra["peak"] = peak
    if base_path is not None:
        base = latency_stats(latencies[1], first["batch"] * images)
        metrics["speedup_vs_baseline"] = round(base["latency_ms_p50"] / metrics["latency_ms_p50"], 4)
        extra["baseline"] = {"model": str(base_path), **base}
    if len(config.engines) > 1:
        extra["same_run_engines"] = {}
        for k, engine in enumerate(config.engines[1:], start=1):
            other = latency_stats(latencies[k * len(models)], first["batch"] * images)
            entry: dict[str, Any] = {"model": other}
            if base_path is not None:
                entry["baseline"] = latency_stats(latencies[k * len(models) + 1], first["batch"] * images)
            extra["same_run_engines"][engine] = entry
            metrics[f"speedup_vs_{engine}"] = round(other["latency_ms_p50"] / metrics["latency_ms_p50"], 4)
    result = StepResult(
        step="benchmark",
        out_dir=str(out),
        variant=config.variant or variant or "baseline",
        files={"onnx": str(path)},
        metrics=metrics,
        config={"model": str(model), "baseline": baseline, **dataclasses.asdict(config)},
        extra=extra,
    )
    tracker.log_params({f"benchmark.{k}": v for k, v in dataclasses.asdict(config).items() if k not in ("variant", "batches")})
    tracker.log_params({"cpu_model": extra["hardware"]["cpu_model"], "cpu_int8": extra["hardware"]["int8_hint"]})
    tracker.log_metrics(metrics)
    result.write()
    print(format_table(result))
    return result


def format_table(result: StepResult) -> str:
    """A small fixed-width table of one benchmark result (and its baseline)."""
    rows = [(result.variant, result.metrics)]
    if "baseline" in result.extra:
        rows.append(("baseline (same run)", result.extra["baseline"]))
    for engine, entry in result.extra.get("same_run_engines", {}).items():
        rows.append((f"{result.variant} @{engine}"[:21], entry["model"]))
        if "baseline" in entry:
            rows.append((f"baseline @{engine}"[:21], entry["baseline"]))
    hw = result.extra.get("hardware", {})
    header = f"{'model':<22}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'img/s':>10}"
    lines = [
        f"{result.config.get('engine', 'onnxruntime')} | batch {result.config['batch']} | threads "
        f"{result.config['threads']} | {hw.get('cpu_model', '?')} ({hw.get('int8_hint', '')})",
        header,
        "-" * len(header),
    ]
    for name, m in rows:
        lines.append(
            f"{name:<22}{m['latency_ms_p50']:>10.2f}{m['latency_ms_p90']:>10.2f}{m['latency_ms_p99']:>10.2f}"
            f"{m['latency_ms_mean']:>10.2f}{m['throughput_ips']:>10.1f}"
        )
    if "speedup_vs_baseline" in result.metrics:
        lines.append(f"speedup_vs_baseline: {result.metrics['speedup_vs_baseline']:.3f}x (ratio of p50s, one run)")
    for engine in result.extra.get("same_run_engines", {}):
        lines.append(f"speedup_vs_{engine}: {result.metrics[f'speedup_vs_{engine}']:.3f}x (its p50 / this p50, same run)")
    for row in result.extra.get("sweep", []):
        lines.append(f"batch {row['batch']:>3}: p50 {row['latency_ms_p50']:.2f} ms, {row['throughput_ips']:.1f} img/s")
    if "floor_ms" in result.metrics:
        lines.append(f"INT8 floor {result.metrics['floor_ms']:.3f} ms ({result.metrics['gmacs']:.3f} GMAC / measured peak): "
                     f"p50 is {result.metrics['latency_vs_floor']:.1f}x the floor")
    return "\n".join(lines)


def onnx_macs(path: str | Path) -> int:
    """Multiply-accumulates of one inference of an ONNX model: Conv, ConvTranspose, MatMul and
    Gemm nodes, from shapes inferred on the graph (QDQ weights are followed through their
    DequantizeLinear). Dynamic dims count as 1."""
    import onnx  # heavy: onnx
    from onnx import numpy_helper, shape_inference  # heavy: onnx

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes: dict[str, list[int]] = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    producers = {out: node for node in graph.node for out in node.output}
    consts = {init.name: init for init in graph.initializer}

    def weight_shape(name: str) -> list[int] | None:
        node = producers.get(name)
        if name in shapes and name in consts:
            return shapes[name]
        if node is not None and node.op_type in ("DequantizeLinear", "Identity", "Cast"):
            return weight_shape(node.input[0])
        if node is not None and node.op_type == "Constant":
            return list(numpy_helper.to_array(node.attribute[0].t).shape)
        return shapes.get(name)

    total = 0
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
            w_name = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
            w = weight_shape(w_name)
            out_name = node.output[0]
            if node.op_type == "ConvTranspose":
                src = shapes.get(node.input[0])
                if w is None or src is None:
                    continue
                total += int(np.prod(src)) * int(np.prod(w[1:]))
                continue
            out = shapes.get(out_name)
            if w is None or out is None:
                continue
            total += int(np.prod(out)) * int(np.prod(w[1:]))  # out elements x (Cin/groups x kh x kw)
        elif node.op_type in ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"):
            a = shapes.get(node.input[0])
            out = shapes.get(node.output[0])
            if a is None or out is None or not a:
                continue
            k = a[-1] if not (node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)) else a[0]
            total += int(np.prod(out)) * int(k)
    return total


def profile_ops(path: str | Path, engine: str = "onnxruntime", threads: int = 1, iterations: int = 20,
                top: int = 8) -> list[dict[str, Any]]:
    """Which operators take the time: per op type, the share of summed kernel time over
    ``iterations`` runs (onnxruntime's profiler, or OpenVINO's PERF_COUNT), largest first."""
    config = BenchmarkConfig(engine=engine, threads=threads)
    totals: dict[str, float] = {}
    if engine == "onnxruntime":
        import onnxruntime as ort  # heavy: onnxruntime

        with tempfile.TemporaryDirectory(prefix="sparsepipe-prof-") as tmp:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "ort")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            meta = session.get_inputs()[0]
            shape = feed_shape([d if isinstance(d, int) else None for d in meta.shape], config, Path(path))
            feed = {meta.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
            for _ in range(iterations):
                session.run(None, feed)
            trace = json.loads(Path(session.end_profiling()).read_text())
        for event in trace:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                op = event.get("args", {}).get("op_name", "?")
                totals[op] = totals.get(op, 0.0) + float(event.get("dur", 0)) / 1000.0
    elif engine == "openvino":
        core = ov.Core()
        model = core.read_model(str(path))
        port = model.inputs[0]
        pshape = port.get_partial_shape()
        shape = feed_shape([d.get_length() if d.is_static else None for d in pshape], config, Path(path))
        if pshape.is_dynamic:
            model.reshape({port.get_any_name(): ov.PartialShape(shape)})
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                     "PERF_COUNT": True})
        request = compiled.create_infer_request()
        feed = {0: np.random.default_rng(0).random(shape, dtype=np.float32)}
        for _ in range(iterations):
            request.infer(feed)
            for info in request.get_profiling_info():
                key = f"{info.node_type} ({info.exec_type})"
                totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1000.0
    else:
        raise ConfigError(f"profile_ops supports onnxruntime and openvino, not {engine!r}.")
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [{"op": op, "ms_per_run": round(ms / iterations, 4), "share": round(ms / whole, 4)} for op, ms in ranked]
