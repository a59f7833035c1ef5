"""The deploy step: write a KServe InferenceService for a registered or uploaded model (optionally apply it)."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE)
def deploy_model(
    model_uri: str,
    name: str,
    manifest: Output[Artifact],
    namespace: str = "kubeflow-user-example-com",
    secret: str = "sparsepipe-s3",
    cpu: str = "2",
    memory: str = "2Gi",
    threads: int = 2,
    queue_size: int = 8,
    apply: bool = False,
):
    """Write the InferenceService YAML of ``model_uri`` (models:/name@alias or s3://...) to ``manifest``;
    with ``apply`` also run kubectl apply (the step's service account then needs RBAC on inferenceservices)."""
    from sparsepipe.deploy import DeployConfig, write_manifest

    write_manifest(model_uri, manifest.path, DeployConfig(name=name, namespace=namespace, secret=secret, cpu=cpu,
                                                          memory=memory, threads=threads, queue_size=queue_size),
                   apply=apply)
    manifest.metadata["model"] = model_uri
    manifest.metadata["name"] = name
