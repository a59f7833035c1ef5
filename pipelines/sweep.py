"""The sweep pipeline: fan out over variants (model config x image size) and report them together.

    python -m pipelines.compile && python -m pipelines.submit --pipeline sweep --host URL

Each item of ``variants`` is ``{"variant": NAME, "model": CONFIG, "imgsz": PX}``; every variant is
trained, exported, evaluated and benchmarked in parallel (``PARALLELISM`` at a time) and one
report compares them (``dsl.Collected``). Recipes become another key of the item later.
"""

from kfp import dsl

from components import build_sweep_report, close_tracking_run, export_onnx, open_tracking_run, prepare_data
from pipelines.main import evaluate_and_benchmark, train_on_accelerator
from pipelines.placement import deterministic, retried, with_credentials, with_shm

PIPELINE_NAME = "sparsepipe-sweep"
PARALLELISM = 2  # variants trained at once (a compile-time constant in KFP)
DEFAULT_VARIANTS = [
    {"variant": "yolov8n-160", "model": "yolov8n.yaml", "imgsz": 160},
    {"variant": "yolov8n-224", "model": "yolov8n.yaml", "imgsz": 224},
    {"variant": "yolo11n-160", "model": "yolo11n.yaml", "imgsz": 160},
]


@dsl.pipeline(name=PIPELINE_NAME, description="sparsepipe: train/export/evaluate/benchmark several variants, one report")
def sweep_pipeline(
    variants: list = DEFAULT_VARIANTS,
    baseline_variant: str = "yolov8n-160",
    data_source: str = "synthetic:train=128,val=32,size=320,seed=0",
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
            params={"variants": variants, "baseline_variant": baseline_variant, "data_source": data_source,
                    "epochs": epochs, "batch": batch, "accelerator": accelerator,
                    "benchmark_threads": benchmark_threads, "benchmark_iterations": benchmark_iterations},
        )
        with_credentials(retried(opened.set_caching_options(False)))
        context = opened.output

        data = prepare_data(source=data_source, context=context)
        with_shm(deterministic(data))
        dataset = data.outputs["dataset"]

        with dsl.ParallelFor(variants, parallelism=PARALLELISM, name="variants") as item:
            checkpoint = train_on_accelerator(accelerator, accelerator_count, model_config=item.model, data=dataset,
                                              context=context, epochs=epochs, imgsz=item.imgsz, batch=batch,
                                              workers=workers, variant=item.variant)
            exported = export_onnx(checkpoint=checkpoint, context=context, imgsz=item.imgsz)
            deterministic(exported)
            evaluated, timed = evaluate_and_benchmark(exported.outputs["onnx_model"], dataset, context, "",
                                                      benchmark_threads, benchmark_iterations)

        reported = build_sweep_report(
            onnx_models=dsl.Collected(exported.outputs["onnx_model"]),
            evaluations=dsl.Collected(evaluated.outputs["evaluation"]),
            timings=dsl.Collected(timed.outputs["timing"]),
            context=context, baseline=baseline_variant,
        )
        with_credentials(retried(reported))
