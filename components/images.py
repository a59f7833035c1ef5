"""Container images of the components, fixed at compile time (never ``:latest``).

    SPARSEPIPE_IMAGE=registry.example.com/sparsepipe-cpu:0.1.0 python -m pipelines.compile

The tag is ``sparsepipe.__version__``, so a compiled pipeline names the image built from the
same release. Overrides (read when the components module is imported, i.e. at compile time):

* ``SPARSEPIPE_IMAGE``        image of every CPU step (data, export, evaluate, benchmark, report)
* ``SPARSEPIPE_TRAIN_IMAGE``  image of the training step (CUDA build, also runs on CPU)
* ``SPARSEPIPE_IMAGE_REPO``   registry/namespace of the two defaults
"""

from __future__ import annotations

import os

import sparsepipe

DEFAULT_IMAGE_REPO = "ghcr.io/sparsepipe"
IMAGE_REPO = os.environ.get("SPARSEPIPE_IMAGE_REPO", "").strip().rstrip("/") or DEFAULT_IMAGE_REPO


def _checked(image: str, variable: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if ":" not in name and "@" not in name or name.endswith(":latest"):
        raise ValueError(
            f"{variable}={image!r}: pin a tag or digest (e.g. ...:{sparsepipe.__version__}); "
            "':latest' and untagged images make compiled pipelines unreproducible."
        )
    return image


def cpu_image() -> str:
    """``$SPARSEPIPE_IMAGE`` or ``<repo>/sparsepipe-cpu:<version>``."""
    override = os.environ.get("SPARSEPIPE_IMAGE", "").strip()
    if override:
        return _checked(override, "SPARSEPIPE_IMAGE")
    return f"{IMAGE_REPO}/sparsepipe-cpu:{sparsepipe.__version__}"


def train_image() -> str:
    """``$SPARSEPIPE_TRAIN_IMAGE`` or ``<repo>/sparsepipe-cuda:<version>``."""
    override = os.environ.get("SPARSEPIPE_TRAIN_IMAGE", "").strip()
    if override:
        return _checked(override, "SPARSEPIPE_TRAIN_IMAGE")
    return f"{IMAGE_REPO}/sparsepipe-cuda:{sparsepipe.__version__}"


CPU_IMAGE = cpu_image()
TRAIN_IMAGE = train_image()
