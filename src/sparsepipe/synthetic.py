"""Deterministic synthetic detection / segmentation dataset of shapes.

    python -c "from sparsepipe.synthetic import *; print(generate_dataset('runs/synth'))"

Every image is drawn from its own RNG stream, seeded by ``(seed, split, index)``, so the same
config always produces byte-identical files (JPEG encoding included, for one OpenCV build).
What makes it harder than "coloured blobs on grey":

* classes are shapes (circle, square, triangle, star, cross, ring, hexagon, arrow); colour is
  drawn independently of the class, some objects have almost the background's colour, and
  objects may be filled with a gradient or noise instead of a flat colour;
* sizes range from ~8 px to ~45 % of the image (log-uniform), with random rotation and
  a mild aspect-ratio jitter;
* backgrounds mix gradients, low-frequency noise, stripes and a grid, and carry clutter that
  looks like objects: thin outlines of shapes, irregular blobs, arcs and line segments;
* later objects occlude earlier ones. A per-pixel instance-id map records which object owns each
  pixel; every object is labelled by the tight box of its *visible* pixels, and objects with
  less than ``MIN_VISIBLE_FRACTION`` of their area visible are not labelled.

With ``task="segment"`` each label row is ``class x1 y1 x2 y2 ...`` (the ultralytics
segmentation format: a normalized polygon of the visible mask, no box; ultralytics derives the
box from the polygon).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import yaml

from sparsepipe.errors import ConfigError

#: Class names in id order; ``num_classes`` keeps the first N.
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "hexagon",
    "arrow",
)
#: Objects with a smaller visible share of their full area are drawn but not labelled.
MIN_VISIBLE_FRACTION = 0.30
#: Objects whose visible box is smaller than this (pixels, either side) are not labelled.
MIN_BOX_PX = 3
#: JPEG quality of the written images.
JPEG_QUALITY = 90
#: Bumped whenever the drawing changes, so cached datasets of an older generator are not reused.
GENERATOR_VERSION = 1

_SPLITS = ("train", "val")

#: Named starting points of ``synthetic:preset=NAME`` (keys written after it override fields).
#: ``demo`` and ``bench`` are easier than the default (fewer classes, larger objects, no
#: clutter or camouflage) so that YOLOv8n learns them on 2 CPU cores: ``demo`` in a few minutes
#: at 160 px, ``bench`` to a plateau at mAP50-95 > 0.5 at 320 px, with 512 validation images so
#: that differences of 1 % in mAP50-95 are larger than the resampling noise.
PRESETS: dict[str, dict[str, int | float]] = {
    "default": {},
    "demo": {"train_images": 256, "val_images": 128, "image_size": 160, "num_classes": 3,
             "max_objects": 4, "min_radius": 0.1, "max_radius": 0.3, "clutter": 0, "camouflage": 0.0},
    "bench": {"train_images": 512, "val_images": 512, "image_size": 320, "num_classes": 4,
              "max_objects": 6, "min_radius": 0.06, "max_radius": 0.25, "clutter": 2, "camouflage": 0.0},
}  # fmt: skip
_TASKS = ("detect", "segment")


@dataclasses.dataclass
class SyntheticConfig:
    """What to generate. Every field is validated on construction."""

    train_images: int = 128  # images in images/train (1..1_000_000)
    val_images: int = 32  # images in images/val (1..1_000_000)
    image_size: int = 320  # square side in pixels (32..4096)
    num_classes: int = 6  # first N of SHAPES (1..len(SHAPES))
    seed: int = 0  # RNG seed (0..2**32-1); same seed -> byte-identical files
    task: str = "detect"  # "detect" (boxes) or "segment" (polygons of the visible mask)
    max_objects: int = 8  # objects drawn per image: uniform in 1..max_objects (1..64)
    min_radius: float = 0.025  # smallest object radius, as a fraction of the image side (0.005..0.5)
    max_radius: float = 0.25  # largest object radius (log-uniform between the two; >= min_radius)
    clutter: int = 8  # distractors per image: uniform in 0..clutter (0..64); 0 = none
    camouflage: float = 0.15  # probability that an object takes a colour close to its background (0..1)

    def __post_init__(self) -> None:
        def check_int(name: str, lo: int, hi: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(
                    f"SyntheticConfig.{name} must be an integer in [{lo}, {hi}], got {value!r}."
                )
            if not lo <= value <= hi:
                raise ConfigError(
                    f"SyntheticConfig.{name}={value} is out of range: use an integer in "
                    f"[{lo}, {hi}]."
                )
            setattr(self, name, int(value))

        check_int("train_images", 1, 1_000_000)
        check_int("val_images", 1, 1_000_000)
        check_int("image_size", 32, 4096)
        check_int("num_classes", 1, len(SHAPES))
        check_int("seed", 0, 2**32 - 1)
        check_int("max_objects", 1, 64)
        check_int("clutter", 0, 64)
        for name, lo, hi in (("min_radius", 0.005, 0.5), ("max_radius", 0.005, 0.5), ("camouflage", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                    or not lo <= float(value) <= hi:  # fmt: skip
                raise ConfigError(
                    f"SyntheticConfig.{name}={value!r} is out of range: use a number in [{lo}, {hi}]."
                )
            setattr(self, name, float(value))
        if self.min_radius > self.max_radius:
            raise ConfigError(
                f"SyntheticConfig.min_radius={self.min_radius} is larger than max_radius="
                f"{self.max_radius}: swap them or widen max_radius."
            )
        if self.task not in _TASKS:
            raise ConfigError(
                f"SyntheticConfig.task={self.task!r} is not supported: use one of "
                f"{', '.join(_TASKS)}."
            )

    @property
    def names(self) -> dict[int, str]:
        return {i: SHAPES[i] for i in range(self.num_classes)}


# --------------------------------------------------------------------------- shapes
# Each maker returns a list of polygons in unit coordinates (radius ~1, centred on 0):
# the first is filled, the following ones are holes.


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([np.cos(t), np.sin(t)], 1)


def _circle(rng: np.random.Generator) -> list[np.ndarray]:
    return [_regular(48)]


def _square(rng: np.random.Generator) -> list[np.ndarray]:
    return [_regular(4, math.pi / 4)]


def _triangle(rng: np.random.Generator) -> list[np.ndarray]:
    pts = _regular(3, -math.pi / 2)
    return [pts + rng.normal(0, 0.05, pts.shape)]


def _star(rng: np.random.Generator) -> list[np.ndarray]:
    inner = rng.uniform(0.38, 0.5)
    pts = _regular(10, -math.pi / 2)
    pts[1::2] *= inner
    return [pts]


def _cross(rng: np.random.Generator) -> list[np.ndarray]:
    a = rng.uniform(0.28, 0.42)
    pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a),
           (-1, a), (-1, -a), (-a, -a)]  # fmt: skip
    return [np.asarray(pts, dtype=np.float64)]


def _ring(rng: np.random.Generator) -> list[np.ndarray]:
    return [_regular(48), _regular(48) * rng.uniform(0.45, 0.65)]


def _hexagon(rng: np.random.Generator) -> list[np.ndarray]:
    return [_regular(6)]


def _arrow(rng: np.random.Generator) -> list[np.ndarray]:
    s = rng.uniform(0.2, 0.3)  # shaft half-width
    h = rng.uniform(0.0, 0.3)  # where the head starts
    pts = [(-1, -s), (h, -s), (h, -0.75), (1, 0), (h, 0.75), (h, s), (-1, s)]
    return [np.asarray(pts, dtype=np.float64)]


_MAKERS: tuple[Callable[[np.random.Generator], list[np.ndarray]], ...] = (
    _circle, _square, _triangle, _star, _cross, _ring, _hexagon, _arrow,
)  # fmt: skip
assert len(_MAKERS) == len(SHAPES)


def _place(polys: list[np.ndarray], cx: float, cy: float, r: float, angle: float,
           aspect: float) -> list[np.ndarray]:  # fmt: skip
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    out = []
    for p in polys:
        q = p * np.array([r, r * aspect])
        q = q @ rot.T + np.array([cx, cy])
        out.append(np.round(q * 16).astype(np.int32))  # 4 fractional bits for cv2
    return out


def _fill_mask(shape: tuple[int, int], polys: list[np.ndarray]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [polys[0]], 1, lineType=cv2.LINE_8, shift=4)
    for hole in polys[1:]:
        cv2.fillPoly(mask, [hole], 0, lineType=cv2.LINE_8, shift=4)
    return mask


def _poly_area(polys: list[np.ndarray]) -> float:
    area = abs(cv2.contourArea(polys[0].astype(np.float32) / 16))
    for hole in polys[1:]:
        area -= abs(cv2.contourArea(hole.astype(np.float32) / 16))
    return max(area, 1.0)


# --------------------------------------------------------------------------- backgrounds


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    small = rng.uniform(-1, 1, (cells, cells, channels)).astype(np.float32)
    big = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return big.reshape(size, size, channels)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(0, 3)
    if kind == 0:  # linear gradient between two colours
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = _colour(rng)[None, None] * (1 - t[..., None]) + _colour(rng)[None, None] * t[..., None]
    elif kind == 1:  # low-frequency colour noise
        img = _colour(rng)[None, None] + 70 * _smooth_noise(rng, size, int(rng.integers(3, 9)), 3)
    else:  # flat-ish colour
        img = np.broadcast_to(_colour(rng)[None, None], (size, size, 3)).copy()
    img = img.astype(np.float32)
    if rng.random() < 0.4:  # stripes
        a = rng.uniform(0, math.pi)
        freq = rng.uniform(4, 30)
        stripes = np.sin(2 * math.pi * freq * (xx * math.cos(a) + yy * math.sin(a)))
        img += rng.uniform(10, 45) * stripes[..., None] * rng.uniform(-1, 1, 3)[None, None]
    if rng.random() < 0.15:  # grid lines
        step = int(rng.integers(max(size // 16, 4), max(size // 4, 5)))
        col = _colour(rng)
        img[::step] = col
        img[:, ::step] = col
    img += rng.uniform(2, 14) * rng.standard_normal((size, size, 1)).astype(np.float32)
    return img


def _clutter(rng: np.random.Generator, img: np.ndarray, num_classes: int, most: int) -> None:
    """Up to ``most`` distractors drawn under the objects: shape outlines, blobs, arcs, segments."""
    size = img.shape[0]
    for _ in range(int(rng.integers(0, most + 1))):
        kind = rng.integers(0, 4)
        col = tuple(float(c) for c in _colour(rng))
        cx, cy = rng.uniform(0, size, 2)
        r = size * math.exp(rng.uniform(math.log(0.02), math.log(0.25)))
        if kind == 0:  # thin outline of a class shape (filled shapes are the objects)
            cls = int(rng.integers(0, num_classes))
            if SHAPES[cls] in ("ring", "circle"):
                continue  # a thin circle outline would look like a thin ring
            polys = _place(_MAKERS[cls](rng), cx, cy, r, rng.uniform(0, 2 * math.pi), 1.0)
            cv2.polylines(img, [polys[0]], True, col, 1, cv2.LINE_AA, shift=4)
        elif kind == 1:  # irregular blob: random radii around a centre
            n = int(rng.integers(7, 13))
            t = np.sort(rng.uniform(0, 2 * math.pi, n))
            rad = rng.uniform(0.3, 1.0, n)
            pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
            cv2.fillPoly(img, _place([pts], cx, cy, r, 0.0, 1.0), col, cv2.LINE_AA, shift=4)
        elif kind == 2:  # open arc
            start = rng.uniform(0, 360)
            cv2.ellipse(img, (int(cx), int(cy)), (int(r), int(r * rng.uniform(0.4, 1))),
                        rng.uniform(0, 180), start, start + rng.uniform(60, 250), col,
                        int(rng.integers(1, 4)), cv2.LINE_AA)  # fmt: skip
        else:  # line segment
            x2, y2 = rng.uniform(0, size, 2)
            cv2.line(img, (int(cx), int(cy)), (int(x2), int(y2)), col, int(rng.integers(1, 4)),
                     cv2.LINE_AA)  # fmt: skip


# --------------------------------------------------------------------------- one image


@dataclasses.dataclass
class DrawnObject:
    """One object of a rendered image (returned by :func:`render` for inspection and tests)."""

    key: int  # its value in the per-pixel owner map
    cls: int
    area: float  # geometric area of the whole shape (it may extend past the image border)
    drawn_pixels: int  # pixels it covered when drawn, before later objects covered some
    visible_pixels: int = 0  # pixels it still owns at the end
    box: tuple[int, int, int, int] | None = None  # x1, y1, x2, y2 (exclusive) if labelled


@dataclasses.dataclass
class Rendered:
    image: np.ndarray  # BGR uint8
    rows: list[str]  # YOLO label rows
    owner: np.ndarray  # int16 per-pixel object key, 0 = background / clutter
    objects: list[DrawnObject]


def render_image(config: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, list[str]]:
    """Draw image ``index`` of ``split``; returns (BGR uint8 image, YOLO label rows)."""
    r = render(config, split, index)
    return r.image, r.rows


def render(config: SyntheticConfig, split: str, index: int) -> Rendered:
    """Draw image ``index`` of ``split`` and keep the owner map and per-object visibility."""
    size = config.image_size
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _SPLITS.index(split), index]))
    img = _background(rng, size)
    _clutter(rng, img, config.num_classes, config.clutter)
    owner = np.zeros((size, size), np.int16)  # 0 = background, k = object k-1
    objects: list[DrawnObject] = []
    yy = xx = None
    for k in range(int(rng.integers(1, config.max_objects + 1))):
        cls = int(rng.integers(0, config.num_classes))
        r = size * math.exp(rng.uniform(math.log(config.min_radius), math.log(config.max_radius)))
        cx, cy = rng.uniform(-0.05 * size, 1.05 * size, 2)
        polys = _place(_MAKERS[cls](rng), cx, cy, r, rng.uniform(0, 2 * math.pi),
                       rng.uniform(0.8, 1.0))  # fmt: skip
        on = _fill_mask((size, size), polys).astype(bool)
        drawn = int(on.sum())
        if not drawn:
            continue
        # Fill: flat colour, a gradient, or noisy; sometimes close to the background colour.
        if rng.random() < config.camouflage:
            base = img[on].mean(0) + rng.choice([-1, 1], 3) * rng.uniform(18, 40, 3)
        else:
            base = _colour(rng)
        style = rng.integers(0, 3)
        if style == 0:
            fill = np.broadcast_to(base.astype(np.float32), (drawn, 3))
        elif style == 1:
            if yy is None:
                yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
            a = rng.uniform(0, 2 * math.pi)
            t = ((xx[on] - cx) * math.cos(a) + (yy[on] - cy) * math.sin(a)) / max(r, 1.0)
            fill = base[None] + t[:, None] * rng.uniform(-50, 50, 3)[None]
        else:
            fill = base[None] + rng.uniform(5, 25) * rng.standard_normal((drawn, 1))
        img[on] = fill
        owner[on] = k + 1
        objects.append(DrawnObject(k + 1, cls, _poly_area(polys), drawn))

    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.2))
    img += rng.uniform(0, 8) * rng.standard_normal(img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)

    rows: list[str] = []
    for obj in objects:
        visible = owner == obj.key
        obj.visible_pixels = int(visible.sum())
        if obj.visible_pixels < MIN_VISIBLE_FRACTION * obj.area:
            continue
        ys, xs = np.nonzero(visible)
        x1, x2, y1, y2 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        if x2 - x1 < MIN_BOX_PX or y2 - y1 < MIN_BOX_PX:
            continue
        if config.task == "detect":
            rows.append(
                f"{obj.cls} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} "
                f"{(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}"
            )
        else:
            poly = _visible_polygon(visible.astype(np.uint8))
            if poly is None:
                continue
            coords = " ".join(f"{v / size:.6f}" for v in np.clip(poly, 0, size).reshape(-1))
            rows.append(f"{obj.cls} {coords}")
        obj.box = (x1, y1, x2, y2)
    return Rendered(out, rows, owner, objects)


def _visible_polygon(mask: np.ndarray) -> np.ndarray | None:
    """One polygon (N x 2, pixel units) covering all visible pieces of a mask.

    Pieces split by an occluder are chained into one outline (largest piece first), which is
    how ultralytics' own converters merge multi-part masks; holes are not representable.
    """
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pieces = []
    for c in sorted(contours, key=cv2.contourArea, reverse=True):
        c = cv2.approxPolyDP(c, 0.7, True).reshape(-1, 2).astype(np.float64)
        if len(c) >= 3:
            pieces.append(c + 0.5)  # pixel centres
    if not pieces:
        return None
    return np.concatenate(pieces, 0)


# --------------------------------------------------------------------------- dataset


def progress_bar(**kwargs):
    """A tqdm bar (stderr); a silent stand-in when tqdm is not installed."""
    try:
        from tqdm import tqdm  # optional: tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency

        class _Quiet:
            def update(self, n: int = 1) -> None: ...

            def close(self) -> None: ...

        return _Quiet()
    return tqdm(**kwargs)


def data_yaml_text(names: dict[int, str], extra: dict | None = None) -> str:
    """The relocatable data YAML: splits relative to the YAML's folder, no ``path:`` key."""
    doc = {"train": "images/train", "val": "images/val", **(extra or {})}
    doc["names"] = {int(k): str(v) for k, v in names.items()}
    return yaml.safe_dump(doc, sort_keys=False)


