"""Error bars for mAP: per-image matching and bootstrap confidence intervals.

    sparsepipe evaluate --model runs/export --data runs/data --out runs/evaluate   # writes per_image.npz + CI
    sparsepipe evaluate --model runs/pruned-export --baseline runs/evaluate ...    # + paired ratio CI

A mAP measured on N validation images is one draw: another N images of the same kind give
another number. The bootstrap estimates that spread by resampling the validation *images* with
replacement and recomputing mAP on each resample; the 2.5th and 97.5th percentiles of those
values form the 95 % interval. For a variant against its baseline the same resampled images are
used for both (a *paired* bootstrap), so the interval of the ratio reflects how differently the
two models do on the same images, not how hard the images happen to be.

Matching follows COCO's rules: per class and IoU threshold (0.50, 0.55 ... 0.95), predictions in
descending confidence claim the unmatched ground-truth box they overlap most. AP is the area
under the precision envelope read at 101 recall points (trapezoids, the envelope dropping to 0
after the last recall reached), which is how ultralytics 8.4 computes the figure it reports; the
point estimate here differs from ultralytics' only by how the images were pre-processed for
prediction (predict vs val batching), which tests/test_evaluate.py bounds.

Resampling is cheap: predictions are sorted by confidence once, and a resample only re-weights
each image (the number of times it was drawn), so every AP is a weighted cumulative sum.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Iterable

import numpy as np

from sparsepipe.errors import SparsepipeError
from sparsepipe.results import atomic_write_bytes

#: IoU thresholds of mAP50-95.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
#: Recall points at which the precision envelope is read (COCO's 101).
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: Resamples drawn by default: enough for stable 2.5/97.5 percentiles (their Monte Carlo error
#: is about 0.1 of the interval's half-width at 1000).
DEFAULT_RESAMPLES = 1000


class UndefinedRatio(SparsepipeError):
    """The baseline scored mAP 0 (a model that has not learned): no ratio to it exists."""


@dataclasses.dataclass
class DetectionRecords:
    """Everything mAP needs, per image: predictions matched to ground truth.

    ``tp[k, t]`` says whether prediction ``k`` matched a ground-truth box at IoU threshold ``t``;
    ``image[k]`` is the index (into ``names``) of the image it belongs to. ``gt_counts[i, c]`` is
    the number of ground-truth boxes of class ``c`` in image ``i``.
    """

    names: list[str]  # image file names, in a fixed order
    tp: np.ndarray  # (K, 10) bool
    conf: np.ndarray  # (K,) float
    cls: np.ndarray  # (K,) int
    image: np.ndarray  # (K,) int
    gt_counts: np.ndarray  # (N, C) int

    def save(self, path: str | Path) -> Path:
        """Write the records as a compressed ``.npz`` (atomically)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, names=np.asarray(self.names), tp=self.tp, conf=self.conf,
                            cls=self.cls, image=self.image, gt_counts=self.gt_counts)  # fmt: skip
        return atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "DetectionRecords":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls([str(n) for n in z["names"]], z["tp"].astype(bool), z["conf"].astype(np.float64),
                           z["cls"].astype(np.int64), z["image"].astype(np.int64), z["gt_counts"].astype(np.int64))
        except (OSError, KeyError, ValueError) as exc:
            raise SparsepipeError(
                f"{path}: not a per-image record file written by `sparsepipe evaluate` ({exc}). "
                f"Re-run evaluate on that model to write it."
            ) from None


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (M, 4 xyxy) with every box in ``b`` (N, 4 xyxy): (M, N)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_image(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                gt_boxes: np.ndarray, gt_classes: np.ndarray) -> np.ndarray:  # fmt: skip
    """(K, 10) bool: prediction k is a true positive at each IoU threshold (COCO greedy rule)."""
    boxes, gt_boxes = np.asarray(boxes, float).reshape(-1, 4), np.asarray(gt_boxes, float).reshape(-1, 4)
    classes, gt_classes = np.asarray(classes).astype(int), np.asarray(gt_classes).astype(int)
    tp = np.zeros((len(boxes), len(IOU_THRESHOLDS)), bool)
    if not len(boxes) or not len(gt_boxes):
        return tp
    iou = box_iou(boxes, gt_boxes)
    iou[classes[:, None] != gt_classes[None, :]] = 0.0
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(gt_boxes), bool)
        for k in order:
            candidates = np.where(taken, -1.0, iou[k])
            j = int(candidates.argmax())
            if candidates[j] >= threshold - 1e-9:
                taken[j] = True
                tp[k, t] = True
    return tp


def build_records(per_image: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                  num_classes: int) -> DetectionRecords:  # fmt: skip
    """Records from ``(name, boxes, scores, classes, gt_boxes, gt_classes)`` per image (xyxy pixels)."""
    names: list[str] = []
    tps, confs, clss, imgs, counts = [], [], [], [], []
    for i, (name, boxes, scores, classes, gt_boxes, gt_classes) in enumerate(per_image):
        names.append(name)
        tps.append(match_image(boxes, scores, classes, gt_boxes, gt_classes))
        confs.append(np.asarray(scores, float).reshape(-1))
        clss.append(np.asarray(classes).astype(int).reshape(-1))
        imgs.append(np.full(len(confs[-1]), i, int))
        counts.append(np.bincount(np.asarray(gt_classes).astype(int).reshape(-1), minlength=num_classes)[:num_classes])
    if not names:
        raise SparsepipeError("No validation images to evaluate: the split is empty.")
    cat = lambda parts, empty: np.concatenate(parts) if parts else empty  # noqa: E731
    return DetectionRecords(
        names=names,
        tp=cat(tps, np.zeros((0, len(IOU_THRESHOLDS)), bool)).astype(bool),
        conf=cat(confs, np.zeros(0)),
        cls=cat(clss, np.zeros(0, int)),
        image=cat(imgs, np.zeros(0, int)),
        gt_counts=np.stack(counts).astype(np.int64),
    )


