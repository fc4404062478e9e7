"""The embedded procedural benchmark: every dataset role of the paper, generated offline.

Roles (each written to disk in the layout of its real counterpart by ``mmpd_core.data.prep``):

- ``pretrain``: the ShapeNet-55 stand-in (unlabelled use);
- ``modelnet``: clean classification (train / test), the ModelNet40 stand-in;
- ``scanobjectnn``: single-view partial scans, subsets ``obj_only``, ``obj_bg``, ``pb_t50_rs``;
- few-shot episodes drawn from the ``modelnet`` role, like ModelNetFewshot from ModelNet40.

Shapes of different roles never coincide: each (role, split) owns a disjoint block of shape
indices (``INDEX_BLOCKS``), and a shape is a function of (category, index, seed) only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmpd_core.data.shapes import CATEGORIES, sample_shape, shape_rng, unit_sphere

BLOCK = 1_000_000
INDEX_BLOCKS = {
    ("pretrain", "train"): 0,
    ("pretrain", "test"): 1 * BLOCK,
    ("modelnet", "train"): 2 * BLOCK,
    ("modelnet", "test"): 3 * BLOCK,
    ("scanobjectnn", "train"): 4 * BLOCK,
    ("scanobjectnn", "test"): 5 * BLOCK,
    ("clutter", "any"): 6 * BLOCK,  # other objects standing next to a scanned one
}
SCAN_SUBSETS = ("obj_only", "obj_bg", "pb_t50_rs")


def shape_index(role: str, split: str, i: int) -> int:
    """The global shape index of the i-th shape of a (role, split) in every category."""
    if (role, split) not in INDEX_BLOCKS:
        raise KeyError(f"unknown role/split {(role, split)}; known: {sorted(INDEX_BLOCKS)}")
    if not 0 <= i < BLOCK:
        raise ValueError(f"shape number {i} outside its block of {BLOCK}")
    return INDEX_BLOCKS[(role, split)] + i


@dataclass
class CloudSet:
    """Clouds of one role/split: points (M, N, 3) and per-shape category labels / indices."""

    points: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None


def clean_clouds(role, split, per_class, num_points, seed, categories=CATEGORIES) -> CloudSet:
    """Complete surface samples (normals, colours) of ``per_class`` shapes per category."""
    shapes = [
        sample_shape(cat, shape_index(role, split, i), seed, num_points)
        for cat in categories
        for i in range(per_class)
    ]
    return CloudSet(
        points=np.stack([s.points for s in shapes]),
        labels=np.array([categories.index(s.category) for s in shapes], dtype=np.int64),
        indices=np.array([s.index for s in shapes], dtype=np.int64),
        normals=np.stack([s.normals for s in shapes]),
        colors=np.stack([s.colors for s in shapes]),
    )


# --- ScanObjectNN stand-in: single-view partial scans ----------------------------------------


def _view_direction(rng: np.random.Generator) -> np.ndarray:
    """Unit vector from the object towards a camera at a random azimuth, 10-45 deg elevation."""
    az, el = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(10, 45))
    return np.array([np.cos(el) * np.cos(az), np.sin(el), np.cos(el) * np.sin(az)])


def visible(points: np.ndarray, toward_camera: np.ndarray, points_per_cell: float = 4.0):
    """Boolean mask of points seen from direction ``toward_camera`` (orthographic z-buffer).

    The grid has about ``points_per_cell`` points per cell; each point is splatted into its
    3 x 3 neighbourhood of cells so that sparse sampling does not let hidden points show
    through, and a point counts as seen within 3 cells of the nearest depth (grazing
    surfaces drop out, as they do for a depth sensor).
    """
    grid = max(8, int(np.sqrt(len(points) / points_per_cell)))
    right = np.cross([0.0, 1.0, 0.0], toward_camera)
    right /= np.linalg.norm(right)
    up = np.cross(toward_camera, right)
    uv = np.stack([points @ right, points @ up], axis=1)  # (N, 2) image-plane coordinates
    depth = -(points @ toward_camera)  # (N,) smaller = nearer the camera
    lo, span = uv.min(0), np.ptp(uv, axis=0).max() + 1e-9
    cell = np.minimum(((uv - lo) / span * grid).astype(int), grid - 1)  # (N, 2)
    zbuf = np.full((grid + 2) * (grid + 2), np.inf)  # one cell of padding on each side
    flat = (cell[:, 0] + 1) * (grid + 2) + cell[:, 1] + 1  # (N,)
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            np.minimum.at(zbuf, flat + du * (grid + 2) + dv, depth)
    return depth <= zbuf[flat] + 3.0 * span / grid


def _resample(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    replace = len(points) < n
    return points[rng.choice(len(points), size=n, replace=replace)]


def _background(obj: np.ndarray, toward_camera, rng, clutter_seed) -> np.ndarray:
    """A floor patch under the object, a wall behind it and another object beside it."""
    floor_y, extent = obj[:, 1].min(), rng.uniform(1.4, 2.0)
    floor = rng.uniform(-extent, extent, (3000, 3))
    floor[:, 1] = floor_y + rng.normal(0, 0.005, 3000)
    behind = -toward_camera * np.array([1, 0, 1])
    behind /= np.linalg.norm(behind) + 1e-9
    side = np.cross([0, 1, 0], behind)
    s, h = rng.uniform(-extent, extent, 2000), rng.uniform(0, 2.0, 2000)
    wall = behind * rng.uniform(1.1, 1.6) + side * s[:, None]
    wall = wall + np.array([0, 1, 0]) * (floor_y + h[:, None])
    category = CATEGORIES[rng.integers(len(CATEGORIES))]
    other = sample_shape(category, clutter_seed, seed=int(rng.integers(1 << 30)), num_points=3000)
    offset = side * rng.choice([-1, 1]) * rng.uniform(1.2, 1.7)
    other_pts = other.points * rng.uniform(0.5, 0.8)
    other_pts = other_pts - [0, other_pts[:, 1].min() - floor_y, 0] + offset
    return np.concatenate([floor, wall, other_pts])


def _crop(scene: np.ndarray, centre, half, angle) -> np.ndarray:
    """Points of ``scene`` inside a box (centre, half sizes) rotated by ``angle`` about y."""
    c, s = np.cos(angle), np.sin(angle)
    local = (scene - centre) @ np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])  # (N, 3) box frame
    return scene[(np.abs(local) <= half).all(axis=1)]


def scan_cloud(obj, subset: str, rng: np.random.Generator, clutter_seed: int, num_points=2048):
    """One ScanObjectNN-style sample of the complete object cloud ``obj`` (N, 3)."""
    if subset not in SCAN_SUBSETS:
        raise ValueError(f"unknown ScanObjectNN subset {subset!r}; choose from {SCAN_SUBSETS}")
    toward = _view_direction(rng)
    scene = (
        obj
        if subset == "obj_only"
        else np.concatenate([obj, _background(obj, toward, rng, clutter_seed)])
    )
    scene = scene[visible(scene, toward)]
    centre, half = (obj.max(0) + obj.min(0)) / 2, (obj.max(0) - obj.min(0)) / 2 * 1.15 + 0.02
    angle = 0.0
    if subset == "pb_t50_rs":
        centre = centre + rng.uniform(-0.5, 0.5, 3) * half  # box moved by up to 50 %
        half, angle = half * rng.uniform(0.85, 1.15), rng.uniform(0, 2 * np.pi)
    crop = _crop(scene, centre, half, angle)
    if len(crop) < 64:  # the moved box missed the scan: fall back to the visible object
        crop = obj[visible(obj, toward)]
    hole_centre, hole_r = crop[rng.integers(len(crop))], rng.uniform(0.0, 0.2)
    crop = crop[np.linalg.norm(crop - hole_centre, axis=1) > hole_r]  # sensor dropout
    crop = crop + rng.normal(0, 0.008, crop.shape)  # sensor noise
    cloud = unit_sphere(_resample(crop, num_points, rng))
    if subset == "pb_t50_rs":
        cloud = cloud @ _rot_y(rng.uniform(0, 2 * np.pi)).T
    return cloud.astype(np.float32)


def scan_objects(split, per_class, seed, full_points=8192) -> CloudSet:
    """The complete objects that every ScanObjectNN subset of a split scans."""
    return clean_clouds("scanobjectnn", split, per_class, full_points, seed)


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def scan_clouds(
    split, subset, per_class, seed, num_points=2048, full_points=8192, clean: CloudSet | None = None
) -> CloudSet:
    """``per_class`` scans per category; the same objects for every subset of a split.
    ``clean``: those objects (``scan_objects``), to share them between the subsets."""
    clean = scan_objects(split, per_class, seed, full_points) if clean is None else clean
    clouds = []
    for k, (obj, index) in enumerate(zip(clean.points, clean.indices, strict=True)):
        category = CATEGORIES[clean.labels[k]]
        rng = shape_rng(category, int(index), seed + 1 + SCAN_SUBSETS.index(subset))
        clutter = shape_index("clutter", "any", k + per_class * len(CATEGORIES) * (split == "test"))
        clouds.append(scan_cloud(obj, subset, rng, clutter, num_points))
    return CloudSet(points=np.stack(clouds), labels=clean.labels, indices=clean.indices)


# --- few-shot episodes (ModelNetFewshot structure) --------------------------------------------


def fewshot_episode(train_labels, test_labels, way, shot, query, rng) -> dict[str, np.ndarray]:
    """Pick ``way`` classes, ``shot`` support shapes each from train and ``query`` from test.

    Returns support/query positions into the train/test sets, their episode labels
    (0..way-1, in the order the classes were drawn) and the original class ids.
    """
    classes = rng.choice(np.unique(train_labels), size=way, replace=False)
    out = {k: [] for k in ("support", "support_label", "query", "query_label")}
    for episode_label, cls in enumerate(classes):
        for split, labels, count in (
            ("support", train_labels, shot),
            ("query", test_labels, query),
        ):
            pool = np.flatnonzero(labels == cls)
            if len(pool) < count:
                raise ValueError(f"class {cls} has {len(pool)} {split} shapes, {count} needed")
            out[split] += list(rng.choice(pool, size=count, replace=False))
            out[f"{split}_label"] += [episode_label] * count
    return {**{k: np.array(v) for k, v in out.items()}, "classes": classes}
