"""ScanNet detection data in the layout 3DETR reads (VoteNet's preprocessing; issue #15).

Under the data root (3DETR's ``scannet_train_detection_data``) each scene has

    <scene>_vert.npy       (N, 6) float: x, y, z, r, g, b (rgb 0..255)
    <scene>_ins_label.npy  (N,) int: instance id per point (0: none)
    <scene>_sem_label.npy  (N,) int: NYU40 class id per point
    <scene>_bbox.npy       (K, 7) float: centre xyz, size xyz, NYU40 class id

and ``meta_data/scannetv2_{train,val}.txt`` list the scenes (3DETR's ``meta_data`` folder; here
beside the scene files). Detection keeps the boxes of 18 classes, given by their NYU40 ids in
the order of ``NYU40_IDS`` (3DETR's ``nyu40ids`` and ``type2class``); the others are dropped.
Boxes are axis-aligned. A missing file raises FileNotFoundError, a malformed one ValueError,
each naming the file and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpd_core.data.readers import _check_points, _read_list, _require_file, _write_list

SCANNET_CLASSES = (
    "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "desk", "curtain", "refrigerator", "showercurtain", "toilet", "sink", "bathtub",
    "garbagebin",
)  # fmt: skip
NYU40_IDS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)  # class order
SPLITS = ("train", "val")
META = "meta_data"
SUFFIXES = ("vert", "ins_label", "sem_label", "bbox")


@dataclass
class Scene:
    name: str
    vertices: np.ndarray  # (N, 6) float32 xyz rgb
    instances: np.ndarray  # (N,) int64
    semantics: np.ndarray  # (N,) int64 NYU40 ids
    boxes: np.ndarray  # (K, 7) float32: centre, size, NYU40 id


def split_path(root: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    return Path(root) / META / f"scannetv2_{split}.txt"


def read_split(root: str | Path, split: str) -> list[str]:
    return _read_list(split_path(root, split), f"ScanNet {split} scene list")


def scene_file(root: str | Path, scene: str, suffix: str) -> Path:
    return Path(root) / f"{scene}_{suffix}.npy"


def _load(root, scene: str, suffix: str) -> tuple[np.ndarray, Path]:
    path = _require_file(scene_file(root, scene, suffix), f"ScanNet {suffix} array")
    try:
        return np.load(path, allow_pickle=False), path
    except ValueError as err:
        raise ValueError(f"{path}: not a plain .npy array ({err})") from None


def _per_point(values: np.ndarray, path: Path, count: int) -> np.ndarray:
    if values.shape != (count,) or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{path}: expected {count} labels (one per vertex), got "
                         f"{values.dtype} {values.shape}")  # fmt: skip
    if np.issubdtype(values.dtype, np.floating) and (values != np.round(values)).any():
        raise ValueError(f"{path}: labels must be whole numbers")
    if count and values.min() < 0:
        raise ValueError(f"{path}: labels must be non-negative")
    return values.astype(np.int64)


def read_scene(root: str | Path, scene: str) -> Scene:
    """One scene's four arrays, checked (shapes, finite values, sizes > 0, whole labels)."""
    vertices, path = _load(root, scene, "vert")
    vertices = _check_points(vertices, path, channels=6)
    instances = _per_point(*_load(root, scene, "ins_label"), len(vertices))
    semantics = _per_point(*_load(root, scene, "sem_label"), len(vertices))
    boxes, path = _load(root, scene, "bbox")
    if boxes.ndim != 2 or boxes.shape[1] != 7 or not np.issubdtype(boxes.dtype, np.number):
        raise ValueError(f"{path}: expected a (K, 7) box array (centre, size, NYU40 id), got "
                         f"{boxes.dtype} {boxes.shape}")  # fmt: skip
    if not np.isfinite(boxes).all():
        raise ValueError(f"{path}: box array holds NaN or Inf values")
    if (boxes[:, 3:6] <= 0).any():
        raise ValueError(f"{path}: box sizes must be positive")
    return Scene(scene, vertices, instances, semantics, boxes.astype(np.float32))


def read_scannet(root: str | Path, split: str) -> list[Scene]:
    return [read_scene(root, scene) for scene in read_split(root, split)]


def write_scene(root: str | Path, scene: Scene) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    arrays = (scene.vertices.astype(np.float32), scene.instances.astype(np.int64),
              scene.semantics.astype(np.int64), scene.boxes.astype(np.float32))  # fmt: skip
    for suffix, array in zip(SUFFIXES, arrays, strict=True):
        np.save(scene_file(root, scene.name, suffix), array)


def write_split(root: str | Path, split: str, scenes: Iterable[str]) -> Path:
    path = split_path(root, split)
    _write_list(path, scenes)
    return path


def detection_targets(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The boxes of the 18 detection classes: (labels (K',) in 0..17, boxes (K', 6) centre /
    size); boxes of other NYU40 ids are dropped, as 3DETR's loader does."""
    ids = boxes[:, 6].astype(np.int64)
    keep = np.isin(ids, NYU40_IDS)
    lookup = {nyu: c for c, nyu in enumerate(NYU40_IDS)}
    labels = np.array([lookup[i] for i in ids[keep]], dtype=np.int64)
    return labels, boxes[keep, :6].astype(np.float32)
