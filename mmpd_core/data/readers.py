"""Readers and writers of the real datasets' official layouts (REFERENCE.md, "Dataset layouts").

Each reader accepts the released files unchanged; the writer next to it produces the same layout
(the procedural datasets are written this way, and so are the test fixtures). Roots:

- ShapeNet-55: the ``ShapeNet55-34`` directory, holding ``ShapeNet-55/{train,test}.txt`` and
  ``shapenet_pc/<synset>-<model id>.npy``;
- ModelNet40: the ``modelnet40_normal_resampled`` directory itself, holding
  ``modelnet40_shape_names.txt``, ``modelnet40_{train,test}.txt``, ``<class>/<id>.txt`` and the
  cached ``modelnet40_{train,test}_{N}pts_fps.dat`` (where the upstream loaders keep them);
- ModelNetFewshot: the ``ModelNetFewshot`` directory, holding ``{way}way_{shot}shot/{fold}.pkl``;
- ScanObjectNN: the directory holding ``main_split/`` and ``main_split_nobg/``.

Splits are called ``"train"`` and ``"test"`` everywhere. Readers return float32 points and int64
labels as numpy arrays. A missing file raises FileNotFoundError, a malformed one ValueError; both
messages name the file and what was expected. Pickles go through ``safe_pickle``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from mmpd_core.data.safe_pickle import dump_pickle, load_pickle

SPLITS = ("train", "test")
SHAPENET_LISTS, SHAPENET_POINTS = "ShapeNet-55", "shapenet_pc"
MODELNET_SHAPE_NAMES = "modelnet40_shape_names.txt"
SCANOBJECTNN_CLASSES = tuple(
    "bag bin box cabinet chair desk display door shelf table bed pillow sink sofa toilet".split()
)
# subset -> (folder, file-name suffix) of {training,test}_objectdataset<suffix>.h5
SCANOBJECTNN_FILES = {
    "obj_bg": ("main_split", ""),
    "obj_only": ("main_split_nobg", ""),
    "pb_t50_rs": ("main_split", "_augmentedrot_scale75"),
}


# --- shared checks ---------------------------------------------------------------------------


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    return split


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def _read_list(path: Path, what: str) -> list[str]:
    """Non-empty stripped lines of a text list file that must exist and list something."""
    lines = [line.strip() for line in _require_file(path, what).read_text().splitlines()]
    names = [line for line in lines if line]
    if not names:
        raise ValueError(f"{path}: {what} is empty")
    return names


def _write_list(path: Path, names: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in names))


def _check_points(points, source, *, channels: int, batched: bool = False) -> np.ndarray:
    """A finite numeric (N, channels) array, or (M, N, channels) if ``batched``, as float32."""
    points = np.asarray(points)
    expected = f"(M, N, {channels})" if batched else f"(N, {channels})"
    numeric = np.issubdtype(points.dtype, np.number)
    if points.ndim != 2 + batched or points.shape[-1] != channels or not numeric:
        raise ValueError(
            f"{source}: expected a {expected} point array, got {points.dtype} {points.shape}"
        )
    if points.size == 0:
        raise ValueError(f"{source}: expected a {expected} point array, got an empty one")
    if not np.isfinite(points).all():
        raise ValueError(f"{source}: point array holds NaN or Inf values")
    return points.astype(np.float32, copy=False)


def _check_labels(labels, source, count: int, num_classes: int | None) -> np.ndarray:
    """Integer labels (count,) in 0..num_classes-1 (or just >= 0 when ``num_classes`` is None)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]  # (M,)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{source}: expected {count} integer labels, got {labels.dtype} {labels.shape}"
        )
    top = np.inf if num_classes is None else num_classes - 1
    if count and (labels.min() < 0 or labels.max() > top):
        allowed = "be non-negative" if num_classes is None else f"lie in 0..{top}"
        raise ValueError(f"{source}: labels must {allowed}")
    return labels.astype(np.int64)


def _label_value(label, source) -> int:
    """One integer label stored as an int, a numpy integer or an array of shape (1,)."""
    array = np.asarray(label)
    if array.size != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{source}: expected one integer label, got {array.dtype} {array.shape}")
    return int(array.reshape(-1)[0])


