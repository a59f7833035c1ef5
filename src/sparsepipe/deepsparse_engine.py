"""Moved to :mod:`sparsepipe.engines.deepsparse`; this re-export shim stays for one release.

    python -c "from sparsepipe.engines.deepsparse import DeepSparseRunner"
"""

from sparsepipe.engines.deepsparse import (  # noqa: F401
    ENGINE_SOURCE,
    INSTALL_HINT,
    MAX_OPSET,
    PYTHON_ENV,
    REPO_ROOT,
    RUN_TIMEOUT_S_PER_ITER,
    START_TIMEOUT_S,
    WORKER_SOURCE,
    DeepSparseError,
    DeepSparseRunner,
    check_model,
    deepsparse_available,
    deepsparse_python,
    require_deepsparse_python,
)
