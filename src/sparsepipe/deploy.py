"""Write (and optionally apply) a KServe InferenceService that runs ``sparsepipe serve`` on a model.

    sparsepipe deploy models:/detector@champion --name detector --out runs/deploy
    sparsepipe deploy s3://models/detector/model.onnx --name detector --secret sparsepipe-s3 --apply
    make deploy MODEL=models:/detector@champion NAME=detector

The predictor is a custom container (``serving.kserve.io/v1beta1``, ``spec.predictor.containers``):
the sparsepipe CPU image running ``sparsepipe serve MODEL --host 0.0.0.0 --port 8080``, with
resource requests and limits, a readiness probe on ``/v2/health/ready`` (the model is loaded)
and liveness/startup probes on ``/v2/health/live`` (Open Inference Protocol v2; the server
answers ``/v2/models/<name>/infer``, ``<name>`` = the InferenceService name). The model is
fetched at start-up from the MLflow registry (``models:/``) or S3 (``s3://``). Credentials never appear in the YAML: the pod reads them from a Kubernetes Secret
through ``envFrom`` (keys ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), or, with
``secret_keys``, from named keys of a Secret such as KFP's ``mlpipeline-minio-artifact``
(``accesskey``/``secretkey``). Docs: docs/serving.md.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from sparsepipe import __version__
from sparsepipe.errors import ConfigError, SparsepipeError
from sparsepipe.registry import parse_registry_uri
from sparsepipe.results import atomic_write_text

PORT = 8080  # KServe's default container port
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def _default_image() -> str:
    return f"ghcr.io/sparsepipe/sparsepipe-cpu:{__version__}"


@dataclasses.dataclass
class DeployConfig:
    """Settings of the InferenceService ``sparsepipe deploy`` writes."""

    name: str  # InferenceService name (DNS-1123 label, at most 63 characters)
    namespace: str = "kubeflow-user-example-com"  # Kubernetes namespace; the default is Kubeflow's default profile's
    image: str = dataclasses.field(default_factory=_default_image)  # the CPU image, pinned tag
    engine: str = "onnxruntime"  # engine inside the container (onnxruntime or openvino)
    cpu: str = "2"  # CPU request (also the engine's intra-op threads are sized for it)
    memory: str = "2Gi"  # memory request
    cpu_limit: str = "2"  # CPU limit
    memory_limit: str = "4Gi"  # memory limit
    threads: int = 2  # inference worker threads of the server
    queue_size: int = 8  # requests waiting beyond the running ones before 503
    secret: str = "sparsepipe-s3"  # Secret holding the S3 credentials ('' = none, e.g. IRSA)
    secret_keys: tuple[str, str] | None = None  # (access key, secret key) names inside `secret`; None = envFrom
    tracking_uri: str = "http://mlflow.kubeflow:5000"  # MLflow for models:/ URIs (the name its --allowed-hosts lists)
    s3_endpoint: str = "http://seaweedfs.kubeflow:8333"  # S3 endpoint (KFP's SeaweedFS) ('' = AWS)
    min_replicas: int = 1  # KServe minReplicas
    max_replicas: int = 1  # KServe maxReplicas
    service_account: str = ""  # pod service account ('' = the namespace default)
    initial_delay_s: int = 5  # seconds before the first probe
    startup_failures: int = 60  # startup probe failures allowed, every 5 s: time to download and load the model

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or len(self.name) > 63 or not DNS_1123.match(self.name):
            raise ConfigError(
                f"name={self.name!r} is not a valid InferenceService name: use at most 63 lower-case letters, "
                f"digits and '-', starting and ending with a letter or digit (e.g. --name yolo-detector)."
            )
        if not DNS_1123.match(self.namespace or ""):
            raise ConfigError(f"namespace={self.namespace!r} is not a valid Kubernetes namespace name.")
        for field in ("cpu", "memory", "cpu_limit", "memory_limit"):
            value = getattr(self, field)
            if not QUANTITY.match(str(value)):
                raise ConfigError(f"{field}={value!r} is not a Kubernetes quantity (e.g. 500m, 2, 2Gi).")
        tag = self.image.rsplit("/", 1)[-1]
        if (":" not in tag and "@" not in tag) or tag.endswith(":latest"):
            raise ConfigError(f"image={self.image!r}: pin a tag or digest, never ':latest' or no tag.")
        if self.engine not in ("onnxruntime", "openvino"):
            raise ConfigError(f"engine={self.engine!r}: the CPU image runs onnxruntime or openvino.")
        for field in ("threads", "min_replicas", "max_replicas", "startup_failures"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < (0 if field == "min_replicas" else 1):
                raise ConfigError(f"{field}={value!r} must be a positive integer.")
        if self.max_replicas < self.min_replicas:
            raise ConfigError(f"max_replicas={self.max_replicas} is below min_replicas={self.min_replicas}.")
        if not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ConfigError(f"queue_size={self.queue_size!r} must be 0 or more.")
        for field in ("tracking_uri", "s3_endpoint"):
            value = getattr(self, field)
            if value and (urlsplit(value).username or urlsplit(value).password):
                raise ConfigError(
                    f"{field} contains credentials ({urlsplit(value).scheme}://USER:...@); give the plain URL and put "
                    f"credentials in the Secret '{self.secret or 'sparsepipe-s3'}' instead."
                )
        if self.secret and not DNS_1123.match(self.secret.replace(".", "-")):
            raise ConfigError(f"secret={self.secret!r} is not a valid Secret name.")
        if self.secret_keys is not None and (len(self.secret_keys) != 2 or not all(self.secret_keys)):
            raise ConfigError(f"secret_keys={self.secret_keys!r} must name two keys: access key and secret key.")


def check_model_uri(model: str) -> str:
    """The model must be reachable from the pod: ``models:/name@alias`` or ``models:/name/version``,
    or an ``s3://`` object/prefix; local paths are refused."""
    model = str(model).strip()
    if model.startswith("models:/"):
        parse_registry_uri(model)  # raises a RegistryError naming the expected forms
        return model
    if model.startswith("s3://"):
        parts = urlsplit(model)
        if parts.username or parts.password or not parts.netloc or not parts.path.strip("/"):
            raise ConfigError(
                f"model={model!r} must be s3://bucket/key (no credentials in the URI; the pod reads them from the Secret)."
            )
        return model
    raise ConfigError(
        f"model={model!r} is not reachable from a cluster pod; deploy a registered model (models:/name@alias) or "
        f"an uploaded one (s3://bucket/path/model.onnx). Register it with `sparsepipe` or upload it first."
    )


