"""The MLflow model registry: register a variant's model file, the champion policy, resolve ``models:/`` URIs.

    python -c "from sparsepipe.registry import resolve_registry_uri; print(resolve_registry_uri('models:/yolov8n@champion'))"

Registration (:func:`register_model`) logs the model file (``.onnx`` and/or ``.pt``) as
artifacts of an MLflow run (under ``registry/<variant>``), creates the registered model if it
is missing, creates a model version from that artifact folder and optionally points an alias
(e.g. ``champion``) at it. A version with one ONNX file is an MLflow model (ONNX flavour with an
input/output signature, :mod:`sparsepipe.mlflow_model`): ``mlflow.pyfunc.load_model``, ``mlflow
models serve`` and KServe's MLflow runtime load it; the raw files keep their names and SHA-256
tags. Nothing here imports kfp.

Champion policy (:class:`ChampionPolicy`, :func:`choose_champion`): **the fastest variant whose
accuracy stays within a budget of the baseline's.** A variant is eligible when it has
``map50_95`` and ``map50_95 >= baseline_map50_95 * (1 - max_accuracy_drop)`` (default 5 %
relative drop allowed; the baseline itself is always eligible). Among the eligible ones the
highest ``speedup_vs_baseline`` wins (measured interleaved with the baseline in one benchmark
run when the pipeline does that, else the ratio of p50 latencies); ties go to the higher
``map50_95``, then to the name. A variant without a latency is never the champion unless it is
the baseline.

Resolution (:func:`resolve_registry_uri`): ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``
against ``$MLFLOW_TRACKING_URI`` (or an explicit URI), downloaded once into a cache folder
(``$SPARSEPIPE_CACHE/models``, else ``~/.cache/sparsepipe/models``), returning the model file:
the only ``.onnx``/``.pt`` file of the version, or, when it holds both, the ``.pt`` checkpoint
(``prefer=".onnx"`` picks the ONNX instead).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sparsepipe.core import cache as core_cache
from sparsepipe.errors import ConfigError, SparsepipeError
from sparsepipe.mlflow_model import save_onnx_model
from sparsepipe.results import publish_mode
from sparsepipe.storage import file_sha256
from sparsepipe.tracking import _get_or_create_experiment, _probe_server

__all__ = [
    "REGISTRY_PREFIX",
    "ChampionPolicy",
    "RegistryError",
    "choose_champion",
    "download_model_version",
    "is_registry_uri",
    "parse_registry_uri",
    "register_model",
    "resolve_registry_uri",
]

REGISTRY_PREFIX = "models:/"
MODEL_SUFFIXES = (".pt", ".onnx")
ARTIFACT_DIR = "registry"  # run artifact folder the registered files are logged under
VARIANT_TAG = "sparsepipe.variant"
#: version (and run) tag prefix: ``sparsepipe.sha256.<file name>`` = hex SHA-256 recorded at registration
CHECKSUM_TAG_PREFIX = "sparsepipe.sha256."
VERIFIED_FILE = ".sparsepipe-verified.json"
ALIAS_CANDIDATE_TAG = "sparsepipe.alias_candidate"  # version tag: the alias this version asked for
ALIAS_POLICIES = ("newest", "force")  # in a downloaded version folder: {relative path: sha256}


class RegistryError(SparsepipeError):
    """A registry URI that cannot be resolved, or a registration that failed."""


def is_registry_uri(value: str) -> bool:
    return str(value).strip().startswith(REGISTRY_PREFIX)


def parse_registry_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name/3`` -> ``(name, "3", None)``; ``models:/name@champion`` -> ``(name, None, "champion")``."""
    spec = str(uri).strip()[len(REGISTRY_PREFIX):]
    if "@" in spec:
        name, _, alias = spec.rpartition("@")
        if name and alias and "/" not in alias:
            return name, None, alias
    elif "/" in spec:
        name, _, version = spec.rpartition("/")
        if name and version.isdigit():
            return name, version, None
    raise RegistryError(
        f"'{uri}' is not a model-registry URI sparsepipe understands: use models:/NAME/VERSION "
        f"(e.g. models:/yolov8n-sparse/3) or models:/NAME@ALIAS (e.g. models:/yolov8n-sparse@champion)."
    )


