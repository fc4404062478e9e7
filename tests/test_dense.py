"""The dense tasks' data and protocols (issue #14): procedural rooms and part shapes, training
blocks, whole-room windows and votes, class weights, category-restricted part predictions, the
head's split first layer, and the segmentation and detection stages end to end at smoke
size."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from mmpd_core import config
from mmpd_core.data import dense_prep
from mmpd_core.data import dense_readers as dr
from mmpd_core.data.rooms import LABEL, make_room
from mmpd_core.data.scannet import SCANNET_CLASSES
from mmpd_core.models import create_model
from mmpd_core.tasks import dense, dense_stage, detection_stage
from mmpd_core.tasks.segmentation import SegmentationHead, tap_layers

RECIPE = config.load("segmentation").semantic


def test_rooms_are_reproducible_and_shaped_like_s3dis():
    a, b = make_room(0, 2, 0, 60.0), make_room(0, 2, 0, 60.0)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(make_room(1, 2, 0, 60.0).points[:100], a.points[:100])
    np.testing.assert_allclose(a.points.min(0), 0, atol=1e-6)  # shifted to min xyz = 0
    floor = a.points[a.labels == LABEL["floor"]]
    ceiling = a.points[a.labels == LABEL["ceiling"]]
    assert np.abs(floor[:, 2] - floor[:, 2].mean()).max() < 0.04  # a plane, up to scan noise
    assert ceiling[:, 2].mean() - floor[:, 2].mean() > 2.6  # rooms are 2.7-3.2 m high
    assert {LABEL[c] for c in ("wall", "table", "chair")} <= set(a.labels.tolist())  # conference


def test_part_shapes_use_their_category_labels():
    for category, (_, slots) in dense_prep.PART_MAP.items():
        shape = dense_prep.part_shape(category, "train", 0, 0, 256)
        parts = dr.SHAPENETPART_CATEGORIES[category][1]
        assert set(shape.labels.tolist()) <= set(parts)
        assert max(slots.values()) < len(parts)
    chair = dense_prep.part_shape("Chair", "test", 3, 0, 512)
    assert len(set(chair.labels.tolist())) >= 3  # back, seat, legs at least


def stacked_room(num_points=4000, seed=0) -> dr.Room:
    """A 3 × 2 m room whose label is the floor of z (z in [0, 13)): any block or window keeps
    z, so a point's label can be read back from its coordinates."""
    rng = np.random.default_rng(seed)
    points = rng.uniform([0, 0, 0], [3, 2, 12.999], (num_points, 3)).astype(np.float32)
    return dr.Room(area=1, name="hall_1", points=points, colors=np.zeros_like(points),
                   labels=np.floor(points[:, 2]).astype(np.int64))  # fmt: skip


def test_training_blocks_follow_the_protocol():
    room = stacked_room()
    recipe = dataclasses.replace(RECIPE, num_points=256, min_block_points=100, sample_rate=1.0)
    data = dense.BlockDataset([room], recipe, seed=3)
    assert len(data) == 4000 // 256
    item = data[2]
    points, labels = item["points"].numpy(), item["labels"].numpy()
    assert points.shape == (256, 3) and np.abs(points[:, :2]).max() <= 0.5  # centred 1 m block
    np.testing.assert_array_equal(labels, np.floor(points[:, 2]))  # z kept, labels aligned
    np.testing.assert_array_equal(data[2]["points"], item["points"])  # (seed, epoch, index)
    data.set_epoch(1)
    assert not torch.equal(data[2]["points"], item["points"])


def test_windows_cover_every_point_in_full_chunks():
    room = stacked_room()
    chunks = dense.room_windows(room.points, RECIPE, np.random.default_rng(0))
    # 3 x 2 m at 1 m windows, stride 0.5: 5 x 3 windows, each cut into chunks of num_points
    centres = {tuple(np.round(c, 3)) for _, c in chunks}
    assert len(centres) == 15
    assert all(len(idx) == RECIPE.num_points for idx, _ in chunks)
    covered = np.zeros(len(room.labels), bool)
    for idx, centre in chunks:
        covered[idx] = True
        assert np.abs(room.points[idx, :2] - centre).max() <= 0.5 + 1e-3
    assert covered.all()


