"""Compiled pipelines: golden files, wiring, placement, secrets; and the main pipeline end to end.

    .venv/bin/python -m pytest tests/test_pipelines.py -q

The YAML is parsed back into KFP's ``PipelineSpec``/``PlatformSpec`` protobufs and checked
there. The end-to-end test runs the main pipeline through ``kfp.local`` (SubprocessRunner, this
venv) on tiny generated data against the real SeaweedFS and MLflow servers of
``tests/service_fixtures.py``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(ROOT))

from google.protobuf import json_format  # noqa: E402
from kfp.pipeline_spec import pipeline_spec_pb2  # noqa: E402

import sparsepipe  # noqa: E402
from pipelines import compile as compile_mod  # noqa: E402

STEP_EXECUTORS = ("prepare-data", "train-model", "export-onnx", "evaluate-model", "benchmark-model")
REGENERATE = "regenerate with `.venv/bin/python -m pipelines.compile` (make compile) and review the diff"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    env_backup = {k: os.environ.pop(k, None) for k in ("SPARSEPIPE_IMAGE", "SPARSEPIPE_TRAIN_IMAGE")}
    try:
        paths = compile_mod.compile_all(out)
    finally:
        os.environ.update({k: v for k, v in env_backup.items() if v is not None})
    return {p.stem: p for p in paths}


class Spec:
    """A compiled pipeline: the PipelineSpec, the Kubernetes platform config, helpers."""

    def __init__(self, path: Path):
        self.text = path.read_text()
        docs = list(yaml.safe_load_all(self.text))
        self.spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
        platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
        k8s = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)
        self.k8s = k8s["executors"]
        self.executors = json_format.MessageToDict(self.spec.deployment_spec)["executors"]
        self.tasks = {}  # task name -> task; self.owner: task name -> name of the component holding it
        self.owner = {}
        for comp_name, comp in self.spec.components.items():
            for name, task in comp.dag.tasks.items():
                self.tasks[name] = task
                self.owner[name] = comp_name
        for name, task in self.spec.root.dag.tasks.items():
            self.tasks[name] = task
            self.owner[name] = "root"

    def source(self, task: str, key: str) -> tuple[str, str]:
        """(producer task, output key) of an input of ``task``, followed through DAG boundaries.

        A pipeline parameter gives ``("", "pipelinechannel--<name>")`` (or the parameter name).
        """
        inputs = self.tasks[task].inputs
        if key in inputs.artifacts:
            ref = inputs.artifacts[key]
            if ref.HasField("task_output_artifact"):
                return ref.task_output_artifact.producer_task, ref.task_output_artifact.output_artifact_key
            return self._outer(task, ref.component_input_artifact)
        ref = inputs.parameters[key]
        if ref.HasField("task_output_parameter"):
            return ref.task_output_parameter.producer_task, ref.task_output_parameter.output_parameter_key
        if ref.component_input_parameter:
            return self._outer(task, ref.component_input_parameter)
        return "", ""

    def _outer(self, task: str, channel: str) -> tuple[str, str]:
        owner = self.owner[task]
        if owner == "root":
            return "", channel
        parents = [n for n, t in self.tasks.items() if t.component_ref.name == owner]
        if not parents:
            return "", channel
        parent = parents[0]
        inputs = self.tasks[parent].inputs
        if channel in inputs.artifacts or channel in inputs.parameters:
            return self.source(parent, channel)
        return "", channel

    def container(self, executor: str) -> dict:
        return self.executors[f"exec-{executor}"]["container"]


@pytest.fixture(scope="module")
def main_spec(compiled):
    return Spec(compiled["main"])


@pytest.fixture(scope="module")
def sweep_spec(compiled):
    return Spec(compiled["sweep"])


def test_golden_files_match(compiled):
    for name, path in compiled.items():
        golden = compile_mod.COMPILED_DIR / path.name
        assert golden.is_file(), f"missing golden file {golden}: {REGENERATE}"
        assert compile_mod.normalized(golden.read_text()) == compile_mod.normalized(path.read_text()), (
            f"pipelines/compiled/{path.name} is out of date with the pipeline code: {REGENERATE}"
        )


def test_main_wiring(main_spec):
    s = main_spec
    assert s.source("train-model", "data") == ("prepare-data", "dataset")
    assert s.source("export-onnx", "checkpoint") == ("train-model", "model")
    for task in ("evaluate-model", "benchmark-model", "build-report"):
        assert s.source(task, "onnx_model") == ("export-onnx", "onnx_model")
    assert s.source("evaluate-model", "data") == ("prepare-data", "dataset")
    assert s.source("build-report", "evaluation") == ("evaluate-model", "evaluation")
    assert s.source("build-report", "timing") == ("benchmark-model", "timing")
    for task in STEP_EXECUTORS + ("build-report",):
        assert s.source(task, "context") == ("open-tracking-run", "Output"), task
    assert s.source("prepare-data", "source") == ("", "data_source")
    params = set(s.spec.root.input_definitions.parameters)
    assert {"model", "data_source", "imgsz", "epochs", "accelerator", "benchmark_threads",
            "benchmark_iterations", "mlflow_tracking_uri"} <= params


def test_exit_handler_closes_the_run(main_spec, sweep_spec):
    for s in (main_spec, sweep_spec):
        closer = s.spec.root.dag.tasks["close-tracking-run"]
        assert closer.trigger_policy.strategy == closer.trigger_policy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED
        assert list(closer.dependent_tasks) == ["exit-handler-1"]
        assert "status" in s.spec.components["comp-close-tracking-run"].input_definitions.parameters
        opener = s.tasks["open-tracking-run"].inputs.parameters["kfp_run_id"].runtime_value.constant.string_value
        assert opener == "{{$.pipeline_job_uuid}}"


def test_caching_and_retries(main_spec):
    s = main_spec
    for task in ("prepare-data", "train-model", "export-onnx", "evaluate-model"):
        assert s.tasks[task].caching_options.enable_cache, task
    for task in ("benchmark-model", "open-tracking-run", "close-tracking-run"):
        assert not s.tasks[task].caching_options.enable_cache, task
    for task, count in {"prepare-data": 3, "train-model": 1, "export-onnx": 3, "evaluate-model": 3,
                        "benchmark-model": 1, "build-report": 3}.items():
        policy = s.tasks[task].retry_policy
        assert policy.max_retry_count == count, task
        assert policy.backoff_duration.seconds == 30 and policy.backoff_factor == 2, task
        assert policy.backoff_max_duration.seconds == 600, task


def test_benchmark_placement(main_spec, sweep_spec):
    for s in (main_spec, sweep_spec):
        resources = s.container("benchmark-model")["resources"]
        assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"]
        assert resources["resourceCpuRequest"] == "2"
        assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"]
        k8s = s.k8s["exec-benchmark-model"]
        assert k8s["nodeSelector"]["labels"] == {"sparsepipe.io/pool": "cpu-benchmark"}
        assert k8s["tolerations"] == [{"effect": "NoSchedule", "key": "sparsepipe.io/benchmark", "operator": "Exists"}]
        for other in ("exec-train-model", "exec-export-onnx", "exec-prepare-data"):
            assert "nodeSelector" not in s.k8s[other], other


def test_training_gpu_only_when_asked(main_spec, sweep_spec):
    for s in (main_spec, sweep_spec):
        gpu = s.container("train-model")["resources"]["accelerator"]
        assert gpu["resourceType"] == "{{$.inputs.parameters['pipelinechannel--accelerator']}}"
        assert gpu["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--accelerator_count']}}"
        defaults = s.spec.root.input_definitions.parameters
        assert defaults["accelerator"].default_value.string_value == ""  # CPU unless asked
        assert defaults["accelerator_count"].default_value.string_value == "0"
        assert s.source("train-model", "accelerator") == ("", "accelerator")  # device follows the request
        assert {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"} in s.k8s["exec-train-model"]["tolerations"]
        for executor in ("exec-train-model", "exec-prepare-data"):
            shm = s.k8s[executor]["emptyDirMounts"]
            assert shm == [{"medium": "Memory", "volumeName": "dshm", "sizeLimit": "2Gi", "mountPath": "/dev/shm"}]


def test_credentials_only_from_the_secret(main_spec, sweep_spec):
    for s in (main_spec, sweep_spec):
        for executor in s.executors:
            secret = s.k8s[executor]["secretAsEnv"]
            assert secret[0]["secretName"] == "mlpipeline-minio-artifact", executor
            assert {(k["secretKey"], k["envVar"]) for k in secret[0]["keyToEnv"]} == {
                ("accesskey", "AWS_ACCESS_KEY_ID"), ("secretkey", "AWS_SECRET_ACCESS_KEY")}
            assert "env" not in s.container(executor.removeprefix("exec-")), executor
        for name in s.spec.root.input_definitions.parameters:
            assert not any(w in name.lower() for w in ("secret", "password", "token", "access_key")), name


def test_no_secret_value_in_compiled_yaml(tmp_path, s3_server):
    """Compile with real credentials in the environment: none of them reaches the YAML."""
    env = {**os.environ, **s3_server.env, "MLFLOW_TRACKING_TOKEN": "tok-" + s3_server.secret_key[:12]}
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--out", str(tmp_path)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    for path in tmp_path.glob("*.yaml"):
        text = path.read_text()
        for value in (s3_server.secret_key, s3_server.access_key, env["MLFLOW_TRACKING_TOKEN"]):
            assert value not in text, path.name


def test_images_pinned_to_the_package_version(main_spec, tmp_path):
    version = sparsepipe.__version__
    images = {name: c["container"]["image"] for name, c in main_spec.executors.items()}
    assert images["exec-train-model"].endswith(f"/sparsepipe-cuda:{version}")
    assert all(i.endswith(f"/sparsepipe-cpu:{version}") for n, i in images.items() if "train" not in n)
    env = {**os.environ, "SPARSEPIPE_IMAGE": "reg.example/sp-cpu:1.2.3", "SPARSEPIPE_TRAIN_IMAGE": "reg.example/sp-gpu:1.2.3"}
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--out", str(tmp_path)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    text = (tmp_path / "main.yaml").read_text()
    assert "image: reg.example/sp-cpu:1.2.3" in text and "image: reg.example/sp-gpu:1.2.3" in text
    bad = subprocess.run([sys.executable, "-m", "pipelines.compile", "--out", str(tmp_path)], cwd=ROOT,
                         env={**os.environ, "SPARSEPIPE_IMAGE": "reg.example/sp-cpu:latest"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "pin a tag" in bad.stderr


def test_sweep_fans_out_and_collects(sweep_spec):
    s = sweep_spec
    loops = {n: t for n, t in s.tasks.items() if t.HasField("parameter_iterator")}
    assert len(loops) == 1
    (loop_name, loop), = loops.items()
    assert loop.task_info.name == "variants"
    assert loop.parameter_iterator.items.input_parameter.endswith("variants")
    assert loop.iterator_policy.parallelism_limit == 2
    body = s.spec.components[loop.component_ref.name].dag.tasks
    assert {"train-model", "export-onnx", "evaluate-model", "benchmark-model"} <= set(body)
    for task, key, field in (("train-model", "model_config", "model"), ("train-model", "imgsz", "imgsz"),
                             ("train-model", "variant", "variant"), ("export-onnx", "imgsz", "imgsz")):
        ref = body[task].inputs.parameters[key]
        assert ref.component_input_parameter == "pipelinechannel--variants-loop-item", (task, key)
        assert ref.parameter_expression_selector == f'parseJson(string_value)["{field}"]', (task, key)
    for key, out in (("onnx_models", "export-onnx"), ("evaluations", "evaluate-model"), ("timings", "benchmark-model")):
        producer, output_key = s.source("build-sweep-report", key)
        assert producer == loop_name and out in output_key, key
    assert s.source("build-sweep-report", "baseline") == ("", "baseline_variant")


# ------------------------------------------------------------------------------ end to end

TINY = {"model": "yolov8n.yaml", "data_source": "synthetic:train=16,val=8,size=128,seed=3", "imgsz": 64,
        "epochs": 1, "batch": 8, "workers": 0, "benchmark_threads": 1, "benchmark_iterations": 5}


def test_main_pipeline_kfp_local_against_real_s3_and_mlflow(tmp_path, s3_env, mlflow_server, monkeypatch):
    from kfp import local
    from mlflow.tracking import MlflowClient

    from pipelines.main import main_pipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    experiment = f"kfp-e2e-{tmp_path.name}"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    publish_root = f"s3://{s3_env.bucket}/kfp-e2e"
    task = main_pipeline(**TINY, mlflow_tracking_uri=mlflow_server.tracking_uri, mlflow_experiment=experiment,
                         publish_root=publish_root, s3_endpoint_url=s3_env.endpoint_url)

    # KFP outputs: the report's Markdown/HTML artifacts exist and name the baseline.
    report = Path(task.outputs["report"].path) if "report" in task.outputs else None
    assert report is None or report.exists()

    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"  # closed by the exit handler
    assert parent.data.tags["sparsepipe.kfp_final_status"] == "SUCCEEDED"
    assert float(parent.data.params["epochs"]) == 1 and parent.data.params["model"] == "yolov8n.yaml"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"data", "baseline.train", "baseline.export", "baseline.evaluate", "baseline.benchmark", "report"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert {"map50", "map50_95"} <= set(children["baseline.evaluate"].data.metrics)
    assert {"latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips", "size_mb"} <= set(
        children["baseline.benchmark"].data.metrics)
    assert {"size_mb", "size_gz_mb", "params"} <= set(children["baseline.export"].data.metrics)
    assert "params" in children["baseline.train"].data.metrics
    artifacts = [a.path for a in client.list_artifacts(children["report"].info.run_id, "report")]
    assert "report/report.html" in artifacts and "report/report.md" in artifacts
    assert any(a.path.endswith("model.onnx") for a in client.list_artifacts(children["baseline.export"].info.run_id, "onnx"))

    # Published step folders in S3, each committed with its _SUCCESS manifest; MLflow's artifacts too.
    s3 = s3_env.client()
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_env.bucket, Prefix="kfp-e2e/")
            for o in page.get("Contents", [])}
    for folder in ("data", "baseline/train", "baseline/export", "baseline/evaluate", "baseline/benchmark", "report"):
        assert any(k.endswith(f"/{folder}/_SUCCESS") for k in keys), folder
        assert not any(k.endswith(f"/{folder}/_UPLOADING") for k in keys), folder
    assert any(k.endswith("/baseline/export/model.onnx") for k in keys)
    assert any(k.endswith("/baseline/train/model.pt") for k in keys)
    mlflow_keys = s3.list_objects_v2(Bucket=s3_env.bucket, Prefix="mlflow/").get("KeyCount", 0)
    assert mlflow_keys > 0
