"""What the Kubeflow components call: one function per step, plus opening/closing the MLflow run.

    python -c "from sparsepipe.kfp_support import RunContext; print(RunContext().to_json())"

The components in ``components/`` hold only a typed signature and one call into this module;
everything that can be tested without kfp lives here (this module never imports kfp).

Across pods, state travels as one JSON string, the *run context* (:class:`RunContext`), which
the first task (:func:`open_run`) returns and every later task receives as its ``context``
parameter: the MLflow tracking URI, experiment and parent run id, the ``s3://`` prefix step
outputs are published under, and the S3 endpoint. Credentials are never part of it: they come
from the environment (on Kubeflow, the secret ``mlpipeline-minio-artifact``).

MLflow, in order of precedence:
  * ``MLFLOW_RUN_ID`` injected into the task (KFP 2.17 backend: a nested run per task): the
    step logs into that run and never ends it; KFP closes it.
  * a parent run id in the context: the step logs into a new child run ``<variant>.<step>``
    under it (ended FINISHED or FAILED with the step); :func:`close_run` ends the parent.
  * neither (no tracking URI given): tracking is off for the pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sparsepipe import storage
from sparsepipe.champion import register_report_champion
from sparsepipe.errors import ConfigError
from sparsepipe.evaluate import EvaluateConfig, evaluate
from sparsepipe.export import ExportConfig, export_onnx
from sparsepipe.quantize import QuantizeConfig, quantize
from sparsepipe.recipe_lookup import IMAGE_RECIPES_DIR, resolve_recipe  # noqa: F401 - re-exported (shared with the CLI)
from sparsepipe.registry import ChampionPolicy
from sparsepipe.report import ReportConfig, report
from sparsepipe.results import StepResult, atomic_copy, inherited_variant
from sparsepipe.sparsify import SparsifyConfig, sparsify
from sparsepipe.storage import publish
from sparsepipe.tracking import Tracker, TrackingError, resolve_tracker
from sparsepipe.training import TrainConfig, train

__all__ = [
    "KFP_RUN_TAG",
    "RunContext",
    "check_publish_root",
    "close_run",
    "kfp_status_to_mlflow",
    "namespace_publish_root",
    "open_run",
    "run_benchmark",
    "run_data",
    "run_evaluate",
    "run_export",
    "run_quantize",
    "run_report",
    "run_sparsify",
    "run_train",
    "resolve_recipe",
    "step_tracker",
]

KFP_RUN_TAG = "sparsepipe.kfp_run_id"  # tag on the parent run: the KFP run it belongs to
STEP_TAG = "sparsepipe.step"
VARIANT_TAG = "sparsepipe.variant"
PIPELINE_TAG = "sparsepipe.pipeline"
#: KFP final task states (``PipelineTaskFinalStatus.state``) -> MLflow run statuses.
#: On a KFP backend (2.14+) the driver fills ``state`` with the ML Metadata execution state of
#: the exit handler's body DAG (``backend/src/v2/driver/resolve.go``: ``GetLastKnownState().String()``),
#: one of ``UNKNOWN NEW RUNNING COMPLETE FAILED CACHED CANCELED``; ``kfp.local`` passes
#: ``SUCCEEDED``/``FAILED``/``CANCELED``. ``CANCELED`` in MLMD means "not triggered" (a skipped
#: condition), for us the body did not run to its end: ``KILLED``. ``RUNNING``/``NEW``/``UNKNOWN``
#: mean the body ended without its state being recorded (a pod killed, a run terminated): ``FAILED``.
#: KFP 2.17's own MLflow plugin maps the same way (``common/plugins/mlflow/config.go``).
_STATUS = {"SUCCEEDED": "FINISHED", "COMPLETE": "FINISHED", "CACHED": "FINISHED",
           "FAILED": "FAILED", "CANCELED": "KILLED", "CANCELLED": "KILLED"}


@dataclasses.dataclass
class RunContext:
    """What every task of one pipeline run shares; serialised as the ``context`` parameter."""

    tracking_uri: str = ""  # MLflow server; "" = tracking off (unless a run is injected)
    experiment: str = "sparsepipe"  # MLflow experiment (MLFLOW_EXPERIMENT_NAME/_ID win)
    parent_run_id: str = ""  # run opened by open_run; "" with injected runs or tracking off
    publish_root: str = ""  # s3:// (or local) prefix of this run's step outputs; "" = no copy
    s3_endpoint_url: str = ""  # non-AWS S3 endpoint (SeaweedFS/MinIO); "" = environment

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if not isinstance(getattr(self, field.name), str):
                raise ConfigError(f"RunContext.{field.name} must be a string, got {getattr(self, field.name)!r}.")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunContext:
        """Parse a context; an empty string is the default context (tracking off)."""
        if not text or not text.strip():
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"The run context {text[:80]!r} is not JSON ({exc.msg}). Pass the output of the "
                "open-run task (or an empty string) as the context parameter."
            ) from None
        if not isinstance(data, dict):
            raise ConfigError("The run context must be a JSON object (the output of open_run).")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown run context keys {unknown}; known: {sorted(known)}.")
        return cls(**data)

    def apply_env(self) -> None:
        """Point this process's S3 client at the context's endpoint (when one is set)."""
        if self.s3_endpoint_url:
            os.environ["AWS_ENDPOINT_URL"] = self.s3_endpoint_url

    def publish_uri(self, variant: str, step: str) -> str:
        """Where a step's out folder is published: ``<publish_root>/<variant>/<step>``."""
        if not self.publish_root:
            return ""
        parts = [self.publish_root.rstrip("/")] + [p for p in (variant, step) if p]
        return "/".join(parts)


