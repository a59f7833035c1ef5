"""MLflow tracking without global state (a no-op tracker when tracking is off).

    python -c "from sparsepipe.tracking import resolve_tracker; t = resolve_tracker(run_name='try'); t.log_metrics({'map50': 0.5}); t.end(); print(t.ui_hint())"

Everything goes through ``mlflow.tracking.MlflowClient(tracking_uri=...)`` and explicit run ids:
no ``mlflow.set_tracking_uri``, no ``mlflow.start_run``, no active-run stack, so two trackers
(or a tracker and ultralytics' own MLflow callback) never fight over process-wide state.

Resolution (:func:`resolve_tracker`):
  * tracking URI: the argument, else ``MLFLOW_TRACKING_URI``, else a SQLite store in the current
    folder (``sqlite:///<cwd>/mlruns/mlflow.db``, artifacts in ``<cwd>/mlruns/artifacts``);
  * experiment: ``MLFLOW_EXPERIMENT_ID`` or ``MLFLOW_EXPERIMENT_NAME`` when set, else the argument;
  * run: ``MLFLOW_RUN_ID`` when set (Kubeflow Pipelines injects one per task) is attached to and
    never ended by sparsepipe; otherwise a new run is created and ended by the tracker.

Credentials never reach MLflow: parameter and tag keys that look like secrets are dropped with
a warning, and so is any value equal to a secret found in the environment.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sparsepipe.errors import SparsepipeError, StorageError
from sparsepipe.results import atomic_copy
from sparsepipe.storage import file_sha256

__all__ = [
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "TrackingError",
    "default_local_artifact_location",
    "default_local_tracking_uri",
    "download_verified_artifact",
    "resolve_tracker",
    "sanitize_metric_name",
]

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "sparsepipe"
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
MAX_PARAM_VALUE_LENGTH = 6000  # MLflow's limit (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)
MAX_TAG_VALUE_LENGTH = 8000  # MLflow's limit for run tags
MAX_KEY_LENGTH = 250  # MLflow's limit for param, metric and tag keys
PARAMS_PER_BATCH = 100  # MLflow's log_batch limit for params (and tags)
METRICS_PER_BATCH = 1000  # MLflow's log_batch limit for metrics
PROBE_TIMEOUT_S = 5.0  # how long resolve_tracker waits for a tracking server before failing

_SECRET_KEY_RE = re.compile(
    r"secret|passw|token|access[_\-.]?key|credential|api[_\-.]?key|private[_\-.]?key"
    r"|authorization|session[_\-.]?key|signature|cookie",
    re.IGNORECASE,
)
_SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "HF_TOKEN",
    "GITHUB_TOKEN",
)
#: logged files whose SHA-256 is recorded as run tag ``sparsepipe.sha256.<artifact path>``
CHECKSUMMED_SUFFIXES = (".pt", ".onnx")
CHECKSUM_TAG_PREFIX = "sparsepipe.sha256."
#: run tags naming the process that owns a run, so a later start can end the runs of killed processes
OWNER_TAG = "sparsepipe.owner"  # "<host>/<pid>/<process start time in clock ticks since boot>"
ENDED_BY_TAG = "sparsepipe.ended_by"
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-./ ]")


class TrackingError(SparsepipeError):
    """The tracking store cannot be reached or used (names the URI and the fix)."""


# ----------------------------------------------------------------------------- helpers


def _redact_uri(uri: str) -> str:
    """Drop any ``user:password@`` part of a URI before it goes into a message or log."""
    return re.sub(r"(?<=://)[^/@]*@", "", str(uri))


def sanitize_metric_name(name: str) -> str:
    """A name MLflow accepts for metrics/params: ``[A-Za-z0-9_-./ ]``, no ``..``/``//``/lead ``/``.

    ``"metrics/mAP50(B)"`` -> ``"metrics/mAP50_B_"``.
    """
    text = _BAD_NAME_CHARS.sub("_", str(name))
    parts = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        parts.append("__" if part == ".." else part)
    cleaned = "/".join(parts) or "_"
    return cleaned[:MAX_KEY_LENGTH]


def _looks_secret(key: str) -> bool:
    return bool(_SECRET_KEY_RE.search(str(key)))


def _secret_values() -> list[str]:
    values = []
    for name in _SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 6:
            values.append(value)
    return values


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _flatten(value, full)
        else:
            yield full, value


def _stringify(value: Any, limit: int) -> str:
    if isinstance(value, Path):
        text = str(value)
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(str(v) for v in value) + "]"
    else:
        text = str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _clean_pairs(data: Mapping[str, Any], what: str, limit: int) -> dict[str, str]:
    """Flattened, stringified, truncated pairs with secret-looking keys and values dropped."""
    secrets_now = _secret_values()
    out: dict[str, str] = {}
    for key, value in _flatten(data):
        if _looks_secret(key):
            log.warning(
                "Not logging the %s '%s' to MLflow: its name looks like a credential. Pass "
                "secrets through the environment or a secret store, never as %ss.",
                what, key, what,
            )
            continue
        if value is None:
            continue
        text = _stringify(value, limit)
        if any(secret in text for secret in secrets_now):
            log.warning(
                "Not logging the %s '%s' to MLflow: its value contains a credential found in "
                "the environment.", what, key,
            )
            continue
        out[sanitize_metric_name(key)] = text
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _process_owner(pid: int | None = None) -> str | None:
    """``host/pid/start`` of a process (its start time tells a reused pid apart); None if it is gone."""
    pid = os.getpid() if pid is None else pid
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    start = stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the parenthesised command name
    return f"{socket.gethostname()}/{pid}/{start}"


def _end_runs_of_dead_processes(client: Any, experiment_id: str) -> None:
    """Mark KILLED the RUNNING runs of this experiment whose owning process on this host is gone.

    A process killed with -9 cannot end its run, which then shows RUNNING forever; the next start on
    the same host ends it. Runs of other hosts, and runs without an owner tag, are left alone.
    """
    host = socket.gethostname()
    try:
        runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200)
    except Exception as exc:  # noqa: BLE001 - housekeeping must never stop a step
        log.debug("could not list running runs: %s", exc)
        return
    for run in runs:
        owner = run.data.tags.get(OWNER_TAG, "")
        parts = owner.split("/")
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if _process_owner(int(parts[1])) == owner:
            continue  # still alive
        try:
            client.set_tag(run.info.run_id, ENDED_BY_TAG, f"a later sparsepipe start: process {owner} is gone (killed?)")
            client.set_terminated(run.info.run_id, status="KILLED")
        except Exception as exc:  # noqa: BLE001 - another process may have ended it first
            log.debug("could not end run %s: %s", run.info.run_id, exc)


def _owner_tags() -> dict[str, str]:
    owner = _process_owner()
    return {OWNER_TAG: owner} if owner else {}


def _now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------- trackers


class Tracker:
    """The tracking interface, and the no-op tracker used when tracking is off.

    Every method accepts the same arguments as :class:`MlflowTracker` and does nothing, so step
    code calls the tracker unconditionally. Usable as a context manager: leaving the block with
    an exception ends the run as ``FAILED``.
    """

    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None
    owns_run: bool = False

    def start_child(self, name: str, tags: Mapping[str, Any] | None = None) -> Tracker:
        """A nested run under this one (here: another no-op tracker)."""
        return Tracker()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (nested dicts become ``a.b`` keys)."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics at ``step`` (default 0)."""

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Log a file, or a folder under its own name, below ``artifact_path``."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log ``text`` as the artifact file ``artifact_file`` (e.g. ``"reports/summary.md"``)."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags."""

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (``FINISHED``, ``FAILED``, ``KILLED``), if this owns it."""

    def ui_hint(self) -> str:
        """One line telling the user where to look at the run."""
        return "MLflow tracking is off (nothing was logged)."

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.end("FAILED" if exc_type is not None else "FINISHED")
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


