"""Letterbox resizing: fit an image into the model's input without changing its aspect ratio.

    python -c "from sparsepipe.letterbox import letterbox; import numpy as np; print(letterbox(np.zeros((480, 640, 3), np.uint8), (320, 320))[1])"

The image is scaled by one factor so it fits the target, centred, and the borders are filled
with grey (114), the same geometry ultralytics trains and predicts with, so boxes map back to the
original pixels exactly with :func:`unletterbox_boxes`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD_VALUE = 114  # grey of the borders, as in training


@dataclasses.dataclass(frozen=True)
class LetterboxInfo:
    """How an image was placed into the model input: scale factor and left/top padding in pixels."""

    gain: float
    pad_left: int
    pad_top: int
    width: int  # original image size
    height: int


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize HxWx3 ``image`` into ``size`` = (height, width), keeping its aspect ratio."""
    import cv2  # heavy: cv2

    height, width = image.shape[:2]
    target_h, target_w = size
    gain = min(target_h / height, target_w / width)
    new_w, new_h = max(1, round(width * gain)), max(1, round(height * gain))  # OpenCV asserts on 0
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    spare_w, spare_h = (target_w - new_w) / 2, (target_h - new_h) / 2
    # Split odd padding the same way as training (the extra pixel goes right/bottom).
    top, bottom = round(spare_h - 0.1), round(spare_h + 0.1)
    left, right = round(spare_w - 0.1), round(spare_w + 0.1)
    if top or bottom or left or right:
        image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return image, LetterboxInfo(gain, left, top, width, height)


def unletterbox_boxes(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Map xyxy boxes from model-input pixels back to original-image pixels (clipped to the image)."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] -= info.pad_left
    out[:, [1, 3]] -= info.pad_top
    out /= info.gain
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, info.width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, info.height)
    return out
