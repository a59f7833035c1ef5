"""Open the pipeline's parent MLflow run (first task) and close it (exit handler)."""

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
    params: dict,
) -> str:
    """Open the parent MLflow run; return the run context (JSON) every later task receives."""
    from sparsepipe.kfp_support import open_run

    return open_run(experiment=experiment, run_name=run_name, tracking_uri=tracking_uri,
                    publish_root=publish_root, s3_endpoint_url=s3_endpoint_url,
                    kfp_run_id=kfp_run_id, pipeline=pipeline, params=params)


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
