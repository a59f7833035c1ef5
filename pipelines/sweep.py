"""The sweep pipeline: one baseline, then a fan-out over recipes (sparsify -> INT8), one report.

    python -m pipelines.compile && python -m pipelines.submit --pipeline sweep --host URL

The baseline is trained, exported, evaluated and benchmarked once. Each item of ``recipes`` is
``{"variant": NAME, "recipe": PATH_OR_S3_URI, "recipe_args": "k=v,..."}``; every item is
sparsified from the baseline checkpoint, exported, quantized (PTQ), and both its pruned and its
INT8 variant are evaluated and benchmarked against the baseline ONNX in the same run, in a
``dsl.ParallelFor`` (``PARALLELISM`` at a time). One report compares all variants
(``dsl.Collected``) and registers the champion. Recipes are files shipped in the images under
``recipes/`` (``/opt/sparsepipe/recipes``) or ``s3://`` URIs (see docs/kubeflow.md).
"""

from kfp import dsl

from components import build_sweep_report, close_tracking_run, open_tracking_run, prepare_data
from pipelines.main import (DEFAULT_REGISTERED_MODEL, evaluate_and_benchmark, exported_onnx, quantized_onnx,
                            sparsify_on_accelerator, train_on_accelerator)
from pipelines.placement import deterministic, retried, with_credentials, with_shm

PIPELINE_NAME = "sparsepipe-sweep"
PARALLELISM = 2  # recipes sparsified at once (a compile-time constant in KFP)
DEFAULT_RECIPES = [
    {"variant": "pruned50", "recipe": "recipes/yolov8n-pruned50.yaml", "recipe_args": ""},
    {"variant": "pruned75", "recipe": "recipes/yolov8n-pruned75.yaml", "recipe_args": ""},
]


@dsl.pipeline(name=PIPELINE_NAME, description="sparsepipe: one baseline, a fan-out over pruning recipes (+INT8), one report")
def sweep_pipeline(
    recipes: list = DEFAULT_RECIPES,
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
            recipes=recipes, model=model, data_source=data_source, imgsz=imgsz, epochs=epochs, batch=batch,
            accelerator=accelerator, accelerator_count=accelerator_count, benchmark_threads=benchmark_threads,
            benchmark_iterations=benchmark_iterations, calibration_images=calibration_images,
            registered_model=registered_model, max_accuracy_drop=max_accuracy_drop,
        )
        with_credentials(retried(opened.set_caching_options(False)))
        context = opened.output

        data = prepare_data(source=data_source, context=context)
        with_shm(deterministic(data))
        dataset = data.outputs["dataset"]

        checkpoint = train_on_accelerator(accelerator, accelerator_count, model_config=model, data=dataset,
                                          context=context, epochs=epochs, imgsz=imgsz, batch=batch,
                                          workers=workers, variant="baseline")
        baseline_onnx = exported_onnx(checkpoint, context, imgsz)
        base_eval, base_time = evaluate_and_benchmark(baseline_onnx, dataset, context, "", benchmark_threads,
                                                      benchmark_iterations)

        with dsl.ParallelFor(recipes, parallelism=PARALLELISM, name="recipes") as item:
            sparse = sparsify_on_accelerator(accelerator, accelerator_count, checkpoint=checkpoint, data=dataset,
                                             recipe=item.recipe, recipe_args=item.recipe_args, context=context,
                                             imgsz=imgsz, batch=batch, workers=workers, variant=item.variant)
            pruned_onnx = exported_onnx(sparse, context, imgsz)
            pruned_eval, pruned_time = evaluate_and_benchmark(pruned_onnx, dataset, context, "", benchmark_threads,
                                                              benchmark_iterations, baseline_onnx=baseline_onnx)
            int8_onnx = quantized_onnx(pruned_onnx, dataset, context, calibration_images)
            int8_eval, int8_time = evaluate_and_benchmark(int8_onnx, dataset, context, "", benchmark_threads,
                                                          benchmark_iterations, baseline_onnx=baseline_onnx)

        reported = build_sweep_report(
            baseline_onnx=baseline_onnx, baseline_evaluation=base_eval.outputs["evaluation"],
            baseline_timing=base_time.outputs["timing"],
            sparse_checkpoints=dsl.Collected(sparse),
            onnx_models=dsl.Collected(pruned_onnx),
            evaluations=dsl.Collected(pruned_eval.outputs["evaluation"]),
            timings=dsl.Collected(pruned_time.outputs["timing"]),
            int8_models=dsl.Collected(int8_onnx),
            int8_evaluations=dsl.Collected(int8_eval.outputs["evaluation"]),
            int8_timings=dsl.Collected(int8_time.outputs["timing"]),
            context=context, baseline="baseline", register_model=registered_model, alias=champion_alias,
            max_accuracy_drop=max_accuracy_drop,
        )
        with_credentials(retried(reported))
