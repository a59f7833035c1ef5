"""Non-maximum suppression in numpy for YOLO detection heads.

    python -c "from sparsepipe.nms import nms; import numpy as np; print(nms(np.array([[0,0,10,10],[1,1,10,10]],float), np.array([.9,.8])))"

Greedy NMS (keep the best box, drop every box of the same class overlapping it by more than
``iou``, repeat), run per class, capped at ``max_det`` boxes per image.
"""

from __future__ import annotations

import numpy as np


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of ``boxes``."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.7) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, best score first (one class)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = 0.7,
                max_det: int = 300) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Returns indices sorted by descending score, at most ``max_det``.
    """
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    kept = [np.flatnonzero(classes == c)[nms(boxes[classes == c], scores[classes == c], iou)]
            for c in np.unique(classes)]
    keep = np.concatenate(kept)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return keep[:max_det]


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """Centre/size boxes to corner boxes."""
    out = np.empty_like(xywh)
    half_w, half_h = xywh[:, 2] / 2, xywh[:, 3] / 2
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out
