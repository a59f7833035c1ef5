"""The data step: a SOURCE string -> a validated dataset folder (``Output[Dataset]``)."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE)
def prepare_data(
    source: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    context: str = "",
    validate: bool = True,
):
    """Fetch/generate SOURCE (synthetic:..., s3://..., https://....zip, a path) and validate it."""
    from sparsepipe.kfp_support import kfp_metrics, run_data

    result = run_data(source, dataset.path, context, validate=validate)
    for name, value in kfp_metrics(result).items():
        metrics.log_metric(name, value)
