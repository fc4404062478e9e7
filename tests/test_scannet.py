"""ScanNet detection data in VoteNet's layout (issue #15's data part): the procedural rooms as
scenes with a box per object, the reader's round trip and its errors on malformed files."""

from __future__ import annotations

import numpy as np
import pytest

from mmpd_core.data import dense_prep, scannet
from mmpd_core.data.rooms import make_scene


@pytest.fixture(scope="module")
def scene():
    room, instances, categories = make_scene(0, 3, 0, 40.0)  # a conference room
    return dense_prep.scannet_scene("scene0300_00", room, instances, categories), categories


def test_rooms_become_scenes_with_a_box_per_object(scene):
    scene, categories = scene
    chairs = [i for i, c in categories.items() if c in ("chair", "stool")]
    labels, boxes = scannet.detection_targets(scene.boxes)
    assert (labels == scannet.SCANNET_CLASSES.index("chair")).sum() == len(chairs) > 0
    assert "wall" not in {scannet.SCANNET_CLASSES[c] for c in labels}  # not a detection class
    for instance in chairs:  # each chair's box is the hull of its points
        points = scene.vertices[scene.instances == instance, :3]
        centre = (points.min(0) + points.max(0)) / 2
        match = np.abs(boxes[:, :3] - centre).sum(1).argmin()
        np.testing.assert_allclose(boxes[match, 3:], points.max(0) - points.min(0), atol=1e-5)
    assert set(np.unique(scene.semantics)) <= {*dense_prep.NYU40_OF.values(), dense_prep.OTHERPROP}


def test_round_trip_and_splits(tmp_path, scene):
    scene, _ = scene
    scannet.write_scene(tmp_path, scene)
    scannet.write_split(tmp_path, "val", [scene.name])
    (back,) = scannet.read_scannet(tmp_path, "val")
    np.testing.assert_array_equal(back.vertices, scene.vertices.astype(np.float32))
    np.testing.assert_array_equal(back.instances, scene.instances)
    np.testing.assert_array_equal(back.boxes, scene.boxes)
    assert scannet.read_split(tmp_path, "val") == ["scene0300_00"]
    with pytest.raises(ValueError, match="unknown split"):
        scannet.read_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match=r"scannetv2_train\.txt"):
        scannet.read_split(tmp_path, "train")


def test_detection_targets_keep_the_18_classes_in_3detr_order():
    boxes = np.array([[0, 0, 0, 1, 1, 1, 3], [0, 0, 0, 1, 1, 1, 39], [0, 0, 0, 1, 1, 1, 1],
                      [0, 0, 0, 1, 1, 1, 14]], dtype=np.float32)  # fmt: skip
    labels, kept = scannet.detection_targets(boxes)
    assert labels.tolist() == [0, 17, 10]  # cabinet, garbagebin, desk; the wall (1) dropped
    assert kept.shape == (3, 6)


@pytest.mark.parametrize(
    ("suffix", "array", "message"),
    [
        ("vert", np.zeros((5, 4), np.float32), r"\(N, 6\)"),
        ("vert", np.full((5, 6), np.nan, np.float32), "NaN"),
        ("ins_label", np.zeros(4, np.int64), "expected 5 labels"),
        ("sem_label", np.full(5, 1.5), "whole numbers"),
        ("bbox", np.zeros((2, 6), np.float32), r"\(K, 7\)"),
        ("bbox", np.array([[0, 0, 0, 1, -1, 1, 5]], np.float32), "sizes must be positive"),
    ],
)
def test_malformed_scene_files_are_named(tmp_path, suffix, array, message):
    box = np.array([[0, 0, 0, 1, 1, 1, 5]], np.float32)
    zeros = np.zeros(5, np.int64)
    good = scannet.Scene("scene0000_00", np.zeros((5, 6), np.float32), zeros, zeros, box)
    scannet.write_scene(tmp_path, good)
    np.save(scannet.scene_file(tmp_path, "scene0000_00", suffix), array)
    with pytest.raises(ValueError, match=message) as err:
        scannet.read_scene(tmp_path, "scene0000_00")
    assert f"scene0000_00_{suffix}.npy" in str(err.value)
    scannet.scene_file(tmp_path, "scene0000_00", suffix).unlink()
    with pytest.raises(FileNotFoundError, match=f"{suffix}.npy"):
        scannet.read_scene(tmp_path, "scene0000_00")