class LabelFromHeight(nn.Module):
    """Logits that pick the floor of z: the right answer on ``stacked_room``."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, points, category=None):
        label = points[..., 2].floor().long().clamp(0, 12)  # (B, N)
        return nn.functional.one_hot(label, 13).float().transpose(1, 2)  # (B, 13, N)


def test_whole_room_votes_map_predictions_back_to_points():
    room = stacked_room()
    pred = dense.predict_room(LabelFromHeight(), room, RECIPE, seed=0)
    np.testing.assert_array_equal(pred, room.labels)


def test_class_weights_are_the_cube_root_of_the_frequency_ratio():
    room = dr.Room(1, "r", np.zeros((9, 3), np.float32), np.zeros((9, 3), np.float32),
                   np.array([0] + [1] * 8))  # fmt: skip
    weights = dense.class_weights([room], num_classes=3)
    np.testing.assert_allclose(weights, [2.0, 1.0, 2.0], rtol=1e-6)  # 8^(1/3); absent: the max


def test_part_predictions_stay_within_the_category():
    shapes = [dense_prep.part_shape("Mug", "test", i, 0, 128) for i in range(2)]

    class PreferWing(nn.Module):  # label 1 (an airplane wing) wins everywhere, 36 next
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(1))

        def forward(self, points, category=None):
            logits = torch.zeros(points.shape[0], dense.PART_CLASSES, points.shape[1])
            logits[:, 1], logits[:, 36] = 5.0, 1.0
            return logits

    data = dense.PartDataset(shapes, 64, seed=0, train=False)
    preds, targets, categories = dense.predict_parts(PreferWing(), data, amp="none")
    assert categories == ["Mug", "Mug"] and all((p == 36).all() for p in preds)
    np.testing.assert_array_equal(targets[0], data[0]["labels"])


def test_head_split_first_layer_equals_a_conv_over_the_concatenation():
    torch.manual_seed(0)
    head = SegmentationHead(16, 5, 3, propagation=(12,), hidden=(6, 4), category_dim=4)
    head.eval()
    points, category = torch.randn(2, 20, 3), torch.tensor([0, 2])
    centers, layers = torch.randn(2, 6, 3), [torch.randn(2, 6, 8) for _ in range(2)]
    out = head(points, {"centers": centers, "layers": layers}, category)
    tokens = torch.cat(layers, -1)  # (2, 6, 16)
    from mmpd_core.tasks.segmentation import propagate

    local = torch.cat([propagate(centers, tokens, points), points], -1).transpose(1, 2)
    local = head.propagation(local)  # (2, 12, 20)
    one_hot = nn.functional.one_hot(category, 3).float().unsqueeze(-1)
    shared = torch.cat([tokens.max(1).values, tokens.mean(1),
                        head.category(one_hot).squeeze(-1)], -1)  # fmt: skip
    full = torch.cat([local, shared.unsqueeze(-1).expand(-1, -1, 20)], 1)  # upstream's input
    weight = torch.cat([head.local_in.weight, head.shared_in.weight.unsqueeze(-1)], 1)
    expected = head.classifier(nn.functional.conv1d(full, weight))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["point_mae_tiny", "point_m2ae_small", "point_mamba_tiny"])
def test_segmenter_reads_every_backbone(name):
    encoder = create_model(name)
    model = dense.Segmenter(encoder, 7, 2, propagation=(16,), hidden=(8,), category_dim=4)
    points = torch.rand(2, 512, 3) * 2 - 1
    assert model(points, torch.tensor([0, 1])).shape == (2, 7, 512)
    if name == "point_m2ae_small":  # every scale propagated from its own centres
        assert model.taps == () and model.head.propagation[0].in_channels == 36 + 72 + 144 + 3
        scales = encoder.forward_features(points)["scales"]
        assert [c.shape[1] for c, _ in scales] == list(encoder.config.num_groups)
    else:
        assert model.taps == tap_layers(encoder.config.depth)


def test_refresh_batchnorm_takes_the_mean_of_what_it_sees():
    model = nn.Sequential(nn.BatchNorm1d(3))
    batches = [torch.randn(4, 3, 5) + 2.0 for _ in range(3)]

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, points, category=None):
            return self.m(points)

    dense.refresh_batchnorm(Wrap(), ((b, None) for b in batches))
    mean = torch.cat(batches).transpose(0, 1).reshape(3, -1).mean(1)
    torch.testing.assert_close(model[0].running_mean, mean, rtol=1e-5, atol=1e-5)
    assert model[0].momentum == 0.1  # restored


@pytest.fixture(scope="module")
def dense_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    cfg = config.load("dense_data", smoke=True)
    cfg = dataclasses.replace(cfg, out_dir=str(root / "data"), figure=str(root / "dense.png"))
    return cfg, dense_prep.run_stage(cfg), root


def test_dense_data_stage_writes_both_layouts(dense_data):
    cfg, manifest, root = dense_data
    counts = manifest["counts"]
    assert counts["s3dis"]["rooms_per_area"] == {f"Area_{a}": 1 for a in range(1, 7)}
    assert counts["shapenetpart"]["test"] == {c: 1 for c in dense_prep.PART_MAP}
    assert (root / "data" / dr.S3DIS_RAW / "Area_5").is_dir()
    assert (root / "dense.png").stat().st_size > 10_000
    real = dataclasses.replace(
        cfg, source="real", real_root=str(root / "data"), out_dir=str(root / "checked"),
        figure=str(root / "real.png"),
    )  # fmt: skip
    assert dense_prep.run_stage(real)["counts"] == counts  # the real path reads the same files


def test_segmentation_stage_end_to_end(dense_data, tmp_path):
    _, _, root = dense_data
    seg = config.load("segmentation", smoke=True)
    seg = dataclasses.replace(
        seg, checkpoints=("scratch",), data_manifest=str(root / "data" / "manifest.json"),
        out_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
        tables_dir=str(tmp_path / "tables"), figure=str(tmp_path / "room.png"),
    )  # fmt: skip
    frames = dense_stage.run_stage(seg)
    assert list(frames["table6_segmentation"]["method"]) == ["From scratch", "ACT"]
    result = json.loads((tmp_path / "results" / "semantic" / "scratch.json").read_text())
    scores = result["seeds"][0]
    assert 0 <= scores["miou"] <= scores["oa"] <= 100 and result["selection"] == "last epoch"
    part = json.loads((tmp_path / "results" / "part" / "scratch.json").read_text())
    assert 0 < part["seeds"][0]["instance_miou"] <= 100
    assert (tmp_path / "tables" / "table_partseg.md").is_file()
    assert (tmp_path / "room.png").is_file()


def test_detection_stage_end_to_end(dense_data, tmp_path):
    _, _, root = dense_data
    cfg = config.load("detection", smoke=True)
    cfg = dataclasses.replace(
        cfg, checkpoints=("3detr", "scratch"), data_manifest=str(root / "data" / "manifest.json"),
        out_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
        tables_dir=str(tmp_path / "tables"), figure=str(tmp_path / "scene.png"),
    )  # fmt: skip
    frame = detection_stage.run_stage(cfg)
    assert list(frame["method"]) == [
        "3DETR's encoder, from scratch",
        "From scratch",
        *detection_stage.PUBLISHED,
    ]
    result = json.loads((tmp_path / "results" / "scratch.json").read_text())
    scores = result["seeds"][0]
    assert 0 <= scores["ap50"] <= scores["ap25"] <= 100 and result["selection"] == "last epoch"
    assert set(scores["ap25_per_class"]) <= set(SCANNET_CLASSES)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert set(summary) == {"3detr", "scratch"} and "ap25_mean" in summary["3detr"]
    assert (tmp_path / "tables" / "table_detection.md").is_file()
    assert (tmp_path / "scene.png").stat().st_size > 10_000
    assert not list((tmp_path / "runs").rglob("epoch-*"))  # checkpoints removed after the run