NullTracker = Tracker


class MlflowTracker(Tracker):
    """Logs into one MLflow run through an explicit ``MlflowClient`` and run id.

    ``owns_run=False`` (a run attached from ``MLFLOW_RUN_ID``) is never ended by this tracker.
    """

    def __init__(
        self,
        client: Any,
        run_id: str,
        *,
        experiment_id: str | None = None,
        tracking_uri: str | None = None,
        owns_run: bool = True,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri or getattr(client, "tracking_uri", None)
        if experiment_id is None:
            experiment_id = client.get_run(run_id).info.experiment_id
        self.experiment_id = str(experiment_id)
        self.owns_run = owns_run
        self._ended = False

    # -- runs

    def start_child(self, name: str, tags: Mapping[str, Any] | None = None) -> MlflowTracker:
        child_tags = _clean_pairs(dict(tags or {}), "tag", MAX_TAG_VALUE_LENGTH)
        child_tags[PARENT_RUN_TAG] = self.run_id
        child_tags.update(_owner_tags())
        run = self.client.create_run(
            experiment_id=self.experiment_id, run_name=name, tags=child_tags
        )
        return MlflowTracker(
            self.client,
            run.info.run_id,
            experiment_id=self.experiment_id,
            tracking_uri=self.tracking_uri,
            owns_run=True,
        )

    def end(self, status: str = "FINISHED") -> None:
        if self._ended:
            return
        self._ended = True
        if self.owns_run:
            self.client.set_terminated(self.run_id, status=status)
        else:
            log.debug("leaving run %s open: it was attached, not created, here", self.run_id)

    # -- logging

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param  # heavy: mlflow
        from mlflow.exceptions import MlflowException  # heavy: mlflow

        clean = _clean_pairs(params, "parameter", MAX_PARAM_VALUE_LENGTH)
        for chunk in _chunks(sorted(clean.items()), PARAMS_PER_BATCH):
            try:
                self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in chunk])
            except MlflowException as exc:
                if "INVALID_PARAMETER_VALUE" not in str(getattr(exc, "error_code", "")):
                    raise
                # MLflow refuses to change a logged param; log those one by one and warn.
                for key, value in chunk:
                    try:
                        self.client.log_param(self.run_id, key, value)
                    except MlflowException as inner:
                        log.warning("MLflow kept the earlier value of param '%s': %s", key, inner)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric  # heavy: mlflow

        timestamp = _now_ms()
        entries = []
        for key, value in _flatten(metrics):
            try:
                number = float(value.item() if hasattr(value, "item") else value)
            except (TypeError, ValueError):
                log.warning("Not logging metric '%s': %r is not a number.", key, value)
                continue
            if math.isnan(number):
                log.debug("metric '%s' is NaN at step %s", key, step)
            entries.append(Metric(sanitize_metric_name(key), number, timestamp, int(step or 0)))
        for chunk in _chunks(entries, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        local = Path(path)
        if not local.exists():
            raise StorageError(
                f"Cannot log {local} to MLflow run {self.run_id}: it does not exist. Check that "
                "the step that writes it ran."
            )
        if local.is_dir():
            dest = f"{artifact_path.strip('/')}/{local.name}" if artifact_path else local.name
            self.client.log_artifacts(self.run_id, str(local), artifact_path=dest)
        else:
            self.client.log_artifact(self.run_id, str(local), artifact_path=artifact_path)
            if local.suffix in CHECKSUMMED_SUFFIXES:  # checked by verify_artifact on read

                key = f"{artifact_path.strip('/')}/{local.name}" if artifact_path else local.name
                self.client.set_tag(self.run_id, f"{CHECKSUM_TAG_PREFIX}{key}", file_sha256(local))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag  # heavy: mlflow

        clean = _clean_pairs(tags, "tag", MAX_TAG_VALUE_LENGTH)
        for chunk in _chunks(sorted(clean.items()), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in chunk])

    # -- user hints

    def ui_hint(self) -> str:
        uri = self.tracking_uri or ""
        run_path = f"#/experiments/{self.experiment_id}/runs/{self.run_id}"
        if uri.startswith(("http://", "https://")):
            return f"MLflow run {self.run_id}: {_redact_uri(uri).rstrip('/')}/{run_path}"
        if uri.startswith("databricks"):
            return f"MLflow run {self.run_id} in the Databricks workspace ({uri})."
        return (
            f"MLflow run {self.run_id} is in {_redact_uri(uri)}: open it with "
            f"`mlflow ui --backend-store-uri {_redact_uri(uri)}` and browse "
            f"http://127.0.0.1:5000/{run_path}"
        )

    def __repr__(self) -> str:
        return (
            f"MlflowTracker(run_id={self.run_id!r}, experiment_id={self.experiment_id!r}, "
            f"tracking_uri={_redact_uri(self.tracking_uri or '')!r}, owns_run={self.owns_run})"
        )


