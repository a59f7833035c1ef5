"""Run the main pipeline through ``kfp.local`` with a local SeaweedFS S3 + MLflow server.

    .venv/bin/python -m pipelines.run_local --out runs/kfp-local --epochs 3 --imgsz 160

Tasks run as subprocesses of this venv (``SubprocessRunner(use_venv=False)``); the servers
start first and stop when the run ends (their data stays under ``--out/services`` so the run
can be inspected later with ``mlflow ui --backend-store-uri sqlite:///<out>/services/mlflow.db``).
"""

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/kfp-local"))
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument("--data", default="synthetic:train=64,val=16,size=160,seed=0")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--recipe", default="recipes/yolov8n-pruned50.yaml", help="pruning recipe of the pruned variant")
    parser.add_argument("--recipe-args", default="num_epochs=10,pruning_start_epoch=0,pruning_end_epoch=6",
                        help="recipe overrides (k=v,...); the default shortens pruned50 for a local run")
    parser.add_argument("--experiment", default="sparsepipe-kfp-local")
    args = parser.parse_args(argv)

    from kfp import local

    from pipelines.local_services import local_services
    from pipelines.main import main_pipeline

    out = args.out.resolve()
    with local_services(out / "services") as env:
        os.environ.update({k: v for k, v in env.items() if k != "SPARSEPIPE_LOCAL_BUCKET"})
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp-root"))
        main_pipeline(model=args.model, data_source=args.data, epochs=args.epochs, imgsz=args.imgsz,
                      recipe=args.recipe, recipe_args=args.recipe_args,
                      batch=16, workers=0, benchmark_threads=args.threads, benchmark_iterations=args.iterations,
                      mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"], mlflow_experiment=args.experiment,
                      publish_root=f"s3://{env['SPARSEPIPE_LOCAL_BUCKET']}/runs",
                      s3_endpoint_url=env["AWS_ENDPOINT_URL"])
        print(f"done: KFP outputs under {out / 'kfp-root'}; MLflow store {out / 'services' / 'mlflow.db'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
