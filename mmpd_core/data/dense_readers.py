"""Readers and writers of the official layouts of the dense-prediction datasets (S3DIS semantic
segmentation, ShapeNetPart part segmentation), in the style of ``readers``. Roots:

- S3DIS: the directory holding either the raw release
  ``Stanford3dDataset_v1.2_Aligned_Version/Area_{1..6}/<room>/Annotations/<class>_<k>.txt`` (one
  file per object, lines ``x y z r g b``; the room's whole ``<room>.txt`` beside ``Annotations``
  is not read) or the common preprocessing (PointNet's ``collect_indoor3d``): one (N, 7)
  ``x y z r g b label`` array per room, ``Area_<k>_<room>.npy``, in ``raw/`` or in the root
  itself. A room is its annotation files concatenated and shifted to min xyz = 0; labels index
  ``S3DIS_CLASSES`` (``stairs`` is clutter, as upstream). Area 5 is the test area.
- ShapeNetPart: the ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` directory itself,
  holding ``synsetoffset2category.txt`` (``<name> <synset>`` lines),
  ``train_test_split/shuffled_{train,val,test}_file_list.json`` (JSON lists of
  ``"shape_data/<synset>/<model id>"``) and ``<synset>/<model id>.txt`` (lines
  ``x y z nx ny nz label``, the label a float such as ``12.000000``). Labels are the 50 global
  part labels; each category owns a contiguous range (``SHAPENETPART_CATEGORIES``).

Readers return float32 points and int64 labels. A missing file raises FileNotFoundError, a
malformed one ValueError; both messages name the file and what was expected, text files also the
line (wrong column count, non-numeric, NaN or Inf).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpd_core.data.readers import _check_labels, _check_points, _require_file

S3DIS_CLASSES = tuple(
    "ceiling floor wall beam column window door table chair sofa bookcase board clutter".split()
)
S3DIS_ALIASES = {"stairs": "clutter"}  # the release's one class outside the 13
S3DIS_RAW = "Stanford3dDataset_v1.2_Aligned_Version"
S3DIS_TEST_AREA = 5
_S3DIS_NPY_DIR = "raw"  # e.g. s3disfull/raw/Area_5_office_1.npy; the root itself is tried next
_S3DIS_NPY_NAME = re.compile(r"Area_(\d+)_(.+)\.npy")
_S3DIS_RAW_COLUMNS = "x y z r g b"

SHAPENETPART_DIR = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
SHAPENETPART_CATEGORIES: dict[str, tuple[str, tuple[int, ...]]] = {
    "Airplane": ("02691156", (0, 1, 2, 3)),
    "Bag": ("02773838", (4, 5)),
    "Cap": ("02954340", (6, 7)),
    "Car": ("02958343", (8, 9, 10, 11)),
    "Chair": ("03001627", (12, 13, 14, 15)),
    "Earphone": ("03261776", (16, 17, 18)),
    "Guitar": ("03467517", (19, 20, 21)),
    "Knife": ("03624134", (22, 23)),
    "Lamp": ("03636649", (24, 25, 26, 27)),
    "Laptop": ("03642806", (28, 29)),
    "Motorbike": ("03790512", (30, 31, 32, 33, 34, 35)),
    "Mug": ("03797390", (36, 37)),
    "Pistol": ("03948459", (38, 39, 40)),
    "Rocket": ("04099429", (41, 42, 43)),
    "Skateboard": ("04225987", (44, 45, 46)),
    "Table": ("04379243", (47, 48, 49)),
}
SHAPENETPART_SPLITS = ("train", "val", "test")
SHAPENETPART_NUM_PARTS = 50
_SHAPENETPART_CATEGORY_FILE = "synsetoffset2category.txt"
_SHAPENETPART_COLUMNS = "x y z nx ny nz label"


# --- shared text-table parsing ----------------------------------------------------------------


def _bad_line(path: Path, columns: int) -> str | None:
    """The first offending line of a whitespace-separated table, described; None if none is."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != columns:
            return f"line {number}: expected {columns} columns, got {len(tokens)}"
        for token in tokens:
            try:
                value = float(token)
            except ValueError:
                return f"line {number}: non-numeric value {token.decode('latin-1')!r}"
            if not np.isfinite(value):
                return f"line {number}: NaN or Inf value {token.decode('latin-1')!r}"
    return None


