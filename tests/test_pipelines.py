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
from tests.kfp_launcher import compile_without_image_overrides  # noqa: E402

STEP_EXECUTORS = ("prepare-data", "train-model", "export-onnx", "evaluate-model", "benchmark-model",
                  "sparsify-model", "export-onnx-2", "evaluate-model-2", "benchmark-model-2", "quantize-model",
                  "evaluate-model-3", "benchmark-model-3")
#: main pipeline tasks per variant: (export or quantize task, evaluate task, benchmark task)
VARIANT_TASKS = {"baseline": ("export-onnx", "evaluate-model", "benchmark-model"),
                 "pruned": ("export-onnx-2", "evaluate-model-2", "benchmark-model-2"),
                 "int8": ("quantize-model", "evaluate-model-3", "benchmark-model-3")}
REGENERATE = "regenerate with `.venv/bin/python -m pipelines.compile` (make compile) and review the diff"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    paths = compile_without_image_overrides(out)
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
    # data -> baseline -> sparsify (recipe) -> export -> quantize (PTQ of the pruned ONNX)
    assert s.source("sparsify-model", "checkpoint") == ("train-model", "model")
    assert s.source("sparsify-model", "data") == ("prepare-data", "dataset")
    assert s.source("sparsify-model", "recipe") == ("", "recipe")
    assert s.source("sparsify-model", "recipe_args") == ("", "recipe_args")
    assert s.source("export-onnx-2", "checkpoint") == ("sparsify-model", "model")
    assert s.source("quantize-model", "onnx_model") == ("export-onnx-2", "onnx_model")
    assert s.source("quantize-model", "data") == ("prepare-data", "dataset")
    for variant, (producer, evaluate, bench) in VARIANT_TASKS.items():
        key = "int8_model" if producer == "quantize-model" else "onnx_model"
        assert s.source(evaluate, "onnx_model") == (producer, key), variant
        assert s.source(evaluate, "data") == ("prepare-data", "dataset"), variant
        assert s.source(bench, "onnx_model") == (producer, key), variant
        assert s.source("build-report", f"{variant}_onnx") == (producer, key), variant
        assert s.source("build-report", f"{variant}_evaluation") == (evaluate, "evaluation"), variant
        assert s.source("build-report", f"{variant}_timing") == (bench, "timing"), variant
    # variants are timed interleaved with the baseline ONNX in one run; the baseline alone
    assert "baseline_onnx" not in s.tasks["benchmark-model"].inputs.artifacts
    for bench in ("benchmark-model-2", "benchmark-model-3"):
        assert s.source(bench, "baseline_onnx") == ("export-onnx", "onnx_model"), bench
    assert s.source("build-report", "sparse_checkpoint") == ("sparsify-model", "model")
    assert s.source("build-report", "register_model") == ("", "registered_model")
    assert s.source("build-report", "alias") == ("", "champion_alias")
    for task in STEP_EXECUTORS + ("build-report",):
        assert s.source(task, "context") == ("open-tracking-run", "Output"), task
    assert s.source("prepare-data", "source") == ("", "data_source")
    for task in ("train-model", "sparsify-model", "export-onnx", "export-onnx-2"):
        assert s.source(task, "imgsz") == ("", "imgsz"), task
    params = s.spec.root.input_definitions.parameters
    assert {"model", "data_source", "recipe", "recipe_args", "imgsz", "epochs", "accelerator", "benchmark_threads",
            "benchmark_iterations", "mlflow_tracking_uri", "registered_model", "champion_alias",
            "max_accuracy_drop"} <= set(params)
    assert params["recipe"].default_value.string_value == "recipes/yolov8n-pruned50.yaml"
    assert params["champion_alias"].default_value.string_value == "champion"


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
    for task in ("prepare-data", "train-model", "export-onnx", "evaluate-model", "sparsify-model", "export-onnx-2",
                 "quantize-model", "evaluate-model-2", "evaluate-model-3"):
        assert s.tasks[task].caching_options.enable_cache, task
    for task in ("benchmark-model", "benchmark-model-2", "benchmark-model-3", "open-tracking-run",
                 "close-tracking-run"):
        assert not s.tasks[task].caching_options.enable_cache, task
    for task, count in {"prepare-data": 3, "train-model": 1, "sparsify-model": 1, "export-onnx": 3,
                        "quantize-model": 3, "evaluate-model": 3, "benchmark-model": 1, "benchmark-model-3": 1,
                        "build-report": 3}.items():
        policy = s.tasks[task].retry_policy
        assert policy.max_retry_count == count, task
        assert policy.backoff_duration.seconds == 30 and policy.backoff_factor == 2, task
        assert policy.backoff_max_duration.seconds == 600, task


