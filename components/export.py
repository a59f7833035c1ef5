"""The export step: a checkpoint folder -> an ONNX folder (``Output[Model]``, ``model.onnx``)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE)
def export_onnx(
    checkpoint: Input[Model],
    onnx_model: Output[Model],
    metrics: Output[Metrics],
    context: str = "",
    imgsz: int = 320,
    opset: int = 17,
    variant: str = "",
):
    """Export the checkpoint to ONNX with ultralytics' exporter (static shape ``imgsz``)."""
    from sparsepipe.kfp_support import kfp_metrics, run_export

    result = run_export(checkpoint.path, onnx_model.path, context, imgsz=imgsz, opset=opset,
                        variant=variant)
    onnx_model.metadata["variant"] = result.variant
    for name, value in kfp_metrics(result).items():
        metrics.log_metric(name, value)
