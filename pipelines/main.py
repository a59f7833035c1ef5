"""The main pipeline: data -> train baseline -> export -> evaluate -> benchmark -> report.

    python -m pipelines.compile && python -m pipelines.run_local

Every task gets the run context (MLflow parent run, publish prefix) from the first task; the
exit handler closes the MLflow parent run with the pipeline's final status. Placement for a
real cluster is in :mod:`pipelines.placement`.
"""

from kfp import dsl

from components import (benchmark_model, build_report, close_tracking_run, evaluate_model, export_onnx,
                        open_tracking_run, prepare_data, train_model)
from pipelines.placement import deterministic, on_cpu_benchmark_node, on_gpu, retried, with_credentials, with_shm

PIPELINE_NAME = "sparsepipe-main"


def train_on_accelerator(accelerator, **train_args):
    """Train on one GPU when ``accelerator`` is set (e.g. ``nvidia.com/gpu``), else on CPU.

    Returns the checkpoint channel (``dsl.OneOf`` of the two branches).
    """
    with dsl.If(accelerator != "", name="train-on-gpu"):
        gpu = train_model(device="0", **train_args).set_display_name("train (GPU)")
        on_gpu(deterministic(gpu, num_retries=1), accelerator)
        with_shm(gpu.set_memory_request("16G"))
    with dsl.Else(name="train-on-cpu"):
        cpu = train_model(device="cpu", **train_args).set_display_name("train (CPU)")
        with_shm(deterministic(cpu, num_retries=1))
        cpu.set_cpu_request("2").set_memory_request("8G")
    return dsl.OneOf(gpu.outputs["model"], cpu.outputs["model"])


def evaluate_and_benchmark(onnx_model, dataset, context, variant, threads, iterations, cpus):
    """Accuracy of the ONNX file (cached) and its CPU latency on a benchmark node (never cached)."""
    evaluated = evaluate_model(onnx_model=onnx_model, data=dataset, context=context, variant=variant)
    deterministic(evaluated)
    timed = benchmark_model(onnx_model=onnx_model, context=context, threads=threads,
                            iterations=iterations, variant=variant)
    timed.set_caching_options(False)  # a timing is a measurement of this run, never reused
    on_cpu_benchmark_node(with_credentials(retried(timed, 1)), cpus)
    return evaluated, timed


@dsl.pipeline(name=PIPELINE_NAME, description="sparsepipe: data, baseline, ONNX export, mAP, CPU benchmark, report")
def main_pipeline(
    model: str = "yolov8n.yaml",
    data_source: str = "synthetic:train=128,val=32,size=320,seed=0",
    imgsz: int = 160,
    epochs: int = 30,
    batch: int = 16,
    workers: int = 2,
    accelerator: str = "",
    benchmark_threads: int = 2,
    benchmark_iterations: int = 200,
    benchmark_cpus: str = "2",
    mlflow_tracking_uri: str = "",
    mlflow_experiment: str = "sparsepipe",
    publish_root: str = "",
    s3_endpoint_url: str = "",
):
    closer = close_tracking_run(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, experiment=mlflow_experiment,
                                tracking_uri=mlflow_tracking_uri)
    with_credentials(retried(closer.set_caching_options(False)))
    with dsl.ExitHandler(closer, name="tracked-run"):
        opened = open_tracking_run(
            experiment=mlflow_experiment, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            tracking_uri=mlflow_tracking_uri, publish_root=publish_root, s3_endpoint_url=s3_endpoint_url,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, pipeline=PIPELINE_NAME,
            params={"model": model, "data_source": data_source, "imgsz": imgsz, "epochs": epochs,
                    "batch": batch, "accelerator": accelerator, "benchmark_threads": benchmark_threads,
                    "benchmark_iterations": benchmark_iterations},
        )
        with_credentials(retried(opened.set_caching_options(False)))
        context = opened.output

        data = prepare_data(source=data_source, context=context)
        with_shm(deterministic(data))
        dataset = data.outputs["dataset"]

        checkpoint = train_on_accelerator(accelerator, model_config=model, data=dataset, context=context,
                                          epochs=epochs, imgsz=imgsz, batch=batch, workers=workers,
                                          variant="baseline")

        # ---- sparsify / quantize slot in here (later issues) -------------------------------
        # sparse = sparsify_model(checkpoint=checkpoint, data=dataset, recipe=recipe, ...)
        # quant = quantize_model(checkpoint=sparse.outputs["model"], data=dataset, ...)
        # then export/evaluate/benchmark each variant as below, and give the report every variant.
        # -------------------------------------------------------------------------------------

        exported = export_onnx(checkpoint=checkpoint, context=context, imgsz=imgsz)
        deterministic(exported)
        onnx_model = exported.outputs["onnx_model"]

        evaluated, timed = evaluate_and_benchmark(onnx_model, dataset, context, "", benchmark_threads,
                                                  benchmark_iterations, benchmark_cpus)

        reported = build_report(onnx_model=onnx_model, evaluation=evaluated.outputs["evaluation"],
                                timing=timed.outputs["timing"], context=context, baseline="baseline")
        with_credentials(retried(reported))
