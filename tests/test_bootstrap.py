"""Bootstrap intervals of mAP against cases whose answer is known.

    .venv/bin/python -m pytest tests/test_bootstrap.py
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsepipe.bootstrap import (
    DetectionRecords,
    build_records,
    map_interval,
    match_image,
    mean_average_precision,
    paired_ratio_interval,
)
from sparsepipe.errors import SparsepipeError

BOX = np.array([[10.0, 10.0, 50.0, 50.0]])


def _hit_or_miss(hits: np.ndarray) -> DetectionRecords:
    """Image i has one object; it is found exactly (score 0.9) when ``hits[i]``, else nothing is predicted.

    Precision is 1 up to recall p = mean(hits), so AP = p (up to the 101-point grid), and the
    bootstrap distribution of p over resampled images is binomial: SE = sqrt(p (1 - p) / n).
    """
    rows = []
    for i, hit in enumerate(hits):
        if hit:
            rows.append((f"{i}.jpg", BOX, np.array([0.9]), np.array([0]), BOX, np.array([0])))
        else:
            rows.append((f"{i}.jpg", np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), BOX, np.array([0])))
    return build_records(rows, 1)


def test_interval_matches_the_binomial_answer():
    rng = np.random.default_rng(7)
    n = 400
    hits = rng.random(n) < 0.6
    p = hits.mean()
    interval = map_interval(_hit_or_miss(hits), resamples=2000, seed=1)
    grid = 1 / 100  # AP is read on 101 recall points
    assert interval.value == pytest.approx(p, abs=grid)
    half_width = 1.96 * math.sqrt(p * (1 - p) / n)  # 0.048 here
    assert interval.low == pytest.approx(p - half_width, abs=0.012)
    assert interval.high == pytest.approx(p + half_width, abs=0.012)


def test_interval_narrows_with_more_images():
    rng = np.random.default_rng(3)
    small = map_interval(_hit_or_miss(rng.random(100) < 0.5), resamples=500)
    large = map_interval(_hit_or_miss(rng.random(1600) < 0.5), resamples=500)
    # SE scales with 1/sqrt(n): 16x the images -> about a quarter of the width
    ratio = (large.high - large.low) / (small.high - small.low)
    assert 0.15 < ratio < 0.4


def test_paired_ratio_of_identical_models_is_exactly_one():
    hits = np.random.default_rng(0).random(300) < 0.5
    records = _hit_or_miss(hits)
    ratio = paired_ratio_interval(records, records, resamples=200)
    assert (ratio.value, ratio.low, ratio.high) == (1.0, 1.0, 1.0)


def test_paired_ratio_is_tighter_than_unpaired_and_centred_on_the_truth():
    rng = np.random.default_rng(11)
    n = 500
    base_hits = rng.random(n) < 0.7
    # The variant loses exactly the hits on every 10th image the baseline found: ratio ~ 0.9
    variant_hits = base_hits & (np.arange(n) % 10 != 0)
    base, variant = _hit_or_miss(base_hits), _hit_or_miss(variant_hits)
    truth = variant_hits.sum() / base_hits.sum()
    paired = paired_ratio_interval(variant, base, resamples=1000)
    assert paired.value == pytest.approx(truth, abs=0.02)
    assert paired.low < truth < paired.high
    # Unpaired: the ratio of two independent intervals' ends is far wider than the paired one.
    a, b = map_interval(variant, resamples=500), map_interval(base, resamples=500)
    assert (paired.high - paired.low) < 0.5 * (a.high / b.low - a.low / b.high)


def test_paired_ratio_refuses_different_images():
    a = _hit_or_miss(np.array([True, False, True]))
    b = _hit_or_miss(np.array([True, False]))
    with pytest.raises(SparsepipeError, match="different images"):
        paired_ratio_interval(a, b, resamples=20)


def test_matching_follows_coco_rules():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    preds = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 31], [20, 20, 30, 30]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    tp = match_image(preds, scores, np.array([0, 0, 0, 1]), gt, np.array([0, 0]))
    assert tp[0].all()  # exact hit
    assert not tp[1].any()  # duplicate of an already matched box
    assert tp[2, 0] and not tp[2, -1]  # IoU 10/11 = 0.909: a hit at 0.5..0.9, not at 0.95
    assert not tp[3].any()  # right box, wrong class


def test_map_of_a_perfect_detector_is_one_and_save_load_round_trips(tmp_path):
    rows = [(f"{i}.jpg", BOX, np.array([0.5]), np.array([i % 2]), BOX, np.array([i % 2])) for i in range(10)]
    records = build_records(rows, 2)
    assert mean_average_precision(records) == (pytest.approx(0.995), pytest.approx(0.995))  # as ultralytics: the last trapezoid drops to 0
    loaded = DetectionRecords.load(records.save(tmp_path / "r.npz"))
    assert loaded.names == records.names and np.array_equal(loaded.tp, records.tp)
    with pytest.raises(SparsepipeError, match="per-image record"):
        DetectionRecords.load(tmp_path / "missing.npz")