def kfp_status_to_mlflow(state: str) -> str:
    """``COMPLETE``/``CACHED`` (backend) and ``SUCCEEDED`` (kfp.local) -> ``FINISHED``, ``CANCELED`` ->
    ``KILLED``, ``FAILED`` and anything else (``RUNNING``, ``UNKNOWN``, "") -> ``FAILED``."""
    return _STATUS.get(str(state or "").strip().upper(), "FAILED")


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the block and restore the previous values after it."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tracking_uri(explicit: str) -> str:
    return explicit.strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()


def open_run(
    *,
    experiment: str = "sparsepipe",
    run_name: str = "",
    tracking_uri: str = "",
    publish_root: str = "",
    s3_endpoint_url: str = "",
    kfp_run_id: str = "",
    pipeline: str = "",
    params: Mapping[str, Any] | None = None,
) -> str:
    """The first task: open the parent MLflow run and return the run context as JSON.

    ``tracking_uri`` empty: ``MLFLOW_TRACKING_URI`` from the environment; both empty: tracking
    off. An injected ``MLFLOW_RUN_ID`` (KFP backend) is logged into, not replaced: then the
    context carries no parent id and each task logs into its own injected run.
    ``publish_root`` (e.g. ``s3://bucket/sparsepipe``) becomes ``<publish_root>/<kfp_run_id>``.
    """
    uri = _tracking_uri(tracking_uri)
    root = publish_root.strip().rstrip("/")
    if root and kfp_run_id:
        root = f"{root}/{kfp_run_id}"
    context = RunContext(tracking_uri=uri, experiment=experiment or "sparsepipe",
                         publish_root=root, s3_endpoint_url=s3_endpoint_url.strip())
    context.apply_env()
    check_publish_root(context.publish_root)  # the first task: a root we cannot write fails the run in seconds
    tags = {PIPELINE_TAG: pipeline or "sparsepipe", KFP_RUN_TAG: kfp_run_id}
    # None = a parameter this pipeline does not have; KFP may hand numbers as 1.0.
    params = {k: _int(v) for k, v in dict(params or {}).items() if v is not None}
    if os.environ.get("MLFLOW_RUN_ID", "").strip():
        injected = resolve_tracker(tags=tags)  # attached: KFP owns and ends it
        injected.log_params(dict(params or {}))
        context.tracking_uri = injected.tracking_uri or uri
        return context.to_json()
    if not uri:
        return context.to_json()
    # left RUNNING when this task exits (close_run ends it): no owner tag, or the next start would mark it KILLED
    parent = resolve_tracker(context.experiment, run_name or None, tracking_uri=uri, tags=tags, outlives_process=True)
    parent.log_params(dict(params or {}))
    context.parent_run_id = str(parent.run_id)  # left RUNNING: close_run ends it
    return context.to_json()


