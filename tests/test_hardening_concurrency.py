"""Two pipeline step chains at once against one bucket, one MLflow experiment, one registered model.

    .venv/bin/python -m pytest tests/test_hardening_concurrency.py -q

Two real processes start together (a file barrier after their imports), each running what the
pipeline's components call: ``open_run`` (parent run, publish root scoped by the KFP run id), the
data step (published to S3 with a manifest), three registrations of its own model under the
shared alias ``champion``, then ``close_run``. Afterwards each run's artifacts, MLflow runs and
model versions are its own, and the alias sits on the newest candidate version whatever the
interleaving (``sparsepipe.registry`` converges instead of last-writer-wins).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CHAIN = r"""
import json, pathlib, sys, time
args = json.loads(sys.argv[1])
from sparsepipe import kfp_support as k
from sparsepipe.registry import register_model
import onnx
from onnx import TensorProto, helper

go = pathlib.Path(args["go"])
while not go.exists():
    time.sleep(0.01)
context = k.open_run(experiment=args["experiment"], run_name=args["id"], tracking_uri=args["mlflow"],
                     publish_root=args["root"], s3_endpoint_url=args["s3"], kfp_run_id=args["id"])
data = k.run_data(f"synthetic:train=4,val=2,size=64,seed={args['seed']}", args["out"] + "/data", context)
parent = json.loads(context)["parent_run_id"]
versions = []
for i in range(3):
    path = pathlib.Path(args["out"]) / f"m{i}" / "model.onnx"
    path.parent.mkdir(parents=True)
    graph = helper.make_graph([helper.make_node("Mul", ["images", "s"], ["output0"])], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [float(args["seed"] * 10 + i)])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    mv = register_model(path, args["model"], alias="champion", tracking_uri=args["mlflow"], run_id=parent,
                        variant=f"{args['id']}-{i}")
    versions.append(mv.version)
k.close_run(kfp_run_id=args["id"], status="SUCCEEDED", experiment=args["experiment"], tracking_uri=args["mlflow"])
print("RESULT " + json.dumps({"parent": parent, "published": data.extra["published"], "versions": versions}))
"""


def test_two_runs_at_once_keep_apart(s3_server, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    experiment, model = f"concurrent-{tmp_path.name}", f"concurrent-{tmp_path.name}"
    root = f"s3://{s3_server.bucket}/concurrent/{tmp_path.name}"
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(s3_server.env)
    env["MLFLOW_TRACKING_TOKEN"] = "tok-" + s3_server.secret_key[::-1][:16]  # a credential MLflow would send
    secrets = [s3_server.access_key, s3_server.secret_key, env["MLFLOW_TRACKING_TOKEN"]]
    procs = {}
    for seed, run_id in ((1, "run-a"), (2, "run-b")):
        args = {"experiment": experiment, "model": model, "mlflow": mlflow_server.tracking_uri, "root": root,
                "s3": s3_server.endpoint_url, "id": run_id, "seed": seed, "out": str(tmp_path / run_id), "go": str(go)}
        procs[run_id] = subprocess.Popen([sys.executable, "-c", CHAIN, json.dumps(args)], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    go.write_text("go")  # both start their chains together
    results, logs = {}, {}
    for run_id, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]
        logs[run_id] = out
        results[run_id] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    # S3: run-scoped prefixes, each committed with the bytes its own process wrote.
    s3 = s3_server.client()
    for run_id, res in results.items():
        assert res["published"] == f"{root}/{run_id}/data"
        prefix = res["published"].split("/", 3)[3] + "/"
        manifest = json.loads(s3.get_object(Bucket=s3_server.bucket, Key=prefix + "_SUCCESS")["Body"].read())
        local = tmp_path / run_id / "data"
        assert set(manifest["files"]) == {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
        from sparsepipe.storage import file_sha256

        assert all(manifest["sha256"][rel] == file_sha256(local / rel) for rel in manifest["files"])
    a_images = {k: v for k, v in json.loads(s3.get_object(Bucket=s3_server.bucket, Key=results["run-a"][
        "published"].split("/", 3)[3] + "/_SUCCESS")["Body"].read())["sha256"].items() if k.startswith("images/")}
    b_images = {k: v for k, v in json.loads(s3.get_object(Bucket=s3_server.bucket, Key=results["run-b"][
        "published"].split("/", 3)[3] + "/_SUCCESS")["Body"].read())["sha256"].items() if k.startswith("images/")}
    assert a_images.keys() == b_images.keys() and a_images != b_images  # same names, different data: no mixing

    # MLflow: one parent per run (tagged with its KFP run id), its data child under it, both closed.
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = {r.data.tags["sparsepipe.kfp_run_id"]: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == {"run-a", "run-b"}
    for run_id, res in results.items():
        assert parents[run_id].info.run_id == res["parent"] and parents[run_id].info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == res["parent"]]
        assert [c.info.run_name for c in children] == ["data"]
        assert children[0].data.tags["sparsepipe.published"] == res["published"]

    # Registry: six versions, each from its own run; the alias on the newest candidate.
    versions = client.search_model_versions(f"name='{model}'")
    assert len(versions) == 6
    for run_id, res in results.items():
        for v in res["versions"]:
            mv = client.get_model_version(model, v)
            assert mv.run_id == res["parent"] and mv.tags["sparsepipe.variant"].startswith(run_id)
    assert client.get_model_version_by_alias(model, "champion").version == str(max(int(v.version) for v in versions))

    # Secrets were in both processes' environment: none reached a log, MLflow, S3 or a local output.
    haystacks = {f"log {k}": v for k, v in logs.items()}
    for r in runs:
        haystacks[f"run {r.info.run_name}"] = json.dumps({**r.data.params, **r.data.tags})
    for v in versions:
        haystacks[f"version {v.version}"] = json.dumps(v.tags)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket, Prefix=f"concurrent/{tmp_path.name}/")
    for key in [o["Key"] for page in pages for o in page.get("Contents", [])]:
        haystacks[key] = s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read().decode("latin-1")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            haystacks[str(path)] = path.read_bytes().decode("latin-1")
    assert len(haystacks) > 20
    leaks = [where for where, text in haystacks.items() for s in secrets if s in text]
    assert leaks == []


def test_force_policy_and_no_alias(mlflow_server, tmp_path, monkeypatch):
    """Registering without an alias never touches it; alias_policy="force" promotes unconditionally."""
    from test_registry import tiny_onnx

    from sparsepipe.registry import register_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    name = f"alias-{tmp_path.name}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    v1 = register_model(tiny_onnx(tmp_path / "a" / "model.onnx", 1.0), name, alias="champion")
    v2 = register_model(tiny_onnx(tmp_path / "b" / "model.onnx", 2.0), name, alias="champion")
    register_model(tiny_onnx(tmp_path / "model.onnx", 3.0), name)  # no alias: not a candidate
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    assert client.get_model_version_by_alias(name, "champion").version == v2.version
    assert "sparsepipe.alias_candidate" not in client.get_model_version(name, "3").tags
    v4 = register_model(tmp_path / "a" / "model.onnx", name, alias="champion", alias_policy="force")
    assert client.get_model_version_by_alias(name, "champion").version == v4.version == "4"
    assert v1.tags["sparsepipe.alias_candidate"] == "champion"
