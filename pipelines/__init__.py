"""Kubeflow pipelines built from ``components/`` (compiled YAML in ``pipelines/compiled``).

    python -m pipelines.compile            # write pipelines/compiled/*.yaml
    python -m pipelines.run_local          # main pipeline through kfp.local + local S3/MLflow
    python -m pipelines.submit --host URL  # submit to a cluster
"""
