"""The quantize step (PTQ): an ONNX folder -> a calibrated INT8 ONNX folder (``model_int8.onnx``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE)
def quantize_model(
    onnx_model: Input[Model],
    data: Input[Dataset],
    int8_model: Output[Model],
    metrics: Output[Metrics],
    context: str = "",
    calibration_images: int = 64,
    calibration_method: str = "percentile",
    per_channel: bool = True,
    seed: int = 0,
    variant: str = "",
):
    """Static INT8 (QDQ) of the FP32 ONNX, calibrated on train images of ``data``."""
    from sparsepipe.kfp_support import kfp_metrics, run_quantize

    result = run_quantize(onnx_model.path, data.path, int8_model.path, context,
                          calibration_images=calibration_images, calibration_method=calibration_method,
                          per_channel=per_channel, seed=seed, variant=variant)
    int8_model.metadata["variant"] = result.variant
    for name, value in kfp_metrics(result).items():
        metrics.log_metric(name, value)
