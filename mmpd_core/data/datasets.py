"""Torch datasets over the official-layout readers of ``mmpd_core.data.readers``.

Every item is ``{"points": float32 tensor (num_points, 3), "label": int}``; ShapeNet-55 items also
carry ``"name"`` and have label -1 unless a synset list is given. ``transform``, a callable on the
(num_points, 3) tensor (see ``mmpd_core.data.transforms``), runs last. Preprocessing follows the
upstream loaders (REFERENCE.md, "Dataset layouts"):

- ModelNet40 text: each shape normalised to the unit sphere, then FPS of ``num_points`` from index 0
  (computed on first access and cached);
- ModelNet40 ``.dat`` cache: each stored cloud normalised, then its first ``num_points`` kept (the
  cache is FPS-ordered, so that prefix is the FPS sample);
- ModelNetFewshot: each stored cloud normalised, then FPS of ``num_points`` (cached);
- ScanObjectNN: no normalisation; FPS (cached) only when fewer points than stored are asked for;
- ShapeNet-55: a random ``num_points`` of the stored points, seeded by (seed, epoch, index), then
  normalised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmpd_core.config import resolve
from mmpd_core.data import readers
from mmpd_core.data.transforms import fps_sample, normalize_unit_sphere, random_sample
from mmpd_core.geometry import farthest_point_sample, gather_points

__all__ = [
    "FAMILIES",
    "CloudDataset",
    "ModelNet40Dataset",
    "ShapeNet55Dataset",
    "classification_splits",
    "dataset_family",
    "fewshot_dataset",
    "modelnet40_dat_dataset",
    "modelnet40_split",
    "scanobjectnn_dataset",
]

Transform = Callable[[torch.Tensor], torch.Tensor]


def _item(cloud: torch.Tensor, label: int, transform: Transform | None) -> dict:
    cloud = cloud.clone()  # a transform may work in place; the cache must not change
    return {"points": cloud if transform is None else transform(cloud), "label": label}


def _check_size(available: int, num_points: int, source) -> None:
    if not 0 < num_points <= available:
        raise ValueError(f"{source}: holds clouds of {available} points, {num_points} requested")


class CloudDataset(Dataset):
    """Clouds held in memory (M, N, 3) with labels (M,), reduced to ``num_points`` each.

    ``sampling='first'`` keeps the first ``num_points`` (FPS-ordered files), ``'fps'`` runs FPS
    from index 0 and caches the result; ``normalize`` rescales each stored cloud to the unit sphere
    before sampling.
    """

    def __init__(
        self,
        points: np.ndarray,
        labels: np.ndarray,
        num_points: int,
        *,
        sampling: str = "first",
        normalize: bool = True,
        transform: Transform | None = None,
        source: str | Path = "clouds",
    ):
        if sampling not in ("first", "fps"):
            raise ValueError(f"sampling must be 'first' or 'fps', got {sampling!r}")
        _check_size(points.shape[1], num_points, source)
        self.points = torch.from_numpy(np.ascontiguousarray(points[..., :3]))  # (M, N, 3)
        self.labels = [int(label) for label in labels]
        self.num_points, self.sampling, self.normalize = num_points, sampling, normalize
        self.transform = transform
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def cloud(self, index: int) -> torch.Tensor:
        """The (num_points, 3) cloud of item ``index`` before ``transform``."""
        if self.sampling == "fps" and self.num_points < self.points.shape[1]:
            if not self._cache:  # FPS of every cloud at once, in batches (same indices)
                self._cache = dict(enumerate(self._fps_all()))
            return self._cache[index]
        cloud = self.points[index]  # (N, 3)
        if self.normalize:
            cloud = normalize_unit_sphere(cloud)
        return cloud[: self.num_points]  # (num_points, 3)

    def _fps_all(self, batch: int = 64) -> torch.Tensor:
        """Plain FPS from index 0 of every (normalised) cloud: (M, num_points, 3)."""
        out = []
        for start in range(0, len(self.points), batch):
            clouds = self.points[start : start + batch]  # (b, N, 3)
            if self.normalize:
                clouds = normalize_unit_sphere(clouds)
            idx = farthest_point_sample(clouds, self.num_points, skip_origin=False)  # (b, n)
            out.append(gather_points(clouds, idx))  # (b, n, 3)
        return torch.cat(out)

    def __getitem__(self, index: int) -> dict:
        return _item(self.cloud(index), self.labels[index], self.transform)


class ModelNet40Dataset(Dataset):
    """``modelnet40_normal_resampled`` text shapes; files are read on first access and cached."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        num_points: int = 1024,
        *,
        transform: Transform | None = None,
    ):
        self.root, self.num_points, self.transform = Path(root), num_points, transform
        self.classes = readers.read_modelnet40_shape_names(root)
        self.ids, labels = readers.read_modelnet40_split(root, split)
        self.labels = labels.tolist()
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def cloud(self, index: int) -> torch.Tensor:
        """The normalised FPS sample (num_points, 3) of shape ``index`` before ``transform``."""
        if index not in self._cache:
            path = readers.modelnet40_shape_path(self.root, self.ids[index])
            points = torch.from_numpy(readers.read_modelnet40_shape(path)[:, :3])  # (N, 3)
            _check_size(len(points), self.num_points, path)
            self._cache[index] = fps_sample(normalize_unit_sphere(points), self.num_points)
        return self._cache[index]

    def __getitem__(self, index: int) -> dict:
        return _item(self.cloud(index), self.labels[index], self.transform)


