"""Open the pipeline's parent MLflow run (first task) and close it (exit handler)."""

from typing import Optional

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE)
def open_tracking_run(
    experiment: str,
    run_name: str,
    tracking_uri: str,
    publish_root: str,
    s3_endpoint_url: str,
    kfp_run_id: str,
    pipeline: str,
    model: Optional[str] = None,
    recipe: Optional[str] = None,
    recipe_args: Optional[str] = None,
    recipes: Optional[list] = None,
    data_source: Optional[str] = None,
    imgsz: Optional[int] = None,
    epochs: Optional[int] = None,
    batch: Optional[int] = None,
    accelerator: Optional[str] = None,
    accelerator_count: Optional[str] = None,
    benchmark_threads: Optional[int] = None,
    benchmark_iterations: Optional[int] = None,
    calibration_images: Optional[int] = None,
    registered_model: Optional[str] = None,
    max_accuracy_drop: Optional[float] = None,
) -> str:
    """Open the parent MLflow run; return the run context (JSON) every later task receives.

    Each pipeline parameter logged is its own input (never a dict of placeholders: the KFP
    launcher substitutes those into JSON text without escaping); the ones a pipeline leaves out
    stay ``None`` and are not logged.
    """
    from sparsepipe.kfp_support import open_run

    return open_run(experiment=experiment, run_name=run_name, tracking_uri=tracking_uri,
                    publish_root=publish_root, s3_endpoint_url=s3_endpoint_url,
                    kfp_run_id=kfp_run_id, pipeline=pipeline,
                    params=dict(model=model, recipe=recipe, recipe_args=recipe_args, recipes=recipes,
                                data_source=data_source, imgsz=imgsz, epochs=epochs, batch=batch,
                                accelerator=accelerator, accelerator_count=accelerator_count,
                                benchmark_threads=benchmark_threads, benchmark_iterations=benchmark_iterations,
                                calibration_images=calibration_images, registered_model=registered_model,
                                max_accuracy_drop=max_accuracy_drop))


@dsl.component(base_image=CPU_IMAGE)
def close_tracking_run(
    kfp_run_id: str,
    experiment: str,
    tracking_uri: str,
    status: dsl.PipelineTaskFinalStatus,
) -> str:
    """End the parent run with the pipeline's final state (COMPLETE/SUCCEEDED -> FINISHED, ...)."""
    from sparsepipe.kfp_support import close_run

    return close_run(kfp_run_id=kfp_run_id, status=status.state, experiment=experiment,
                     tracking_uri=tracking_uri)