def close_run(*, kfp_run_id: str, status: str, experiment: str = "sparsepipe", tracking_uri: str = "") -> str:
    """The exit handler: end the parent run of ``kfp_run_id`` (and any child left running).

    ``status`` is KFP's final state (backend: ``COMPLETE``/``FAILED``/``CANCELED``/``RUNNING``...;
    kfp.local: ``SUCCEEDED``/...), mapped by :func:`kfp_status_to_mlflow`. Children still running
    end ``KILLED`` when the pipeline succeeded, else with the parent's status. Returns the MLflow
    status set, or ``""`` when there was nothing to close (tracking off, injected runs, which
    the KFP backend closes itself).
    """
    from mlflow.tracking import MlflowClient  # heavy: mlflow

    uri = _tracking_uri(tracking_uri)
    if not uri or not kfp_run_id or os.environ.get("MLFLOW_RUN_ID", "").strip():
        return ""

    final = kfp_status_to_mlflow(status)
    client = MlflowClient(tracking_uri=uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or experiment
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID", "").strip()
    if not exp_id:
        found = client.get_experiment_by_name(name)
        if found is None:
            return ""
        exp_id = found.experiment_id
    parents = client.search_runs([exp_id], filter_string=f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}'")
    if not parents:
        raise TrackingError(
            f"No MLflow run tagged {KFP_RUN_TAG}={kfp_run_id} in experiment {name!r} at {uri}: the "
            "open-run task did not create one. Check its log and the tracking_uri parameter."
        )
    for parent in parents:
        children = client.search_runs(
            [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        for child in children:
            if child.info.status == "RUNNING":
                client.set_terminated(child.info.run_id, status="KILLED" if final == "FINISHED" else final)
        client.set_tag(parent.info.run_id, "sparsepipe.kfp_final_status", str(status))
        client.set_terminated(parent.info.run_id, status=final)
    return final


@contextlib.contextmanager
def step_tracker(context: RunContext, step: str, variant: str = "") -> Iterator[Any]:
    """The tracker a component's step logs into (see the module docstring for the order)."""
    tags = {STEP_TAG: step, VARIANT_TAG: variant}
    if os.environ.get("MLFLOW_RUN_ID", "").strip():
        yield resolve_tracker(context.experiment, tags=tags)  # injected: KFP ends it
        return
    if not context.parent_run_id:
        yield Tracker()
        return
    with _env(MLFLOW_RUN_ID=context.parent_run_id):
        parent = resolve_tracker(context.experiment, tracking_uri=context.tracking_uri or None)
    name = f"{variant}.{step}" if variant else step
    with parent.start_child(name, tags=tags) as child:
        yield child


def _finish(result: StepResult, context: RunContext, tracker: Any) -> StepResult:
    """Publish the out folder under the context's prefix (atomic, with a manifest) and tag it."""
    uri = context.publish_uri(result.variant if result.step != "data" else "", result.step)
    if uri:
        published = publish(result.out_dir, uri)
        tracker.set_tags({"sparsepipe.published": published})
        result.extra["published"] = published
    return result


def train_device(accelerator: str, accelerator_count: str = "1") -> str:
    """Ultralytics ``device`` for the accelerators a training task asked for: ``"0"`` or ``"cpu"``.

    ``"cpu"`` when no accelerator type or a count of 0 was requested (Kubernetes then gives the
    pod no GPU); else CUDA device 0 (one device per task; multi-node/multi-GPU training is
    Kubeflow Trainer's job).
    """
    count = str(accelerator_count if accelerator_count is not None else "1").strip() or "0"
    try:
        none = float(count) == 0
    except ValueError:
        raise ConfigError(f"accelerator_count {accelerator_count!r} is not a number; give e.g. \"1\" or \"0\".") from None
    return "cpu" if none or not str(accelerator or "").strip() else "0"


def _int(value: Any) -> Any:
    """``160.0`` -> ``160``; anything else unchanged (the step config then explains the error)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: Bucket of KFP's object store and the prefix the KFP 2.17 profile controller lets a namespace's
#: credentials write (manifests/.../pipelines-profile-controller/sync.py: ``artifacts/``,
#: ``private-artifacts/<ns>/``, ``private/<ns>/``, ``shared/``).
KFP_BUCKET = "mlpipeline"


def namespace_publish_root(namespace: str, bucket: str = KFP_BUCKET) -> str:
    """The default publish root of a KFP namespace: ``s3://mlpipeline/private/<ns>/sparsepipe``.

    Without a namespace (single-user install): ``s3://mlpipeline/shared/sparsepipe``, which the
    multi-user profile controller also allows.
    """
    namespace = str(namespace or "").strip()
    if namespace and not all(c.isalnum() or c in "-." for c in namespace):
        raise ConfigError(f"Namespace {namespace!r} is not a Kubernetes namespace name (lower case, digits, '-').")
    return f"s3://{bucket}/private/{namespace}/sparsepipe" if namespace else f"s3://{bucket}/shared/sparsepipe"


def check_publish_root(publish_root: str) -> None:
    """Fail before any work when ``publish_root`` could not be written (server, credentials, bucket, prefix).

    SeaweedFS creates a missing bucket on the first PUT; AWS and MinIO refuse it. Either way a
    typo in ``publish_root`` is an error here, not a new bucket. Then a small probe object is
    written under the root and deleted: credentials allowed only under other prefixes (a KFP
    multi-user namespace) fail here, in seconds, not in the upload after the step's work.
    """
    if not storage.is_s3_uri(publish_root):
        return
    bucket, prefix = storage.split_s3_uri(publish_root)
    client = storage.get_client()
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001 - turned into a StorageError that says what to fix
        if storage._error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            raise storage.StorageError(
                f"Cannot publish to {publish_root}: bucket '{bucket}' does not exist on "
                f"{storage._endpoint_name(client)}. Create it or fix the publish_root parameter."
            ) from None
        raise storage._storage_error(exc, publish_root, "publish to", client) from None
    key = f"{prefix.strip('/')}/.sparsepipe-write-check-{uuid.uuid4().hex}".lstrip("/")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    except Exception as exc:  # noqa: BLE001
        if storage._error_code(exc) in ("AccessDenied", "403", "Forbidden"):
            raise storage.StorageError(
                f"Cannot publish to {publish_root}: the credentials may not write there on "
                f"{storage._endpoint_name(client)} (AccessDenied). On a KFP multi-user cluster a namespace "
                f"may write only under s3://{KFP_BUCKET}/private/<namespace>/ (and artifacts/, shared/): set "
                f"publish_root to s3://{KFP_BUCKET}/private/<namespace>/sparsepipe (pipelines.submit's default)."
            ) from None
        raise storage._storage_error(exc, publish_root, "publish to", client) from None
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except Exception:  # noqa: BLE001, S110 - an empty probe left behind harms nothing
        pass


def _check_publish_root(ctx: RunContext) -> None:
    check_publish_root(ctx.publish_root)


def _run(step: str, variant: str, context: str, call: Any) -> StepResult:
    ctx = RunContext.from_json(context)
    ctx.apply_env()
    _check_publish_root(ctx)
    # models:/ inputs resolve against the run's MLflow server (sparsepipe.registry reads the env).
    registry = {"MLFLOW_TRACKING_URI": ctx.tracking_uri} if ctx.tracking_uri and not os.environ.get(
        "MLFLOW_TRACKING_URI") else {}
    with _env(**registry), step_tracker(ctx, step, variant) as tracker:
        result = call(tracker)
        return _finish(result, ctx, tracker)


def run_data(source: str, out: str, context: str = "", validate: bool = True) -> StepResult:
    """The data step into the artifact folder ``out`` (``Output[Dataset].path``)."""
    from sparsepipe.data import DataConfig, prepare_data  # heavy: cv2 (via sparsepipe.data)

    return _run("data", "", context,
                lambda tracker: prepare_data(source, out, DataConfig(validate=validate, progress=False), tracker))


def run_train(model: str, data: str, out: str, context: str = "", *, epochs: int = 30, imgsz: int = 320,
              batch: int = 16, accelerator: str = "", accelerator_count: str = "1", workers: int = 2,
              seed: int = 0, variant: str = "baseline") -> StepResult:
    """The train step (``data``: a data step's folder) into the artifact folder ``out``.

    ``accelerator``/``accelerator_count`` are the Kubernetes resource the task asked for
    (``nvidia.com/gpu``, ``"1"``): see :func:`train_device`.
    """
    # Loop items reach components as JSON numbers (160.0): integers are made integers again.
    config = TrainConfig(epochs=_int(epochs), imgsz=_int(imgsz), batch=_int(batch), device=train_device(accelerator, accelerator_count),
                         workers=_int(workers), seed=_int(seed), variant=variant)
    return _run("train", variant, context, lambda tracker: train(model, data, out, config, tracker))


def run_sparsify(model: str, data: str, recipe: str, out: str, context: str = "", *, recipe_args: str = "",
                 imgsz: int = 320, batch: int = 16, accelerator: str = "", accelerator_count: str = "1",
                 workers: int = 2, seed: int = 0, max_epochs: int = 0, variant: str = "pruned") -> StepResult:
    """The sparsify step (``model``: a train folder or any model reference; ``recipe``: see :func:`resolve_recipe`).

    ``recipe_args``: overrides as ``k=v,k2=v2`` or a JSON object; ``max_epochs`` > 0 refuses
    recipes longer than that (a budget), 0 = no limit.
    """
    config = SparsifyConfig(imgsz=_int(imgsz), batch=_int(batch), device=train_device(accelerator, accelerator_count),
                            workers=_int(workers), seed=_int(seed), max_epochs=_int(max_epochs) or None,
                            variant=variant or "pruned")
    args = recipe_args if isinstance(recipe_args, dict) else (str(recipe_args or "").strip() or None)
    # sparsify() finds the recipe itself (sparsepipe.recipe_lookup: a path, a name, s3://) and records it as given
    return _run("sparsify", config.variant, context,
                lambda tracker: sparsify(model, data, recipe, out, config, recipe_args=args, tracker=tracker))


def run_quantize(model: str, data: str, out: str, context: str = "", *, calibration_images: int = 64,
                 calibration_method: str = "percentile", per_channel: bool = True, evaluate: bool = False,
                 seed: int = 0, variant: str = "") -> StepResult:
    """The quantize step, PTQ (``model``: an export folder or ONNX/.pt; ``data``: a data folder).

    ``evaluate`` is off by default because the pipeline evaluates every variant in its own
    evaluate step. ``variant`` "" = ``<source variant>-ptq`` (``ptq`` for the baseline).
    """
    config = QuantizeConfig(method="ptq", calibration_images=_int(calibration_images),
                            calibration_method=calibration_method, per_channel=per_channel,
                            evaluate=evaluate, seed=_int(seed), variant=variant)
    source = inherited_variant(model, "")
    name = variant or ("ptq" if source in ("", "baseline") else f"{source}-ptq")
    return _run("quantize", name, context, lambda tracker: quantize(model, data, out, config, tracker))


def run_export(model: str, out: str, context: str = "", *, imgsz: int = 320, opset: int = 17,
               variant: str = "") -> StepResult:
    """The export step (``model``: a train/sparsify folder) into the artifact folder ``out``."""
    variant = inherited_variant(model, variant)
    config = ExportConfig(imgsz=_int(imgsz), opset=_int(opset), variant=variant)
    return _run("export", variant, context, lambda tracker: export_onnx(model, out, config, tracker))


def run_evaluate(model: str, data: str, out: str, context: str = "", *, variant: str = "") -> StepResult:
    """The evaluate step (``model``: an export folder; ``data``: a data folder)."""
    variant = inherited_variant(model, variant)
    config = EvaluateConfig(variant=variant)
    return _run("evaluate", variant, context, lambda tracker: evaluate(model, data, out, config, tracker))


def run_benchmark(model: str, out: str, context: str = "", *, threads: int = 1, iterations: int = 100,
                  warmup: int = 10, batch: int = 1, baseline: str = "", variant: str = "",
                  scenario: str = "sync", streams: int = 1, pin: bool = False) -> StepResult:
    """The benchmark step (``model``: an export folder; ``baseline``: one to interleave with)."""
    from sparsepipe.benchmark import BenchmarkConfig, benchmark  # heavy: openvino (via sparsepipe.benchmark)

    variant = inherited_variant(model, variant)
    config = BenchmarkConfig(threads=_int(threads), iterations=_int(iterations), warmup=_int(warmup),
                             batch=_int(batch), variant=variant, scenario=str(scenario or "sync"),
                             streams=_int(streams), pin=bool(pin))
    return _run("benchmark", variant, context,
                lambda tracker: benchmark(model, out, config, baseline=baseline or None, tracker=tracker))


def run_report(results: list[str], out: str, context: str = "", *, markdown_path: str = "",
               html_path: str = "", baseline: str = "baseline",
               title: str = "sparsepipe variant comparison", register_model: str = "",
               alias: str = "champion", max_accuracy_drop: float = 0.05) -> StepResult:
    """The report step over step folders; copies report.md/.html to the KFP artifact paths.

    ``register_model`` (a registered model name; "" = no registration, also when tracking is
    off) registers the champion's ONNX (:func:`sparsepipe.champion.register_report_champion`: fastest
    variant within ``max_accuracy_drop`` of the baseline's mAP50-95) and points ``alias`` at it;
    the choice is appended to the report and kept in ``result.extra["registered"]``.
    """
    def call(tracker: Any) -> StepResult:
        result = report(list(results), out, ReportConfig(baseline=baseline, title=title), tracker)
        if register_model and getattr(tracker, "run_id", None):  # tracking off: nothing to register into
            register_report_champion(result, register_model, alias=alias, tracker=tracker,
                                     policy=ChampionPolicy(baseline=baseline, max_accuracy_drop=float(max_accuracy_drop)))
        for role, target in (("markdown", markdown_path), ("html", html_path)):
            if target:
                atomic_copy(result.path(role), Path(target))
        return result

    return _run("report", "", context, call)


def kfp_metrics(result: StepResult) -> dict[str, float]:
    """The result's metrics as floats for ``Metrics.log_metric`` (names as in result.json)."""
    out: dict[str, float] = {}
    for key, value in result.metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = float(value)
    return out
