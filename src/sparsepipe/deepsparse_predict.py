"""Moved to :mod:`sparsepipe.engines.deepsparse_predict`; this re-export shim stays for one release.

    python -c "from sparsepipe.engines.deepsparse_predict import DeepSparsePredictEngine"
"""

from sparsepipe.engines.deepsparse_predict import WORKER, DeepSparsePredictEngine  # noqa: F401