class ShapeNet55Dataset(Dataset):
    """ShapeNet-55 (Point-BERT layout) for pretraining: random subset, then unit sphere.

    The subset of item ``index`` is drawn from a generator seeded by (seed, epoch, index), so it
    is reproducible and changes with ``set_epoch``. Labels index ``synsets`` (e.g.
    ``readers.shapenet55_synsets(root)``); -1 when it is None or lacks the synset.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        num_points: int = 1024,
        *,
        seed: int = 0,
        synsets: Sequence[str] | None = None,
        transform: Transform | None = None,
    ):
        self.root, self.num_points, self.transform = Path(root), num_points, transform
        self.seed = seed
        self.names = readers.read_shapenet55_split(root, split)
        self.synset_index = {synset: i for i, synset in enumerate(synsets or ())}
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.names)

    def generator(self, index: int) -> torch.Generator:
        mixed = (self.seed * 1_000_003 + self.epoch) * 100_000_007 + index
        return torch.Generator().manual_seed(mixed % 2**63)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        points = torch.from_numpy(readers.read_shapenet55_points(self.root, name))  # (N, 3)
        _check_size(len(points), self.num_points, readers.shapenet55_point_path(self.root, name))
        cloud = normalize_unit_sphere(random_sample(points, self.num_points, self.generator(index)))
        label = self.synset_index.get(readers.parse_shapenet_name(name)[0], -1)
        return {**_item(cloud, label, self.transform), "name": name}


def modelnet40_dat_dataset(
    root: str | Path,
    split: str,
    num_points: int = 1024,
    *,
    dat_points: int = 8192,
    transform: Transform | None = None,
) -> CloudDataset:
    """ModelNet40 from the cached ``modelnet40_<split>_<dat_points>pts_fps.dat``."""
    path = readers.modelnet40_dat_path(root, split, dat_points)
    points, labels = readers.read_modelnet40_dat(path)
    return CloudDataset(points, labels, num_points, transform=transform, source=path)


def fewshot_dataset(
    root: str | Path,
    way: int,
    shot: int,
    fold: int,
    split: str,
    num_points: int | None = 1024,
    *,
    transform: Transform | None = None,
) -> CloudDataset:
    """One split of a ModelNetFewshot episode; labels are the episode labels 0..way-1."""
    if split not in readers.SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {readers.SPLITS}")
    points, labels, _ = readers.read_fewshot_fold(root, way, shot, fold)[split]
    source = readers.fewshot_path(root, way, shot, fold)
    return CloudDataset(
        points, labels, num_points or points.shape[1], sampling="fps", transform=transform,
        source=source,
    )  # fmt: skip


def scanobjectnn_dataset(
    root: str | Path,
    subset: str,
    split: str,
    num_points: int | None = 2048,
    *,
    transform: Transform | None = None,
    num_classes: int = len(readers.SCANOBJECTNN_CLASSES),
) -> CloudDataset:
    """ScanObjectNN ``subset`` (obj_bg, obj_only, pb_t50_rs), unnormalised like upstream
    (``num_points=None``: every stored point)."""
    points, labels = readers.read_scanobjectnn(root, subset, split, num_classes)
    source = readers.scanobjectnn_path(root, subset, split)
    return CloudDataset(
        points,
        labels,
        num_points or points.shape[1],
        sampling="fps",
        normalize=False,
        transform=transform,
        source=source,
    )


# Classification datasets by key: "modelnet40", "scanobjectnn/<subset>"; the synthetic_* names
# insist on the embedded procedural data (data_prep.source: embedded).
FAMILIES = {
    "modelnet40": "modelnet40",
    "synthetic_modelnet": "modelnet40",
    "scanobjectnn": "scanobjectnn",
    "synthetic_scanobjectnn": "scanobjectnn",
}


def dataset_family(key: str) -> str:
    """``modelnet40`` or ``scanobjectnn`` for a dataset key (``scanobjectnn/pb_t50_rs``)."""
    name = key.partition("/")[0]
    if name not in FAMILIES:
        raise ValueError(f"unknown dataset {key!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[name]


def modelnet40_split(root: Path, split: str, num_points: int | None):
    """ModelNet40 from the cached ``.dat`` with the most points (``find_modelnet40_dat``), else
    the text files. ``num_points=None``: the whole stored clouds (8192 points for the text
    files, as the upstream cache holds)."""
    dat = readers.find_modelnet40_dat(root, split)
    if dat is not None:
        points, labels = readers.read_modelnet40_dat(dat)
        return CloudDataset(points, labels, num_points or points.shape[1], source=dat)
    return ModelNet40Dataset(root, split, num_points or FULL_TEXT_POINTS)


FULL_TEXT_POINTS = 8192  # what the upstream .dat cache keeps of each 10k-point text file


def classification_splits(manifest: dict, key: str, num_points: int | None):
    """(train, test, number of classes) of dataset ``key`` in a data manifest's layout, each
    cloud reduced to ``num_points`` as the upstream loaders do (None: the stored clouds)."""
    family = dataset_family(key)
    name, _, subset = key.partition("/")
    if name.startswith("synthetic") and manifest["config"]["source"] != "embedded":
        raise ValueError(f"{key} needs the embedded data (data_prep.source: embedded)")
    root = resolve(manifest["roots"][family])
    if family == "modelnet40":
        classes = len(manifest["counts"]["modelnet40"]["train"])
        splits = [modelnet40_split(root, s, num_points) for s in readers.SPLITS]
    else:
        classes = len(manifest["counts"]["scanobjectnn"][f"{subset}/train"])
        splits = [
            scanobjectnn_dataset(root, subset, s, num_points, num_classes=classes)
            for s in readers.SPLITS
        ]
    return splits[0], splits[1], classes
