"""3DETR's set objective: GIoU by hand, the Hungarian matching against enumeration, and the
set loss's terms on hand-built predictions; the scene data and its augmentation, NMS and the
post-processing into scored detections (issue #15)."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
import torch

from mmpd_core.data.scannet import Scene
from mmpd_core.tasks.detection import (
    SceneDataset,
    SceneTargets,
    SetCriterion,
    collate,
    detections,
    generalized_iou,
    nms,
    rotate_boxes_z,
    to_corners,
    truths,
)


def test_generalized_iou_by_hand():
    a = torch.tensor([[0.5, 0.5, 0.5, 1.0, 1.0, 1.0]])  # the unit cube
    b = torch.tensor([
        [1.0, 0.5, 0.5, 1.0, 1.0, 1.0],  # shifted by half: inter 0.5, union 1.5
        [3.5, 0.5, 0.5, 1.0, 1.0, 1.0],  # disjoint, 2 apart: hull 4, union 2
        [0.5, 0.5, 0.5, 1.0, 1.0, 1.0],  # the same box
    ])  # fmt: skip
    iou, giou = generalized_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 3, 0.0, 1.0]]))
    torch.testing.assert_close(giou, torch.tensor([[1 / 3, -0.5, 1.0]]))
    torch.testing.assert_close(to_corners(a), torch.tensor([[0.0, 0, 0, 1, 1, 1]]))


def brute_force(cost: np.ndarray) -> float:
    """The least total cost of giving every column its own row, by enumeration."""
    rows, cols = cost.shape
    return min(sum(cost[r, c] for c, r in enumerate(perm))
               for perm in permutations(range(rows), cols))  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
def test_matching_is_the_optimal_assignment(seed):
    generator = torch.Generator().manual_seed(seed)
    queries, objects, classes = 6, 3, 4
    logits = torch.randn(1, queries, classes + 1, generator=generator)
    boxes = torch.cat([torch.rand(1, queries, 3, generator=generator),
                       0.2 + torch.rand(1, queries, 3, generator=generator)], -1)  # fmt: skip
    centres = torch.rand(objects, 3, generator=generator)
    sizes = 0.2 + torch.rand(objects, 3, generator=generator)
    labels = torch.randint(0, classes, (objects,), generator=generator)
    target = {"labels": labels, "boxes": torch.cat([centres, sizes], -1)}
    criterion = SetCriterion(classes)
    ((rows, cols),) = criterion.match(logits, boxes, [target])
    _, giou = generalized_iou(boxes[0], target["boxes"])
    cost = (-2 * giou - logits[0].softmax(-1)[:, target["labels"]]).numpy()
    assert sorted(cols.tolist()) == list(range(objects)) and len(set(rows.tolist())) == objects
    assert cost[rows, cols].sum() == pytest.approx(brute_force(cost), abs=1e-5)


def test_set_loss_terms_on_hand_built_predictions():
    criterion = SetCriterion(num_classes=2)
    truth = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [4.0, 4.0, 0.5, 2.0, 1.0, 1.0]])
    target = {"labels": torch.tensor([0, 1]), "boxes": truth}
    far = torch.tensor([[9.0, 9.0, 9.0, 0.5, 0.5, 0.5]])
    shifted = truth[1] + torch.tensor([0.5, 0, 0, 0, 0, 0])  # centre off by 0.5 along x
    boxes = torch.stack([truth[0], far[0], shifted])[None]  # (1, 3, 6): query 1 matches nothing
    logits = torch.full((1, 3, 3), -20.0)
    logits[0, 0, 0] = logits[0, 1, 2] = logits[0, 2, 1] = 20.0  # confident and right
    loss, terms = criterion(logits, boxes, [target])
    assert terms["matched"] == 2 and terms["cls"] == pytest.approx(0.0, abs=1e-6)
    assert terms["center"] == pytest.approx(0.5 / 2)  # L1 0.5 over 2 boxes
    assert terms["size"] == pytest.approx(0.0)
    # the shifted box: inter 1.5 · 1 · 1, union 2.5, hull = union: GIoU = IoU = 0.6
    assert terms["giou"] == pytest.approx((1 - 0.6) / 2, rel=1e-5)
    assert loss.item() == pytest.approx(5 * 0.25 + 0.2, rel=1e-5)
    wrong = logits.clone()
    wrong[0, 1] = torch.tensor([20.0, -20.0, -20.0])  # the unmatched query claims class 0
    _, terms_wrong = criterion(wrong, boxes, [target])
    # cross-entropy 40 on that query, weighted 0.25 for "no object", over a weight sum of 2.25
    assert terms_wrong["cls"] == pytest.approx(0.25 * 40 / 2.25, rel=1e-4)


def test_set_loss_trains_boxes_towards_their_targets():
    torch.manual_seed(0)
    criterion = SetCriterion(num_classes=3)
    truth = torch.tensor([[1.0, 2.0, 0.5, 1.0, 0.6, 1.0], [3.0, 1.0, 0.4, 0.5, 0.5, 0.8]])
    target = {"labels": torch.tensor([2, 0]), "boxes": truth}
    boxes = torch.nn.Parameter(torch.cat([torch.rand(1, 4, 3) * 3, torch.full((1, 4, 3), 0.7)], -1))
    logits = torch.nn.Parameter(torch.zeros(1, 4, 4))
    optimizer = torch.optim.Adam([boxes, logits], lr=0.05)
    first = criterion(logits, boxes, [target])[0].item()
    for _ in range(300):
        loss, _ = criterion(logits, boxes, [target])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 6)}
    _, terms = criterion(logits, boxes, [empty])  # a scene without objects: all "no object"
    assert terms["matched"] == 0 and terms["giou"] == 0.0


@pytest.mark.parametrize(
    "name", ["point_mae_tiny", "point_m2ae_small", "point_mamba_tiny", "3detr"]
)
def test_detector_runs_on_every_backbone(name):
    from mmpd_core.models import create_model
    from mmpd_core.tasks.detector import Detector3D, ThreeDETREncoder

    torch.manual_seed(0)
    if name == "3detr":
        encoder = ThreeDETREncoder(num_groups=32, group_size=16, radius=0.5, mlp=(32, 64),
                                   depth=1, ffn=64)  # fmt: skip
    else:
        encoder = create_model(name)
    detector = Detector3D(encoder, num_classes=5, num_queries=8, dim=32, depth=2)
    points = torch.rand(2, 512, 3) * 4
    out = detector(points)
    assert out["logits"].shape == (2, 8, 6) and out["boxes"].shape == (2, 8, 6)
    assert (out["boxes"][..., 3:] > 0).all()  # sizes
    centres = encoder.forward_features(points)["centers"]
    seeds_in_centres = torch.cdist(
        out["seeds"], centres, compute_mode="donot_use_mm_for_euclid_dist"
    )
    assert seeds_in_centres.min(-1).values.max() < 1e-5  # queries sit on encoder centres
    truth = torch.tensor([[1.0, 1, 1, 0.5, 0.5, 0.5], [3.0, 3, 1, 1, 1, 1]])
    target = {"labels": torch.tensor([1, 3]), "boxes": truth}
    loss, _ = SetCriterion(5)(out["logits"], out["boxes"], [target, target])
    loss.backward()
    assert all(p.grad is not None for p in detector.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_detector_fits_one_scene():
    from mmpd_core.models import create_model
    from mmpd_core.tasks.detector import Detector3D

    torch.manual_seed(0)
    boxes = torch.tensor([[1.0, 1.0, 0.5, 0.8, 0.8, 1.0], [3.0, 2.5, 0.4, 1.2, 0.6, 0.8]])
    clouds = [c[:3] + (torch.rand(256, 3) - 0.5) * c[3:] for c in boxes]  # points in each box
    points = torch.cat(clouds)[None]  # (1, 512, 3)
    target = {"labels": torch.tensor([0, 2]), "boxes": boxes}
    detector = Detector3D(create_model("point_mae_tiny", drop_path_rate=0.0), num_classes=3,
                          num_queries=8, dim=32, depth=2, dropout=0.0)  # fmt: skip
    criterion = SetCriterion(3)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=2e-3)
    first = None
    for _ in range(120):
        out = detector(points)
        loss, terms = criterion(out["logits"], out["boxes"], [target])
        first = first or loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first and terms["giou"] < 0.3


def test_threedetr_grouping_keeps_the_ball_and_repeats_the_nearest():
    from mmpd_core.tasks.detector import ThreeDETREncoder

    encoder = ThreeDETREncoder(num_groups=2, group_size=3, radius=0.5, mlp=(8,), depth=1, ffn=8)
    line = torch.tensor([[0.0, 0, 0], [0.2, 0, 0], [0.45, 0, 0], [2.0, 0, 0], [2.3, 0, 0]])
    local, centers = encoder.group(line[None])
    # FPS from point 0: then the farthest, point 4
    torch.testing.assert_close(centers[0], line[[0, 4]])
    # point 0's 3 nearest (0, 0.2, 0.45) all lie in the ball; point 4's are 4, 3 and then
    # point 2 at 1.85, outside: replaced by the nearest (itself), all divided by the radius
    torch.testing.assert_close(local[0, 0, :, 0], torch.tensor([0.0, 0.4, 0.9]))
    torch.testing.assert_close(local[0, 1, :, 0], torch.tensor([0.0, -0.6, 0.0]))
    assert encoder.forward_features(line[None])["tokens"].shape == (1, 2, 8)


# ---------------------------------------------------------------------------- data, inference


def test_extent_puts_the_l1_terms_in_scene_units():
    criterion = SetCriterion(num_classes=1)
    truth = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    boxes = torch.tensor([[[1.5, 1.0, 1.0, 1.0, 1.0, 2.0]]])  # centre x + 0.5, size z + 1
    logits = torch.tensor([[[20.0, -20.0]]])
    target = {"labels": torch.tensor([0]), "boxes": truth, "extent": torch.tensor([5.0, 4.0, 2.0])}
    _, terms = criterion(logits, boxes, [target])
    assert terms["center"] == pytest.approx(0.5 / 5) and terms["size"] == pytest.approx(1 / 2)


def test_rotating_boxes_encloses_the_rotated_box():
    boxes = np.array([[1.0, 0.0, 0.5, 2.0, 1.0, 1.0]])
    quarter = rotate_boxes_z(boxes, np.pi / 2)  # x -> y: centre (0, 1), sizes swap
    np.testing.assert_allclose(quarter, [[0.0, 1.0, 0.5, 1.0, 2.0, 1.0]], atol=1e-12)
    eighth = rotate_boxes_z(boxes, np.pi / 4)  # enclosing square of side (2 + 1) / sqrt(2)
    side = 3 / np.sqrt(2)
    np.testing.assert_allclose(eighth, [[np.sqrt(0.5), np.sqrt(0.5), 0.5, side, side, 1.0]])


def boxed_scene() -> SceneTargets:
    """Two boxes filled with points, one left empty of points: a scene whose every point lies
    in a known box."""
    rng = np.random.default_rng(0)
    boxes = np.array([[1.0, 2.0, 0.5, 1.0, 0.6, 1.0], [-2.0, -1.0, 0.4, 0.5, 0.5, 0.8]],
                     np.float32)  # fmt: skip
    points = np.concatenate([b[:3] + (rng.random((300, 3)) - 0.5) * b[3:] for b in boxes])
    return SceneTargets("s", points.astype(np.float32), np.array([2, 4]), boxes)


def test_augmentation_moves_points_and_boxes_together():
    scene = boxed_scene()
    dataset = SceneDataset([scene], 400, seed=3, train=True, repeats=3)
    assert len(dataset) == 3
    changed = 0
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for item in dataset:
            corners = to_corners(item["boxes"].double()).numpy()
            points = item["points"].double().numpy()
            inside = [((points >= c[:3] - 1e-5) & (points <= c[3:] + 1e-5)).all(1) for c in corners]
            assert np.logical_or(*inside).all()  # every point still in its (enclosing) box
            changed += not np.allclose(item["boxes"].numpy(), scene.boxes)
            np.testing.assert_allclose(item["extent"], points.max(0) - points.min(0), rtol=1e-5)
    assert changed >= 10  # flips and rotations happened
    test = SceneDataset([scene], 400, seed=3, train=False)
    torch.testing.assert_close(test[0]["points"], test[0]["points"])  # one fixed draw
    np.testing.assert_array_equal(test[0]["boxes"].numpy(), scene.boxes)
    batch = collate([dataset[0], dataset[1]])
    assert batch["points"].shape == (2, 400, 3) and len(batch["targets"]) == 2


def test_scene_targets_centre_the_scene_and_keep_detection_classes():
    vertices = np.zeros((4, 6), np.float32)
    vertices[:, :3] = [[0, 0, 0], [4, 2, 1], [1, 1, 2], [2, 0, 0]]
    boxes = np.array([[1, 1, 0.5, 1, 1, 1, 5], [3, 1, 0.5, 1, 1, 1, 1]], np.float32)  # chair, wall
    scene = Scene("x", vertices, np.zeros(4, np.int64), np.zeros(4, np.int64), boxes)
    targets = SceneTargets.of(scene)
    np.testing.assert_allclose(targets.points[1], [2, 1, 1])  # xy centre (2, 1) moved to 0
    np.testing.assert_array_equal(targets.labels, [2])  # NYU40 5 = chair, class 2; wall dropped
    np.testing.assert_allclose(targets.boxes, [[-1, 0, 0.5, 1, 1, 1]])


def test_nms_suppresses_overlaps_of_one_class_only():
    boxes = np.array([[0, 0, 0, 1, 1, 1], [0.1, 0, 0, 1.1, 1, 1], [0.1, 0, 0, 1.1, 1, 1],
                      [3, 3, 3, 4, 4, 4]], float)  # fmt: skip
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    kept = nms(boxes, scores, np.array([0, 0, 1, 0]), threshold=0.25)
    assert kept.tolist() == [0, 2, 3]  # box 1 overlaps box 0 (IoU 0.82), box 2 is another class


def test_detections_propose_every_class_scored_by_objectness():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.02, 0.01, 0.97]]))  # 2 classes + none
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1], [5.0, 5, 5, 1, 1, 1]])
    found = detections("s", logits, boxes, conf_thresh=0.05)  # query 1: objectness 0.03
    assert [(d.label, round(d.score, 6)) for d in found] == [(0, 0.54), (1, 0.27)]
    np.testing.assert_allclose(found[0].box, [-0.5, -0.5, -0.5, 0.5, 0.5, 0.5])
    label, box = truths([boxed_scene()])["s"][1]
    assert label == 4 and box == pytest.approx([-2.25, -1.25, 0.0, -1.75, -0.75, 0.8])
