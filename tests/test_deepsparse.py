"""The optional DeepSparse engine: discovery, errors, the worker protocol, and (slow) the real engine.

    .venv/bin/python -m pytest -q tests/test_deepsparse.py              # no DeepSparse needed
    .venv/bin/python -m pytest -q -m slow tests/test_deepsparse.py      # needs `make deepsparse-env`

The default tests never need deepsparse: a fake "interpreter" (an executable Python script that
ignores ``-I -c WORKER_SOURCE`` and speaks the same JSON-lines protocol) runs as a real subprocess
in place of the DeepSparse venv's python. The slow test runs the real engine and FAILS (it does
not skip) when the DeepSparse venv is missing.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sparsepipe.engines import deepsparse as dse
from sparsepipe.benchmark import BenchmarkConfig, benchmark
from sparsepipe.errors import ConfigError, ModelError, SparsepipeError

# The fake worker: argv = [-I, -c, SOURCE, MODEL, THREADS, BATCH, SEED, SHAPE]; behaviour from
# FAKE_DS_MODE: ok (latency = 1 + i/1000 ms), refuse (compile error), noimport, die (exits on the
# first run request after writing to stderr), noisy (prints to stdout before the protocol line),
# hang (never answers). FAKE_DS_LOG gets the argv as JSON.
FAKE_WORKER = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys, time
    mode = os.environ.get("FAKE_DS_MODE", "ok")
    args = sys.argv[1:]
    assert args[:2] == ["-I", "-c"], args
    model, threads, batch, seed, shape = args[3], int(args[4]), int(args[5]), int(args[6]), json.loads(args[7])
    if os.environ.get("FAKE_DS_LOG"):
        with open(os.environ["FAKE_DS_LOG"], "w") as f:
            json.dump({{"model": model, "threads": threads, "batch": batch, "seed": seed, "shape": shape}}, f)
    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\\n")
        sys.stdout.flush()
    if mode == "noimport":
        send({{"error": "import", "message": "ModuleNotFoundError: No module named 'deepsparse'"}}); sys.exit(3)
    if mode == "refuse":
        send({{"error": "compile", "message": "RuntimeError: unsupported op FancyOp"}}); sys.exit(4)
    if mode == "hang":
        time.sleep(60); sys.exit(0)
    if mode == "noisy":
        sys.stdout.write("DeepSparse banner on stdout\\n"); sys.stdout.flush()
    send({{"ready": True, "deepsparse": "0.0-fake", "num_cores": threads, "batch_size": batch, "pid": os.getpid()}})
    i = 0
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        if mode == "die":
            sys.stderr.write("Segmentation fault in fake kernel\\n"); sys.stderr.flush(); os._exit(139)
        n = request["n"]
        send({{"latencies_ms": [1.0 + (i + k) / 1000 for k in range(n)]}})
        i += n
    """
)


