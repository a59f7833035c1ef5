"""DeepSparse as a ``sparsepipe predict`` / ``serve`` engine: a worker subprocess fed real images.

    make deepsparse-env
    sparsepipe predict runs/export/model.onnx img.jpg --engine deepsparse

DeepSparse 1.8 lives in its own venv (see :mod:`sparsepipe.engines.deepsparse`, which finds its
interpreter and checks the model). The benchmark worker there only times random inputs, so this
module runs a second small worker that answers real tensors. Protocol over stdin/stdout:
parent -> ``{"shape": [...]}\\n`` + float32 bytes; worker -> ``{"shapes": [[...], ...]}\\n`` +
float32 bytes of each output, or ``{"error": ...}\\n``. The model is compiled for a fixed batch
(its static batch, else 1); bigger inputs are split and the last piece padded. One request at a
time (a lock), so a server with several threads shares one DeepSparse engine.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from sparsepipe.engines.deepsparse import (
    ENGINE_SOURCE,
    DeepSparseError,
    check_model,
    require_deepsparse_python,
)

WORKER = ENGINE_SOURCE + r'''
import json, os, sys
proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)
sys.stdout = sys.stderr
proto_in = sys.stdin.buffer

def send(obj, blobs=()):
    proto_out.write((json.dumps(obj) + "\n").encode())
    for blob in blobs:
        proto_out.write(blob)

try:
    import numpy as np
    import deepsparse
    engine = make_engine(deepsparse, sys.argv[1], sys.argv[3], sys.argv[2])
except Exception as exc:
    send({"error": "%s: %s" % (type(exc).__name__, exc)})
    sys.exit(3)
send({"ready": True, "deepsparse": deepsparse.__version__})
while True:
    line = proto_in.readline()
    if not line:
        break
    shape = json.loads(line)["shape"]
    size = int(np.prod(shape)) * 4
    data = proto_in.read(size)
    try:
        outputs = engine.run([np.frombuffer(data, np.float32).reshape(shape)])
        outputs = [np.ascontiguousarray(o, dtype=np.float32) for o in outputs]
        send({"shapes": [list(o.shape) for o in outputs]}, [o.tobytes() for o in outputs])
    except Exception as exc:
        send({"error": "%s: %s" % (type(exc).__name__, exc)})
'''


class DeepSparsePredictEngine:
    """Runs NCHW float32 batches through DeepSparse in a worker; returns the model's outputs."""

    def __init__(self, path: Path, threads: int, batch: int) -> None:
        check_model(Path(path))
        python = require_deepsparse_python()
        self.batch = batch
        self._lock = threading.Lock()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker; closed in close()
        self.process = subprocess.Popen([str(python), "-I", "-c", WORKER, str(Path(path).resolve()), str(threads),
                                         str(batch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._stderr)
        hello = self._read_header()
        if not hello.get("ready"):
            self.close()
            raise DeepSparseError(f"DeepSparse could not load '{path}': {hello.get('error')}")

    def _read_header(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self._stderr.seek(0)
            tail = self._stderr.read().decode("utf-8", "replace")[-1500:]
            raise DeepSparseError(f"The DeepSparse predict worker exited (code {self.process.poll()}). stderr: {tail}")
        return json.loads(line)

    def _run_one(self, batch: np.ndarray) -> list[np.ndarray]:
        self.process.stdin.write((json.dumps({"shape": list(batch.shape)}) + "\n").encode())
        self.process.stdin.write(np.ascontiguousarray(batch, np.float32).tobytes())
        self.process.stdin.flush()
        header = self._read_header()
        if "error" in header:
            raise DeepSparseError(f"DeepSparse failed on a batch of shape {list(batch.shape)}: {header['error']}")
        outputs = []
        for shape in header["shapes"]:
            size = int(np.prod(shape)) * 4
            outputs.append(np.frombuffer(self.process.stdout.read(size), np.float32).reshape(shape))
        return outputs

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        pieces = []
        with self._lock:
            for start in range(0, batch.shape[0], self.batch):
                piece = batch[start:start + self.batch]
                real = piece.shape[0]
                if real < self.batch:
                    piece = np.concatenate([piece, np.zeros((self.batch - real, *piece.shape[1:]), np.float32)])
                pieces.append([o[:real] for o in self._run_one(piece)])
        return [np.concatenate([p[i] for p in pieces]) for i in range(len(pieces[0]))]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
        self._stderr.close()
