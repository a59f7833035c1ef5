"""The report step: one comparison table/plot over step folders (Markdown + HTML for the KFP UI).

``build_report`` takes one variant's chain (the main pipeline); ``build_sweep_report`` takes the
``dsl.Collected`` lists of a ``dsl.ParallelFor`` fan-out. Both make the same single call.
"""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE)
def build_report(
    onnx_model: Input[Model],
    evaluation: Input[Artifact],
    timing: Input[Artifact],
    report: Output[Artifact],
    markdown: Output[Markdown],
    html: Output[HTML],
    context: str = "",
    baseline: str = "baseline",
    title: str = "sparsepipe variant comparison",
):
    """Compare the variants found in the given step folders."""
    from sparsepipe.kfp_support import run_report

    run_report([onnx_model.path, evaluation.path, timing.path], report.path,
               context, markdown_path=markdown.path, html_path=html.path, baseline=baseline,
               title=title)


@dsl.component(base_image=CPU_IMAGE)
def build_sweep_report(
    onnx_models: Input[List[Model]],
    evaluations: Input[List[Artifact]],
    timings: Input[List[Artifact]],
    report: Output[Artifact],
    markdown: Output[Markdown],
    html: Output[HTML],
    context: str = "",
    baseline: str = "baseline",
    title: str = "sparsepipe sweep",
):
    """Compare every variant of a sweep (lists collected from the fan-out)."""
    from sparsepipe.kfp_support import run_report

    run_report([a.path for a in [*onnx_models, *evaluations, *timings]], report.path,
               context, markdown_path=markdown.path, html_path=html.path, baseline=baseline,
               title=title)
