"""Register the champion: the fastest variant within the accuracy budget, as an MLflow model version.

    python -c "from sparsepipe.champion import register_champion; print(register_champion(['runs/demo/report'], 'detector'))"

The policy (:class:`~sparsepipe.registry.ChampionPolicy`, :func:`~sparsepipe.registry.choose_champion`)
and the registration (:func:`~sparsepipe.registry.register_model`) live in :mod:`sparsepipe.registry`;
this step reads the variants' results the way the report does (:mod:`sparsepipe.report`) and
registers the winner's ONNX. The Kubeflow report component calls it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sparsepipe.registry import REGISTRY_PREFIX, ChampionPolicy, choose_champion, register_model
from sparsepipe.report import add_relative_metrics, collect_variants
from sparsepipe.results import read_result


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