# --------------------------------------------------------------------------- resolution


def default_local_tracking_uri(project_dir: Path) -> str:
    """``sqlite:///<project_dir>/mlruns/mlflow.db`` (absolute; the folder is created)."""
    folder = Path(project_dir).absolute() / "mlruns"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def default_local_artifact_location(project_dir: Path) -> str:
    """``file://<project_dir>/mlruns/artifacts``: where the local store keeps artifacts."""
    return (Path(project_dir).absolute() / "mlruns" / "artifacts").as_uri()


def _local_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store's database (never in the CWD).

    None (MLflow's own default) for servers, which proxy or name their artifact root, and for
    file stores, which keep artifacts inside the store folder already.
    """
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if str(db) in ("", ":memory:"):
            return None
        if not db.is_absolute():
            db = db.absolute()
        return (db.parent / "artifacts").as_uri()
    return None


def _probe_server(tracking_uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast (seconds, not the client's minutes of retries) when the server is unreachable.

    Any HTTP answer counts as reachable (a 401/404 is for the client to explain).
    """
    import requests  # heavy: requests

    url = tracking_uri.rstrip("/") + "/health"
    try:
        requests.get(url, timeout=(timeout, timeout), allow_redirects=False)
    except requests.RequestException as exc:
        raise TrackingError(
            f"The MLflow tracking server {_redact_uri(tracking_uri)} is unreachable "
            f"({type(exc).__name__}). Start it (`mlflow server ...`), fix MLFLOW_TRACKING_URI "
            "(or the --tracking-uri argument), or turn tracking off."
        ) from None


def _get_or_create_experiment(client: Any, name: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException  # heavy: mlflow

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"The MLflow experiment '{name}' in {_redact_uri(tracking_uri)} is deleted. "
                f"Restore it (`mlflow experiments restore --experiment-id "
                f"{experiment.experiment_id}`) or choose another experiment name."
            )
        return str(experiment.experiment_id)
    try:
        return str(
            client.create_experiment(name, artifact_location=_local_artifact_location(tracking_uri))
        )
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # created meanwhile by another process
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def resolve_tracker(
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    *,
    tracking_uri: str | None = None,
    enabled: bool = True,
    tags: Mapping[str, Any] | None = None,
    outlives_process: bool = False,
) -> Tracker:
    """The tracker for this process: a no-op one when disabled, else an :class:`MlflowTracker`.

    See the module docstring for the order in which the URI, experiment and run are chosen.
    A created run is tagged with this process (``sparsepipe.owner``) so that, if it is killed,
    the next start on this host marks the run KILLED; ``outlives_process=True`` (a pipeline's
    parent run, ended later by another task) leaves that tag off.
    Raises :class:`TrackingError` (a ``SparsepipeError``) naming the URI when the store cannot be
    reached, the experiment id or the injected run id does not exist.
    """
    if not enabled:
        return Tracker()
    from mlflow.exceptions import MlflowException  # heavy: mlflow
    from mlflow.tracking import MlflowClient  # heavy: mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        uri = default_local_tracking_uri(Path.cwd())
    shown = _redact_uri(uri)
    if uri.startswith(("http://", "https://")):
        _probe_server(uri)
    env_experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID", "").strip()
    env_experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip()
    env_run_id = os.environ.get("MLFLOW_RUN_ID", "").strip()
    try:
        client = MlflowClient(tracking_uri=uri)
        if env_run_id:
            try:
                run = client.get_run(env_run_id)
            except MlflowException as exc:
                raise TrackingError(
                    f"MLFLOW_RUN_ID={env_run_id} names no run in {shown} ({exc.error_code}). "
                    "Unset MLFLOW_RUN_ID to create a new run, or point MLFLOW_TRACKING_URI at "
                    "the server that holds it."
                ) from None
            tracker = MlflowTracker(
                client,
                env_run_id,
                experiment_id=run.info.experiment_id,
                tracking_uri=uri,
                owns_run=False,
            )
            if run.info.status != "RUNNING":
                log.warning("attached to MLflow run %s whose status is %s", env_run_id,
                            run.info.status)
            if tags:
                tracker.set_tags(tags)
            return tracker
        if env_experiment_id:
            try:
                experiment_id = str(client.get_experiment(env_experiment_id).experiment_id)
            except MlflowException as exc:
                raise TrackingError(
                    f"MLFLOW_EXPERIMENT_ID={env_experiment_id} names no experiment in {shown} "
                    f"({exc.error_code}). Unset it, or set MLFLOW_EXPERIMENT_NAME instead."
                ) from None
        else:
            experiment_id = _get_or_create_experiment(
                client, env_experiment_name or experiment, uri
            )
        run_tags = _clean_pairs(dict(tags or {}), "tag", MAX_TAG_VALUE_LENGTH)
        if not outlives_process:
            run_tags.update(_owner_tags())
        _end_runs_of_dead_processes(client, experiment_id)
        run = client.create_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags)
        return MlflowTracker(
            client, run.info.run_id, experiment_id=experiment_id, tracking_uri=uri, owns_run=True
        )
    except SparsepipeError:
        raise
    except MlflowException as exc:
        raise TrackingError(
            f"MLflow tracking at {shown} failed: {exc.message if hasattr(exc, 'message') else exc}"
            ". Check MLFLOW_TRACKING_URI and the server's log, or turn tracking off."
        ) from None


