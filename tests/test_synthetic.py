"""The synthetic shapes dataset: determinism, label geometry, occlusion, ultralytics acceptance.

    .venv/bin/python -m pytest tests/test_synthetic.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sparsepipe.errors import ConfigError
from sparsepipe.synthetic import (
    MIN_VISIBLE_FRACTION,
    SHAPES,
    SyntheticConfig,
    generate_dataset,
    render,
)

SMALL = dict(train_images=6, val_images=3, image_size=96)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    "field, value",
    [
        ("train_images", 0),
        ("val_images", -1),
        ("image_size", 16),
        ("num_classes", len(SHAPES) + 1),
        ("num_classes", 0),
        ("seed", -3),
        ("max_objects", 0),
        ("train_images", 2.5),
        ("task", "classify"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError) as info:
        SyntheticConfig(**{field: value})
    message = str(info.value)
    assert f"SyntheticConfig.{field}" in message
    assert "[" in message or "one of" in message  # the allowed range or choices


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a = generate_dataset(tmp_path / "a", SyntheticConfig(**SMALL, seed=3), progress=False)
    b = generate_dataset(tmp_path / "b", SyntheticConfig(**SMALL, seed=3), progress=False)
    c = generate_dataset(tmp_path / "c", SyntheticConfig(**SMALL, seed=4), progress=False)
    files_a, files_b, files_c = (_tree_bytes(p.parent) for p in (a, b, c))
    assert len(files_a) == 2 * (6 + 3) + 1  # images + labels + data.yaml
    assert files_a == files_b
    assert files_a.keys() == files_c.keys()
    differing = [k for k in files_a if k.endswith(".jpg") and files_a[k] != files_c[k]]
    assert len(differing) == 9


def test_layout_and_relocatable_yaml(tmp_path):
    import yaml

    data_yaml = generate_dataset(tmp_path / "ds", SyntheticConfig(**SMALL), progress=False)
    assert data_yaml == tmp_path / "ds" / "data.yaml"
    doc = yaml.safe_load(data_yaml.read_text())
    assert "path" not in doc
    assert doc["train"] == "images/train" and doc["val"] == "images/val"
    assert doc["names"] == {i: SHAPES[i] for i in range(6)}
    for split, n in (("train", 6), ("val", 3)):
        assert len(list((tmp_path / "ds" / "images" / split).glob("*.jpg"))) == n
        assert len(list((tmp_path / "ds" / "labels" / split).glob("*.txt"))) == n
    with pytest.raises(ConfigError, match="already holds files"):
        generate_dataset(tmp_path / "ds", SyntheticConfig(**SMALL), progress=False)


def test_labels_are_tight_boxes_of_visible_pixels():
    config = SyntheticConfig(image_size=128, max_objects=10, seed=1)
    size = config.image_size
    labelled = dropped = occluded = 0
    for i in range(25):
        r = render(config, "train", i)
        assert r.image.shape == (size, size, 3) and r.image.dtype == np.uint8
        assert len(r.rows) == sum(o.box is not None for o in r.objects)
        boxed = [o for o in r.objects if o.box is not None]
        for row, obj in zip(r.rows, boxed):
            cls, x, y, w, h = (float(v) for v in row.split())
            assert cls == obj.cls and 0 <= cls < config.num_classes
            assert all(0 <= v <= 1 for v in (x, y, w, h)) and w > 0 and h > 0
            ys, xs = np.nonzero(r.owner == obj.key)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            assert obj.box == (x1, y1, x2, y2)
            assert abs(x * size - (x1 + x2) / 2) < 1e-3 * size
            assert abs(w * size - (x2 - x1)) < 1e-3 * size
            assert abs(h * size - (y2 - y1)) < 1e-3 * size
            assert obj.visible_pixels >= MIN_VISIBLE_FRACTION * obj.area
            labelled += 1
        for obj in r.objects:
            if obj.visible_pixels < obj.drawn_pixels:
                occluded += 1
            if obj.box is None and obj.visible_pixels < MIN_VISIBLE_FRACTION * obj.area:
                dropped += 1
    assert labelled > 50
    assert occluded > 5, "later shapes should cover parts of earlier ones"
    assert dropped > 0, "mostly hidden shapes should go unlabelled"


def test_dataset_has_class_and_scale_variety(tmp_path):
    config = SyntheticConfig(train_images=40, val_images=1, image_size=128, seed=2)
    classes, areas = set(), []
    for i in range(40):
        for row in render(config, "train", i).rows:
            c, _, _, w, h = (float(v) for v in row.split())
            classes.add(int(c))
            areas.append(w * h)
    assert classes == set(range(6))
    assert min(areas) < 0.005 and max(areas) > 0.1  # tiny and large objects


def test_segment_labels_are_polygons_ultralytics_accepts(tmp_path):
    from ultralytics.data.utils import verify_image_label

    from sparsepipe.data import validate_dataset

    config = SyntheticConfig(**SMALL, task="segment", seed=5)
    data_yaml = generate_dataset(tmp_path / "seg", config, progress=False)
    images = sorted((tmp_path / "seg" / "images").rglob("*.jpg"))
    polygons = 0
    for img in images:
        lbl = Path(str(img).replace(f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"))
        lbl = lbl.with_suffix(".txt")
        for row in lbl.read_text().splitlines():
            values = row.split()
            assert len(values) >= 7 and (len(values) - 1) % 2 == 0
            assert all(0 <= float(v) <= 1 for v in values[1:])
        out = verify_image_label((str(img), str(lbl), "", False, config.num_classes, 0, 0, False))
        im_file, lb, shape, segments, *_, n_corrupt, msg = out
        assert n_corrupt == 0, msg
        assert len(segments) == len(lb)
        polygons += len(segments)
    assert polygons > 10
    summary = validate_dataset(data_yaml)
    assert summary.task == "segment"


def test_ultralytics_accepts_generated_detect_dataset(tmp_path):
    from ultralytics.data.utils import check_det_dataset

    data_yaml = generate_dataset(tmp_path / "det", SyntheticConfig(**SMALL, num_classes=8),
                                 progress=False)  # fmt: skip
    info = check_det_dataset(str(data_yaml))
    assert info["nc"] == 8
    assert info["names"] == {i: SHAPES[i] for i in range(8)}
    assert Path(info["train"]) == (tmp_path / "det" / "images" / "train").resolve()