def generate_dataset(out_dir: str | Path, config: SyntheticConfig | None = None,
                     progress: bool = True) -> Path:  # fmt: skip
    """Write ``images/{train,val}``, ``labels/{train,val}`` and ``data.yaml`` into ``out_dir``.

    Returns the path of ``data.yaml``. Files are written in place: callers that need an atomic
    dataset (``sparsepipe.data``) generate into a temporary folder and rename it.
    """
    config = config or SyntheticConfig()
    out_dir = Path(out_dir)
    if not isinstance(config, SyntheticConfig):
        raise ConfigError(f"generate_dataset needs a SyntheticConfig, got {type(config).__name__}.")
    for sub in ("images", "labels"):
        if (out_dir / sub).is_dir() and any((out_dir / sub).iterdir()):
            raise ConfigError(
                f"{out_dir / sub} already holds files; generate into a new or empty folder (an "
                f"older, larger dataset would leave stale images behind). `sparsepipe data` "
                f"replaces a dataset folder atomically."
            )
    counts = {"train": config.train_images, "val": config.val_images}
    bar = progress_bar(total=sum(counts.values()), desc="synthetic data", unit="img",
                       disable=not progress)  # fmt: skip
    try:
        for split in _SPLITS:
            img_dir = out_dir / "images" / split
            lbl_dir = out_dir / "labels" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            lbl_dir.mkdir(parents=True, exist_ok=True)
            for i in range(counts[split]):
                img, rows = render_image(config, split, i)
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
                    raise RuntimeError("OpenCV failed to encode a JPEG")
                stem = f"{split}_{i:06d}"
                (img_dir / f"{stem}.jpg").write_bytes(buf.tobytes())
                (lbl_dir / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
                bar.update(1)
    finally:
        bar.close()
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text(data_yaml_text(config.names))
    return yaml_path