class _Sorted:
    """Predictions of one record set, sorted by class and then descending confidence."""

    def __init__(self, records: DetectionRecords):
        order = np.lexsort((-records.conf, records.cls))
        self.cls = records.cls[order]
        self.tp = records.tp[order].astype(np.float64)
        self.image = records.image[order]
        self.gt_counts = records.gt_counts
        self.classes = np.arange(records.gt_counts.shape[1])
        starts = np.searchsorted(self.cls, self.classes, side="left")
        ends = np.searchsorted(self.cls, self.classes, side="right")
        self.spans = list(zip(starts, ends))

    def map(self, weights: np.ndarray) -> tuple[float, float]:
        """(mAP50-95, mAP50) with image ``i`` counted ``weights[i]`` times."""
        n_gt = weights @ self.gt_counts  # (C,)
        w = weights[self.image]
        aps = []
        for c, (start, end) in zip(self.classes, self.spans):
            if n_gt[c] <= 0:
                continue  # a class absent from this resample does not count (as in COCO)
            ap = np.zeros(len(IOU_THRESHOLDS))
            if end > start:
                wc = w[start:end, None]
                ctp = np.cumsum(self.tp[start:end] * wc, 0)
                cfp = np.cumsum((1.0 - self.tp[start:end]) * wc, 0)
                recall = ctp / n_gt[c]
                precision = ctp / np.maximum(ctp + cfp, 1e-12)
                for t in range(len(IOU_THRESHOLDS)):
                    ap[t] = _area(recall[:, t], precision[:, t])
            aps.append(ap)
        if not aps:
            return 0.0, 0.0
        aps_arr = np.stack(aps)
        return float(aps_arr.mean()), float(aps_arr[:, 0].mean())


def _area(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, sampled at 101 recall points (trapezoid rule)."""
    mrec = np.concatenate(([0.0], recall, [recall[-1]], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    values = np.interp(RECALL_POINTS, mrec, envelope)
    return float(((values[1:] + values[:-1]) / 2).sum() * (RECALL_POINTS[1] - RECALL_POINTS[0]))


def mean_average_precision(records: DetectionRecords) -> tuple[float, float]:
    """(mAP50-95, mAP50) of the records, every image counted once."""
    return _Sorted(records).map(np.ones(len(records.names)))


@dataclasses.dataclass
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    value: float
    low: float
    high: float
    resamples: int
    level: float = 0.95

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {prefix: round(self.value, 5), f"{prefix}_ci_low": round(self.low, 5),
                f"{prefix}_ci_high": round(self.high, 5)}  # fmt: skip


def _weights(rng: np.random.Generator, n: int, resamples: int) -> Iterable[np.ndarray]:
    for _ in range(resamples):
        yield np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def _percentiles(values: list[float], level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.asarray(values), [tail, 100 - tail])
    return float(low), float(high)


def map_interval(records: DetectionRecords, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 level: float = 0.95) -> Interval:  # fmt: skip
    """mAP50-95 with its bootstrap interval (validation images resampled with replacement)."""
    _check(resamples, level)
    table = _Sorted(records)
    n = len(records.names)
    point = table.map(np.ones(n))[0]
    values = [table.map(w)[0] for w in _weights(np.random.default_rng(seed), n, resamples)]
    return Interval(point, *_percentiles(values, level), resamples, level)


def paired_ratio_interval(variant: DetectionRecords, baseline: DetectionRecords,
                          resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                          level: float = 0.95) -> Interval:  # fmt: skip
    """mAP50-95(variant) / mAP50-95(baseline), both on the same resampled images each time."""
    _check(resamples, level)
    if variant.names != baseline.names:
        missing = sorted(set(baseline.names) ^ set(variant.names))[:3]
        raise SparsepipeError(
            f"The variant and the baseline were evaluated on different images ({len(variant.names)} "
            f"vs {len(baseline.names)}; e.g. {missing or 'same names in another order'}). A paired "
            f"interval needs both evaluated on the same split of the same dataset: re-run evaluate "
            f"with the same --data."
        )
    a, b = _Sorted(variant), _Sorted(baseline)
    n = len(variant.names)
    ones = np.ones(n)
    base_point = b.map(ones)[0]
    if base_point <= 0:
        raise UndefinedRatio("The baseline's mAP50-95 is 0 (it detects nothing): a ratio to it is undefined.")
    ratios = []
    for w in _weights(np.random.default_rng(seed), n, resamples):
        denominator = b.map(w)[0]
        ratios.append(a.map(w)[0] / denominator if denominator > 0 else np.nan)
    ratios = [r for r in ratios if np.isfinite(r)]
    return Interval(a.map(ones)[0] / base_point, *_percentiles(ratios, level), resamples, level)


def _check(resamples: int, level: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 10:
        raise SparsepipeError(f"resamples={resamples!r}: use an integer >= 10 (1000 is the default).")
    if not 0.5 <= level < 1:
        raise SparsepipeError(f"level={level!r}: use a confidence level in [0.5, 1), e.g. 0.95.")
