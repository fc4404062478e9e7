"""The segmentation head and metrics (mmpd_core/tasks/segmentation.py): hand-computed values."""

import math

import numpy as np
import pytest
import torch

from mmpd_core import create_model
from mmpd_core.tasks.segmentation import (
    SegmentationHead,
    confusion,
    part_scores,
    propagate,
    semantic_scores,
    shape_iou,
    tap_layers,
)


def test_tap_layers_scale_point_maes_rule():
    assert tap_layers(12) == (3, 7, 11)  # upstream
    assert tap_layers(4) == (0, 2, 3)
    assert tap_layers(6) == (1, 3, 5)
    assert tap_layers(1) == (0,)
    with pytest.raises(ValueError):
        tap_layers(0)


def test_propagate_weights_the_three_nearest_centres_by_inverse_squared_distance():
    centers = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [9, 9, 9]]])
    features = torch.tensor([[[1.0], [2.0], [4.0], [100.0]]])
    point = torch.tensor([[[0.5, 0, 0]]])
    # squared distances 0.25, 0.25, 4.25 (the far centre is not among the 3 nearest)
    w = np.array([1 / 0.25, 1 / 0.25, 1 / 4.25])
    expected = (w * np.array([1, 2, 4])).sum() / w.sum()
    out = propagate(centers, features, point)
    assert out.shape == (1, 1, 1)
    assert out.item() == pytest.approx(expected, rel=1e-5)
    at_centre = propagate(centers, features, centers[:, :1])  # a point on a centre copies it
    assert at_centre.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["point_mae_tiny", "point_m2ae_small", "point_mamba_tiny"])
def test_head_gives_per_point_logits_on_every_backbone_and_trains_end_to_end(name):
    torch.manual_seed(0)
    encoder = create_model(name)
    points = torch.rand(2, 512, 3) * 2 - 1
    layers = (0, 1)
    features = encoder.forward_features(points, layers=layers)
    features.pop("scales", None)  # the tapped layers here; tests/test_dense.py: the scales
    head = SegmentationHead(encoder.dim * len(layers), num_classes=5, num_categories=3,
                            propagation=(32,), hidden=(16, 8))  # fmt: skip
    logits = head(points, features, category=torch.tensor([0, 2]))
    assert logits.shape == (2, 5, 512)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    with pytest.raises(ValueError, match="category"):
        head(points, features)
    with pytest.raises(ValueError, match="layers"):
        head(points, {**encoder.forward_features(points), "scales": None})


def test_semantic_scores_by_hand():
    target = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    matrix = confusion(pred, target, 4)
    assert matrix.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    scores = semantic_scores(matrix)
    assert scores["oa"] == pytest.approx(100 * 4 / 6)
    assert scores["macc"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 1) / 3)  # class 3 absent
    assert scores["miou"] == pytest.approx(100 * (2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert math.isnan(scores["iou"][3])
    ignored = confusion([0, 1, 1], [0, -1, 1], 2, ignore_index=-1)
    assert ignored.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="outside"):
        confusion([5], [0], 2)


def test_part_scores_count_absent_parts_as_one_and_average_two_ways():
    parts_of = {"chair": [0, 1, 2], "lamp": [3, 4]}
    # chair A: part 0 perfect, part 1 half (IoU 1/2), part 2 absent from both -> 1
    a = shape_iou([0, 0, 1, 0], [0, 0, 1, 1], parts_of["chair"])
    assert a == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    preds = [[0, 0, 1, 0], [0, 1], [3, 3]]
    targets = [[0, 0, 1, 1], [0, 1], [3, 4]]
    scores = part_scores(preds, targets, ["chair", "chair", "lamp"], parts_of)
    lamp = (1 / 2 + 0) / 2  # part 3: 1 of 2 points; part 4 predicted nowhere
    chair = (a + 1.0) / 2
    assert scores["per_class"]["lamp"] == pytest.approx(100 * lamp)
    assert scores["class_miou"] == pytest.approx(100 * (chair + lamp) / 2)
    assert scores["instance_miou"] == pytest.approx(100 * (a + 1.0 + lamp) / 3)
