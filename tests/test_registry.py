"""The MLflow model registry: register, alias, resolve ``models:/`` URIs, champion policy.

    .venv/bin/python -m pytest tests/test_registry.py -q

Against the real MLflow server of ``tests/service_fixtures.py`` (artifacts proxied into SeaweedFS).
"""

import numpy as np
import pytest

from sparsepipe.errors import ConfigError
from sparsepipe.models import resolve_model_path
from sparsepipe.registry import (ChampionPolicy, RegistryError, choose_champion, parse_registry_uri,
                                 register_model, resolve_registry_uri)


def tiny_onnx(path, scale: float = 2.0):
    """A real ONNX graph (y = x * scale) small enough to register in a second."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["images", "scale"], ["output0"])], "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_parse_registry_uri():
    assert parse_registry_uri("models:/m/3") == ("m", "3", None)
    assert parse_registry_uri("models:/m@champion") == ("m", None, "champion")
    for bad in ("models:/m", "models:/m/latest", "models:/@x"):
        with pytest.raises(RegistryError, match="models:/NAME/VERSION"):
            parse_registry_uri(bad)


def test_register_alias_resolve_and_load_in_onnxruntime(mlflow_server, monkeypatch, tmp_path):
    import onnxruntime as ort
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    name = f"sparsepipe-test-{tmp_path.name}"
    v1 = register_model(tiny_onnx(tmp_path / "model.onnx", 2.0), name, alias="champion", variant="baseline",
                        experiment="registry-tests", tags={"map50_95": 0.1})
    (tmp_path / "b").mkdir()
    v2 = register_model(tiny_onnx(tmp_path / "b" / "model_int8.onnx", 3.0), name, variant="pruned-ptq",
                        experiment="registry-tests")
    assert (int(v1.version), int(v2.version)) == (1, 2)
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    assert client.get_model_version_by_alias(name, "champion").version == v1.version
    assert client.get_model_version(name, v2.version).tags["sparsepipe.variant"] == "pruned-ptq"

    cache = tmp_path / "cache"
    champion = resolve_model_path(f"models:/{name}@champion", cache)  # anywhere a checkpoint path goes
    second = resolve_model_path(f"models:/{name}/2", cache)
    assert champion.endswith("model.onnx") and second.endswith("model_int8.onnx")
    x = np.ones((1, 3, 4, 4), dtype=np.float32)
    for path, scale in ((champion, 2.0), (second, 3.0)):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"images": x})[0], x * scale)

    client.set_registered_model_alias(name, "champion", v2.version)  # moving the alias moves the model
    assert resolve_registry_uri(f"models:/{name}@champion", tmp_path / "cache2").endswith("model_int8.onnx")


def test_registered_onnx_is_an_mlflow_model_pyfunc_loads(mlflow_server, monkeypatch, tmp_path):
    """The version is an MLflow ONNX model with a signature: loaded back from the server and run."""
    import mlflow.pyfunc
    from mlflow.models import get_model_info

    from sparsepipe.storage import file_sha256

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    name = f"sparsepipe-pyfunc-{tmp_path.name}"
    raw = tiny_onnx(tmp_path / "model_int8.onnx", 3.0)
    register_model(raw, name, alias="champion", variant="pruned-ptq", experiment="registry-tests")
    uri = f"models:/{name}@champion"
    info = get_model_info(uri)
    assert "onnx" in info.flavors and info.flavors["python_function"]["loader_module"] == "mlflow.onnx"
    (spec,) = info.signature.inputs.inputs
    assert (spec.name, spec.shape, str(spec.type)) == ("images", (1, 3, 4, 4), "float32")
    assert [o.name for o in info.signature.outputs.inputs] == ["output0"]
    model = mlflow.pyfunc.load_model(uri)
    x = np.full((1, 3, 4, 4), 0.5, dtype=np.float32)
    np.testing.assert_allclose(model.predict(x)["output0"], x * 3.0)
    # the raw file is still there under its name, byte-identical, and verified against its SHA-256 tag
    path = resolve_registry_uri(uri, tmp_path / "cache")
    assert path.endswith("model_int8.onnx") and file_sha256(path) == file_sha256(raw)


def test_checkpoint_preferred_when_a_version_holds_both(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    import torch

    torch.save({"epoch": 1}, tmp_path / "model.pt")  # a real (tiny) checkpoint: .pt files pass sparsepipe.trust
    name = f"sparsepipe-both-{tmp_path.name}"
    register_model([tmp_path / "model.pt", tiny_onnx(tmp_path / "model.onnx")], name, experiment="registry-tests")
    assert resolve_model_path(f"models:/{name}/1", tmp_path / "c").endswith("model.pt")
    assert resolve_registry_uri(f"models:/{name}/1", tmp_path / "c", prefer=".onnx").endswith("model.onnx")


def test_clear_errors(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RegistryError, match="MLFLOW_TRACKING_URI"):
        resolve_model_path("models:/x@champion", tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    with pytest.raises(RegistryError, match="no such model version"):
        resolve_model_path(f"models:/missing-{tmp_path.name}@champion", tmp_path)
    with pytest.raises(ConfigError, match="not an existing"):
        register_model(tmp_path / "nope.onnx", "x")


def test_champion_policy_fastest_within_accuracy_budget():
    variants = {
        "baseline": {"map50_95": 0.40, "latency_ms_p50": 10.0},
        "pruned": {"map50_95": 0.39, "latency_ms_p50": 8.0, "speedup_vs_baseline": 1.3},
        "pruned-ptq": {"map50_95": 0.37, "latency_ms_p50": 5.0, "speedup_vs_baseline": 2.0},  # 7.5 % drop
        "broken": {"latency_ms_p50": 1.0},  # never evaluated: never champion
    }
    assert choose_champion(variants)[0] == "pruned"  # within 5 %, interleaved speedup wins over p50s
    assert choose_champion(variants, ChampionPolicy(max_accuracy_drop=0.1))[0] == "pruned-ptq"
    assert choose_champion(variants, ChampionPolicy(max_accuracy_drop=0.0))[0] == "baseline"
    untimed = {"baseline": {"map50_95": 0.1}, "pruned": {"map50_95": 0.2}}
    assert choose_champion(untimed)[0] == "baseline"  # a variant needs a timing to beat the baseline
    with pytest.raises(RegistryError, match="baseline"):
        choose_champion({"pruned": {"map50_95": 0.2}})
    with pytest.raises(ConfigError):
        ChampionPolicy(max_accuracy_drop=2)


def test_setting_a_new_alias_from_many_writers_at_once_succeeds(mlflow_server, tmp_path):
    """MLflow's SQL store creates an alias by read-then-insert: simultaneous first writers collide.

    The CI run of 2026-12-05 failed this way (UNIQUE constraint on registered_model_aliases) when
    two pipelines registered under one alias; every writer must succeed and the alias must exist.
    """
    import threading

    from mlflow.tracking import MlflowClient

    from sparsepipe.registry import _set_alias

    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    name = f"alias-race-{tmp_path.name}"
    client.create_registered_model(name)
    run_id = client.create_run(client.create_experiment(f"alias-race-{tmp_path.name}")).info.run_id
    versions = [client.create_model_version(name, source=f"runs:/{run_id}/m", run_id=run_id).version for _ in range(8)]
    errors = []
    for round_ in range(20):  # a fresh alias each round: only the first creation can collide
        alias = f"a{round_}"
        barrier = threading.Barrier(len(versions))

        def write(version, alias=alias, barrier=barrier):
            try:
                barrier.wait()
                _set_alias(MlflowClient(tracking_uri=mlflow_server.tracking_uri), name, alias, version)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(v,)) for v in versions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.get_model_version_by_alias(name, alias).version in versions
    assert not errors, errors
