"""The bottom layer: small helpers every other layer may use and that import nothing above them.

    python -c "from sparsepipe.core.cache import cache_dir; print(cache_dir('models'))"

``files`` (atomic folder replacement), ``redaction`` (secrets out of URLs before they reach a
message or a log), ``cache`` (the one ``$SPARSEPIPE_CACHE`` resolution).
"""
