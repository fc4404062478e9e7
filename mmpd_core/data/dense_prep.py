"""The ``dense_data`` stage: the datasets of the dense tasks, embedded or real (issue #14).

Embedded (``source: embedded``), written under ``out_dir`` in the official layouts
(``dense_readers``), so the segmentation stage reads the embedded and the real data through the
same code:

    Stanford3dDataset_v1.2_Aligned_Version/Area_<k>/<room>/Annotations/<class>_1.txt
        procedural rooms (``rooms``), ``rooms_per_area`` in each of ``areas`` areas;
    shapenetcore_partanno_segmentation_benchmark_v0_normal/
        procedural objects of the ShapeNetPart categories the families cover, their part ids
        mapped to the category's ShapeNetPart labels (``PART_MAP``);
    scannet_train_detection_data/<scene>_{vert,ins_label,sem_label,bbox}.npy, meta_data/
        the same rooms as ScanNet detection scenes (VoteNet's layout, ``scannet``): an
        instance per object, NYU40 labels (``NYU40_OF``), an axis-aligned box per object of
        the 18 detection classes; Area 5's rooms are the val split;
    manifest.json   roots, counts, the seed

Real (``source: real``): S3DIS, ShapeNetPart and ScanNet under ``real_root`` are checked
(every room, shape and scene is read once, so a malformed file fails here, naming itself) and
only the manifest is written. The figure shows a room from above coloured by label and an
object coloured by part.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from mmpd_core.config import DenseDataStage, resolve
from mmpd_core.data import dense_readers as dr
from mmpd_core.data import scannet
from mmpd_core.data.rooms import make_scene
from mmpd_core.data.shapes import sample_shape
from mmpd_core.tracking import progress

# ShapeNetPart category -> (procedural family, {procedural part name: slot in the category's
# part labels}): the families' parts merged to the category's parts, in the spirit of the
# release's labels (airplane: body / wing / tail / engine; chair: back / seat / leg / arm ...)
PART_MAP = {
    "Airplane": ("airplane", {"fuselage": 0, "wing": 1, "tail": 2, "fin": 2, "engine": 3}),
    "Car": ("car", {"body": 0, "cabin": 1, "wheel": 2}),
    "Chair": ("chair", {"back": 0, "seat": 1, "leg": 2, "arm": 3}),
    "Guitar": ("guitar", {"head": 0, "neck": 1, "body": 2, "hole": 2}),
    "Lamp": ("lamp", {"base": 0, "pole": 1, "shade": 2}),
    "Laptop": ("laptop", {"base": 0, "key": 0, "touchpad": 0, "lid": 1}),
    "Mug": ("cup", {"handle": 0, "body": 1}),
    "Table": ("table", {"top": 0, "leg": 1, "foot": 1}),
}
# the 13 S3DIS classes in the figures: the shell pale, the objects saturated
LABEL_COLOURS = np.array([
    [0.87, 0.87, 0.87], [0.78, 0.73, 0.60], [0.55, 0.55, 0.55], [1.00, 0.73, 0.47],
    [0.58, 0.40, 0.74], [0.09, 0.75, 0.81], [0.55, 0.34, 0.29], [1.00, 0.50, 0.05],
    [0.12, 0.47, 0.71], [0.89, 0.47, 0.76], [0.17, 0.63, 0.17], [0.74, 0.74, 0.13],
    [0.84, 0.15, 0.16],
])  # fmt: skip
# a room object's category -> its NYU40 id (ScanNet's point labels; boxes for the 18 classes)
NYU40_OF = {
    "wall": 1, "floor": 2, "ceiling": 22, "door": 8, "window": 9, "board": 30, "beam": 38,
    "column": 38, "chair": 5, "stool": 5, "table": 7, "desk": 14, "sofa": 6, "bookshelf": 10,
    "lamp": 35,
}  # fmt: skip
OTHERPROP = 40  # the rest of the clutter
SCANNET_DIR = "scannet_train_detection_data"
SPLIT_OFFSET = {"train": 0, "val": 10_000, "test": 20_000}  # disjoint shape indices per split


def part_shape(category: str, split: str, index: int, seed: int, num_points: int) -> dr.PartShape:
    """Shape ``index`` of ``category`` in ``split``, its points labelled with the category's
    global ShapeNetPart part labels."""
    family, slots = PART_MAP[category]
    shape = sample_shape(family, SPLIT_OFFSET[split] + index, seed, num_points)
    parts = dr.SHAPENETPART_CATEGORIES[category][1]
    lookup = np.array([parts[slots[name]] for name in shape.part_names])  # local id -> label
    return dr.PartShape(
        category=category,
        model_id=f"{family}_{split}_{index:05d}",
        points=shape.points,
        normals=shape.normals,
        labels=lookup[shape.part_ids],
    )


def write_parts(cfg: DenseDataStage, root: Path) -> Path:
    counts = {"train": cfg.part_train_per_category, "val": cfg.part_val_per_category,
              "test": cfg.part_test_per_category}  # fmt: skip
    splits = {
        split: [
            part_shape(category, split, i, cfg.seed, cfg.part_points)
            for category in PART_MAP
            for i in range(count)
        ]
        for split, count in counts.items()
    }
    return dr.write_shapenetpart(root, splits)


def scannet_scene(name: str, room: dr.Room, instances: np.ndarray, categories: dict):
    """A procedural room as a ScanNet detection scene (see the module docstring)."""
    nyu = np.array([0] + [NYU40_OF.get(c, OTHERPROP) for c in categories.values()])
    boxes = []
    for instance, category in categories.items():
        points = room.points[instances == instance]
        if NYU40_OF.get(category, OTHERPROP) in scannet.NYU40_IDS and len(points):
            low, high = points.min(0), points.max(0)
            boxes.append([*(low + high) / 2, *np.maximum(high - low, 1e-3), nyu[instance]])
    vertices = np.concatenate([room.points, room.colors], axis=1)
    return scannet.Scene(name, vertices, instances, nyu[instances],
                         np.array(boxes, dtype=np.float32).reshape(-1, 7))  # fmt: skip


def scene_name(area: int, index: int) -> str:
    return f"scene{area:02d}{index:02d}_00"


def write_rooms(cfg: DenseDataStage, root: Path) -> None:
    """Every room in the S3DIS layout, and as a ScanNet scene (Area 5: the val split)."""
    jobs = [(a, i) for a in range(1, cfg.areas + 1) for i in range(cfg.rooms_per_area)]
    splits = {"train": [], "val": []}
    for area, index in progress(jobs, desc="rooms"):
        room, instances, categories = make_scene(cfg.seed, area, index, cfg.room_density)
        dr.write_s3dis_room(root, area, room.name, room.points, room.colors, room.labels)
        name = scene_name(area, index)
        scannet.write_scene(root / SCANNET_DIR, scannet_scene(name, room, instances, categories))
        splits["val" if area == dr.S3DIS_TEST_AREA else "train"].append(name)
    for split, names in splits.items():
        scannet.write_split(root / SCANNET_DIR, split, names)


def roots(cfg: DenseDataStage) -> dict[str, Path]:
    """Where the segmentation stage reads S3DIS (the folder holding the raw release or the
    per-room arrays) and ShapeNetPart (its own folder)."""
    base = resolve(cfg.out_dir if cfg.source == "embedded" else cfg.real_root)
    return {"s3dis": base, "shapenetpart": base / dr.SHAPENETPART_DIR,
            "scannet": base / SCANNET_DIR}  # fmt: skip


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(resolve(".")))
    except ValueError:
        return str(path)


def count(rooms: list[dr.Room], shapes: dict[str, list], scannet_root: Path) -> dict:
    """Counts per area, class, split and category of what ``run_stage`` read, and of the
    ScanNet scenes (each read once here: a malformed file fails)."""
    per_class = sum(np.bincount(r.labels, minlength=len(dr.S3DIS_CLASSES)) for r in rooms)
    boxes = {}
    for split in scannet.SPLITS:
        counts = Counter()
        for scene in scannet.read_scannet(scannet_root, split):
            labels, _ = scannet.detection_targets(scene.boxes)
            counts.update(scannet.SCANNET_CLASSES[c] for c in labels)
        boxes[split] = dict(sorted(counts.items()))
    return {
        "scannet": {
            "scenes": {s: len(scannet.read_split(scannet_root, s)) for s in scannet.SPLITS},
            "boxes": boxes,
        },
        "s3dis": {
            "rooms_per_area": dict(Counter(f"Area_{room.area}" for room in rooms)),
            "points": int(sum(len(room.labels) for room in rooms)),
            "points_per_class": dict(zip(dr.S3DIS_CLASSES, per_class.tolist(), strict=True)),
        },
        "shapenetpart": {k: dict(Counter(s.category for s in v)) for k, v in shapes.items()},
    }


def run_stage(cfg: DenseDataStage) -> dict:
    """Write (embedded) or check (real) the datasets; the manifest and the figure. Every room
    and shape is read once, for the counts and the figure both."""
    out = resolve(cfg.out_dir)
    if out.exists():
        shutil.rmtree(out)  # a previous run: nothing stale survives
    out.mkdir(parents=True)
    where = roots(cfg)
    if cfg.source == "embedded":
        write_rooms(cfg, out)
        write_parts(cfg, out)
    rooms = dr.read_s3dis(where["s3dis"], range(1, cfg.areas + 1))
    shapes = {s: dr.read_shapenetpart(where["shapenetpart"], s) for s in dr.SHAPENETPART_SPLITS}
    manifest = {
        "config": dataclasses.asdict(cfg),
        "roots": {k: _relative(v) for k, v in where.items()},
        "counts": count(rooms, shapes, where["scannet"]),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    test_rooms = [room for room in rooms if room.area == dr.S3DIS_TEST_AREA]
    figure(test_rooms, shapes["test"], resolve(cfg.figure))
    return manifest


# --- what a person looks at -------------------------------------------------------------------


def top_view(ax, room: dr.Room, labels: np.ndarray, title: str) -> None:
    """A room from above, each point coloured by its (S3DIS) label; the ceiling left out."""
    keep = labels != dr.S3DIS_CLASSES.index("ceiling")
    order = np.argsort(room.points[keep, 2])  # higher points drawn last
    xy, lab = room.points[keep][order], labels[keep][order]
    sizes = np.where(lab <= dr.S3DIS_CLASSES.index("wall"), 0.15, 0.8)
    ax.scatter(xy[:, 0], xy[:, 1], c=LABEL_COLOURS[lab], s=sizes, linewidths=0)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def legend(fig) -> None:
    handles = [plt.Line2D([], [], ls="", marker="o", color=LABEL_COLOURS[i], label=name)
               for i, name in enumerate(dr.S3DIS_CLASSES)]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=7, fontsize=7, frameon=False)


def figure(test_rooms: list[dr.Room], test_shapes: list, path: Path) -> Path:
    """Two rooms of the test area from above, and one object per category by part."""
    test_rooms = test_rooms[:2]
    shapes = {}
    for shape in test_shapes:
        shapes.setdefault(shape.category, shape)
    columns = len(test_rooms) + min(len(shapes), 4)
    fig = plt.figure(figsize=(3 * columns, 3.6))
    for i, room in enumerate(test_rooms):
        top_view(fig.add_subplot(1, columns, i + 1), room, room.labels, f"{room.name} (labels)")
    cmap = plt.get_cmap("tab10")
    for j, shape in enumerate(list(shapes.values())[: columns - len(test_rooms)]):
        ax = fig.add_subplot(1, columns, len(test_rooms) + j + 1, projection="3d")
        parts = dr.SHAPENETPART_CATEGORIES[shape.category][1]
        local = np.searchsorted(parts, shape.labels)
        p = shape.points
        ax.scatter(p[:, 0], p[:, 2], p[:, 1], c=cmap(local % 10), s=1, linewidths=0)
        ax.view_init(elev=20, azim=-60)
        ax.set_axis_off()
        ax.set_title(f"{shape.category} (parts)", fontsize=9)
    legend(fig)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
