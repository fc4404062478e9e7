"""Dense-prediction layouts (S3DIS raw and preprocessed, ShapeNetPart): fixtures are written with
the writers, then read back; each malformed input must raise an error naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmpd_core.data import dense_readers as dr


def room_arrays(n: int, labels: list[int], seed: int = 0):
    """Points with 3 decimals like the release (exact in '%.6f'), integer colours, labels."""
    rng = np.random.default_rng(seed)
    points = np.round(rng.uniform(-3, 7, (n, 3)), 3).astype(np.float32)  # (N, 3)
    colors = rng.integers(0, 256, (n, 3)).astype(np.float32)  # (N, 3)
    return points, colors, np.array(labels * (n // len(labels)), dtype=np.int64)


def sorted_rows(points, colors, labels) -> np.ndarray:
    rows = np.concatenate([points, colors, labels[:, None]], axis=1).astype(np.float64)
    return rows[np.lexsort(rows.T[::-1])]  # (N, 7) by x, then y, ...


def shifted(points) -> np.ndarray:
    return points.astype(np.float64) - points.astype(np.float64).min(axis=0)


# --- S3DIS constants and class names -----------------------------------------------------------


def test_s3dis_classes_and_file_names(tmp_path):
    assert len(dr.S3DIS_CLASSES) == 13 and dr.S3DIS_CLASSES[0] == "ceiling"
    assert dr.S3DIS_CLASSES[12] == "clutter" and dr.S3DIS_TEST_AREA == 5
    assert dr.s3dis_class_of(tmp_path / "chair_3.txt") == 8
    assert dr.s3dis_class_of(tmp_path / "board_1.txt") == 11
    assert dr.s3dis_class_of(tmp_path / "stairs_1.txt") == 12
    with pytest.raises(ValueError, match=r"lamp_2.txt: unknown S3DIS class 'lamp'"):
        dr.s3dis_class_of(tmp_path / "lamp_2.txt")
    with pytest.raises(ValueError, match=r"chair.txt: .* '<class>_<k>.txt'"):
        dr.s3dis_class_of(tmp_path / "chair.txt")


# --- S3DIS raw release -------------------------------------------------------------------------


@pytest.fixture
def raw_room(tmp_path):
    points, colors, labels = room_arrays(60, [0, 1, 2, 8, 11, 12])
    room_dir = dr.write_s3dis_room(tmp_path, 5, "office_1", points, colors, labels)
    return room_dir, points, colors, labels


def test_s3dis_raw_roundtrip(raw_room, tmp_path):
    room_dir, points, colors, labels = raw_room
    assert room_dir == tmp_path / dr.S3DIS_RAW / "Area_5" / "office_1"
    names = sorted(p.name for p in (room_dir / "Annotations").iterdir())
    assert names == sorted(f"{c}_1.txt" for c in "ceiling floor wall chair board clutter".split())
    first = (room_dir / "Annotations" / "chair_1.txt").read_text().splitlines()[0].split()
    assert len(first) == 6 and first[0] == f"{points[labels == 8][0, 0]:.6f}"
    assert first[3:] == [str(int(c)) for c in colors[labels == 8][0]]
    whole = np.loadtxt(room_dir / "office_1.txt")  # the release's whole-room file
    np.testing.assert_allclose(whole, np.concatenate([points, colors], axis=1), atol=1e-6)

    room = dr.read_s3dis_room(room_dir)
    assert (room.area, room.name, len(room.points)) == (5, "office_1", 60)
    assert room.points.dtype == np.float32 and room.labels.dtype == np.int64
    np.testing.assert_array_equal(room.points.min(axis=0), [0, 0, 0])
    got = sorted_rows(room.points, room.colors, room.labels)
    expected = sorted_rows(shifted(points), colors, labels)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got[:, 6], expected[:, 6])


def test_s3dis_stairs_are_clutter(raw_room):
    room_dir, points, _, _ = raw_room
    lines = "".join(f"{x:.3f} {y:.3f} {z:.3f} 10 20 30\n" for x, y, z in points[:4] + 100)
    (room_dir / "Annotations" / "stairs_1.txt").write_text(lines)
    room = dr.read_s3dis_room(room_dir)
    assert len(room.labels) == 64
    stairs = room.colors[:, 0] == 10
    assert stairs.sum() == 4 and (room.labels[stairs] == 12).all()
    np.testing.assert_array_equal(room.points.min(axis=0), [0, 0, 0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1 2 3 4 5 6\n1 2 3 4 5\n", r"line 2: expected 6 columns, got 5"),
        ("1 2 3 4 5 6\n\n1 2 3 4 5 6 7\n", r"line 3: expected 6 columns, got 7"),
        ("1 2 3 4 5 6\n1 2 nan 4 5 6\n", r"line 2: NaN or Inf value 'nan'"),
        ("1 2 3 4 5 6\n1 2 3 4 x5 6\n", r"line 2: non-numeric value 'x5'"),
        ("", r"empty file; expected lines 'x y z r g b'"),
        ("\n  \n", r"empty file"),
    ],
)
def test_s3dis_raw_bad_annotation_files(raw_room, content, message):
    room_dir = raw_room[0]
    path = room_dir / "Annotations" / "chair_1.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        dr.read_s3dis_room(room_dir)
    assert str(path) in str(info.value)


def test_s3dis_raw_bad_rooms(raw_room):
    room_dir = raw_room[0]
    (room_dir / "Annotations" / "lamp_1.txt").write_text("1 2 3 4 5 6\n")
    with pytest.raises(ValueError, match=r"lamp_1.txt: unknown S3DIS class 'lamp'"):
        dr.read_s3dis_room(room_dir)
    (room_dir / "Annotations" / "lamp_1.txt").unlink()
    (room_dir / "Annotations" / "wall_1.txt").write_text("1 2 3 4 5 300\n")
    with pytest.raises(ValueError, match=r"office_1/Annotations: colours must lie in 0..255"):
        dr.read_s3dis_room(room_dir)
    for path in (room_dir / "Annotations").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"Annotations: empty room"):
        dr.read_s3dis_room(room_dir)
    (room_dir / "Annotations").rmdir()
    with pytest.raises(FileNotFoundError, match=r"office_1/Annotations: .* folder not found"):
        dr.read_s3dis_room(room_dir)


# --- S3DIS preprocessed .npy -------------------------------------------------------------------


def test_s3dis_npy_roundtrip(raw_room, tmp_path):
    room = dr.read_s3dis_room(raw_room[0])
    path = dr.write_s3dis_npy(tmp_path / "s3disfull" / "raw", room)
    assert path == tmp_path / "s3disfull" / "raw" / "Area_5_office_1.npy"
    stored = np.load(path)
    assert stored.shape == (60, 7)
    np.testing.assert_array_equal(stored[:, 6], room.labels)
    again = dr.read_s3dis_npy(path)
    assert (again.area, again.name) == (5, "office_1")
    for field in ("points", "colors", "labels"):
        np.testing.assert_array_equal(getattr(again, field), getattr(room, field))
        assert getattr(again, field).dtype == getattr(room, field).dtype


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((5, 6)), r"expected a \(N, 7\) point array, got float64 \(5, 6\)"),
        (np.zeros((0, 7)), r"empty room"),
        (np.full((5, 7), np.nan), r"NaN or Inf"),
        (np.column_stack([np.zeros((5, 6)), np.full(5, 13.0)]), r"labels must lie in 0..12"),
        (np.column_stack([np.zeros((5, 6)), np.full(5, -1.0)]), r"labels must lie in 0..12"),
        (np.column_stack([np.zeros((5, 6)), np.full(5, 2.5)]), r"labels must be integer-valued"),
    ],
)
def test_s3dis_npy_errors_name_the_file(tmp_path, array, message):
    path = tmp_path / "Area_2_hallway_3.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=message) as info:
        dr.read_s3dis_npy(path)
    assert str(path) in str(info.value)


def test_s3dis_npy_bad_files(tmp_path):
    path = tmp_path / "office_1.npy"
    np.save(path, np.zeros((5, 7)))
    with pytest.raises(ValueError, match=r"office_1.npy: .* named 'Area_<k>_<room>.npy'"):
        dr.read_s3dis_npy(path)
    path = tmp_path / "Area_1_office_1.npy"
    path.write_bytes(b"not an npy file")
    with pytest.raises(ValueError, match=r"Area_1_office_1.npy: expected an .npy array"):
        dr.read_s3dis_npy(path)
    with pytest.raises(FileNotFoundError, match=r"Area_1_office_9.npy: S3DIS room array"):
        dr.read_s3dis_npy(tmp_path / "Area_1_office_9.npy")


# --- read_s3dis over both layouts --------------------------------------------------------------

ROOMS = [(5, "office_2", 1), (1, "WC_1", 2), (5, "conferenceRoom_1", 3), (2, "hallway_1", 4)]


@pytest.fixture
def raw_root(tmp_path):
    root = tmp_path / "s3dis"
    for area, name, seed in ROOMS:
        dr.write_s3dis_room(root, area, name, *room_arrays(12, [0, 7, seed], seed))
    return root


def test_read_s3dis_raw_layout(raw_root):
    rooms = dr.read_s3dis(raw_root, [5, 1])
    assert [(r.area, r.name) for r in rooms] == [
        (1, "WC_1"),
        (5, "conferenceRoom_1"),
        (5, "office_2"),
    ]
    assert rooms[2].labels.tolist() == [0] * 4 + [1] * 4 + [7] * 4  # ceiling, floor, table files
    with pytest.raises(ValueError, match=r"Aligned_Version: no rooms of Area_3"):
        dr.read_s3dis(raw_root, [1, 3])


@pytest.mark.parametrize("subfolder", ["raw", ""])
def test_read_s3dis_npy_layout(raw_root, tmp_path, subfolder):
    expected = dr.read_s3dis(raw_root, [1, 2, 5])
    root = tmp_path / "s3disfull"
    for room in expected:
        dr.write_s3dis_npy(root / subfolder, room)
    rooms = dr.read_s3dis(root, [2, 5])
    assert [(r.area, r.name) for r in rooms] == [
        (2, "hallway_1"),
        (5, "conferenceRoom_1"),
        (5, "office_2"),
    ]
    for got, want in zip(rooms, expected[1:], strict=True):
        np.testing.assert_array_equal(got.points, want.points)
        np.testing.assert_array_equal(got.labels, want.labels)
    with pytest.raises(ValueError, match=r"no rooms of Area_6"):
        dr.read_s3dis(root, [6])


def test_read_s3dis_missing_root_lists_the_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no S3DIS data found") as info:
        dr.read_s3dis(tmp_path / "nowhere", [5])
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "Stanford3dDataset_v1.2_Aligned_Version/Area_<k>/<room>/Annotations/" in message
    assert "Area_<k>_<room>.npy" in message and str(tmp_path / "nowhere" / "raw") in message


# --- ShapeNetPart ------------------------------------------------------------------------------


def part_shape(category: str, model_id: str, n: int, seed: int) -> dr.PartShape:
    rng = np.random.default_rng(seed)
    points = np.round(rng.uniform(-1, 1, (n, 3)), 6).astype(np.float32)  # (N, 3)
    normals = np.round(rng.uniform(-1, 1, (n, 3)), 6).astype(np.float32)  # (N, 3)
    parts = dr.SHAPENETPART_CATEGORIES[category][1]
    labels = np.array([parts[i % len(parts)] for i in range(n)], dtype=np.int64)
    return dr.PartShape(category, model_id, points, normals, labels)


@pytest.fixture
def shapenetpart(tmp_path):
    splits = {
        "train": [part_shape("Chair", "1a2b", 20, 1), part_shape("Airplane", "ff00", 16, 2)],
        "test": [part_shape("Motorbike", "9c9c", 18, 3)],
    }
    return dr.write_shapenetpart(tmp_path, splits), splits


def test_shapenetpart_constants():
    assert list(dr.SHAPENETPART_CATEGORIES) == sorted(dr.SHAPENETPART_CATEGORIES)
    labels = [label for _, parts in dr.SHAPENETPART_CATEGORIES.values() for label in parts]
    assert labels == list(range(50))
    assert dr.SHAPENETPART_CATEGORIES["Chair"] == ("03001627", (12, 13, 14, 15))


def test_shapenetpart_roundtrip(shapenetpart, tmp_path):
    root, splits = shapenetpart
    assert root == tmp_path / dr.SHAPENETPART_DIR
    assert (root / "synsetoffset2category.txt").read_text().splitlines()[0] == "Airplane\t02691156"
    categories = dr.read_shapenetpart_categories(root)
    assert list(categories) == list(dr.SHAPENETPART_CATEGORIES)
    assert categories["Table"] == "04379243"
    split_dir = root / "train_test_split"
    assert json.loads((split_dir / "shuffled_train_file_list.json").read_text()) == [
        "shape_data/03001627/1a2b",
        "shape_data/02691156/ff00",
    ]
    assert json.loads((split_dir / "shuffled_val_file_list.json").read_text()) == []
    assert dr.read_shapenetpart_split(root, "test") == [("03790512", "9c9c")]
    line = (root / "03001627" / "1a2b.txt").read_text().splitlines()[0].split()
    assert len(line) == 7 and line[6] == "12.000000"

    shapes = dr.read_shapenetpart(root, "train")
    assert [(s.category, s.model_id) for s in shapes] == [("Chair", "1a2b"), ("Airplane", "ff00")]
    for got, want in zip(shapes, splits["train"], strict=True):
        np.testing.assert_array_equal(got.points, want.points)
        np.testing.assert_array_equal(got.normals, want.normals)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.points.dtype == np.float32 and got.labels.dtype == np.int64
    assert set(dr.read_shapenetpart(root, "test")[0].labels.tolist()) == set(range(30, 36))
    assert dr.read_shapenetpart(root, "val") == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("0 0 0 0 0 1 12.0\n0 0 0 0 0 1\n", r"line 2: expected 7 columns, got 6"),
        ("0 0 0 0 0 1 12.0\n0 nan 0 0 0 1 12.0\n", r"line 2: NaN or Inf value 'nan'"),
        ("0 0 0 0 0 1 12.5\n", r"labels must be integer-valued, got 12.5"),
        (
            "0 0 0 0 0 1 12.0\n0 0 0 0 0 1 3.0\n",
            r"label 3 is not a part of Chair \(allowed 12..15\)",
        ),
        ("0 0 0 0 0 1 50.0\n", r"labels must lie in 0..49"),
        ("", r"empty file; expected lines 'x y z nx ny nz label'"),
    ],
)
def test_shapenetpart_bad_shape_files(shapenetpart, content, message):
    root, _ = shapenetpart
    path = root / "03001627" / "1a2b.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        dr.read_shapenetpart_shape(root, "03001627", "1a2b")
    assert str(path) in str(info.value)


def test_shapenetpart_bad_lists(shapenetpart):
    root, _ = shapenetpart
    with pytest.raises(FileNotFoundError, match=r"03001627/gone.txt: ShapeNetPart shape file"):
        dr.read_shapenetpart_shape(root, "03001627", "gone")
    with pytest.raises(ValueError, match=r"unknown split 'valid'"):
        dr.read_shapenetpart_split(root, "valid")
    split = root / "train_test_split" / "shuffled_test_file_list.json"
    for payload, message in [
        ({"a": 1}, r"expected a JSON list"),
        (["shape_data/03001627/1a2b", "03001627/1a2b"], r"item 1: expected 'shape_data/"),
        ([7], r"item 0: expected 'shape_data/<synset>/<model id>', got 7"),
    ]:
        split.write_text(json.dumps(payload))
        with pytest.raises(ValueError, match=message) as info:
            dr.read_shapenetpart_split(root, "test")
        assert str(split) in str(info.value)
    categories = root / "synsetoffset2category.txt"
    good = categories.read_text()
    for content, message in [
        (good + "Bench 02828884 x\n", r"line 17: expected '<name> <synset>'"),
        (good + "Bench\t02828884\n", r"line 17: Bench 02828884 is not one of the 16"),
        (good + "Mug\t03797390\n", r"line 17: duplicate category Mug"),
    ]:
        categories.write_text(content)
        with pytest.raises(ValueError, match=message) as info:
            dr.read_shapenetpart_categories(root)
        assert str(categories) in str(info.value)
    categories.write_text("Chair 03001627\n")
    with pytest.raises(ValueError, match=r"synset 02691156 is not in synsetoffset2category"):
        dr.read_shapenetpart(root, "train")
    categories.unlink()
    with pytest.raises(FileNotFoundError, match=r"synsetoffset2category.txt: .* not found"):
        dr.read_shapenetpart(root, "train")


def test_write_shapenetpart_rejects_labels_of_another_category(tmp_path):
    shape = part_shape("Chair", "1a2b", 8, 0)
    shape.labels[3] = 47
    with pytest.raises(ValueError, match=r"label 47 is not a part of Chair \(allowed 12..15\)"):
        dr.write_shapenetpart(tmp_path, {"train": [shape]})