def _read_table(path: Path, columns: int, what: str, layout: str) -> np.ndarray:
    """The finite float64 (N, columns) rows of a whitespace-separated text file; N > 0."""
    _require_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            table = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None)
        problem = None
    except ValueError as exc:
        table, problem = None, f"({exc})"
    if table is None or (table.size and table.shape[1] != columns) or not np.isfinite(table).all():
        problem = _bad_line(path, columns) or problem
        raise ValueError(f"{path}: {problem}; expected lines '{layout}'")
    if table.size == 0:
        raise ValueError(f"{path}: empty file; expected lines '{layout}'")
    return table


def _integer_valued(values: np.ndarray, source) -> np.ndarray:
    """Float labels that must be whole numbers (e.g. ``12.000000``) -> int64."""
    fractional = values != np.round(values)
    if fractional.any():
        first = float(values[fractional][0])
        raise ValueError(f"{source}: labels must be integer-valued, got {first}")
    return values.astype(np.int64)


# --- S3DIS ------------------------------------------------------------------------------------


@dataclass
class Room:
    area: int
    name: str  # e.g. "office_1"
    points: np.ndarray  # (N, 3) float32, shifted so the min xyz is 0
    colors: np.ndarray  # (N, 3) float32 in 0..255
    labels: np.ndarray  # (N,) int64 in 0..12


