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
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from sparsepipe.errors import ConfigError, ModelError
from sparsepipe.results import StepResult

def _available_engines() -> tuple[str, ...]:
    from sparsepipe.deepsparse_engine import deepsparse_available

    engines = ["onnxruntime"]
    try:
        import openvino  # noqa: F401
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
                    from sparsepipe.deepsparse_engine import require_deepsparse_python

                    require_deepsparse_python()  # raises with the `make deepsparse-env` hint
                hint = " (install the openvino package for --engine openvino)" if name == "openvino" else ""
                raise ConfigError(f"engine={name!r} is not available; choose one of {', '.join(available)}{hint}.")
        for name in ("batch", "threads", "rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer.")
        if self.warmup < 0:
            raise ConfigError(f"warmup={self.warmup!r} must be 0 or more.")
        if self.duration_s is None and self.iterations < 1:
            raise ConfigError(f"iterations={self.iterations!r} must be positive (or set duration_s).")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"duration_s={self.duration_s!r} must be positive.")


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
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
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

    def __call__(self) -> float:
        started = time.perf_counter_ns()
        self.session.run(None, self.feed)
        return (time.perf_counter_ns() - started) / 1e6


class OpenVinoRunner:
    """An OpenVINO CPU compiled model of the same ONNX file, fed with a fixed random input."""

    def __init__(self, path: Path, config: BenchmarkConfig) -> None:
        import openvino as ov

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
        self.compiled = core.compile_model(
            model,
            "CPU",
            {"INFERENCE_NUM_THREADS": config.threads, "PERFORMANCE_HINT": "LATENCY"},
        )
        self.request = self.compiled.create_infer_request()
        rng = np.random.default_rng(config.seed)
        self.feed = {0: rng.random(shape, dtype=np.float32)}
        self.input_shape = shape

    def __call__(self) -> float:
        started = time.perf_counter_ns()
        self.request.infer(self.feed)
        return (time.perf_counter_ns() - started) / 1e6


def _deepsparse_runner(path: Path, config: BenchmarkConfig) -> Any:
    from sparsepipe.deepsparse_engine import DeepSparseRunner

    return DeepSparseRunner(path, config)


RUNNERS = {"onnxruntime": OrtRunner, "openvino": OpenVinoRunner, "deepsparse": _deepsparse_runner}


def _measure(runners: list[Any], config: BenchmarkConfig) -> list[list[float]]:
    """Warm up every runner, then time them round-robin in ``rounds`` chunks."""
    from tqdm import tqdm

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


def _onnx_path(model: str) -> tuple[Path, str]:
    from sparsepipe.models import resolve_model_path
    from sparsepipe.results import inherited_variant, produced_file

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
    from sparsepipe.hardware import cpu_info, engine_versions
    from sparsepipe.sizes import file_sizes
    from sparsepipe.tracking import Tracker

    config = config or BenchmarkConfig()
    tracker = tracker or Tracker()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").unlink(missing_ok=True)

    path, variant = _onnx_path(model)
    base_path = _onnx_path(baseline)[0] if baseline else None
    models = [path] if base_path is None else [path, base_path]
    runners: list[Any] = []
    try:
        for engine in config.engines:  # runners[k * len(models) + m]: engine k, model m
            for model_path in models:
                runners.append(RUNNERS[engine](model_path, config))
        latencies = _measure(runners, config)
    finally:
        for runner in runners:
            close = getattr(runner, "close", None)
            if close is not None:
                close()

    metrics = latency_stats(latencies[0], config.batch)
    metrics.update(file_sizes(path))
    versions = engine_versions()
    for runner in runners:
        if getattr(runner, "info", None) and "deepsparse" in runner.info:
            versions["deepsparse"] = str(runner.info["deepsparse"])
    extra: dict[str, Any] = {"hardware": cpu_info(), "engines": versions, "input_shape": runners[0].input_shape}
    if base_path is not None:
        base = latency_stats(latencies[1], config.batch)
        metrics["speedup_vs_baseline"] = round(base["latency_ms_p50"] / metrics["latency_ms_p50"], 4)
        extra["baseline"] = {"model": str(base_path), **base}
    if len(config.engines) > 1:
        extra["same_run_engines"] = {}
        for k, engine in enumerate(config.engines[1:], start=1):
            other = latency_stats(latencies[k * len(models)], config.batch)
            entry: dict[str, Any] = {"model": other}
            if base_path is not None:
                entry["baseline"] = latency_stats(latencies[k * len(models) + 1], config.batch)
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
    tracker.log_params({f"benchmark.{k}": v for k, v in dataclasses.asdict(config).items() if k != "variant"})
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
    return "\n".join(lines)