def _stack_clouds(clouds: Sequence, source, keep_normals: bool) -> np.ndarray:
    """(M, N, 6) clouds from a pickle -> float32 (M, N, 3 or 6); every cloud must have N points."""
    channels = 6 if keep_normals else 3
    checked = [_check_points(c, f"{source} item {i}", channels=6) for i, c in enumerate(clouds)]
    sizes = {len(c) for c in checked}
    if len(sizes) > 1:
        raise ValueError(f"{source}: clouds differ in size ({sorted(sizes)}); expected one N")
    return np.stack([c[:, :channels] for c in checked])  # (M, N, channels)


# --- ShapeNet-55 (Point-BERT release) ---------------------------------------------------------


def parse_shapenet_name(name: str) -> tuple[str, str]:
    """``'02691156-<model id>.npy'`` -> (synset, model id); split on the first '-' only."""
    synset, sep, model = name.removesuffix(".npy").partition("-")
    if not (name.endswith(".npy") and sep and synset and model):
        raise ValueError(f"ShapeNet-55 names look like '<synset>-<model id>.npy', got {name!r}")
    return synset, model


def shapenet55_split_path(root: str | Path, split: str) -> Path:
    return Path(root) / SHAPENET_LISTS / f"{_check_split(split)}.txt"


def shapenet55_point_path(root: str | Path, name: str) -> Path:
    return Path(root) / SHAPENET_POINTS / name


def read_shapenet55_split(root: str | Path, split: str) -> list[str]:
    """The file names listed in ``ShapeNet-55/<split>.txt``; each must exist in ``shapenet_pc/``."""
    path = shapenet55_split_path(root, split)
    names = _read_list(path, f"ShapeNet-55 {split} list")
    for name in names:
        try:
            parse_shapenet_name(name)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    missing = [name for name in names if not shapenet55_point_path(root, name).is_file()]
    if missing:
        folder = Path(root) / SHAPENET_POINTS
        raise FileNotFoundError(
            f"{path} lists {len(missing)} shapes with no file in {folder}, e.g. {missing[0]}"
        )
    return names


def shapenet55_synsets(root: str | Path) -> list[str]:
    """Sorted synsets named in the train and test lists (labels index into this list)."""
    names = [
        n for s in SPLITS for n in _read_list(shapenet55_split_path(root, s), "ShapeNet-55 list")
    ]
    return sorted({parse_shapenet_name(name)[0] for name in names})


def read_shapenet55_points(root: str | Path, name: str) -> np.ndarray:
    """The float32 (N, 3) points of ``shapenet_pc/<name>`` (N = 8192 in the release)."""
    path = _require_file(shapenet55_point_path(root, name), "ShapeNet-55 point file")
    try:
        points = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: expected an .npy array of shape (N, 3) ({exc})") from exc
    return _check_points(points, path, channels=3)


def write_shapenet55(
    root: str | Path, split_to_items: Mapping[str, Mapping[str, np.ndarray]]
) -> None:
    """Write ``{split: {'<synset>-<model id>.npy': points (N, 3)}}`` in the Point-BERT layout."""
    for split, items in split_to_items.items():
        for name, points in items.items():
            parse_shapenet_name(name)
            path = shapenet55_point_path(root, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, _check_points(points, name, channels=3))
        _write_list(shapenet55_split_path(root, split), items)


# --- ModelNet40 (modelnet40_normal_resampled) -------------------------------------------------


def modelnet40_class_of(shape_id: str) -> str:
    """``'night_stand_0001'`` -> ``'night_stand'``: drop only the trailing ``_NNNN``."""
    name, sep, number = shape_id.rpartition("_")
    if not (sep and name and number.isdigit()):
        raise ValueError(f"ModelNet40 ids look like '<class>_NNNN', got {shape_id!r}")
    return name


def modelnet40_split_path(root: str | Path, split: str) -> Path:
    return Path(root) / f"modelnet40_{_check_split(split)}.txt"


def modelnet40_shape_path(root: str | Path, shape_id: str) -> Path:
    return Path(root) / modelnet40_class_of(shape_id) / f"{shape_id}.txt"


def modelnet40_dat_path(root: str | Path, split: str, num_points: int = 8192) -> Path:
    return Path(root) / f"modelnet40_{_check_split(split)}_{num_points}pts_fps.dat"


def find_modelnet40_dat(root: str | Path, split: str) -> Path | None:
    """The cached ``modelnet40_<split>_<N>pts_fps.dat`` with the most points under ``root``
    (the standard download holds N = 8192), or None when there is none."""
    found = {}
    for path in Path(root).glob(f"modelnet40_{_check_split(split)}_*pts_fps.dat"):
        count = path.name.removeprefix(f"modelnet40_{split}_").removesuffix("pts_fps.dat")
        if count.isdigit():
            found[int(count)] = path
    return found[max(found)] if found else None