def inference_service(model: str, config: DeployConfig) -> dict[str, Any]:
    """The InferenceService manifest as a dict."""
    model = check_model_uri(model)
    env = [{"name": "SPARSEPIPE_CACHE", "value": "/tmp/sparsepipe-cache"},
           {"name": "OMP_NUM_THREADS", "value": "1"}]
    if model.startswith("models:/") and config.tracking_uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": config.tracking_uri})
    if config.s3_endpoint:
        env += [{"name": "AWS_ENDPOINT_URL", "value": config.s3_endpoint},
                {"name": "MLFLOW_S3_ENDPOINT_URL", "value": config.s3_endpoint}]
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": config.image,
        "command": ["sparsepipe"],
        "args": ["serve", model, "--host", "0.0.0.0", "--port", str(PORT), "--engine", config.engine,
                 "--threads", str(config.threads), "--queue-size", str(config.queue_size),
                 "--model-name", config.name],  # v2 route: /v2/models/<InferenceService name>/infer
        "ports": [{"containerPort": PORT, "name": "http1", "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": {"cpu": str(config.cpu), "memory": str(config.memory)},
                      "limits": {"cpu": str(config.cpu_limit), "memory": str(config.memory_limit)}},
        # Open Inference Protocol v2 health routes (what KServe's own runtimes answer)
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": PORT}, "periodSeconds": 5,
                         "failureThreshold": config.startup_failures},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": PORT},
                           "initialDelaySeconds": config.initial_delay_s, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": PORT}, "periodSeconds": 10,
                          "failureThreshold": 3},
    }
    if config.secret and config.secret_keys is None:
        container["envFrom"] = [{"secretRef": {"name": config.secret}}]
    elif config.secret:
        access, secret_key = config.secret_keys
        env += [{"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": config.secret, "key": access}}},
                {"name": "AWS_SECRET_ACCESS_KEY",
                 "valueFrom": {"secretKeyRef": {"name": config.secret, "key": secret_key}}}]
    predictor: dict[str, Any] = {"minReplicas": config.min_replicas, "maxReplicas": config.max_replicas,
                                 "containers": [container]}
    if config.service_account:
        predictor["serviceAccountName"] = config.service_account
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": config.name,
            "namespace": config.namespace,
            "labels": {"app.kubernetes.io/name": config.name, "app.kubernetes.io/part-of": "sparsepipe"},
            "annotations": {"sparsepipe.io/model": model},
        },
        "spec": {"predictor": predictor},
    }


def kubectl_apply(path: Path) -> str:
    """``kubectl apply -f path``; a clear error when kubectl is missing or refuses."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SparsepipeError(
            f"--apply needs kubectl on PATH (configured for your cluster); the manifest is written at {path}: "
            f"apply it yourself with `kubectl apply -f {path}`."
        )
    proc = subprocess.run([kubectl, "apply", "-f", str(path)], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise SparsepipeError(f"kubectl apply -f {path} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def deploy(model: str, out: str | Path, config: DeployConfig, apply: bool = False) -> Path:
    """Write ``out/inferenceservice.yaml`` atomically; run ``kubectl apply`` only when ``apply``."""
    return write_manifest(model, Path(out) / "inferenceservice.yaml", config, apply=apply)


def write_manifest(model: str, path: str | Path, config: DeployConfig, apply: bool = False) -> Path:
    """Write the manifest to an exact file ``path`` (the KFP component's artifact path)."""
    written = atomic_write_text(path, yaml.safe_dump(inference_service(model, config), sort_keys=False))
    if apply:
        print(kubectl_apply(written))
    return written
