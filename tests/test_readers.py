"""Official-layout readers, writers, restricted unpickling and the torch datasets over them.

Fixture files are written in every official format with the writers, then read back; the real
ModelNet40 sample in ../shared is used when present.
"""

from __future__ import annotations

import os
import pickle
import subprocess

import h5py
import numpy as np
import pytest
import torch
from conftest import SHARED

from mmpd_core.data import readers
from mmpd_core.data.datasets import (
    ModelNet40Dataset,
    ShapeNet55Dataset,
    fewshot_dataset,
    modelnet40_dat_dataset,
    scanobjectnn_dataset,
)
from mmpd_core.data.safe_pickle import UnsafePickleError, load_pickle, loads_restricted
from mmpd_core.data.transforms import fps_sample, normalize_unit_sphere

MODELNET_SAMPLE = SHARED / "realdata" / "modelnet40_sample" / "modelnet40_normal_resampled"
CLASSES = ["airplane", "night_stand", "flower_pot", "tv_stand"]


def cloud(n: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Random float32 points rounded to 6 decimals, so the text format stores them exactly."""
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(-1, 1, (n, channels)), 6).astype(np.float32)


# --- ShapeNet-55 ------------------------------------------------------------------------------


@pytest.fixture
def shapenet(tmp_path):
    items = {
        "train": {"02691156-a1b2.npy": cloud(64, seed=1), "03001627-x-y-z.npy": cloud(64, seed=2)},
        "test": {"02691156-c3d4.npy": cloud(80, seed=3)},
    }
    readers.write_shapenet55(tmp_path, items)
    return tmp_path, items


def test_shapenet55_roundtrip(shapenet):
    root, items = shapenet
    assert (root / "ShapeNet-55" / "train.txt").read_text().split() == list(items["train"])
    assert readers.read_shapenet55_split(root, "test") == ["02691156-c3d4.npy"]
    for name, points in items["train"].items():
        np.testing.assert_array_equal(readers.read_shapenet55_points(root, name), points)
    assert readers.parse_shapenet_name("03001627-x-y-z.npy") == ("03001627", "x-y-z")
    assert readers.shapenet55_synsets(root) == ["02691156", "03001627"]


def test_shapenet55_dataset_seeded_subset(shapenet):
    root, _ = shapenet
    data = ShapeNet55Dataset(root, "train", 16, synsets=readers.shapenet55_synsets(root))
    item = data[1]
    assert item["name"] == "03001627-x-y-z.npy" and item["label"] == 1
    assert item["points"].shape == (16, 3)
    torch.testing.assert_close(item["points"].norm(dim=-1).max(), torch.tensor(1.0))
    torch.testing.assert_close(data[1]["points"], item["points"])  # same (seed, epoch, index)
    data.set_epoch(1)
    assert not torch.equal(data[1]["points"], item["points"])
    assert ShapeNet55Dataset(root, "train", 16)[0]["label"] == -1


def test_shapenet55_errors_name_the_file(shapenet):
    root, _ = shapenet
    with pytest.raises(ValueError, match=r"03001627-x-y-z.npy: holds clouds of 64 points, 65"):
        ShapeNet55Dataset(root, "train", 65)[1]
    (root / "shapenet_pc" / "03001627-x-y-z.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"train.txt lists 1 shapes .* 03001627-x-y-z"):
        readers.read_shapenet55_split(root, "train")
    (root / "ShapeNet-55" / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"test.txt: ShapeNet-55 test list not found"):
        readers.read_shapenet55_split(root, "test")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.full((8, 3), np.nan, np.float32), "NaN or Inf"),
        (np.zeros((8, 4), np.float32), r"expected a \(N, 3\) point array"),
        (None, "expected an .npy array"),  # truncated file
    ],
)
def test_shapenet55_bad_point_files(shapenet, content, message):
    root, _ = shapenet
    path = root / "shapenet_pc" / "02691156-a1b2.npy"
    if content is None:
        path.write_bytes(path.read_bytes()[:100])
    else:
        np.save(path, content)
    with pytest.raises(ValueError, match=message) as info:
        readers.read_shapenet55_points(root, "02691156-a1b2.npy")
    assert str(path) in str(info.value)


# --- ModelNet40 text and .dat -----------------------------------------------------------------


@pytest.fixture
def modelnet(tmp_path):
    items = {
        "train": {"night_stand_0001": cloud(40, 6, 1), "airplane_0007": cloud(40, 6, 2)},
        "test": {"flower_pot_0012": cloud(40, 6, 3), "tv_stand_0100": cloud(40, 6, 4)},
    }
    readers.write_modelnet40(tmp_path, CLASSES, items)
    return tmp_path, items


def test_modelnet40_text_roundtrip(modelnet):
    root, items = modelnet
    assert readers.read_modelnet40_shape_names(root) == CLASSES
    ids, labels = readers.read_modelnet40_split(root, "test")
    assert ids == ["flower_pot_0012", "tv_stand_0100"] and labels.tolist() == [2, 3]
    path = root / "night_stand" / "night_stand_0001.txt"
    assert readers.modelnet40_shape_path(root, "night_stand_0001") == path
    assert path.read_text().splitlines()[0].count(",") == 5
    np.testing.assert_array_equal(readers.read_modelnet40_shape(path), items["train"][path.stem])
    assert readers.modelnet40_class_of("range_hood_0042") == "range_hood"
    with pytest.raises(ValueError, match="<class>_NNNN"):
        readers.modelnet40_class_of("glass_box")


def test_modelnet40_dataset_normalises_then_fps(modelnet):
    root, items = modelnet
    data = ModelNet40Dataset(root, "train", 8)
    assert len(data) == 2 and data.classes == CLASSES
    item = data[0]
    assert item["label"] == 1 and item["points"].shape == (8, 3)
    raw = torch.from_numpy(items["train"]["night_stand_0001"][:, :3])
    torch.testing.assert_close(item["points"], fps_sample(normalize_unit_sphere(raw), 8))


def test_modelnet40_text_errors_name_the_file(modelnet):
    root, _ = modelnet
    shape = root / "airplane" / "airplane_0007.txt"
    for content, message in [
        ("0.1,0.2,0.3,0.0,0.0,1.0\n0.1,0.2,0.3,0.0\n", "expected lines 'x,y,z,nx,ny,nz'"),
        ("0.1,0.2,0.3,0.0,0.0\n" * 3, r"expected a \(N, 6\) point array, got float32 \(3, 5\)"),
        ("nan,0.2,0.3,0.0,0.0,1.0\n", "NaN or Inf"),
    ]:
        shape.write_text(content)
        with pytest.raises(ValueError, match=message) as info:
            readers.read_modelnet40_shape(shape)
        assert str(shape) in str(info.value)
    shape.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"lists 1 shapes with no file, e.g. .*airplane_0007"
    ):
        readers.read_modelnet40_split(root, "train")
    (root / "modelnet40_test.txt").write_text("sofa_0001\n")
    with pytest.raises(ValueError, match=r"modelnet40_test.txt: 'sofa_0001' names no class"):
        readers.read_modelnet40_split(root, "test")
    (root / "modelnet40_shape_names.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"modelnet40_shape_names.txt: .* not found"):
        ModelNet40Dataset(root, "test")


def test_modelnet40_dat_roundtrip(tmp_path):
    points = [cloud(32, 6, 1), cloud(32, 6, 2)]
    path = readers.write_modelnet40_dat(
        readers.modelnet40_dat_path(tmp_path, "train"), points, [3, 39]
    )
    assert path.name == "modelnet40_train_8192pts_fps.dat"
    raw_points, raw_labels = load_pickle(path)
    assert raw_points[0].dtype == np.float32 and raw_points[0].shape == (32, 6)
    assert raw_labels[1].dtype == np.int32 and raw_labels[1].shape == (1,)
    xyz, labels = readers.read_modelnet40_dat(path)
    np.testing.assert_array_equal(xyz, np.stack(points)[..., :3])
    assert labels.tolist() == [3, 39]
    assert readers.read_modelnet40_dat(path, keep_normals=True)[0].shape == (2, 32, 6)
    item = modelnet40_dat_dataset(tmp_path, "train", 8)[1]
    full = normalize_unit_sphere(torch.from_numpy(points[1][:, :3]))
    torch.testing.assert_close(item["points"], full[:8])
    assert item["label"] == 39


def test_the_largest_cached_dat_is_found_without_the_text_files(tmp_path):
    """The standard download has only modelnet40_{split}_8192pts_fps.dat: it is found and
    read whatever the number of points a recipe needs, and the text files are never asked for."""
    from mmpd_core.data.datasets import modelnet40_split

    assert readers.find_modelnet40_dat(tmp_path, "test") is None
    for count in (1024, 8192):
        points = [cloud(40, 6, count), cloud(40, 6, count + 1)]
        readers.write_modelnet40_dat(
            readers.modelnet40_dat_path(tmp_path, "test", count), points, [0, 1]
        )
    found = readers.find_modelnet40_dat(tmp_path, "test")
    assert found.name == "modelnet40_test_8192pts_fps.dat"
    data = modelnet40_split(tmp_path, "test", 16)
    assert len(data) == 2 and data[0]["points"].shape == (16, 3) and data.points.shape[1] == 40
    assert modelnet40_split(tmp_path, "test", None)[1]["points"].shape == (40, 3)  # as stored


def test_modelnet40_dat_errors_name_the_file(tmp_path):
    path = readers.write_modelnet40_dat(tmp_path / "m.dat", [cloud(32, 6)], [1])
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated or corrupt pickle") as info:
        readers.read_modelnet40_dat(path)
    assert str(path) in str(info.value)
    path.write_bytes(pickle.dumps([[np.zeros((32, 3), np.float32)], [np.array([1], np.int32)]]))
    with pytest.raises(ValueError, match=r"m.dat item 0: expected a \(N, 6\) point array"):
        readers.read_modelnet40_dat(path)
    with pytest.raises(FileNotFoundError, match=r"missing.dat: pickle file not found"):
        readers.read_modelnet40_dat(tmp_path / "missing.dat")


# --- ModelNetFewshot --------------------------------------------------------------------------


def test_fewshot_roundtrip(tmp_path):
    episode = {
        "train": [(cloud(24, 6, i), i % 5, 10 + i % 5) for i in range(10)],
        "test": [(cloud(24, 6, 50 + i), i % 5, 10 + i % 5) for i in range(5)],
    }
    path = readers.write_fewshot_fold(tmp_path, 5, 10, 3, episode)
    assert path == tmp_path / "5way_10shot" / "3.pkl"
    points, labels, class_ids = readers.read_fewshot_fold(tmp_path, 5, 10, 3)["test"]
    np.testing.assert_array_equal(points, np.stack([t[0][:, :3] for t in episode["test"]]))
    assert labels.tolist() == [0, 1, 2, 3, 4] and class_ids.tolist() == [10, 11, 12, 13, 14]
    data = fewshot_dataset(tmp_path, 5, 10, 3, "train", 8)
    assert len(data) == 10 and data[7]["label"] == 2 and data[7]["points"].shape == (8, 3)


def test_fewshot_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"10way_20shot/0.pkl"):
        readers.read_fewshot_fold(tmp_path, 10, 20, 0)
    bad = {"train": [(cloud(24, 6), 5, 3)], "test": [(cloud(24, 6), 0, 3)]}  # label 5 of 5-way
    path = readers.write_fewshot_fold(tmp_path, 5, 10, 0, bad)
    with pytest.raises(ValueError, match=r"0.pkl \[train\]: labels must lie in 0..4"):
        readers.read_fewshot_fold(tmp_path, 5, 10, 0)
    path.write_bytes(pickle.dumps({"train": []}))
    with pytest.raises(ValueError, match=r"0.pkl: expected a pickled dict with 'train' and 'test'"):
        readers.read_fewshot_fold(tmp_path, 5, 10, 0)


# --- ScanObjectNN -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subset", "split", "relative"),
    [
        ("obj_bg", "train", "main_split/training_objectdataset.h5"),
        ("obj_only", "test", "main_split_nobg/test_objectdataset.h5"),
        ("pb_t50_rs", "train", "main_split/training_objectdataset_augmentedrot_scale75.h5"),
    ],
)
def test_scanobjectnn_roundtrip(tmp_path, subset, split, relative):
    points = np.stack([cloud(64, seed=s) for s in range(3)])
    path = readers.write_scanobjectnn(tmp_path, subset, split, points, [0, 14, 7])
    assert path == tmp_path / relative
    with h5py.File(path) as h5:
        assert set(h5) == {"data", "label", "mask"} and h5["mask"].shape == (3, 64)
    xyz, labels = readers.read_scanobjectnn(tmp_path, subset, split)
    np.testing.assert_array_equal(xyz, points)
    assert [readers.SCANOBJECTNN_CLASSES[i] for i in labels] == ["bag", "toilet", "door"]
    data = scanobjectnn_dataset(tmp_path, subset, split, 64)
    torch.testing.assert_close(data[2]["points"], torch.from_numpy(points[2]))  # not normalised
    sampled = scanobjectnn_dataset(tmp_path, subset, split, 16)[2]["points"]
    torch.testing.assert_close(sampled, fps_sample(torch.from_numpy(points[2]), 16))


def _write_h5(path, **datasets):
    with h5py.File(path, "w") as h5:
        for key, value in datasets.items():
            h5.create_dataset(key, data=value)


def test_scanobjectnn_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"main_split_nobg/training_objectdataset.h5"):
        readers.read_scanobjectnn(tmp_path, "obj_only", "train")
    with pytest.raises(ValueError, match="unknown ScanObjectNN subset 'pb_t25'"):
        readers.scanobjectnn_path(tmp_path, "pb_t25", "train")
    path = readers.write_scanobjectnn(tmp_path, "obj_bg", "test", cloud(64)[None], [1])
    good = path.read_bytes()
    cases = [
        (good[: len(good) // 2], "not a readable HDF5 file"),  # truncated
        (b"not an hdf5 file at all", "not a readable HDF5 file"),
    ]
    for content, message in cases:
        path.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            readers.read_scanobjectnn(tmp_path, "obj_bg", "test")
    nan_points = np.full((1, 64, 3), np.nan, np.float32)
    for datasets, message in [
        ({"data": cloud(64)[None]}, r"lacks dataset\(s\) \['label'\]"),
        ({"data": nan_points, "label": [1]}, "NaN or Inf"),
        ({"data": cloud(64, 6)[None], "label": [1]}, r"expected a \(M, N, 3\) point array"),
        ({"data": cloud(64)[None], "label": [15]}, r"labels must lie in 0..14"),
    ]:
        _write_h5(path, **datasets)
        with pytest.raises(ValueError, match=message) as info:
            readers.read_scanobjectnn(tmp_path, "obj_bg", "test")
        assert str(path) in str(info.value)


# --- restricted unpickling --------------------------------------------------------------------


class _Exploit:
    """A pickle that would run ``call(*args)`` when loaded by the plain unpickler."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _exploits(marker):
    return {
        "posix.system": _Exploit(os.system, f"touch {marker}"),
        "builtins.eval": _Exploit(eval, f"open({str(marker)!r}, 'w')"),
        "subprocess.call": _Exploit(subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("refused", ["posix.system", "builtins.eval", "subprocess.call"])
def test_malicious_pickle_is_refused_without_running(tmp_path, refused):
    marker = tmp_path / "pwned"
    path = tmp_path / "5way_10shot" / "0.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"train": [_exploits(marker)[refused]], "test": []}))
    with pytest.raises(UnsafePickleError, match=f"refused to load global {refused}") as info:
        readers.read_fewshot_fold(tmp_path, 5, 10, 0)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_exploit_payload_is_live():
    """Control for the test above: the plain unpickler really does run the payload."""
    payload = pickle.dumps(_Exploit(eval, "6 * 7"))
    assert pickle.loads(payload) == 42
    with pytest.raises(UnsafePickleError):
        loads_restricted(payload)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_numpy_pickles(protocol):
    value = {"a": [np.arange(6, dtype=np.float32).reshape(2, 3), np.int64(7)], "b": (1.5, "x")}
    loaded = loads_restricted(pickle.dumps(value, protocol=protocol))
    np.testing.assert_array_equal(loaded["a"][0], value["a"][0])
    assert loaded["a"][1] == 7 and loaded["b"] == (1.5, "x")


def test_restricted_unpickler_reads_numpy1_spelling():
    data = pickle.dumps(np.array([1, 2, 3], np.int32), protocol=2)
    old = data.replace(b"numpy._core.", b"numpy.core.")  # how numpy 1.x pickles name them
    assert old != data
    np.testing.assert_array_equal(loads_restricted(old), [1, 2, 3])


# --- the real ModelNet40 sample (../shared, development tree only) ----------------------------


@pytest.fixture
def modelnet_sample():
    if not (MODELNET_SAMPLE / "modelnet40_shape_names.txt").is_file():
        pytest.skip("../shared/realdata/modelnet40_sample is absent (only in the development tree)")
    return MODELNET_SAMPLE


def test_real_modelnet40_sample(modelnet_sample):
    classes = readers.read_modelnet40_shape_names(modelnet_sample)
    assert len(classes) == 40 and classes[0] == "airplane"
    train, test = (readers.read_modelnet40_split(modelnet_sample, s) for s in ("train", "test"))
    assert (len(train[0]), len(test[0])) == (19, 20)
    ids, labels = train[0] + test[0], np.concatenate([train[1], test[1]])
    assert [classes[label] for label in labels] == [readers.modelnet40_class_of(i) for i in ids]
    assert len(set(labels.tolist())) == 39 and "door" not in {classes[i] for i in labels}
    for shape_id in ids:
        points = readers.read_modelnet40_shape(
            readers.modelnet40_shape_path(modelnet_sample, shape_id)
        )
        assert points.shape == (10_000, 6) and np.isfinite(points).all()
        norms = normalize_unit_sphere(torch.from_numpy(points[:, :3])).norm(dim=-1)
        torch.testing.assert_close(norms.max(), torch.tensor(1.0))
    item = ModelNet40Dataset(modelnet_sample, "test", 1024)[0]
    assert item["points"].shape == (1024, 3) and item["label"] == test[1][0]
    assert item["points"].norm(dim=-1).max() <= 1.0 + 1e-6
