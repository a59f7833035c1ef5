"""The evaluate step: mAP of an ONNX folder on the val split of a dataset folder."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE)
def evaluate_model(
    onnx_model: Input[Model],
    data: Input[Dataset],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    context: str = "",
    variant: str = "",
):
    """Validate the exported model (through onnxruntime) and write per-class metrics."""
    from sparsepipe.kfp_support import kfp_metrics, run_evaluate

    result = run_evaluate(onnx_model.path, data.path, evaluation.path, context, variant=variant)
    evaluation.metadata["variant"] = result.variant
    for name, value in kfp_metrics(result).items():
        metrics.log_metric(name, value)
