"""The report step: one comparison table/plot over step folders (Markdown + HTML for the KFP UI).

``build_report`` takes the three variants of the main pipeline (baseline, pruned, pruned+INT8);
``build_sweep_report`` takes the baseline plus the ``dsl.Collected`` lists of the recipe fan-out.
Both make the same single call, which also registers the champion (``register_model`` set).
"""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE)
def build_report(
    baseline_onnx: Input[Model],
    baseline_evaluation: Input[Artifact],
    baseline_timing: Input[Artifact],
    sparse_checkpoint: Input[Model],
    pruned_onnx: Input[Model],
    pruned_evaluation: Input[Artifact],
    pruned_timing: Input[Artifact],
    int8_onnx: Input[Model],
    int8_evaluation: Input[Artifact],
    int8_timing: Input[Artifact],
    report: Output[Artifact],
    markdown: Output[Markdown],
    html: Output[HTML],
    context: str = "",
    baseline: str = "baseline",
    title: str = "sparsepipe variant comparison",
    register_model: str = "",
    alias: str = "champion",
    max_accuracy_drop: float = 0.05,
):
    """Compare baseline, pruned and pruned+INT8; register the champion's ONNX under ``alias``."""
    from sparsepipe.kfp_support import run_report

    run_report([a.path for a in (baseline_onnx, baseline_evaluation, baseline_timing, sparse_checkpoint,
                                 pruned_onnx, pruned_evaluation, pruned_timing, int8_onnx, int8_evaluation,
                                 int8_timing)],
               report.path, context, markdown_path=markdown.path, html_path=html.path, baseline=baseline,
               title=title, register_model=register_model, alias=alias, max_accuracy_drop=max_accuracy_drop)


@dsl.component(base_image=CPU_IMAGE)
def build_sweep_report(
    baseline_onnx: Input[Model],
    baseline_evaluation: Input[Artifact],
    baseline_timing: Input[Artifact],
    sparse_checkpoints: Input[List[Model]],
    onnx_models: Input[List[Model]],
    evaluations: Input[List[Artifact]],
    timings: Input[List[Artifact]],
    int8_models: Input[List[Model]],
    int8_evaluations: Input[List[Artifact]],
    int8_timings: Input[List[Artifact]],
    report: Output[Artifact],
    markdown: Output[Markdown],
    html: Output[HTML],
    context: str = "",
    baseline: str = "baseline",
    title: str = "sparsepipe sweep",
    register_model: str = "",
    alias: str = "champion",
    max_accuracy_drop: float = 0.05,
):
    """Compare the baseline with every recipe's pruned and INT8 variant (lists collected from the fan-out)."""
    from sparsepipe.kfp_support import run_report

    run_report([a.path for a in [baseline_onnx, baseline_evaluation, baseline_timing, *sparse_checkpoints,
                                 *onnx_models, *evaluations, *timings, *int8_models, *int8_evaluations,
                                 *int8_timings]],
               report.path, context, markdown_path=markdown.path, html_path=html.path, baseline=baseline,
               title=title, register_model=register_model, alias=alias, max_accuracy_drop=max_accuracy_drop)