def download_verified_artifact(run_id: str, artifact_path: str, dst_dir: str | os.PathLike[str],
                               tracking_uri: str | None = None) -> Path:
    """Download one logged file of run ``run_id`` and check it against its ``sparsepipe.sha256.*`` tag.

    The file appears at ``dst_dir/<name>`` only after it matched (temporary name, then rename);
    a mismatch or a missing checksum tag raises :class:`TrackingError` naming the run and file.
    """
    import mlflow.artifacts  # heavy: mlflow
    from mlflow.tracking import MlflowClient  # heavy: mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    key = artifact_path.strip("/")
    expected = MlflowClient(tracking_uri=uri or None).get_run(run_id).data.tags.get(CHECKSUM_TAG_PREFIX + key)
    if not expected:
        raise TrackingError(
            f"Run {run_id} has no {CHECKSUM_TAG_PREFIX}{key} tag, so {key} cannot be verified. Only files logged "
            f"by sparsepipe (.pt/.onnx through Tracker.log_artifact) carry one; re-log the file with sparsepipe."
        )
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".verify-", dir=dst) as tmp:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=key, dst_path=tmp,
                                                         tracking_uri=uri or None))
        got = file_sha256(local)
        if got != expected:
            raise TrackingError(
                f"{key} of run {run_id} has SHA-256 {got[:12]}..., but {expected[:12]}... was recorded when it was "
                f"logged: the stored artifact was changed or corrupted. Re-run the step that logged it."
            )
        target = dst / local.name
        atomic_copy(local, target)
    return target