def _tracking_uri(explicit: str | None) -> str:
    uri = (explicit or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise RegistryError(
            "The MLflow model registry needs a tracking server: set MLFLOW_TRACKING_URI=http://HOST:PORT "
            "(the server holding the registry) or pass a checkpoint path instead of a models:/ URI."
        )
    return uri


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient  # heavy: mlflow

    if tracking_uri.startswith(("http://", "https://")):
        _probe_server(tracking_uri)  # seconds, not minutes of client retries
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# ------------------------------------------------------------------------------------- resolve


def download_model_version(uri: str, cache_dir: Path | None = None, tracking_uri: str | None = None) -> Path:
    """Download the artifacts of registry ``uri`` once (cached per name/version) and return the folder."""
    from mlflow.exceptions import MlflowException  # heavy: mlflow

    name, version, alias = parse_registry_uri(uri)
    server = _tracking_uri(tracking_uri)
    client = _client(server)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    except MlflowException as exc:
        first = (exc.message or str(exc)).splitlines()[0]
        raise RegistryError(
            f"{uri}: the registry at {server} has no such model version ({first}). List the versions in "
            f"the MLflow UI (Models tab) and check the name, version or alias."
        ) from None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    dest = (cache_dir or core_cache.cache_dir("models")) / safe / f"v{mv.version}"
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    publish_mode(tmp)
    try:
        import mlflow.artifacts  # heavy: mlflow

        mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp), tracking_uri=server)
        _verify_version_files(uri, mv, tmp)
        try:
            tmp.rename(dest)  # atomic: a killed download never looks complete
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except MlflowException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RegistryError(f"{uri}: could not download version {mv.version} from {mv.source}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _verify_version_files(uri: str, mv: Any, folder: Path) -> None:
    """Check downloaded files against the version's ``sparsepipe.sha256.*`` tags; record the verified ones."""
    expected = {k[len(CHECKSUM_TAG_PREFIX):]: v for k, v in (mv.tags or {}).items() if k.startswith(CHECKSUM_TAG_PREFIX)}
    verified: dict[str, str] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        want = expected.get(path.name)
        if want is None:
            continue
        got = file_sha256(path)
        if got != want:
            raise RegistryError(
                f"{uri}: {path.name} of version {mv.version} has SHA-256 {got[:12]}..., but "
                f"{want[:12]}... was recorded when it was registered, so the stored artifact was changed "
                f"or corrupted. Nothing was cached; register the model again from the step that made it."
            )
        verified[path.relative_to(folder).as_posix()] = got
    (folder / VERIFIED_FILE).write_text(json.dumps(verified, indent=1, sort_keys=True) + "\n")


def verified_checksum(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 a downloaded registry file was verified against (None: no checksum was recorded).

    Re-hashes the cached file, so a cache edited after the download is not vouched for.
    """
    path = Path(path).absolute()
    for folder in path.parents:
        marker = folder / VERIFIED_FILE
        if marker.is_file():
            try:
                recorded = json.loads(marker.read_text()).get(path.relative_to(folder).as_posix())
            except (OSError, ValueError, AttributeError):
                return None
            return recorded if recorded and file_sha256(path) == recorded else None
    return None


def resolve_registry_uri(uri: str, cache_dir: Path | None = None, tracking_uri: str | None = None,
                         prefer: str = ".pt") -> str:
    """The local model file of registry ``uri`` (downloaded and cached)."""
    if prefer not in MODEL_SUFFIXES:
        raise ConfigError(f"prefer={prefer!r} must be one of {MODEL_SUFFIXES}.")
    folder = download_model_version(uri, cache_dir, tracking_uri)
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in MODEL_SUFFIXES)
    by_suffix = {s: [p for p in found if p.suffix == s] for s in MODEL_SUFFIXES}
    if not found:
        raise RegistryError(f"{uri} holds no .pt or .onnx file ({folder}); register a model file.")
    for suffix in (prefer, *[s for s in MODEL_SUFFIXES if s != prefer]):
        files = by_suffix[suffix]
        if len(files) == 1:
            return str(files[0])
        if len(files) > 1:
            raise RegistryError(
                f"{uri} holds several {suffix} files ({', '.join(p.name for p in files)}); register one "
                f"model file per version."
            )
    raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------------------------ register


def register_model(
    paths: str | os.PathLike[str] | list[str | os.PathLike[str]],
    name: str,
    *,
    alias: str = "",
    tracking_uri: str | None = None,
    run_id: str = "",
    experiment: str = "sparsepipe",
    variant: str = "",
    tags: Mapping[str, Any] | None = None,
    description: str = "",
    alias_policy: str = "newest",
) -> Any:
    """Register model file(s) as a new version of ``name``; point ``alias`` at it when given.

    Concurrent runs registering under the same ``alias`` (two pipelines, one registered model):
    with ``alias_policy="newest"`` (default) the version is tagged as a candidate for the alias and
    the alias is then pointed at the newest candidate version, so whatever the interleaving the
    alias ends on the most recently registered candidate and a slower, older run never moves it
    back. ``"force"`` points the alias at this version unconditionally (an explicit promotion).

    The files are logged to run ``run_id`` (a new run in ``experiment`` when empty) under
    ``registry/<variant or model>``, and the version's source is that artifact folder, so
    ``models:/name/N`` downloads exactly these files. Returns the MLflow ``ModelVersion``.
    """
    from mlflow.exceptions import MlflowException  # heavy: mlflow

    files = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not files:
        raise ConfigError("register_model needs at least one .onnx or .pt file.")
    for f in files:
        if not f.is_file() or f.suffix not in MODEL_SUFFIXES:
            raise ConfigError(f"Cannot register '{f}': not an existing .onnx or .pt file.")
    if not name or not name.strip():
        raise ConfigError("register_model needs a registered model name, e.g. yolov8n-sparsepipe.")
    if alias_policy not in ALIAS_POLICIES:
        raise ConfigError(f"alias_policy={alias_policy!r} must be one of {ALIAS_POLICIES}.")
    server = _tracking_uri(tracking_uri)
    client = _client(server)
    own_run = not run_id
    if own_run:
        exp_id = _get_or_create_experiment(client, experiment, server)
        run_id = client.create_run(exp_id, run_name=f"register.{variant or name}").info.run_id
    folder = f"{ARTIFACT_DIR}/{variant or 'model'}"
    onnx_files = [f for f in files if f.suffix == ".onnx"]
    try:
        if len(onnx_files) == 1:  # an MLflow model (ONNX flavour, signature) with the raw files beside it

            with tempfile.TemporaryDirectory(prefix="sparsepipe-register-") as tmp:
                staged = save_onnx_model(onnx_files[0], Path(tmp) / "model")
                for f in files:
                    if f is not onnx_files[0]:
                        shutil.copyfile(f, staged / f.name)
                client.log_artifacts(run_id, str(staged), artifact_path=folder)
        else:
            for f in files:
                client.log_artifact(run_id, str(f), artifact_path=folder)
        try:
            client.create_registered_model(name, description=description or None)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{folder}"
        version_tags = {k: str(v) for k, v in dict(tags or {}).items()}

        for f in files:  # verified by download_model_version; lets a remote .pt be loaded without trust
            digest = file_sha256(f)
            version_tags[f"{CHECKSUM_TAG_PREFIX}{f.name}"] = digest
            client.set_tag(run_id, f"{CHECKSUM_TAG_PREFIX}{folder}/{f.name}", digest)
        if variant:
            version_tags[VARIANT_TAG] = variant
        if alias:
            version_tags[ALIAS_CANDIDATE_TAG] = alias
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=version_tags,
                                         description=description or None)
        if alias and alias_policy == "force":
            _set_alias(client, name, alias, mv.version)
        elif alias:
            _point_alias_at_newest_candidate(client, name, alias)
    except MlflowException as exc:
        raise RegistryError(f"Registering {', '.join(f.name for f in files)} as '{name}' at {server} failed: {exc}") from None
    finally:
        if own_run:
            client.set_terminated(run_id)
    return mv


def _point_alias_at_newest_candidate(client: Any, name: str, alias: str) -> None:
    """Set ``alias`` to the highest version tagged as its candidate (idempotent, converges under races).

    Every registering process runs this after its own version exists and re-reads after each write
    until the alias and the newest candidate agree: the process that writes last then has seen
    every candidate created before its write, so the alias ends on the newest whatever the
    interleaving (MLflow has no compare-and-set on aliases; this loop stands in for one).
    """
    for _ in range(20):
        versions = client.search_model_versions(f"name='{name}'")
        candidates = [int(v.version) for v in versions if (v.tags or {}).get(ALIAS_CANDIDATE_TAG) == alias]
        if not candidates:
            return
        newest = str(max(candidates))
        try:
            current = str(client.get_model_version_by_alias(name, alias).version)
        except Exception:  # noqa: BLE001 - no such alias yet
            current = None
        if current == newest:
            return
        _set_alias(client, name, alias, newest)
    raise RegistryError(f"Alias '{alias}' of '{name}' kept changing under concurrent registrations; re-run the step.")


def _set_alias(client: Any, name: str, alias: str, version: str, attempts: int = 10) -> None:
    """Point ``alias`` at ``version``, retrying when a concurrent writer created the alias first.

    MLflow's SQL store sets an alias by reading and then inserting, so two processes that set a
    not-yet-existing alias at the same moment can make one of them fail with a unique-constraint
    error (seen with the SQLite backend). Retrying is safe: setting an alias is idempotent.
    """
    from mlflow.exceptions import MlflowException  # heavy: mlflow

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException as exc:
            text = str(exc)
            if attempt == attempts - 1 or not ("UNIQUE constraint" in text or "IntegrityError" in text
                                               or "Duplicate entry" in text or "duplicate key" in text):
                raise
            time.sleep(0.05 * (attempt + 1))


# ------------------------------------------------------------------------------------ champion


@dataclasses.dataclass
class ChampionPolicy:
    """Which variant becomes the champion: the fastest within an accuracy budget (see module doc)."""

    baseline: str = "baseline"  # the reference variant; always eligible
    accuracy_metric: str = "map50_95"  # metric the accuracy budget applies to (higher is better)
    max_accuracy_drop: float = 0.05  # relative: 0.05 = at most 5 % below the baseline's accuracy

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.max_accuracy_drop) <= 1.0:
            raise ConfigError(f"max_accuracy_drop={self.max_accuracy_drop!r} must be in [0, 1] (0.05 = 5 %).")
        if not self.baseline:
            raise ConfigError("ChampionPolicy.baseline must name a variant, e.g. baseline.")


def _speedup(metrics: Mapping[str, Any], base: Mapping[str, Any]) -> float | None:
    if isinstance(metrics.get("speedup_vs_baseline"), (int, float)):
        return float(metrics["speedup_vs_baseline"])
    if metrics.get("latency_ms_p50") and base.get("latency_ms_p50"):
        return float(base["latency_ms_p50"]) / float(metrics["latency_ms_p50"])
    return None


def choose_champion(variants: Mapping[str, Mapping[str, Any]], policy: ChampionPolicy | None = None) -> tuple[str, str]:
    """``(variant, reason)`` of the champion among ``{variant: metrics}``."""
    policy = policy or ChampionPolicy()
    if policy.baseline not in variants:
        raise RegistryError(
            f"The baseline variant '{policy.baseline}' is not among {sorted(variants)}; the champion policy "
            f"compares against it."
        )
    base = variants[policy.baseline]
    key = policy.accuracy_metric
    if not isinstance(base.get(key), (int, float)):
        raise RegistryError(f"The baseline has no '{key}' metric: evaluate it before choosing a champion.")
    floor = float(base[key]) * (1.0 - float(policy.max_accuracy_drop))
    scored = []
    for name, metrics in variants.items():
        accuracy = metrics.get(key)
        if not isinstance(accuracy, (int, float)) or float(accuracy) < floor:
            continue
        speed = 1.0 if name == policy.baseline else _speedup(metrics, base)
        if speed is None:
            continue
        scored.append((speed, float(accuracy), name))
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    speed, accuracy, winner = scored[0]  # the baseline is always in it
    reason = (f"fastest variant with {key} >= {floor:.4f} ({1 - policy.max_accuracy_drop:.0%} of baseline "
              f"{float(base[key]):.4f}): {winner} at {speed:.3f}x baseline speed, {key} {accuracy:.4f}")
    return winner, reason
