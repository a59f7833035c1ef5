"""Optional DeepSparse engine for ``sparsepipe benchmark``, reached through a worker subprocess.

    make deepsparse-env                      # creates .venv-deepsparse (deepsparse 1.8.0)
    sparsepipe benchmark --engine deepsparse --model runs/ptq --threads 1 --out runs/bench-ds
    sparsepipe benchmark --engine deepsparse,onnxruntime --model runs/ptq --out runs/bench-ds-ort

DeepSparse 1.8.0 (Neural Magic's community licence: evaluation, research, non-production) pins
onnx 1.14.1 and numpy 1.26, which sparsepipe's own venv cannot hold, so it lives in a venv of its
own and is never imported here. Its interpreter is ``$SPARSEPIPE_DEEPSPARSE_PYTHON`` (set by the
``sparsepipe-deepsparse`` image), else ``<repo>/.venv-deepsparse/bin/python`` when that exists.

:class:`DeepSparseRunner` starts ONE long-lived worker per model: ``python -I -c WORKER_SOURCE``
(the standalone script below; it imports only deepsparse and numpy), which compiles the model
with ``num_cores=threads`` and the batch size, then answers one JSON line per request on
stdin/stdout. Latencies are measured inside the worker around ``Engine.run`` only, so the pipe
round trip is not in the numbers. Protocol (one JSON object per line):

- worker -> parent, once: ``{"ready": true, "deepsparse": VERSION, "num_cores": N, ...}`` or
  ``{"error": "import"|"compile", "message": ...}`` (then it exits);
- parent -> worker: ``{"op": "run", "n": N}`` -> ``{"latencies_ms": [N floats]}``;
- parent -> worker: ``{"op": "quit"}`` (or EOF) -> the worker exits 0.

The worker writes protocol lines to a private copy of its stdout and points fd 1 at stderr, so
anything DeepSparse prints cannot corrupt the protocol. Before starting it, the model is checked
with the main venv's onnx: DeepSparse's runtime refuses extra opset imports (``ai.onnx.ml``,
``com.microsoft``, ...) and opsets above 17, so such a file fails with a clear error instead.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sparsepipe.errors import ConfigError, ModelError, SparsepipeError
from sparsepipe.onnx_utils import read_onnx

#: Environment variable naming the DeepSparse venv's python (the image sets it).
PYTHON_ENV = "SPARSEPIPE_DEEPSPARSE_PYTHON"
#: Highest default-domain opset DeepSparse 1.8's runtime is given here.
MAX_OPSET = 17
#: Seconds to wait for the worker to import deepsparse and compile the model.
START_TIMEOUT_S = 600.0
#: Seconds to wait for one request per requested iteration (plus a fixed margin).
RUN_TIMEOUT_S_PER_ITER = 30.0

REPO_ROOT = Path(__file__).resolve().parents[2]

INSTALL_HINT = (
    "Run `make deepsparse-env` (creates .venv-deepsparse with deepsparse 1.8.0 pinned by "
    "images/deepsparse/constraints.txt), use the sparsepipe-deepsparse image, or set "
    f"{PYTHON_ENV} to a Python that imports deepsparse."
)


class DeepSparseError(SparsepipeError):
    """The DeepSparse engine is missing, refused a model, or its worker died."""


# The worker: standalone, runs in the DeepSparse venv (Python 3.11, numpy 1.26); argv after -c:
# MODEL THREADS BATCH SEED SHAPE_JSON.
WORKER_SOURCE = r'''
import json, os, sys, time

def main():
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to stderr, never into the protocol
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    model, threads, batch, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    shape = json.loads(sys.argv[5])
    try:
        import numpy as np
        import deepsparse
    except Exception as exc:
        send({"error": "import", "message": "%s: %s (python %s)" % (type(exc).__name__, exc, sys.executable)})
        return 3
    try:
        engine = deepsparse.Engine(model=model, batch_size=batch, num_cores=threads)
        inputs = [np.ascontiguousarray(np.random.default_rng(seed).random(shape, dtype=np.float32))]
        engine.run(inputs, val_inp=True)  # validates shapes once; timed runs skip it
    except Exception as exc:
        send({"error": "compile", "message": "%s: %s" % (type(exc).__name__, exc)})
        return 4
    send({"ready": True, "deepsparse": deepsparse.__version__, "num_cores": engine.num_cores,
          "batch_size": engine.batch_size, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        if op == "quit":
            break
        if op != "run":
            send({"error": "protocol", "message": "unknown request %r" % (line,)})
            continue
        latencies = []
        for _ in range(int(request["n"])):
            started = time.perf_counter_ns()
            engine.run(inputs, val_inp=False)
            latencies.append((time.perf_counter_ns() - started) / 1e6)
        send({"latencies_ms": latencies})
    return 0

sys.exit(main())
'''


def deepsparse_python() -> Path | None:
    """The DeepSparse interpreter: ``$SPARSEPIPE_DEEPSPARSE_PYTHON``, else ``.venv-deepsparse``.

    Returns None when neither exists. A set but missing ``$SPARSEPIPE_DEEPSPARSE_PYTHON`` counts
    as missing (no silent fallback to another interpreter).
    """
    configured = os.environ.get(PYTHON_ENV, "").strip()
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    local = REPO_ROOT / ".venv-deepsparse" / "bin" / "python"
    return local if local.is_file() and os.access(local, os.X_OK) else None


def deepsparse_available() -> bool:
    """True when a DeepSparse interpreter is configured (it is not started to check)."""
    return deepsparse_python() is not None


def require_deepsparse_python() -> Path:
    """The interpreter, or a :class:`DeepSparseError` saying how to install it."""
    path = deepsparse_python()
    if path is not None:
        return path
    configured = os.environ.get(PYTHON_ENV, "").strip()
    if configured:
        raise DeepSparseError(
            f"{PYTHON_ENV}={configured!r} is not an executable file, so the DeepSparse engine is not "
            f"available. {INSTALL_HINT}"
        )
    raise DeepSparseError(
        f"The DeepSparse engine is not installed: no {PYTHON_ENV} and no "
        f"{REPO_ROOT / '.venv-deepsparse' / 'bin' / 'python'}. {INSTALL_HINT}"
    )


def check_model(path: Path) -> Any:
    """Refuse (with the reason) an ONNX file DeepSparse 1.8 would refuse; returns the graph input.

    DeepSparse reads only the default ONNX domain at opset <= 17: extra opset imports (what
    onnxruntime's ``quant_pre_process`` stamps, or ``com.microsoft`` contrib ops) are refused.
    """
    model = read_onnx(path)
    extra = sorted(f"{o.domain} {o.version}" for o in model.opset_import if o.domain not in ("", "ai.onnx"))
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    problems = []
    if extra:
        problems.append(f"it imports opset domains other than the default one ({', '.join(extra)})")
    if default and max(default) > MAX_OPSET:
        problems.append(f"its default-domain opset is {max(default)} (> {MAX_OPSET})")
    if problems:
        raise ModelError(
            f"DeepSparse 1.8 refuses '{path}': {' and '.join(problems)}. Give it a model with only the "
            f"default ONNX domain at opset <= {MAX_OPSET}: `sparsepipe export --opset 17` writes one, and "
            f"`sparsepipe quantize` strips the extra imports that onnxruntime's pre-processing adds."
        )
    return model.graph.input[0]


def _input_shape(graph_input: Any, batch: int, imgsz: int | None, path: Path) -> list[int]:
    dims = graph_input.type.tensor_type.shape.dim
    shape = []
    for i, dim in enumerate(dims):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(int(dim.dim_value))
        elif i == 0:
            shape.append(batch)
        elif i == 1:
            shape.append(3)
        else:
            shape.append(imgsz or 640)
    if shape and shape[0] != batch:
        raise ConfigError(
            f"'{path.name}' has a static batch of {shape[0]} but batch={batch} was asked; "
            f"re-export with --batch {batch} or --dynamic, or benchmark with --batch {shape[0]}."
        )
    return shape


class DeepSparseRunner:
    """A DeepSparse engine of one ONNX file in a long-lived worker subprocess.

    ``runner()`` times one iteration (the worker's own measurement, one pipe round trip per
    call); ``runner.run_many(n)`` times ``n`` back to back in one request, which is what
    :func:`sparsepipe.benchmark._measure` uses per round. ``close()`` stops the worker.
    """

    def __init__(self, path: Path, config: Any, python: Path | None = None) -> None:
        self.path = Path(path)
        graph_input = check_model(self.path)
        self.input_shape = _input_shape(graph_input, config.batch, getattr(config, "imgsz", None), self.path)
        self.python = Path(python) if python is not None else require_deepsparse_python()
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self._buffer = b""
        command = [
            str(self.python), "-I", "-c", WORKER_SOURCE,
            str(self.path.resolve()), str(config.threads), str(config.batch), str(config.seed),
            json.dumps(self.input_shape),
        ]
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0
            )
        except OSError as exc:
            self._stderr.close()
            raise DeepSparseError(f"Cannot start the DeepSparse worker with '{self.python}': {exc}. {INSTALL_HINT}") from None
        try:
            hello = self._read_message(START_TIMEOUT_S, "starting")
        except BaseException:
            self.close()
            raise
        if "error" in hello:
            self.close()
            if hello["error"] == "import":
                raise DeepSparseError(
                    f"'{self.python}' cannot import deepsparse: {hello.get('message')}. {INSTALL_HINT}"
                )
            raise ModelError(
                f"DeepSparse refused '{self.path}': {hello.get('message')}. It needs the default ONNX domain "
                f"only, opset <= {MAX_OPSET}, and ops its runtime supports."
            )
        if not hello.get("ready"):
            self.close()
            raise DeepSparseError(f"The DeepSparse worker answered {hello!r} instead of ready (protocol mismatch).")
        self.info = hello

    # -- protocol ---------------------------------------------------------------------------
    def _stderr_tail(self, limit: int = 2000) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return text[-limit:]

    def _died(self, doing: str) -> DeepSparseError:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = self._stderr_tail()
        self.close()
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return DeepSparseError(
            f"The DeepSparse worker for '{self.path.name}' died while {doing} ({how})."
            + (f" Its stderr ends with:\n{tail}" if tail else " It wrote nothing to stderr.")
        )

    def _read_message(self, timeout_s: float, doing: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        fd = self.process.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.close()
                    raise DeepSparseError(
                        f"The DeepSparse worker for '{self.path.name}' did not answer within {timeout_s:.0f} s "
                        f"while {doing}; it was stopped."
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise self._died(doing)
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            self.close()
            raise DeepSparseError(
                f"The DeepSparse worker wrote a line that is not protocol JSON while {doing}: {line[:200]!r}"
            ) from None

    def _send(self, message: dict[str, Any], doing: str) -> None:
        if self.process.poll() is not None:
            raise self._died(doing)
        try:
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._died(doing) from None

    # -- runner interface -------------------------------------------------------------------
    def run_many(self, n: int) -> list[float]:
        """Latencies (ms) of ``n`` back-to-back inferences, measured inside the worker."""
        doing = f"running {n} iterations"
        self._send({"op": "run", "n": int(n)}, doing)
        answer = self._read_message(60.0 + RUN_TIMEOUT_S_PER_ITER * n, doing)
        latencies = answer.get("latencies_ms")
        if not isinstance(latencies, list) or len(latencies) != n:
            self.close()
            raise DeepSparseError(f"The DeepSparse worker answered {str(answer)[:300]} to a request for {n} iterations.")
        return [float(x) for x in latencies]

    def __call__(self) -> float:
        return self.run_many(1)[0]

    def close(self) -> None:
        """Ask the worker to quit, then make sure it is gone (idempotent)."""
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                process.stdin.write(b'{"op": "quit"}\n')
                process.stdin.flush()
                process.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process is not None:
            for stream in (process.stdin, process.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
        stderr = getattr(self, "_stderr", None)
        if stderr is not None and not stderr.closed:
            stderr.close()

    def __del__(self) -> None:  # a forgotten runner must not leave a worker behind
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __enter__(self) -> "DeepSparseRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