def _make_room(area: int, name: str, xyz, colors, labels, source) -> Room:
    """Check a room's arrays; shift the points (in float64) so their min is 0."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim == 2 and xyz.shape[0] > 0:
        xyz = xyz - xyz.min(axis=0)
    points = _check_points(xyz, source, channels=3)
    colors = _check_points(colors, source, channels=3)
    if len(colors) != len(points):
        raise ValueError(f"{source}: {len(points)} points but {len(colors)} colours")
    if colors.min() < 0 or colors.max() > 255:
        raise ValueError(f"{source}: colours must lie in 0..255")
    labels = _check_labels(labels, source, len(points), len(S3DIS_CLASSES))
    return Room(int(area), name, points, colors, labels)


def s3dis_class_of(path: Path) -> int:
    """Label of an annotation file ``<class>_<k>.txt``; ``stairs`` counts as clutter."""
    path = Path(path)
    name, sep, number = path.stem.rpartition("_")
    if not (sep and name and number.isdigit()):
        raise ValueError(f"{path}: S3DIS annotation files are named '<class>_<k>.txt'")
    name = S3DIS_ALIASES.get(name, name)
    if name not in S3DIS_CLASSES:
        raise ValueError(f"{path}: unknown S3DIS class {name!r}; expected one of {S3DIS_CLASSES}")
    return S3DIS_CLASSES.index(name)


def _area_number(folder_name: str, source) -> int:
    match = re.fullmatch(r"Area_(\d+)", folder_name)
    if not match:
        raise ValueError(f"{source}: expected a room folder inside 'Area_<k>'")
    return int(match.group(1))


def read_s3dis_room(room_dir: str | Path) -> Room:
    """One raw room: ``Area_<k>/<room>/Annotations/<class>_<k>.txt`` concatenated and shifted."""
    room_dir = Path(room_dir)
    annotations = room_dir / "Annotations"
    if not annotations.is_dir():
        raise FileNotFoundError(f"{annotations}: S3DIS annotation folder not found")
    area = _area_number(room_dir.parent.name, room_dir)
    files = sorted(annotations.glob("*.txt"))
    if not files:
        raise ValueError(f"{annotations}: empty room, no '<class>_<k>.txt' annotation files")
    tables, labels = [], []
    for path in files:
        label = s3dis_class_of(path)
        table = _read_table(path, 6, "S3DIS annotation file", _S3DIS_RAW_COLUMNS)  # (n, 6)
        tables.append(table)
        labels.append(np.full(len(table), label, dtype=np.int64))
    table = np.concatenate(tables)  # (N, 6)
    return _make_room(
        area, room_dir.name, table[:, :3], table[:, 3:], np.concatenate(labels), annotations
    )


def write_s3dis_room(root: str | Path, area: int, name: str, points, colors, labels) -> Path:
    """Write ``root/Stanford3dDataset_v1.2_Aligned_Version/Area_<area>/<name>/``: one
    ``Annotations/<class>_1.txt`` per class present and the whole-room ``<name>.txt``.

    Stale annotation files of that room are removed first. Colours are rounded to integers.
    """
    room_dir = Path(root) / S3DIS_RAW / f"Area_{int(area)}" / name
    points = _check_points(points, room_dir, channels=3)
    colors = np.rint(_check_points(colors, room_dir, channels=3))
    if len(colors) != len(points) or colors.min() < 0 or colors.max() > 255:
        raise ValueError(f"{room_dir}: expected {len(points)} colours in 0..255")
    labels = _check_labels(labels, room_dir, len(points), len(S3DIS_CLASSES))
    annotations = room_dir / "Annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    for stale in annotations.glob("*.txt"):
        stale.unlink()
    rows = np.concatenate([points, colors], axis=1)  # (N, 6)
    fmt = ["%.6f"] * 3 + ["%d"] * 3
    for label in np.unique(labels):
        path = annotations / f"{S3DIS_CLASSES[label]}_1.txt"
        np.savetxt(path, rows[labels == label], fmt=fmt, delimiter=" ")
    np.savetxt(room_dir / f"{name}.txt", rows, fmt=fmt, delimiter=" ")
    return room_dir


def _parse_npy_name(path: Path) -> tuple[int, str]:
    match = _S3DIS_NPY_NAME.fullmatch(path.name)
    if not match:
        raise ValueError(f"{path}: preprocessed S3DIS rooms are named 'Area_<k>_<room>.npy'")
    return int(match.group(1)), match.group(2)


def read_s3dis_npy(path: str | Path) -> Room:
    """One preprocessed room: an (N, 7) ``x y z r g b label`` array in ``Area_<k>_<room>.npy``."""
    path = Path(path)
    area, name = _parse_npy_name(path)
    _require_file(path, "S3DIS room array")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: expected an .npy array of shape (N, 7) ({exc})") from exc
    if array.ndim == 2 and array.shape[0] == 0:
        raise ValueError(f"{path}: empty room, the array has no rows")
    _check_points(array, path, channels=7)  # shape, numeric, finite
    array = array.astype(np.float64, copy=False)  # (N, 7)
    labels = _integer_valued(array[:, 6], path)
    return _make_room(area, name, array[:, :3], array[:, 3:6], labels, path)


def write_s3dis_npy(folder: str | Path, room: Room) -> Path:
    """Save ``room`` as ``folder/Area_<k>_<room>.npy``, an (N, 7) float32 array."""
    path = Path(folder) / f"Area_{room.area}_{room.name}.npy"
    points = _check_points(room.points, path, channels=3)
    colors = _check_points(room.colors, path, channels=3)
    labels = _check_labels(room.labels, path, len(points), len(S3DIS_CLASSES))
    if len(colors) != len(points):
        raise ValueError(f"{path}: {len(points)} points but {len(colors)} colours")
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.concatenate([points, colors, labels[:, None].astype(np.float32)], axis=1)
    np.save(path, array)  # (N, 7)
    return path


def _s3dis_npy_files(root: Path) -> list[Path]:
    """``Area_*.npy`` files of the first of ``root/raw``, ``root`` that has any."""
    for folder in (root / _S3DIS_NPY_DIR, root):
        files = sorted(folder.glob("Area_*.npy")) if folder.is_dir() else []
        if files:
            return files
    return []


def read_s3dis(root: str | Path, areas: Sequence[int]) -> list[Room]:
    """All rooms of ``areas``, sorted by (area, name).

    The preprocessed ``Area_<k>_<room>.npy`` files are read when present (in ``root/raw`` or
    ``root``), else the raw release in ``root/Stanford3dDataset_v1.2_Aligned_Version``.
    """
    root = Path(root)
    wanted = sorted({int(area) for area in areas})
    npy_files = _s3dis_npy_files(root)
    raw = root / S3DIS_RAW
    if npy_files:
        by_area: dict[int, list[Path]] = {}
        for path in npy_files:
            by_area.setdefault(_parse_npy_name(path)[0], []).append(path)
        where, found = npy_files[0].parent, by_area
    elif raw.is_dir():
        where = raw
        found = {
            area: sorted(d for d in (raw / f"Area_{area}").iterdir() if d.is_dir())
            for area in wanted
            if (raw / f"Area_{area}").is_dir()
        }
    else:
        raise FileNotFoundError(
            f"{root}: no S3DIS data found; looked for {S3DIS_RAW}/Area_<k>/<room>/Annotations/ "
            f"and Area_<k>_<room>.npy files in {root / _S3DIS_NPY_DIR} and {root}"
        )
    rooms = []
    for area in wanted:
        if not found.get(area):
            raise ValueError(f"{where}: no rooms of Area_{area}")
        read = read_s3dis_npy if npy_files else read_s3dis_room
        rooms.extend(read(path) for path in found[area])
    return sorted(rooms, key=lambda room: (room.area, room.name))


# --- ShapeNetPart -----------------------------------------------------------------------------


@dataclass
class PartShape:
    category: str  # e.g. "Chair"
    model_id: str
    points: np.ndarray  # (N, 3) float32
    normals: np.ndarray  # (N, 3) float32
    labels: np.ndarray  # (N,) int64 global part labels, all within the category's parts


def _check_parts(labels: np.ndarray, category: str, source) -> None:
    parts = SHAPENETPART_CATEGORIES[category][1]
    outside = ~np.isin(labels, parts)
    if outside.any():
        raise ValueError(
            f"{source}: label {labels[outside][0]} is not a part of {category} "
            f"(allowed {parts[0]}..{parts[-1]})"
        )


def _split_path(root: Path, split: str) -> Path:
    if split not in SHAPENETPART_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SHAPENETPART_SPLITS}")
    return root / "train_test_split" / f"shuffled_{split}_file_list.json"


def read_shapenetpart_categories(root: str | Path) -> dict[str, str]:
    """``{name: synset}`` of ``synsetoffset2category.txt``, in file order."""
    path = _require_file(Path(root) / _SHAPENETPART_CATEGORY_FILE, "ShapeNetPart category list")
    categories: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{path} line {number}: expected '<name> <synset>', got {line!r}")
        name, synset = fields
        if name not in SHAPENETPART_CATEGORIES or SHAPENETPART_CATEGORIES[name][0] != synset:
            raise ValueError(
                f"{path} line {number}: {name} {synset} is not one of the 16 ShapeNetPart "
                "categories"
            )
        if name in categories:
            raise ValueError(f"{path} line {number}: duplicate category {name}")
        categories[name] = synset
    if not categories:
        raise ValueError(f"{path}: ShapeNetPart category list is empty")
    return categories


def read_shapenetpart_split(root: str | Path, split: str) -> list[tuple[str, str]]:
    """``[(synset, model id)]`` of ``train_test_split/shuffled_<split>_file_list.json``."""
    path = _require_file(_split_path(Path(root), split), f"ShapeNetPart {split} list")
    try:
        items = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of 'shape_data/<synset>/<model id>'")
    shapes = []
    for i, item in enumerate(items):
        parts = item.split("/") if isinstance(item, str) else []
        if len(parts) != 3 or parts[0] != "shape_data" or not (parts[1] and parts[2]):
            raise ValueError(
                f"{path} item {i}: expected 'shape_data/<synset>/<model id>', got {item!r}"
            )
        shapes.append((parts[1], parts[2]))
    return shapes


def read_shapenetpart_shape(
    root: str | Path, synset: str, model_id: str, categories: dict[str, str] | None = None
) -> PartShape:
    """One ``<synset>/<model id>.txt``; ``categories`` defaults to the root's category list."""
    root = Path(root)
    if categories is None:
        categories = read_shapenetpart_categories(root)
    names = {value: key for key, value in categories.items()}
    path = root / synset / f"{model_id}.txt"
    if synset not in names:
        raise ValueError(f"{path}: synset {synset} is not in {_SHAPENETPART_CATEGORY_FILE}")
    table = _read_table(path, 7, "ShapeNetPart shape file", _SHAPENETPART_COLUMNS)  # (N, 7)
    labels = _check_labels(
        _integer_valued(table[:, 6], path), path, len(table), SHAPENETPART_NUM_PARTS
    )
    _check_parts(labels, names[synset], path)
    return PartShape(
        names[synset],
        model_id,
        _check_points(table[:, :3], path, channels=3),
        _check_points(table[:, 3:6], path, channels=3),
        labels,
    )