def read_modelnet40_shape_names(root: str | Path) -> list[str]:
    """Class names of ``modelnet40_shape_names.txt``; the line index is the label."""
    path = Path(root) / MODELNET_SHAPE_NAMES
    names = _read_list(path, "ModelNet40 class list")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: class names must be unique")
    return names


def read_modelnet40_split(root: str | Path, split: str) -> tuple[list[str], np.ndarray]:
    """Shape ids of ``modelnet40_<split>.txt`` and their int64 labels; every file must exist."""
    classes = read_modelnet40_shape_names(root)
    path = modelnet40_split_path(root, split)
    ids = _read_list(path, f"ModelNet40 {split} list")
    labels = []
    for shape_id in ids:
        try:
            labels.append(classes.index(modelnet40_class_of(shape_id)))
        except ValueError:
            raise ValueError(
                f"{path}: {shape_id!r} names no class of {MODELNET_SHAPE_NAMES}"
            ) from None
    missing = [i for i in ids if not modelnet40_shape_path(root, i).is_file()]
    if missing:
        example = modelnet40_shape_path(root, missing[0])
        raise FileNotFoundError(f"{path} lists {len(missing)} shapes with no file, e.g. {example}")
    return ids, np.array(labels, dtype=np.int64)


def read_modelnet40_shape(path: str | Path) -> np.ndarray:
    """The float32 (N, 6) ``x,y,z,nx,ny,nz`` rows of one shape file (N = 10,000 in the release)."""
    path = _require_file(Path(path), "ModelNet40 shape file")
    try:
        points = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: expected lines 'x,y,z,nx,ny,nz' ({exc})") from exc
    return _check_points(points, path, channels=6)


