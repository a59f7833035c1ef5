"""The main pipeline: data -> baseline -> sparsify (recipe) -> quantize (PTQ) -> export -> evaluate -> benchmark -> report.

    python -m pipelines.compile && python -m pipelines.run_local

Every task gets the run context (MLflow parent run, publish prefix) from the first task; the
exit handler closes the MLflow parent run with the pipeline's final status. Three variants are
evaluated and benchmarked: ``baseline`` (trained), ``pruned`` (sparsified with ``recipe``) and
``pruned-ptq`` (the pruned ONNX quantized to INT8); each variant's benchmark times the baseline
ONNX interleaved in the same run (``speedup_vs_baseline``). The report registers the champion's
ONNX in the MLflow registry (``registered_model``@``champion_alias``, policy in
:mod:`sparsepipe.registry`). Placement for a real cluster is in :mod:`pipelines.placement`.
"""

from kfp import dsl

from components import (benchmark_model, build_report, close_tracking_run, evaluate_model, export_onnx,
                        open_tracking_run, prepare_data, quantize_model, sparsify_model, train_model)
from kfp import kubernetes

from pipelines.placement import (GPU_TAINT_KEY, deterministic, on_cpu_benchmark_node, retried, with_credentials,
                                 with_shm)

PIPELINE_NAME = "sparsepipe-main"
DEFAULT_RECIPE = "recipes/yolov8n-pruned50.yaml"  # shipped in the images; or an s3://bucket/key.yaml URI
DEFAULT_REGISTERED_MODEL = "sparsepipe-yolo"


def train_on_accelerator(accelerator, accelerator_count, **train_args):
    """The training task; it asks for ``accelerator_count`` devices of type ``accelerator``.

    ``accelerator=""``/``accelerator_count="0"`` (the defaults) trains on CPU; e.g.
    ``nvidia.com/gpu`` and ``"1"`` trains on one GPU (the component then uses CUDA device 0).
    Both are also task inputs: inside a ``dsl.ParallelFor`` the SDK forwards only the pipeline
    parameters a task takes as inputs, not those used only in its resources (found by the
    launcher replay in tests/test_kfp_backend.py). One task, not a ``dsl.If`` pair of tasks:
    ``kfp.local`` 2.17 cannot merge artifacts of branches (``dsl.OneOf``), and the run must work
    there too.
    """
    task = train_model(accelerator=accelerator, accelerator_count=accelerator_count, **train_args)
    on_gpu_when_asked(task, accelerator, accelerator_count)
    return task.outputs["model"]


