"""sparsepipe deploy: the KServe InferenceService it writes, and the KFP component around it.

    .venv/bin/python -m pytest tests/test_deploy.py -q
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from sparsepipe.deploy import DeployConfig, inference_service, write_manifest
from sparsepipe.errors import ConfigError, SparsepipeError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _container(manifest):
    (container,) = manifest["spec"]["predictor"]["containers"]
    return container


def test_registry_model_manifest(tmp_path):
    from sparsepipe.cli import main

    assert main(["deploy", "models:/detector@champion", "--name", "detector", "--namespace", "team-a",
                 "--cpu", "500m", "--memory", "1Gi", "--threads", "3", "--queue-size", "5", "--out", str(tmp_path)]) == 0
    manifest = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["name"] == "detector" and manifest["metadata"]["namespace"] == "team-a"
    container = _container(manifest)
    import sparsepipe

    assert container["image"].endswith(f"sparsepipe-cpu:{sparsepipe.__version__}")
    assert container["command"] == ["sparsepipe"]
    args = container["args"]
    assert args[:2] == ["serve", "models:/detector@champion"]
    assert args[args.index("--port") + 1] == "8080" and args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--threads") + 1] == "3" and args[args.index("--queue-size") + 1] == "5"
    assert container["ports"] == [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}]
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}  # KServe's v2 protocol
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert args[args.index("--model-name") + 1] == "detector"  # POST /v2/models/detector/infer
    env = {e["name"]: e for e in container["env"]}
    assert "MLFLOW_TRACKING_URI" in env and env["MLFLOW_TRACKING_URI"]["value"].startswith("http")
    assert container["envFrom"] == [{"secretRef": {"name": "sparsepipe-s3"}}]


def test_no_secret_values_in_the_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-never-in-yaml")
    config = DeployConfig(name="det", secret="mlpipeline-minio-artifact", secret_keys=("accesskey", "secretkey"))
    path = write_manifest("s3://models/det/model.onnx", tmp_path / "isvc.yaml", config)
    text = path.read_text()
    assert "AKIAEXAMPLEKEY123" not in text and "s3cr3t-value-never-in-yaml" not in text
    env = {e["name"]: e for e in _container(yaml.safe_load(text))["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {
        "secretKeyRef": {"name": "mlpipeline-minio-artifact", "key": "secretkey"}}}
    assert all("value" not in e for name, e in env.items() if name.startswith("AWS_") and "KEY" in name)
    assert "MLFLOW_TRACKING_URI" not in env  # an S3 model needs no registry


@pytest.mark.parametrize("model, fragment", [
    ("runs/export/model.onnx", "not reachable from a cluster pod"),
    ("s3://AKIA:secret@bucket/model.onnx", "no credentials"),
    ("s3://bucket", "s3://bucket/key"),
])
def test_refuses_models_a_pod_cannot_reach(model, fragment):
    with pytest.raises(ConfigError, match=fragment):
        inference_service(model, DeployConfig(name="det"))


@pytest.mark.parametrize("field, value, fragment", [
    ("name", "Det_1", "InferenceService name"), ("cpu", "two", "quantity"), ("image", "repo/sparsepipe-cpu:latest", "latest"),
    ("tracking_uri", "http://user:pw@mlflow:5000", "credentials"), ("max_replicas", 0, "max_replicas"),
])
def test_config_errors_name_the_field(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        DeployConfig(**{"name": "det", field: value})


def test_apply_without_kubectl_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from sparsepipe.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no kubectl here
    assert main(["deploy", "models:/det/3", "--name", "det", "--apply", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "kubectl" in err and "kubectl apply -f" in err and (tmp_path / "inferenceservice.yaml").is_file()
    assert issubclass(ConfigError, SparsepipeError)


def test_component_signature_and_local_run(tmp_path):
    import inspect

    import components

    spec = components.deploy_model.component_spec
    assert set(spec.inputs) >= {"model_uri", "name", "namespace", "apply"}
    assert spec.outputs["manifest"].type.startswith("system.Artifact")
    assert not spec.implementation.container.image.endswith(":latest")
    body = inspect.getsource(components.deploy_model.python_func)
    assert len([line for line in body.splitlines() if "from sparsepipe" in line]) == 1

    class Out:  # the typed output KFP hands the function
        path = str(tmp_path / "manifest.yaml")
        metadata: ClassVar[dict] = {}

    components.deploy_model.python_func(model_uri="models:/det@champion", name="det", manifest=Out())
    manifest = yaml.safe_load(Path(Out.path).read_text())
    assert manifest["metadata"]["name"] == "det" and Out.metadata["model"] == "models:/det@champion"
