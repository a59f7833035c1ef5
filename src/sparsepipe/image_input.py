"""Turn user images (paths, bytes, PIL images, numpy arrays) into RGB uint8 arrays, safely.

    python -c "from sparsepipe.image_input import load_image; print(load_image('img.jpg').shape)"

Used by ``sparsepipe predict`` and ``sparsepipe serve``. Untrusted bytes are checked before they
are decoded: the header gives the size, and an image above ``max_pixels`` is refused without
decoding its pixels (a 20000x20000 PNG costs no memory). A file that is not an image, or a
truncated one, raises :class:`ImageInputError` with a ``kind`` the server maps to an HTTP status.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sparsepipe.errors import SparsepipeError

#: Default pixel limit (width * height) of one input image: 40 megapixels, e.g. 8000x5000.
DEFAULT_MAX_PIXELS = 40_000_000
#: Longest side / shortest side accepted: a wider image shrinks to a sliver (a 20000x1 PNG to 0 px
#: rows at 640 px input, an OpenCV assertion) and nothing in it can be detected.
MAX_ASPECT_RATIO = 20.0


class ImageInputError(SparsepipeError):
    """An input image cannot be used; ``kind`` is 'not_image', 'truncated', 'too_large',
    'bad_shape' or 'bad_array'."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_shape(width: int, height: int, name: str) -> None:
    """Refuse an image with no pixels or whose aspect ratio is beyond :data:`MAX_ASPECT_RATIO`."""
    if min(width, height) < 1:
        raise ImageInputError(f"'{name}' is {width}x{height}: it has no pixels; send a real image.", "bad_array")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageInputError(
            f"'{name}' is {width}x{height}, an aspect ratio of {max(width, height) / min(width, height):.0f}:1, above "
            f"the {MAX_ASPECT_RATIO:.0f}:1 a detector can use (scaled to the model input it would be a sliver of "
            f"pixels); crop it into tiles of a usual shape first.",
            "bad_shape",
        )


def image_size(data: bytes, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of encoded image bytes from the header alone, after the same checks as decoding."""
    if not data:
        raise ImageInputError(f"'{name}' is empty (0 bytes); send an image file.", "not_image")
    with warnings.catch_warnings():
        from PIL import Image  # heavy: PIL

        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _open_checked(io.BytesIO(data), name, max_pixels).size


def _open_checked(stream: Any, name: str, max_pixels: int) -> Any:
    """A lazily decoded PIL image whose header passed the pixel and shape checks (callers hold the
    ``DecompressionBombWarning``-as-error filter)."""
    from PIL import Image, UnidentifiedImageError  # heavy: PIL

    try:
        image = Image.open(stream)  # reads the header only
    except UnidentifiedImageError:
        raise ImageInputError(
            f"'{name}' is not an image PIL can read (JPEG, PNG, BMP, WebP, TIFF...); send the image file itself.",
            "not_image",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(
            f"'{name}' is too large: its header declares more than {max_pixels} pixels; resize it first.",
            "too_large",
        ) from None
    except OSError as exc:  # a known format whose header is cut or damaged
        raise ImageInputError(
            f"'{name}' is a damaged or truncated image file ({exc}); send the complete file.", "truncated"
        ) from None
    except Exception:  # noqa: BLE001 - ultralytics wraps Image.open (HEIF fallback) and can raise ImportError
        raise ImageInputError(
            f"'{name}' is not an image PIL can read (JPEG, PNG, BMP, WebP, TIFF...); send the image file itself.",
            "not_image",
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageInputError(
            f"'{name}' is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}; "
            f"resize it (the model sees it at a few hundred pixels anyway).",
            "too_large",
        )
    check_shape(width, height, name)
    return image


def _decode(stream: Any, name: str, max_pixels: int) -> np.ndarray:
    from PIL import Image, ImageOps  # heavy: PIL

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open_checked(stream, name, max_pixels)
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageInputError(
                f"'{name}' is a damaged or truncated {image.format or 'image'} file ({exc}); send the complete file.",
                "truncated",
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageInputError(f"'{name}' decompresses to too many pixels; resize it first.", "too_large") from None
    return np.asarray(rgb, dtype=np.uint8)


def decode_image_bytes(data: bytes, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an HxWx3 RGB uint8 array (header checked first)."""
    if not data:
        raise ImageInputError(f"'{name}' is empty (0 bytes); send an image file.", "not_image")
    return _decode(io.BytesIO(data), name, max_pixels)


def load_image(source: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """An HxWx3 RGB uint8 array and a display name from a path, bytes, PIL image or numpy array.

    numpy arrays are taken as RGB (HxWx3 uint8, or HxW grayscale); pass ``img[..., ::-1]`` for
    OpenCV's BGR arrays.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise ImageInputError(f"'{path}' is a folder, not an image file; pass the image files in it.", "not_image")
        if not path.is_file():
            raise ImageInputError(f"Image file '{path}' does not exist; check the path.", "not_image")
        with path.open("rb") as handle:
            return _decode(handle, str(path), max_pixels), str(path)
    if isinstance(source, (bytes, bytearray)):
        return decode_image_bytes(bytes(source), "bytes", max_pixels), "bytes"
    if isinstance(source, np.ndarray):
        array = source
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
            raise ImageInputError(
                f"A numpy image must be HxWx3 (RGB) or HxW; got shape {source.shape}.", "bad_array"
            )
        if array.dtype != np.uint8:
            raise ImageInputError(f"A numpy image must be uint8 (0..255); got {array.dtype}.", "bad_array")
        check_shape(array.shape[1], array.shape[0], f"array of shape {source.shape}")
        return np.ascontiguousarray(array[:, :, :3]), "array"
    try:
        from PIL import Image  # optional: PIL
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(source, Image.Image):
        check_shape(*source.size, getattr(source, "filename", "") or "PIL image")
        return np.asarray(source.convert("RGB"), dtype=np.uint8), getattr(source, "filename", "") or "pil"
    raise ImageInputError(
        f"Cannot use {type(source).__name__} as an image; pass a path, bytes, a PIL image or an HxWx3 numpy array.",
        "bad_array",
    )