def _tiny_onnx(path: Path, opset: int = 17, extra_domains: tuple[tuple[str, int], ...] = (), batch: int | str = 1):
    """A 1x3x8x8 Relu model that onnxruntime runs (stands in for an export in the fast tests)."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["output0"])], "tiny", [x], [y])
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_domains]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fake_python(tmp_path, monkeypatch) -> Path:
    """A fake DeepSparse interpreter, wired in through SPARSEPIPE_DEEPSPARSE_PYTHON."""
    path = tmp_path / "fake-deepsparse-python"
    path.write_text(FAKE_WORKER.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(dse.PYTHON_ENV, str(path))
    monkeypatch.setenv("FAKE_DS_MODE", "ok")
    return path


def _config(**kw) -> BenchmarkConfig:
    kw.setdefault("engine", "onnxruntime")
    return BenchmarkConfig(**kw)


# -- interpreter discovery ---------------------------------------------------------------------


def test_discovery_prefers_the_environment_variable(fake_python):
    assert dse.deepsparse_python() == fake_python
    assert dse.require_deepsparse_python() == fake_python


def test_discovery_falls_back_to_the_repo_venv(tmp_path, monkeypatch):
    monkeypatch.delenv(dse.PYTHON_ENV, raising=False)
    monkeypatch.setattr(dse, "REPO_ROOT", tmp_path)
    assert dse.deepsparse_python() is None
    venv_python = tmp_path / ".venv-deepsparse" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\n")
    assert dse.deepsparse_python() is None  # not executable
    venv_python.chmod(0o755)
    assert dse.deepsparse_python() == venv_python


def test_missing_env_says_make_deepsparse_env(tmp_path, monkeypatch):
    monkeypatch.delenv(dse.PYTHON_ENV, raising=False)
    monkeypatch.setattr(dse, "REPO_ROOT", tmp_path)
    with pytest.raises(SparsepipeError, match=r"make deepsparse-env"):
        dse.require_deepsparse_python()
    with pytest.raises(SparsepipeError, match=r"not installed.*make deepsparse-env"):
        BenchmarkConfig(engine="deepsparse")
    with pytest.raises(SparsepipeError, match=r"make deepsparse-env"):
        BenchmarkConfig(engine="onnxruntime,deepsparse")
    # a configured but missing interpreter is named, with no silent fallback
    monkeypatch.setenv(dse.PYTHON_ENV, str(tmp_path / "nope" / "python"))
    (tmp_path / ".venv-deepsparse" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-deepsparse" / "bin" / "python").write_text("")
    with pytest.raises(SparsepipeError, match=r"SPARSEPIPE_DEEPSPARSE_PYTHON=.*nope.*make deepsparse-env"):
        dse.require_deepsparse_python()


def test_engine_list_is_validated(fake_python):
    assert BenchmarkConfig(engine="deepsparse,onnxruntime").engines == ["deepsparse", "onnxruntime"]
    with pytest.raises(ConfigError, match="distinct"):
        BenchmarkConfig(engine="onnxruntime,onnxruntime")
    with pytest.raises(ConfigError, match="'tensorrt' is not available"):
        BenchmarkConfig(engine="deepsparse,tensorrt")


# -- models DeepSparse refuses -----------------------------------------------------------------


def test_extra_opset_imports_and_high_opsets_are_refused_before_starting(tmp_path, fake_python):
    ml = _tiny_onnx(tmp_path / "ml.onnx", extra_domains=(("ai.onnx.ml", 5), ("com.microsoft", 1)))
    with pytest.raises(ModelError, match=r"refuses.*ai\.onnx\.ml 5, com\.microsoft 1.*opset <= 17"):
        dse.DeepSparseRunner(ml, _config())
    high = _tiny_onnx(tmp_path / "o19.onnx", opset=19)
    with pytest.raises(ModelError, match=r"opset is 19 \(> 17\).*sparsepipe export --opset 17"):
        dse.DeepSparseRunner(high, _config())
    with pytest.raises(ModelError, match="Cannot read"):
        dse.DeepSparseRunner(tmp_path / "missing.onnx", _config())


def test_static_batch_mismatch_is_a_config_error(tmp_path, fake_python):
    model = _tiny_onnx(tmp_path / "m.onnx", batch=1)
    with pytest.raises(ConfigError, match="static batch of 1 but batch=2"):
        dse.DeepSparseRunner(model, _config(batch=2))


# -- the worker protocol, against a real fake worker subprocess ---------------------------------


def test_protocol_round_trip_and_worker_arguments(tmp_path, fake_python, monkeypatch):
    log = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_DS_LOG", str(log))
    model = _tiny_onnx(tmp_path / "m.onnx", batch="N")  # dynamic batch: filled from the config
    # imgsz only fills dynamic spatial dims; this file's 8x8 is static and wins
    runner = dse.DeepSparseRunner(model, _config(threads=2, batch=4, seed=7, imgsz=32))
    try:
        assert runner.info["ready"] and runner.info["num_cores"] == 2
        assert runner.input_shape == [4, 3, 8, 8]
        assert json.loads(log.read_text()) == {
            "model": str(model.resolve()), "threads": 2, "batch": 4, "seed": 7, "shape": [4, 3, 8, 8]
        }
        assert runner() == pytest.approx(1.0)
        assert runner.run_many(3) == pytest.approx([1.001, 1.002, 1.003])  # one worker, state kept
        pid = runner.process.pid
    finally:
        runner.close()
    assert runner.process.returncode == 0  # quit on request, not killed
    runner.close()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_library_output_on_stdout_breaks_nothing_but_is_reported(tmp_path, fake_python, monkeypatch):
    # The real worker moves fd 1 to stderr; a worker that does not is caught, not misparsed.
    monkeypatch.setenv("FAKE_DS_MODE", "noisy")
    with pytest.raises(SparsepipeError, match="not protocol JSON.*DeepSparse banner"):
        dse.DeepSparseRunner(_tiny_onnx(tmp_path / "m.onnx"), _config())


def test_worker_errors_are_clear(tmp_path, fake_python, monkeypatch):
    model = _tiny_onnx(tmp_path / "m.onnx")
    monkeypatch.setenv("FAKE_DS_MODE", "refuse")
    with pytest.raises(ModelError, match=r"DeepSparse refused .*m\.onnx.*unsupported op FancyOp"):
        dse.DeepSparseRunner(model, _config())
    monkeypatch.setenv("FAKE_DS_MODE", "noimport")
    with pytest.raises(SparsepipeError, match=r"cannot import deepsparse.*make deepsparse-env"):
        dse.DeepSparseRunner(model, _config())
    monkeypatch.setenv("FAKE_DS_MODE", "die")
    runner = dse.DeepSparseRunner(model, _config())
    with pytest.raises(SparsepipeError, match=r"(?s)died while running 5 iterations \(exit code 139\).*Segmentation fault"):
        runner.run_many(5)
    assert runner.process.poll() is not None


def test_a_silent_worker_times_out_and_is_stopped(tmp_path, fake_python, monkeypatch):
    monkeypatch.setenv("FAKE_DS_MODE", "hang")
    monkeypatch.setattr(dse, "START_TIMEOUT_S", 1.0)
    started = time.monotonic()
    with pytest.raises(SparsepipeError, match="did not answer within 1 s while starting"):
        dse.DeepSparseRunner(_tiny_onnx(tmp_path / "m.onnx"), _config())
    assert time.monotonic() - started < 20


def test_missing_interpreter_file_is_clear(tmp_path, monkeypatch):
    model = _tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(SparsepipeError, match="Cannot start the DeepSparse worker.*make deepsparse-env"):
        dse.DeepSparseRunner(model, _config(), python=tmp_path / "no-python")


def test_benchmark_interleaves_deepsparse_with_onnxruntime(tmp_path, fake_python):
    """Whole benchmark step with the fake worker in place of DeepSparse and real onnxruntime."""
    model = _tiny_onnx(tmp_path / "m.onnx")
    base = _tiny_onnx(tmp_path / "base.onnx")
    config = BenchmarkConfig(engine="deepsparse,onnxruntime", iterations=20, rounds=4, warmup=2)
    result = benchmark(str(model), tmp_path / "out", config, baseline=str(base), tracker=_NoTracker())
    m = result.metrics
    assert m["iterations"] == 20
    # the fake's latencies after 2 warm-up ones: 1.002 .. 1.021 ms, measured by the "worker"
    assert m["latency_ms_min"] == pytest.approx(1.002) and m["latency_ms_p50"] == pytest.approx(1.0115)
    assert result.extra["engines"]["deepsparse"] == "0.0-fake"
    ort = result.extra["same_run_engines"]["onnxruntime"]
    assert ort["model"]["iterations"] == ort["baseline"]["iterations"] == 20
    assert m["speedup_vs_onnxruntime"] == pytest.approx(ort["model"]["latency_ms_p50"] / m["latency_ms_p50"], abs=1e-4)
    assert result.extra["baseline"]["iterations"] == 20 and "speedup_vs_baseline" in m
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["config"]["engine"] == "deepsparse,onnxruntime"


def test_benchmark_stops_its_workers_when_a_later_runner_fails(tmp_path, fake_python, monkeypatch):
    started: list = []
    real = dse.DeepSparseRunner.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        started.append(self)

    monkeypatch.setattr(dse.DeepSparseRunner, "__init__", spy)
    model = _tiny_onnx(tmp_path / "m.onnx")
    bad_base = _tiny_onnx(tmp_path / "ml.onnx", extra_domains=(("ai.onnx.ml", 5),))
    with pytest.raises(ModelError, match="ai.onnx.ml"):
        benchmark(str(model), tmp_path / "out", BenchmarkConfig(engine="deepsparse"), baseline=str(bad_base),
                  tracker=_NoTracker())
    assert len(started) == 1 and started[0].process.poll() is not None


class _NoTracker:
    def log_params(self, *a, **kw):
        pass

    def log_metrics(self, *a, **kw):
        pass


# -- the real engine ---------------------------------------------------------------------------


@pytest.mark.slow
def test_real_deepsparse_fp32_and_ptq_int8_interleaved_with_onnxruntime(trained, tmp_path, monkeypatch, capsys):
    """`sparsepipe benchmark --engine deepsparse,onnxruntime` on a tiny yolov8n FP32 export and its PTQ INT8."""
    python = dse.deepsparse_python()
    if python is None:
        pytest.fail(
            "The DeepSparse venv is missing, so the real DeepSparse engine cannot be tested: run "
            "`make deepsparse-env` (or set SPARSEPIPE_DEEPSPARSE_PYTHON) and re-run `make test-slow`."
        )
    from sparsepipe.cli import main
    from sparsepipe.quantize import QuantizeConfig, quantize

    monkeypatch.chdir(tmp_path)
    ptq = quantize(str(trained.export_dir), str(trained.data_dir), tmp_path / "ptq",
                   QuantizeConfig(calibration_images=8, evaluate=False))
    for name, model in (("fp32", str(trained.export_dir)), ("int8", ptq.out_dir)):
        out = tmp_path / f"bench-{name}"
        code = main(["benchmark", "--engine", "deepsparse,onnxruntime", "--model", model, "--threads", "1",
                     "--iterations", "20", "--rounds", "2", "--warmup", "3", "--out", str(out), "--no-track"])
        assert code == 0, capsys.readouterr().err
        result = json.loads((out / "result.json").read_text())
        m = result["metrics"]
        assert m["iterations"] == 20 and m["latency_ms_p50"] > 0
        assert result["extra"]["engines"]["deepsparse"] == "1.8.0"
        assert result["extra"]["same_run_engines"]["onnxruntime"]["model"]["iterations"] == 20
        assert m["speedup_vs_onnxruntime"] > 0
        print(name, "deepsparse p50", m["latency_ms_p50"], "ms; speedup vs onnxruntime", m["speedup_vs_onnxruntime"])
    assert np.isfinite(m["latency_ms_p50"])