def test_benchmark_placement(main_spec, sweep_spec):
    for s in (main_spec, sweep_spec):
      for bench in ("benchmark-model", "benchmark-model-2", "benchmark-model-3"):
        resources = s.container(bench)["resources"]
        assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"]
        assert resources["resourceCpuRequest"] == "2"
        assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"]
        k8s = s.k8s[f"exec-{bench}"]
        assert k8s["nodeSelector"]["labels"] == {"sparsepipe.io/pool": "cpu-benchmark"}
        assert k8s["tolerations"] == [{"effect": "NoSchedule", "key": "sparsepipe.io/benchmark", "operator": "Exists"}]
        for other in ("exec-train-model", "exec-sparsify-model", "exec-export-onnx", "exec-quantize-model",
                      "exec-prepare-data"):
            assert "nodeSelector" not in s.k8s[other], other


def test_training_gpu_only_when_asked(main_spec, sweep_spec):
    for s in (main_spec, sweep_spec):
      for trainer in ("train-model", "sparsify-model"):
        gpu = s.container(trainer)["resources"]["accelerator"]
        assert gpu["resourceType"] == "{{$.inputs.parameters['pipelinechannel--accelerator']}}"
        assert gpu["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--accelerator_count']}}"
        defaults = s.spec.root.input_definitions.parameters
        assert defaults["accelerator"].default_value.string_value == ""  # CPU unless asked
        assert defaults["accelerator_count"].default_value.string_value == "0"
        assert s.source(trainer, "accelerator") == ("", "accelerator")  # device follows the request
        assert {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"} in s.k8s[f"exec-{trainer}"]["tolerations"]
        for executor in (f"exec-{trainer}", "exec-prepare-data"):
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
    training = ("exec-train-model", "exec-sparsify-model")
    assert all(images[n].endswith(f"/sparsepipe-cuda:{version}") for n in training)
    assert all(i.endswith(f"/sparsepipe-cpu:{version}") for n, i in images.items() if n not in training)
    env = {**os.environ, "SPARSEPIPE_IMAGE": "reg.example/sp-cpu:1.2.3", "SPARSEPIPE_TRAIN_IMAGE": "reg.example/sp-gpu:1.2.3"}
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--out", str(tmp_path)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    text = (tmp_path / "main.yaml").read_text()
    assert "image: reg.example/sp-cpu:1.2.3" in text and "image: reg.example/sp-gpu:1.2.3" in text
    bad = subprocess.run([sys.executable, "-m", "pipelines.compile", "--out", str(tmp_path)], cwd=ROOT,
                         env={**os.environ, "SPARSEPIPE_IMAGE": "reg.example/sp-cpu:latest"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "pin a tag" in bad.stderr


def test_sweep_fans_out_over_recipes_and_collects(sweep_spec):
    s = sweep_spec
    loops = {n: t for n, t in s.tasks.items() if t.HasField("parameter_iterator")}
    assert len(loops) == 1
    (loop_name, loop), = loops.items()
    assert loop.task_info.name == "recipes"
    assert loop.parameter_iterator.items.input_parameter.endswith("recipes")
    assert loop.iterator_policy.parallelism_limit == 2
    body = s.spec.components[loop.component_ref.name].dag.tasks
    # one baseline outside the loop; per recipe: sparsify, export, quantize, 2 x evaluate/benchmark
    assert {"sparsify-model", "export-onnx-2", "quantize-model", "evaluate-model-2", "evaluate-model-3",
            "benchmark-model-2", "benchmark-model-3"} == set(body)
    assert {"train-model", "export-onnx", "evaluate-model", "benchmark-model"} <= set(s.spec.root.dag.tasks) | {
        n for n, owner in s.owner.items() if owner == "comp-exit-handler-1"}
    for key, field in (("recipe", "recipe"), ("recipe_args", "recipe_args"), ("variant", "variant")):
        ref = body["sparsify-model"].inputs.parameters[key]
        assert ref.component_input_parameter == "pipelinechannel--recipes-loop-item", key
        assert ref.parameter_expression_selector == f'parseJson(string_value)["{field}"]', key
    assert s.source("sparsify-model", "checkpoint") == ("train-model", "model")
    for bench in ("benchmark-model-2", "benchmark-model-3"):
        assert s.source(bench, "baseline_onnx") == ("export-onnx", "onnx_model"), bench
    for key, out in (("sparse_checkpoints", "sparsify-model"), ("onnx_models", "export-onnx-2"),
                     ("evaluations", "evaluate-model-2"), ("timings", "benchmark-model-2"),
                     ("int8_models", "quantize-model"), ("int8_evaluations", "evaluate-model-3"),
                     ("int8_timings", "benchmark-model-3")):
        producer, output_key = s.source("build-sweep-report", key)
        assert producer == loop_name and out in output_key, key
    assert s.source("build-sweep-report", "baseline_onnx") == ("export-onnx", "onnx_model")
    assert s.source("build-sweep-report", "register_model") == ("", "registered_model")
    items = json_format.MessageToDict(s.spec.root.input_definitions.parameters["recipes"].default_value)
    assert all({"variant", "recipe", "recipe_args"} == set(i) for i in items)
    assert all(i["recipe"].startswith("recipes/") for i in items)


# ------------------------------------------------------------------------------ end to end

TINY = {"model": "yolov8n.yaml", "data_source": "synthetic:train=16,val=8,size=128,seed=3", "imgsz": 64,
        "epochs": 1, "batch": 8, "workers": 0, "benchmark_threads": 1, "benchmark_iterations": 5,
        "calibration_images": 8, "recipe": str(ROOT / "tests" / "sparsify" / "prune-quick.yaml"),
        # quotes and a backslash (a JSON escape of "e"): what broke the launcher's substitution on a cluster
        "recipe_args": '{"num_\\u0065pochs": 2, "final_sparsity": 0.5}'}
CHILDREN = {"data", "report"} | {f"baseline.{s}" for s in ("train", "export", "evaluate", "benchmark")} | {
    f"pruned.{s}" for s in ("sparsify", "export", "evaluate", "benchmark")} | {
    f"pruned-ptq.{s}" for s in ("quantize", "evaluate", "benchmark")}
FOLDERS = ("data", "baseline/train", "baseline/export", "baseline/evaluate", "baseline/benchmark", "pruned/sparsify",
           "pruned/export", "pruned/evaluate", "pruned/benchmark", "pruned-ptq/quantize", "pruned-ptq/evaluate",
           "pruned-ptq/benchmark", "report")
#: Runs the main pipeline through kfp.local in a child process so that every task's output
#: (kfp.local streams it to the parent's stdout/stderr) lands in one log file; then compiles.
RUNNER = """
import json, sys
from kfp import local
from pipelines.compile import compile_all
from pipelines.main import main_pipeline
args = json.loads(sys.argv[1])
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=args.pop("pipeline_root"))
compiled = args.pop("compiled")
main_pipeline(**args)
compile_all(__import__("pathlib").Path(compiled))
"""


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, s3_server, mlflow_server):
    """One kfp.local run of the main pipeline with credentials (and a tracking token) in the environment."""
    tmp = tmp_path_factory.mktemp("kfp-e2e")
    secrets = {**s3_server.env, "MLFLOW_TRACKING_TOKEN": "tok-" + s3_server.secret_key[::-1][:16]}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(secrets)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    experiment = f"kfp-e2e-{tmp.name}"
    registered = f"kfp-e2e-model-{tmp.name}"
    args = {**TINY, "mlflow_tracking_uri": mlflow_server.tracking_uri, "mlflow_experiment": experiment,
            "publish_root": f"s3://{s3_server.bucket}/kfp-e2e", "s3_endpoint_url": s3_server.endpoint_url,
            "registered_model": registered, "max_accuracy_drop": 0.5,
            "pipeline_root": str(tmp / "kfp-root"), "compiled": str(tmp / "compiled")}
    log = tmp / "run.log"
    with open(log, "wb") as handle:
        proc = subprocess.run([sys.executable, "-c", RUNNER, __import__("json").dumps(args)], cwd=tmp, env=env,
                              stdout=handle, stderr=subprocess.STDOUT, timeout=540)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    root = tmp / "kfp-root"  # the report task's KFP output artifacts (what the KFP UI renders)
    outputs = {"markdown": next(root.rglob("build-report*/markdown")), "html": next(root.rglob("build-report*/html")),
               "report": next(root.rglob("build-report*/report"))}
    return {"tmp": tmp, "log": text, "outputs": outputs, "experiment": experiment, "registered": registered,
            "secrets": secrets, "s3": s3_server, "mlflow": mlflow_server}


def _runs(e2e):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=e2e["mlflow"].tracking_uri)
    exp = client.get_experiment_by_name(e2e["experiment"])
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    return client, parents[0], children


def test_main_pipeline_kfp_local_against_real_s3_and_mlflow(e2e):
    """baseline, pruned, pruned-ptq: each evaluated and benchmarked; champion registered; all in S3 + MLflow."""
    client, parent, children = _runs(e2e)
    assert parent.info.status == "FINISHED"  # closed by the exit handler
    assert parent.data.tags["sparsepipe.kfp_final_status"] == "SUCCEEDED"
    assert float(parent.data.params["epochs"]) == 1 and parent.data.params["model"] == "yolov8n.yaml"
    assert parent.data.params["recipe"].endswith("prune-quick.yaml")
    assert parent.data.params["recipe_args"] == TINY["recipe_args"] and "\\" in TINY["recipe_args"]
    assert set(children) == CHILDREN
    assert all(r.info.status == "FINISHED" for r in children.values())
    for variant in ("baseline", "pruned", "pruned-ptq"):
        assert {"map50", "map50_95"} <= set(children[f"{variant}.evaluate"].data.metrics), variant
        assert {"latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips", "size_mb"} <= set(
            children[f"{variant}.benchmark"].data.metrics), variant
    for variant in ("pruned", "pruned-ptq"):  # timed interleaved with the baseline ONNX in one run
        assert "speedup_vs_baseline" in children[f"{variant}.benchmark"].data.metrics, variant
    assert "speedup_vs_baseline" not in children["baseline.benchmark"].data.metrics
    assert children["pruned.sparsify"].data.metrics["sparsity"] > 0.3  # prune-quick: 50 % of its targets
    assert "params" in children["baseline.train"].data.metrics
    artifacts = [a.path for a in client.list_artifacts(children["report"].info.run_id, "report")]
    assert "report/report.html" in artifacts and "report/report.md" in artifacts

    # The KFP UI artifacts: the report names all three variants and the registered champion.
    markdown = Path(e2e["outputs"]["markdown"]).read_text()
    for variant in ("baseline", "pruned", "pruned-ptq"):
        assert f"| {variant} |" in markdown, variant
    assert f"models:/{e2e['registered']}@champion" in markdown

    # The registry: the alias resolves (anywhere a model path goes) and the ONNX runs in onnxruntime.
    import numpy as np
    import onnxruntime as ort

    from sparsepipe.models import resolve_model_path

    champion = client.get_model_version_by_alias(e2e["registered"], "champion")
    assert champion.tags["sparsepipe.variant"] in ("baseline", "pruned", "pruned-ptq")
    assert children["report"].data.tags["sparsepipe.champion"] == champion.tags["sparsepipe.variant"]
    os.environ["MLFLOW_TRACKING_URI"] = e2e["mlflow"].tracking_uri
    try:
        path = resolve_model_path(f"models:/{e2e['registered']}@champion", e2e["tmp"] / "registry-cache")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    assert path.endswith(".onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 64), np.float32)})[:1]
    assert out.shape[0] == 1

    # Published step folders in S3, each committed with its _SUCCESS manifest; MLflow's artifacts too.
    s3 = e2e["s3"].client()
    bucket = e2e["s3"].bucket
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="kfp-e2e/")
            for o in page.get("Contents", [])}
    for folder in FOLDERS:
        assert any(k.endswith(f"/{folder}/_SUCCESS") for k in keys), folder
        assert not any(k.endswith(f"/{folder}/_UPLOADING") for k in keys), folder
    assert any(k.endswith("/baseline/export/model.onnx") for k in keys)
    assert any(k.endswith("/pruned/sparsify/model.pt") for k in keys)
    assert any(k.endswith("/pruned-ptq/quantize/model_int8.onnx") for k in keys)
    assert s3.list_objects_v2(Bucket=bucket, Prefix="mlflow/").get("KeyCount", 0) > 0


def test_no_secret_in_logs_mlflow_yaml_or_report(e2e):
    """Credentials were in every task's environment: none reaches a log line, MLflow, the YAML or the report."""
    secrets = [v for k, v in e2e["secrets"].items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                             "MLFLOW_TRACKING_TOKEN")]
    assert len(secrets) == 3 and all(len(v) >= 12 for v in secrets)
    assert e2e["log"].count("\n") > 100  # the task logs really were captured
    haystacks = {"task logs": e2e["log"]}
    _, parent, children = _runs(e2e)
    for run in [parent, *children.values()]:
        haystacks[f"run {run.info.run_name}"] = "\n".join(
            f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items())
    for path in (e2e["tmp"] / "compiled").glob("*.yaml"):
        haystacks[path.name] = path.read_text()
    for key in ("markdown", "html", "report"):
        target = Path(e2e["outputs"][key])
        for f in [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file()):
            haystacks[f"report {f.name}"] = f.read_text(errors="replace")
    assert len(haystacks) > len(CHILDREN) + 3
    for where, text in haystacks.items():
        for value in secrets:
            assert value not in text, f"a secret value appears in {where}"
