"""The sparsify step: a checkpoint folder + a recipe -> a sparse checkpoint folder (``model.pt``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE)
def sparsify_model(
    checkpoint: Input[Model],
    data: Input[Dataset],
    recipe: str,
    model: Output[Model],
    metrics: Output[Metrics],
    context: str = "",
    recipe_args: str = "",
    imgsz: int = 320,
    batch: int = 16,
    accelerator: str = "",
    accelerator_count: str = "1",
    workers: int = 2,
    seed: int = 0,
    max_epochs: int = 0,
    variant: str = "pruned",
):
    """Train ``checkpoint`` under ``recipe`` (recipes/<name>.yaml in the image, or an s3:// URI)."""
    from sparsepipe.kfp_support import kfp_metrics, run_sparsify

    result = run_sparsify(checkpoint.path, data.path, recipe, model.path, context, recipe_args=recipe_args,
                          imgsz=imgsz, batch=batch, accelerator=accelerator, accelerator_count=accelerator_count,
                          workers=workers, seed=seed,
                          max_epochs=max_epochs, variant=variant)
    model.metadata["variant"] = result.variant
    for name, value in kfp_metrics(result).items():
        metrics.log_metric(name, value)
