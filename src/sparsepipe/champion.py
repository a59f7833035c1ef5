"""Register the champion: the fastest variant within the accuracy budget, as an MLflow model version.

    python -c "from sparsepipe.champion import register_champion; print(register_champion(['runs/demo/report'], 'detector'))"

The policy (:class:`~sparsepipe.registry.ChampionPolicy`, :func:`~sparsepipe.registry.choose_champion`)
and the registration (:func:`~sparsepipe.registry.register_model`) live in :mod:`sparsepipe.registry`;
this step reads the variants' results the way the report does (:mod:`sparsepipe.report`) and
registers the winner's ONNX. :func:`register_report_champion` does it for a finished report step
(linked to its MLflow run, noted in its report and result.json): what ``sparsepipe report
--register-model NAME`` and the Kubeflow report component run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sparsepipe.registry import REGISTRY_PREFIX, ChampionPolicy, RegistryError, choose_champion, register_model
from sparsepipe.report import add_relative_metrics, collect_variants
from sparsepipe.results import StepResult, atomic_write_text, read_result

__all__ = ["register_champion", "register_report_champion"]


def register_champion(
    results: list[str | os.PathLike[str]],
    name: str,
    *,
    alias: str = "champion",
    policy: ChampionPolicy | None = None,
    tracking_uri: str | None = None,
    run_id: str = "",
    experiment: str = "sparsepipe",
) -> dict[str, Any]:
    """Pick the champion among the variants of step folders and register its ONNX under ``alias``.

    ``results`` are step out folders (export/quantize give each variant's ONNX; evaluate and
    benchmark its metrics), as given to the report step. Returns ``{"variant", "version",
    "uri", "reason", "model"}``; the version carries the variant's metrics as tags.
    """
    policy = policy or ChampionPolicy()
    steps = [read_result(r) for r in results]
    variants = collect_variants(steps)
    add_relative_metrics(variants, policy.baseline)
    onnx: dict[str, Path] = {}
    for step in steps:  # the ONNX that was evaluated/benchmarked: quantize's INT8, else export's FP32
        variant = step.variant or "baseline"
        if step.step == "quantize" and "int8_onnx" in step.files:
            onnx[variant] = step.path("int8_onnx")
        elif step.step == "export" and "onnx" in step.files:
            onnx.setdefault(variant, step.path("onnx"))
    candidates = {v: e["metrics"] for v, e in variants.items() if v in onnx}
    winner, reason = choose_champion(candidates, policy)
    metrics = variants[winner]["metrics"]
    tags = {k: metrics[k] for k in ("map50", "map50_95", "latency_ms_p50", "speedup_vs_baseline", "sparsity",
                                    "size_mb") if isinstance(metrics.get(k), (int, float))}
    tags["sparsepipe.champion_reason"] = reason
    mv = register_model(onnx[winner], name, alias=alias, tracking_uri=tracking_uri, run_id=run_id,
                        experiment=experiment, variant=winner, tags=tags, description=reason)
    ref = f"{REGISTRY_PREFIX}{name}@{alias}" if alias else f"{REGISTRY_PREFIX}{name}/{mv.version}"
    return {"variant": winner, "version": str(mv.version), "uri": ref, "reason": reason, "model": str(onnx[winner])}


def register_report_champion(
    report_result: StepResult,
    name: str,
    *,
    alias: str = "champion",
    policy: ChampionPolicy | None = None,
    tracker: Any,
) -> dict[str, Any]:
    """Register the champion among a report's variants, linked to the report step's MLflow run.

    What ``sparsepipe report --register-model NAME`` and the Kubeflow report component do after
    :func:`sparsepipe.report.report`: :func:`register_champion` over the report's ``results``
    (the run of ``tracker`` holds the registered files), tag that run with the registered URI,
    version and champion, append a "Registered model" section to ``report.md`` and keep the
    choice in ``report_result.extra["registered"]`` (result.json rewritten). Returns that choice.
    """
    run_id = str(getattr(tracker, "run_id", "") or "")
    if not run_id:
        raise RegistryError(
            f"Registering the champion as '{name}' needs MLflow tracking (the model version is logged in the "
            f"report's run): drop --no-track, or leave --register-model out."
        )
    policy = policy or ChampionPolicy()
    registered = register_champion(list(report_result.config.get("results") or []), name, alias=alias,
                                   run_id=run_id, tracking_uri=getattr(tracker, "tracking_uri", None),
                                   policy=policy)
    tracker.set_tags({"sparsepipe.registered": registered["uri"],
                      "sparsepipe.registered_version": registered["version"],
                      "sparsepipe.champion": registered["variant"]})
    markdown = report_result.path("markdown")
    note = (f"\n## Registered model\n\n`{registered['uri']}` = version {registered['version']}: "
            f"{registered['reason']}.\n")
    atomic_write_text(markdown, markdown.read_text() + note)
    report_result.extra["registered"] = registered
    report_result.write()
    return registered
