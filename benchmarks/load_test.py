"""Load test of ``sparsepipe serve`` on loopback: N concurrent clients for a fixed duration.

    make bench-serve
    .venv/bin/python benchmarks/load_test.py --duration 20 --threads 2 --queue-size 6 --below 4 --above 32

Starts ``sparsepipe serve`` as its own process on a free 127.0.0.1 port (model: ``--model``, else a
random-weight YOLOv8n exported at ``--imgsz``: timing does not depend on the weights), then runs
two phases with asyncio clients that each POST one JPEG to ``/predict/from_files`` in a loop:

- ``below``: at most ``threads + queue_size`` clients (the admission bound): every request must be
  answered 200; errors and dropped requests (no HTTP answer: timeout or connection error) are counted;
- ``above``: more clients than the bound: the surplus must get fast ``503`` answers (their latency is
  reported) instead of timeouts; a client that got a 503 waits ``--backoff-ms`` before its next try.

Prints one table and writes the numbers (with the machine and command) to
``benchmarks/results/serve-<date>.json``. The clients share the machine's cores with the server,
so throughput is a lower bound of what the server does alone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    path = ROOT / "runs" / "serve-bench" / f"yolov8n-{args.imgsz}.onnx"
    if not path.is_file():
        from ultralytics import YOLO

        path.parent.mkdir(parents=True, exist_ok=True)
        exported = Path(YOLO("yolov8n.yaml").export(format="onnx", imgsz=args.imgsz, simplify=True))
        os.replace(exported, path)
    return path


def _jpeg(width: int, height: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 200, np.uint8)
    for _ in range(6):  # a few flat rectangles on a grey background
        x, y = rng.integers(0, width - 80), rng.integers(0, height - 80)
        image[y:y + 60, x:x + 60] = rng.integers(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def _phase(url: str, clients: int, duration: float, image: bytes, backoff_s: float, timeout: float) -> dict:
    import httpx

    ok, busy, errors, dropped = [], [], 0, 0
    boundary = "sparsepipe-load-test"  # the multipart body is encoded once: clients spend little CPU
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"bench.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def worker() -> None:
            nonlocal errors, dropped
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.post("/predict/from_files", content=body, headers=headers)
                except httpx.HTTPError:
                    dropped += 1
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code == 200:
                    ok.append(elapsed)
                elif response.status_code == 503:
                    busy.append(elapsed)
                    await asyncio.sleep(backoff_s)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values else None

    return {"clients": clients, "wall_s": round(wall, 2), "ok": len(ok), "throughput_rps": round(len(ok) / wall, 2),
            "latency_ms_p50": pct(ok, 50), "latency_ms_p99": pct(ok, 99), "rejected_503": len(busy),
            "rejected_ms_p50": pct(busy, 50), "rejected_ms_p99": pct(busy, 99), "errors": errors, "dropped": dropped}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None, help="ONNX to serve (default: random-weight yolov8n at --imgsz)")
    parser.add_argument("--imgsz", type=int, default=320, help="input size of the default model")
    parser.add_argument("--engine", default="onnxruntime", help="engine of the server")
    parser.add_argument("--threads", type=int, default=2, help="server inference threads")
    parser.add_argument("--engine-threads", type=int, default=1, help="intra-op threads per inference")
    parser.add_argument("--queue-size", type=int, default=6, help="server queue bound")
    parser.add_argument("--below", type=int, default=None, help="clients of the below-bound phase (default: threads + queue)")
    parser.add_argument("--above", type=int, default=None, help="clients of the above-bound phase (default: 4x the bound)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--backoff-ms", type=float, default=20.0, help="pause of a client after a 503")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout; a request without answer by then is dropped")
    parser.add_argument("--image", default="640x480", help="WxH of the generated JPEG each request sends")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the JSON result")
    args = parser.parse_args()

    bound = args.threads + args.queue_size
    below = args.below or bound
    above = args.above or 4 * bound
    width, height = (int(v) for v in args.image.split("x"))
    model = _model(args)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "sparsepipe", "serve", str(model), "--port", str(port), "--engine", args.engine,
               "--threads", str(args.threads), "--engine-threads", str(args.engine_threads),
               "--queue-size", str(args.queue_size)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import httpx

        for _ in range(1200):
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        image = _jpeg(width, height)
        results = {}
        for name, clients in (("below", below), ("above", above)):
            results[name] = asyncio.run(_phase(url, clients, args.duration, image, args.backoff_ms / 1000, args.timeout))
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=30)

    rejected = [line for line in metrics.splitlines() if line.startswith("sparsepipe_rejected_total")]
    server_side = {status: _histogram_quantiles(metrics, "/predict/from_files", status) for status in ("200", "503")}
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "server": {"model": str(model), "engine": args.engine, "threads": args.threads,
                   "engine_threads": args.engine_threads, "queue_size": args.queue_size, "bound": bound},
        "image": args.image, "duration_s": args.duration, "backoff_ms": args.backoff_ms,
        "phases": results, "server_side_ms": server_side, "server_rejected_total": float(rejected[0].split()[-1]) if rejected else None,
    }
    header = "| phase | clients | ok | req/s | p50 ms | p99 ms | 503s | 503 p50 ms | 503 p99 ms | errors | dropped |"
    print(header)
    print("|---" * 11 + "|")
    for name, r in results.items():
        print(f"| {name} | {r['clients']} | {r['ok']} | {r['throughput_rps']} | {r['latency_ms_p50']} | {r['latency_ms_p99']} "
              f"| {r['rejected_503']} | {r['rejected_ms_p50']} | {r['rejected_ms_p99']} | {r['errors']} | {r['dropped']} |")
    for status, q in server_side.items():
        print(f"server-side latency of {status} answers (both phases, histogram upper bounds): "
              f"p50 <= {q['p50']} ms, p99 <= {q['p99']} ms, n = {q['count']}")
    sys.path.insert(0, str(ROOT / "src"))
    from sparsepipe.results import atomic_write_text

    out = Path(args.out) / f"serve-{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d-%H%M')}.json"
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    below_ok = results["below"]["errors"] == 0 and results["below"]["dropped"] == 0 and results["below"]["rejected_503"] == 0
    above_ok = results["above"]["dropped"] == 0 and results["above"]["errors"] == 0
    print(f"below the bound: {'zero errors, zero drops, zero 503s' if below_ok else 'FAILED'}; "
          f"above: {'only 200s and fast 503s, no drops' if above_ok else 'FAILED'}")
    return 0 if below_ok and above_ok else 1


def _histogram_quantiles(metrics: str, endpoint: str, status: str) -> dict:
    """p50/p99 upper bounds (ms) from the server's latency histogram: time inside the server only."""
    prefix = f'sparsepipe_request_latency_seconds_bucket{{endpoint="{endpoint}",le="'
    buckets = []
    for line in metrics.splitlines():
        if line.startswith(prefix) and f'status="{status}"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    if not buckets or buckets[-1][1] == 0:
        return {"p50": None, "p99": None, "count": 0}
    buckets.sort()
    total = buckets[-1][1]

    def bound(q: float) -> float | None:
        for le, count in buckets:
            if count >= q * total:
                return None if le == float("inf") else round(le * 1000, 1)
        return None

    return {"p50": bound(0.5), "p99": bound(0.99), "count": int(total)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