def write_modelnet40(
    root: str | Path,
    shape_names: Sequence[str],
    split_to_items: Mapping[str, Mapping[str, np.ndarray]],
) -> None:
    """Write the class list, ``{split: {'<class>_NNNN': points (N, 6)}}`` lists and shape files."""
    _write_list(Path(root) / MODELNET_SHAPE_NAMES, shape_names)
    for split, items in split_to_items.items():
        for shape_id, points in items.items():
            if modelnet40_class_of(shape_id) not in shape_names:
                raise ValueError(f"{shape_id!r} names no class of {list(shape_names)}")
            path = modelnet40_shape_path(root, shape_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(path, _check_points(points, shape_id, channels=6), fmt="%.6f", delimiter=",")
        _write_list(modelnet40_split_path(root, split), items)


def read_modelnet40_dat(
    path: str | Path, *, keep_normals: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A cached ``modelnet40_<split>_<N>pts_fps.dat``: pickled ``[list_of_points, list_of_labels]``.

    Returns float32 points (M, N, 3), or (M, N, 6) with ``keep_normals``, and int64 labels (M,).
    """
    payload = load_pickle(path)
    ok = isinstance(payload, (list, tuple)) and len(payload) == 2
    if not (ok and all(isinstance(p, (list, tuple)) for p in payload)):
        raise ValueError(f"{path}: expected a pickled [list_of_points, list_of_labels]")
    clouds, labels = payload
    if len(clouds) != len(labels) or not clouds:
        raise ValueError(f"{path}: {len(clouds)} clouds but {len(labels)} labels")
    label_values = [_label_value(label, f"{path} item {i}") for i, label in enumerate(labels)]
    points = _stack_clouds(clouds, path, keep_normals)  # (M, N, 3 or 6)
    return points, _check_labels(label_values, path, len(clouds), None)


def write_modelnet40_dat(path: str | Path, points: Sequence[np.ndarray], labels) -> Path:
    """Pickle ``[points float32 (N, 6) each, labels int32 (1,) each]`` like the upstream cache."""
    clouds = [_check_points(p, f"{path} item {i}", channels=6) for i, p in enumerate(points)]
    label_arrays = [np.array([label], dtype=np.int32) for label in labels]
    dump_pickle([clouds, label_arrays], path)
    return Path(path)


# --- ModelNetFewshot --------------------------------------------------------------------------


def fewshot_path(root: str | Path, way: int, shot: int, fold: int) -> Path:
    return Path(root) / f"{way}way_{shot}shot" / f"{fold}.pkl"


def _fewshot_split(items, source: str, way: int, keep_normals: bool) -> tuple:
    """Check and stack one split's list of (points (N, 6), label, class id)."""
    triples = all(isinstance(t, (tuple, list)) and len(t) == 3 for t in items)
    if not (isinstance(items, list) and items and triples):
        raise ValueError(f"{source}: expected a non-empty list of (points, label, class id)")
    labels = [_label_value(t[1], f"{source} item {i}") for i, t in enumerate(items)]
    class_ids = [_label_value(t[2], f"{source} item {i}") for i, t in enumerate(items)]
    return (
        _stack_clouds([t[0] for t in items], source, keep_normals),  # (M, N, C)
        _check_labels(labels, source, len(items), way),
        np.array(class_ids, dtype=np.int64),
    )


def read_fewshot_fold(
    root: str | Path, way: int, shot: int, fold: int, *, keep_normals: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One episode: ``{split: (points (M, N, 3 or 6), labels (M,), ModelNet class ids (M,))}``.

    The pickle holds ``{'train': [...], 'test': [...]}`` lists of (points (N, 6), label in
    0..way-1, original ModelNet class id).
    """
    path = fewshot_path(root, way, shot, fold)
    payload = load_pickle(path)
    if not (isinstance(payload, dict) and set(SPLITS) <= payload.keys()):
        raise ValueError(f"{path}: expected a pickled dict with 'train' and 'test' lists")
    return {
        split: _fewshot_split(payload[split], f"{path} [{split}]", way, keep_normals)
        for split in SPLITS
    }


def write_fewshot_fold(
    root: str | Path, way: int, shot: int, fold: int, episode: Mapping[str, Sequence[tuple]]
) -> Path:
    """Pickle ``{'train': [(points (N, 6), label, class id), ...], 'test': [...]}``."""
    path = fewshot_path(root, way, shot, fold)
    payload = {
        split: [
            (_check_points(p, f"{path} [{split}]", channels=6), int(label), int(class_id))
            for p, label, class_id in episode[split]
        ]
        for split in SPLITS
    }
    dump_pickle(payload, path)
    return path


# --- ScanObjectNN (h5) ------------------------------------------------------------------------


def scanobjectnn_path(root: str | Path, subset: str, split: str) -> Path:
    """``main_split[_nobg]/{training,test}_objectdataset[_augmentedrot_scale75].h5``."""
    if subset not in SCANOBJECTNN_FILES:
        raise ValueError(
            f"unknown ScanObjectNN subset {subset!r}; choose from {list(SCANOBJECTNN_FILES)}"
        )
    folder, suffix = SCANOBJECTNN_FILES[subset]
    stem = "training" if _check_split(split) == "train" else "test"
    return Path(root) / folder / f"{stem}_objectdataset{suffix}.h5"


def read_scanobjectnn(
    root: str | Path, subset: str, split: str, num_classes: int = len(SCANOBJECTNN_CLASSES)
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 points (M, N, 3) (N = 2048 in the release) and int64 labels (M,) in 0..14.

    ``num_classes`` bounds the labels (15 in the release and in ``synthetic.SCAN_CATEGORIES``).
    """
    path = _require_file(scanobjectnn_path(root, subset, split), f"ScanObjectNN {subset} file")
    try:
        with h5py.File(path, "r") as h5:
            missing = {"data", "label"} - set(h5.keys())
            if missing:
                raise ValueError(f"{path}: HDF5 file lacks dataset(s) {sorted(missing)}")
            points, labels = h5["data"][()], h5["label"][()]
    except OSError as exc:
        raise ValueError(
            f"{path}: not a readable HDF5 file with 'data' and 'label' ({exc})"
        ) from exc
    points = _check_points(points, path, channels=3, batched=True)
    return points, _check_labels(labels, path, len(points), num_classes)


def write_scanobjectnn(
    root: str | Path,
    subset: str,
    split: str,
    points: np.ndarray,
    labels,
    mask=None,
    num_classes: int = len(SCANOBJECTNN_CLASSES),
) -> Path:
    """Write ``data`` (M, N, 3) float32, ``label`` (M,) and the per-point ``mask`` (M, N).

    The readers ignore ``mask``; it is written (zeros unless given) so the file has every key.
    """
    path = scanobjectnn_path(root, subset, split)
    points = _check_points(points, path, channels=3, batched=True)
    labels = _check_labels(labels, path, len(points), num_classes)
    mask = np.zeros(points.shape[:2], dtype=np.int8) if mask is None else np.asarray(mask)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("data", data=points)
        h5.create_dataset("label", data=labels)
        h5.create_dataset("mask", data=mask)
    return path
