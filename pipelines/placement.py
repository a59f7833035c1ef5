"""Where tasks run on a cluster (kfp-kubernetes): secrets, node pools, GPUs, retries, caching.

    python -m pipelines.compile   # the settings below end up in pipelines/compiled/*.yaml

``kfp.local`` ignores all of this (resources and Kubernetes settings), so the same pipeline
runs unchanged on a laptop.
"""

from __future__ import annotations

import os

from kfp import kubernetes

#: The KFP object-store secret (SeaweedFS/MinIO) and the env variables its keys become.
S3_SECRET = "mlpipeline-minio-artifact"
S3_SECRET_ENV = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
#: CPU benchmark node pool: label the nodes and taint them so only benchmarks land there.
BENCH_NODE_LABEL = ("sparsepipe.io/pool", "cpu-benchmark")
BENCH_TAINT_KEY = "sparsepipe.io/benchmark"
GPU_TAINT_KEY = "nvidia.com/gpu"
SHM_SIZE = "2Gi"
#: CPUs of a benchmark pod (request = limit). A compile-time constant: kfp.local 2.17 cannot
#: resolve resources given as pipeline parameters inside an exit handler. Keep
#: ``benchmark_threads`` <= this; recompile with SPARSEPIPE_BENCH_CPUS=8 for bigger nodes.
BENCH_CPUS = os.environ.get("SPARSEPIPE_BENCH_CPUS", "").strip() or "2"
BENCH_MEMORY = "4G"


def with_credentials(task):
    """S3 key pair from the KFP secret into the task's environment (never a parameter)."""
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=dict(S3_SECRET_ENV))
    return task


def with_shm(task):
    """A memory-backed ``/dev/shm`` for PyTorch data loader workers (the default 64 MiB is too small)."""
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=SHM_SIZE)
    return task


def retried(task, num_retries: int = 3):
    """Retries with exponential backoff (30 s, 60 s, 120 s ..., at most 10 min) for flaky steps."""
    return task.set_retry(num_retries=num_retries, backoff_duration="30s", backoff_factor=2.0,
                          backoff_max_duration="600s")


def on_cpu_benchmark_node(task, cpus: str = BENCH_CPUS):
    """Dedicated CPU node: selector + toleration, CPU request = limit (a known, fixed budget)."""
    kubernetes.add_node_selector(task, label_key=BENCH_NODE_LABEL[0], label_value=BENCH_NODE_LABEL[1])
    kubernetes.add_toleration(task, key=BENCH_TAINT_KEY, operator="Exists", effect="NoSchedule")
    task.set_cpu_request(cpus).set_cpu_limit(cpus)
    task.set_memory_request(BENCH_MEMORY).set_memory_limit(BENCH_MEMORY)
    return task


def deterministic(task, num_retries: int = 3):
    """Cache on (same inputs, same outputs), retried, with the S3 credentials."""
    task.set_caching_options(True)
    return with_credentials(retried(task, num_retries))
