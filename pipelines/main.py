"""The main pipeline: data -> train baseline -> export -> evaluate -> benchmark -> report.

    python -m pipelines.compile && python -m pipelines.run_local

Every task gets the run context (MLflow parent run, publish prefix) from the first task; the
exit handler closes the MLflow parent run with the pipeline's final status. Placement for a
real cluster is in :mod:`pipelines.placement`.
"""

from kfp import dsl

from components import (benchmark_model, build_report, close_tracking_run, evaluate_model, export_onnx,
                        open_tracking_run, prepare_data, train_model)
from kfp import kubernetes

from pipelines.placement import (GPU_TAINT_KEY, deterministic, on_cpu_benchmark_node, retried, with_credentials,
                                 with_shm)

PIPELINE_NAME = "sparsepipe-main"


def train_on_accelerator(accelerator, accelerator_count, **train_args):
    """The training task; it asks for ``accelerator_count`` devices of type ``accelerator``.

    ``accelerator=""``/``accelerator_count="0"`` (the defaults) trains on CPU; e.g.
    ``nvidia.com/gpu`` and ``"1"`` trains on one GPU (the component then uses CUDA device 0).
    One task, not a ``dsl.If`` pair of tasks: ``kfp.local`` 2.17 cannot merge artifacts of
    branches (``dsl.OneOf``), and the run must work there too.
    """
    task = train_model(accelerator=accelerator, **train_args)
    task.set_accelerator_type(accelerator).set_accelerator_limit(accelerator_count)
    task.set_cpu_request("2").set_memory_request("8G")
    kubernetes.add_toleration(task, key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")
    with_shm(deterministic(task, num_retries=1))
    return task.outputs["model"]


def evaluate_and_benchmark(onnx_model, dataset, context, variant, threads, iterations):
    """Accuracy of the ONNX file (cached) and its CPU latency on a benchmark node (never cached)."""
    evaluated = evaluate_model(onnx_model=onnx_model, data=dataset, context=context, variant=variant)
    deterministic(evaluated)
    timed = benchmark_model(onnx_model=onnx_model, context=context, threads=threads,
                            iterations=iterations, variant=variant)
    timed.set_caching_options(False)  # a timing is a measurement of this run, never reused
    on_cpu_benchmark_node(with_credentials(retried(timed, 1)))
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
    accelerator_count: str = "0",
    benchmark_threads: int = 2,
    benchmark_iterations: int = 200,
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
                    "batch": batch, "accelerator": accelerator, "accelerator_count": accelerator_count, "benchmark_threads": benchmark_threads,
                    "benchmark_iterations": benchmark_iterations},
        )
        with_credentials(retried(opened.set_caching_options(False)))
        context = opened.output

        data = prepare_data(source=data_source, context=context)
        with_shm(deterministic(data))
        dataset = data.outputs["dataset"]

        checkpoint = train_on_accelerator(accelerator, accelerator_count, model_config=model, data=dataset, context=context,
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
                                                  benchmark_iterations)

        reported = build_report(onnx_model=onnx_model, evaluation=evaluated.outputs["evaluation"],
                                timing=timed.outputs["timing"], context=context, baseline="baseline")
        with_credentials(retried(reported))