def on_gpu_when_asked(task, accelerator, accelerator_count):
    """A training-like task (train, sparsify): ``accelerator_count`` x ``accelerator``, GPU taint tolerated."""
    task.set_accelerator_type(accelerator).set_accelerator_limit(accelerator_count)
    task.set_cpu_request("2").set_memory_request("8G")
    kubernetes.add_toleration(task, key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")
    return with_shm(deterministic(task, num_retries=1))


def sparsify_on_accelerator(accelerator, accelerator_count, **sparsify_args):
    """The sparsify task (recipe training), placed like training."""
    task = sparsify_model(accelerator=accelerator, accelerator_count=accelerator_count, **sparsify_args)
    return on_gpu_when_asked(task, accelerator, accelerator_count).outputs["model"]


def exported_onnx(checkpoint, context, imgsz):
    task = export_onnx(checkpoint=checkpoint, context=context, imgsz=imgsz)
    deterministic(task)
    return task.outputs["onnx_model"]


def quantized_onnx(onnx_model, dataset, context, calibration_images):
    task = quantize_model(onnx_model=onnx_model, data=dataset, context=context,
                          calibration_images=calibration_images)
    deterministic(task)
    return task.outputs["int8_model"]


def evaluate_and_benchmark(onnx_model, dataset, context, variant, threads, iterations, baseline_onnx=None):
    """Accuracy of the ONNX file (cached) and its CPU latency on a benchmark node (never cached).

    ``baseline_onnx`` given: the benchmark times it interleaved with the model in the same run.
    """
    evaluated = evaluate_model(onnx_model=onnx_model, data=dataset, context=context, variant=variant)
    deterministic(evaluated)
    extra = {"baseline_onnx": baseline_onnx} if baseline_onnx is not None else {}
    timed = benchmark_model(onnx_model=onnx_model, context=context, threads=threads,
                            iterations=iterations, variant=variant, **extra)
    timed.set_caching_options(False)  # a timing is a measurement of this run, never reused
    on_cpu_benchmark_node(with_credentials(retried(timed, 1)))
    return evaluated, timed


@dsl.pipeline(name=PIPELINE_NAME, description="sparsepipe: baseline, pruned and pruned+INT8 variants: ONNX, mAP, CPU benchmark, report, registry")
def main_pipeline(
    model: str = "yolov8n.yaml",
    recipe: str = DEFAULT_RECIPE,
    recipe_args: str = "",
    data_source: str = "synthetic:train=128,val=32,size=320,seed=0",
    imgsz: int = 160,
    epochs: int = 30,
    batch: int = 16,
    workers: int = 2,
    accelerator: str = "",
    accelerator_count: str = "0",
    benchmark_threads: int = 2,
    benchmark_iterations: int = 200,
    calibration_images: int = 64,
    registered_model: str = DEFAULT_REGISTERED_MODEL,
    champion_alias: str = "champion",
    max_accuracy_drop: float = 0.05,
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
            # every parameter its own input: no placeholders inside a dict constant (docs/kubeflow.md)
            model=model, recipe=recipe, recipe_args=recipe_args, data_source=data_source, imgsz=imgsz,
            epochs=epochs, calibration_images=calibration_images, registered_model=registered_model,
            max_accuracy_drop=max_accuracy_drop, batch=batch, accelerator=accelerator,
            accelerator_count=accelerator_count, benchmark_threads=benchmark_threads,
            benchmark_iterations=benchmark_iterations,
        )
        with_credentials(retried(opened.set_caching_options(False)))
        context = opened.output

        data = prepare_data(source=data_source, context=context)
        with_shm(deterministic(data))
        dataset = data.outputs["dataset"]

        checkpoint = train_on_accelerator(accelerator, accelerator_count, model_config=model, data=dataset, context=context,
                                          epochs=epochs, imgsz=imgsz, batch=batch, workers=workers,
                                          variant="baseline")

        baseline_onnx = exported_onnx(checkpoint, context, imgsz)
        base_eval, base_time = evaluate_and_benchmark(baseline_onnx, dataset, context, "", benchmark_threads,
                                                      benchmark_iterations)

        sparse = sparsify_on_accelerator(accelerator, accelerator_count, checkpoint=checkpoint, data=dataset,
                                         recipe=recipe, recipe_args=recipe_args, context=context, imgsz=imgsz,
                                         batch=batch, workers=workers, variant="pruned")
        pruned_onnx = exported_onnx(sparse, context, imgsz)
        pruned_eval, pruned_time = evaluate_and_benchmark(pruned_onnx, dataset, context, "", benchmark_threads,
                                                          benchmark_iterations, baseline_onnx=baseline_onnx)

        int8_onnx = quantized_onnx(pruned_onnx, dataset, context, calibration_images)
        int8_eval, int8_time = evaluate_and_benchmark(int8_onnx, dataset, context, "", benchmark_threads,
                                                      benchmark_iterations, baseline_onnx=baseline_onnx)

        reported = build_report(
            baseline_onnx=baseline_onnx, baseline_evaluation=base_eval.outputs["evaluation"],
            baseline_timing=base_time.outputs["timing"], sparse_checkpoint=sparse,
            pruned_onnx=pruned_onnx, pruned_evaluation=pruned_eval.outputs["evaluation"],
            pruned_timing=pruned_time.outputs["timing"], int8_onnx=int8_onnx,
            int8_evaluation=int8_eval.outputs["evaluation"], int8_timing=int8_time.outputs["timing"],
            context=context, baseline="baseline", register_model=registered_model, alias=champion_alias,
            max_accuracy_drop=max_accuracy_drop,
        )
        with_credentials(retried(reported))