def read_shapenetpart(root: str | Path, split: str) -> list[PartShape]:
    """Every shape of ``split``, in the order of its JSON list."""
    categories = read_shapenetpart_categories(root)
    return [
        read_shapenetpart_shape(root, synset, model_id, categories)
        for synset, model_id in read_shapenetpart_split(root, split)
    ]


def write_shapenetpart(root: str | Path, splits: Mapping[str, Sequence[PartShape]]) -> Path:
    """Write the whole layout under ``root/shapenetcore_partanno_segmentation_benchmark_v0_normal``
    (all 16 categories, all three split lists, empty for a split not given); return that folder.
    """
    out = Path(root) / SHAPENETPART_DIR
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}\t{synset}\n" for name, (synset, _) in SHAPENETPART_CATEGORIES.items()]
    (out / _SHAPENETPART_CATEGORY_FILE).write_text("".join(lines))
    for split in splits:
        _split_path(out, split)  # rejects an unknown split before anything else is written
    for split in SHAPENETPART_SPLITS:
        entries = []
        for shape in splits.get(split, ()):
            if shape.category not in SHAPENETPART_CATEGORIES:
                raise ValueError(f"{shape.model_id}: unknown ShapeNetPart category")
            synset = SHAPENETPART_CATEGORIES[shape.category][0]
            path = out / synset / f"{shape.model_id}.txt"
            points = _check_points(shape.points, path, channels=3)
            normals = _check_points(shape.normals, path, channels=3)
            if len(normals) != len(points):
                raise ValueError(f"{path}: {len(points)} points but {len(normals)} normals")
            labels = _check_labels(shape.labels, path, len(points), SHAPENETPART_NUM_PARTS)
            _check_parts(labels, shape.category, path)
            path.parent.mkdir(exist_ok=True)
            rows = np.concatenate([points, normals, labels[:, None].astype(np.float32)], axis=1)
            np.savetxt(path, rows, fmt="%.6f", delimiter=" ")  # (N, 7)
            entries.append(f"shape_data/{synset}/{shape.model_id}")
        split_path = _split_path(out, split)
        split_path.parent.mkdir(exist_ok=True)
        split_path.write_text(json.dumps(entries))
    return out
