"""The benchmark step: onnxruntime CPU latency/throughput of an ONNX folder."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE)
def benchmark_model(
    onnx_model: Input[Model],
    timing: Output[Artifact],
    metrics: Output[Metrics],
    context: str = "",
    threads: int = 1,
    iterations: int = 100,
    warmup: int = 10,
    batch: int = 1,
    variant: str = "",
    baseline_onnx: Optional[Input[Model]] = None,
    scenario: str = "sync",
    streams: int = 1,
    pin: bool = False,
):
    """Time the model with fixed threads (interleaved with ``baseline_onnx`` when given) on a CPU node.

    ``scenario="async"`` keeps ``streams`` requests in flight (throughput); ``pin`` pins the
    threads to the first ``threads`` CPUs of the pod."""
    from sparsepipe.kfp_support import kfp_metrics, run_benchmark

    result = run_benchmark(onnx_model.path, timing.path, context, threads=threads,
                           iterations=iterations, warmup=warmup, batch=batch, variant=variant,
                           baseline=baseline_onnx.path if baseline_onnx else "", scenario=scenario,
                           streams=streams, pin=pin)
    timing.metadata["variant"] = result.variant
    for name, value in kfp_metrics(result).items():
        metrics.log_metric(name, value)
