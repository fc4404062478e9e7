"""The embedded procedural benchmark: every dataset role of the paper, generated offline.

Roles (each written to disk in the layout of its real counterpart by ``mmpd_core.data.prep``):

- ``pretrain``: the ShapeNet-55 stand-in (unlabelled use);
- ``modelnet``: aligned classification (train / test) of all 40 categories, the ModelNet40
  stand-in, with the nuisances of real CAD-derived clouds (``modelnet_nuisances``);
- ``scanobjectnn``: single-view partial scans of the 15 ``SCAN_CATEGORIES``, subsets
  ``obj_only``, ``obj_bg``, ``pb_t50_rs``;
- few-shot episodes drawn from the ``modelnet`` role, like ModelNetFewshot from ModelNet40.

Shapes of different roles never coincide: each (role, split) owns a disjoint block of shape
indices (``INDEX_BLOCKS``), and a shape is a function of (category, index, seed) only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmpd_core.data.shapes import CATEGORIES, Shape, sample_shape, shape_rng, unit_sphere

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

# ScanObjectNN's 15 classes (``readers.SCANOBJECTNN_CLASSES`` order) -> the nearest builder:
# bag -> vase (bulging body, optional handles), bin -> flower_pot (open tapered container),
# box -> glass_box, cabinet -> dresser, chair, desk, display -> monitor, door,
# shelf -> bookshelf, table, bed, pillow -> xbox (a flat closed block), sink, sofa, toilet.
SCAN_CATEGORIES: tuple[str, ...] = (
    "vase", "flower_pot", "glass_box", "dresser", "chair", "desk", "monitor", "door",
    "bookshelf", "table", "bed", "xbox", "sink", "sofa", "toilet",
)  # fmt: skip


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


# --- ModelNet40 stand-in: aligned CAD clouds with their usual flaws --------------------------


def nuisance_rng(category: str, index: int, seed: int) -> np.random.Generator:
    """The nuisances' own random stream of one shape (apart from the shape's: the clean
    shape stays the same whatever the nuisances draw)."""
    return np.random.default_rng([seed, CATEGORIES.index(category), index, 7919])


def density_weights(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Relative sampling density (N,) of each point of a dense area-weighted ``shape``: a
    log-normal factor per part times an exponential ramp along a random direction."""
    per_part = rng.lognormal(0.0, 0.7, len(shape.part_names))[shape.part_ids]  # (N,)
    toward = rng.normal(size=3)
    ramp = rng.uniform(0.0, 1.5) * shape.points @ (toward / np.linalg.norm(toward))  # (N,)
    return per_part * np.exp(ramp)


def cut_holes(points: np.ndarray, holes: int, rng: np.random.Generator) -> np.ndarray:
    """Mask (N,) of the points outside ``holes`` balls (radius 0.1-0.25, centred on surface
    points): the missing regions of a cloud."""
    keep = np.ones(len(points), dtype=bool)
    for _ in range(holes):
        centre, radius = points[rng.integers(len(points))], rng.uniform(0.1, 0.25)
        keep &= np.linalg.norm(points - centre, axis=1) > radius
    return keep


def modelnet_nuisances(shape: Shape, num_points: int, rng: np.random.Generator):
    """``num_points`` points and normals of a dense clean ``shape`` flawed as ModelNet40's
    CAD-derived clouds are, without any rotation (the benchmark is aligned):

    - non-uniform density (``density_weights``): tessellation and sampling differ per part;
    - missing regions (``cut_holes``): up to three balls of the surface cut out;
    - weighted resampling to ``num_points``, small Gaussian noise, then a random anisotropic
      scale (each axis by 0.75-1.33) before the unit-sphere normalisation, so proportions
      are only a rough class cue.
    """
    weight = density_weights(shape, rng)
    pool = np.flatnonzero(cut_holes(shape.points, int(rng.integers(0, 4)), rng))
    keys = np.log(rng.random(len(pool))) / weight[pool]  # weighted sampling without replacement
    chosen = pool[np.argsort(-keys)[:num_points]]
    if len(chosen) < num_points:
        chosen = np.concatenate([chosen, rng.choice(chosen, num_points - len(chosen))])
    scale = np.exp(rng.uniform(-np.log(4 / 3), np.log(4 / 3), 3))  # (3,) per axis
    noise = rng.normal(0, rng.uniform(0.002, 0.01), (num_points, 3))
    cloud = (shape.points[chosen] + noise) * scale
    normals = shape.normals[chosen] / scale  # a scaled surface's normals: inverse transpose
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return unit_sphere(cloud).astype(np.float32), normals.astype(np.float32)


def modelnet_clouds(split, per_class, num_points, seed) -> CloudSet:
    """The ModelNet40 stand-in: ``per_class`` shapes of every category, each sampled densely
    (twice ``num_points``) and passed through ``modelnet_nuisances`` (points and normals)."""
    clouds, normals, labels, indices = [], [], [], []
    for label, category in enumerate(CATEGORIES):
        for i in range(per_class):
            index = shape_index("modelnet", split, i)
            dense = sample_shape(category, index, seed, 2 * num_points)
            rng = nuisance_rng(category, index, seed)
            points, nrm = modelnet_nuisances(dense, num_points, rng)
            clouds.append(points)
            normals.append(nrm)
            labels.append(label)
            indices.append(index)
    return CloudSet(
        points=np.stack(clouds),
        labels=np.array(labels, dtype=np.int64),
        indices=np.array(indices, dtype=np.int64),
        normals=np.stack(normals),
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
    """The complete objects (of the ``SCAN_CATEGORIES``) that every ScanObjectNN subset of a
    split scans; labels index ``SCAN_CATEGORIES``."""
    return clean_clouds("scanobjectnn", split, per_class, full_points, seed, SCAN_CATEGORIES)


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def scan_clouds(
    split, subset, per_class, seed, num_points=2048, full_points=8192, clean: CloudSet | None = None
) -> CloudSet:
    """``per_class`` scans per scanned category; the same objects for every subset of a split.
    ``clean``: those objects (``scan_objects``), to share them between the subsets."""
    clean = scan_objects(split, per_class, seed, full_points) if clean is None else clean
    clouds = []
    for k, (obj, index) in enumerate(zip(clean.points, clean.indices, strict=True)):
        category = SCAN_CATEGORIES[clean.labels[k]]
        rng = shape_rng(category, int(index), seed + 1 + SCAN_SUBSETS.index(subset))
        first = per_class * len(SCAN_CATEGORIES) * (split == "test")
        clutter = shape_index("clutter", "any", k + first)
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
