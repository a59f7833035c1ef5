"""Kubeflow Pipelines v2 components, one module per sparsepipe step.

    python -m pipelines.compile          # compiles the pipelines built from these

Each component is a typed signature plus one call into :mod:`sparsepipe.kfp_support`; imports
live inside the body because KFP ships the function source alone. A step is one file here
that calls ``sparsepipe.kfp_support.run_<step>``.
"""

from components.benchmark import benchmark_model
from components.data import prepare_data
from components.deploy import deploy_model
from components.evaluate import evaluate_model
from components.export import export_onnx
from components.images import CPU_IMAGE, TRAIN_IMAGE
from components.quantize import quantize_model
from components.report import build_report, build_sweep_report
from components.sparsify import sparsify_model
from components.tracking import close_tracking_run, open_tracking_run
from components.train import train_model

__all__ = [
    "CPU_IMAGE",
    "TRAIN_IMAGE",
    "benchmark_model",
    "build_report",
    "build_sweep_report",
    "close_tracking_run",
    "deploy_model",
    "evaluate_model",
    "export_onnx",
    "open_tracking_run",
    "prepare_data",
    "quantize_model",
    "sparsify_model",
    "train_model",
]
