"""Submit a compiled pipeline to a Kubeflow Pipelines cluster.

    .venv/bin/python -m pipelines.submit --host http://localhost:8080 --pipeline main \
        --param epochs=30 --param accelerator=nvidia.com/gpu --param accelerator_count=1

Uses ``pipelines/compiled/<pipeline>.yaml`` (run ``python -m pipelines.compile`` first); each
``--param NAME=VALUE`` is parsed as JSON when it can be (numbers, lists), else kept as a string.
Credentials are never parameters: tasks read them from the ``mlpipeline-minio-artifact`` secret.
"""

import argparse
import json
import sys
import time

from pipelines.compile import COMPILED_DIR

CLUSTER_DEFAULTS = {  # in-cluster services of a standard KFP 2.17 install + an MLflow service
    "mlflow_tracking_uri": "http://mlflow.kubeflow:5000",
    "s3_endpoint_url": "http://seaweedfs.kubeflow:8333",
}


def cluster_defaults(namespace: str | None) -> dict:
    """The in-cluster services, and a publish root the namespace's credentials may write.

    KFP 2.17's profile controller lets a namespace write only under ``mlpipeline/private/<ns>/``
    (and ``artifacts/``, ``shared/``): see :func:`sparsepipe.kfp_support.namespace_publish_root`.
    """
    from sparsepipe.kfp_support import namespace_publish_root

    return {**CLUSTER_DEFAULTS, "publish_root": namespace_publish_root(namespace or "")}


def parse_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise SystemExit(f"--param {pair!r}: write NAME=VALUE, e.g. --param epochs=30")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    parser.add_argument("--pipeline", default="main", choices=["main", "sweep"])
    parser.add_argument("--experiment", default="sparsepipe", help="KFP experiment (created if missing)")
    parser.add_argument("--run-name", default="", help="default: sparsepipe-<pipeline>-<time>")
    parser.add_argument("--namespace", default=None, help="KFP multi-user namespace")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--no-cluster-defaults", action="store_true",
                        help=f"do not set {', '.join(CLUSTER_DEFAULTS)} and publish_root (s3://mlpipeline/private/<namespace>/sparsepipe)")
    args = parser.parse_args(argv)

    import kfp

    package = COMPILED_DIR / f"{args.pipeline}.yaml"
    if not package.is_file():
        raise SystemExit(f"{package} is missing: run `python -m pipelines.compile` (make compile) first.")
    client = kfp.Client(host=args.host, namespace=args.namespace)
    namespace = args.namespace or client.get_user_namespace()
    params = {} if args.no_cluster_defaults else cluster_defaults(namespace)
    params.update(parse_params(args.param))
    run_name = args.run_name or f"sparsepipe-{args.pipeline}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = client.create_run_from_pipeline_package(
        str(package), arguments=params, run_name=run_name, experiment_name=args.experiment,
        namespace=args.namespace, enable_caching=None,
    )
    print(f"submitted {run_name}: run id {run.run_id} ({args.host}/#/runs/details/{run.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
