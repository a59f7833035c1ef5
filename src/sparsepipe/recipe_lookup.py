"""Find a recipe file from what a user or a pipeline gave: a path, a shipped recipe's name, or an ``s3://`` URI.

    python -c "from sparsepipe.recipe_lookup import resolve_recipe; print(resolve_recipe('yolov8n-pruned50'))"

``sparsify()`` and ``qat()`` call :func:`resolve_recipe` on their ``recipe`` argument, so the CLI
(``sparsepipe sparsify --recipe yolov8n-pruned50``), Python and the Kubeflow components find
recipes the same way. In order:

1. YAML text (a string with a newline, or a one-line ``{...}`` mapping) is returned unchanged:
   ``load_recipe`` parses it;
2. ``s3://bucket/key.yaml``: downloaded once into ``$SPARSEPIPE_CACHE/recipes`` (else
   ``~/.cache/sparsepipe/recipes``) and reused while the object is unchanged;
3. an existing file, as given;
4. a name looked up under ``$SPARSEPIPE_RECIPES_DIR``, the images' ``/opt/sparsepipe/recipes``
   and the source checkout's ``recipes/``: as given (``recipes/yolov8n-pruned50.yaml``), by its
   file name (``yolov8n-pruned50.yaml``), or without the suffix (``yolov8n-pruned50``, tried with
   ``.yaml``, ``.yml``, ``.md``).

Anything else is a :class:`~sparsepipe.errors.ConfigError` listing where it looked.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from sparsepipe import storage
from sparsepipe.core import cache as core_cache
from sparsepipe.errors import ConfigError

__all__ = ["IMAGE_RECIPES_DIR", "RECIPE_SUFFIXES", "recipe_dirs", "resolve_recipe"]

#: Where the container images ship the recipes (images/Dockerfile.*).
IMAGE_RECIPES_DIR = "/opt/sparsepipe/recipes"
RECIPE_SUFFIXES = (".yaml", ".yml", ".md")


def recipe_dirs() -> list[Path]:
    """Where names are looked up, in order: ``$SPARSEPIPE_RECIPES_DIR``, the image's dir, the checkout's ``recipes/``."""
    dirs = [os.environ.get("SPARSEPIPE_RECIPES_DIR", "").strip(), IMAGE_RECIPES_DIR,
            str(Path(__file__).resolve().parents[2] / "recipes")]
    return [Path(d) for d in dirs if d]


def _cache_dir() -> Path:
    return core_cache.cache_dir("recipes")  # the one cache root ($SPARSEPIPE_CACHE), shared with data and models


def _is_text(recipe: str) -> bool:
    return "\n" in recipe or recipe.lstrip().startswith("{")


def resolve_recipe(recipe: str | os.PathLike[str], cache_dir: Path | None = None) -> str:
    """A local recipe file (or YAML text, unchanged) for ``recipe``; see the module docstring."""
    if isinstance(recipe, os.PathLike):
        recipe = os.fspath(recipe)
    text = str(recipe)
    if _is_text(text):
        return text
    recipe = text.strip()
    if not recipe:
        raise ConfigError("The recipe is empty: give recipes/<name>.yaml, a shipped recipe's name (e.g. "
                          "yolov8n-pruned50) or an s3://bucket/key.yaml URI.")
    if storage.is_s3_uri(recipe):
        return str(storage.localize(recipe, Path(cache_dir) if cache_dir else _cache_dir()))
    path = Path(recipe).expanduser()
    if path.is_file():
        return str(path)
    names = [recipe, path.name]
    if path.suffix.lower() not in RECIPE_SUFFIXES:
        names += [path.name + suffix for suffix in RECIPE_SUFFIXES]
    tried = []
    for root in recipe_dirs():
        for name in dict.fromkeys(names):
            candidate = root / name
            tried.append(str(candidate))
            if candidate.is_file():
                return str(candidate)
    shipped = sorted({p.stem for root in recipe_dirs() if root.is_dir() for p in root.glob("*.yaml")})
    close = difflib.get_close_matches(Path(path.name).stem, shipped, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    if shipped:
        hint += f" Shipped recipes: {', '.join(shipped[:12])}{' ...' if len(shipped) > 12 else ''}."
    raise ConfigError(
        f"Recipe '{recipe}' not found: it does not exist as given, nor as {', '.join(dict.fromkeys(tried))}. Give a recipe "
        f"file, a shipped recipe's name, an s3://bucket/key.yaml URI, or set SPARSEPIPE_RECIPES_DIR.{hint}"
    )
