"""3DETR's set prediction objective for axis-aligned boxes, the training data, and the
post-processing that turns queries into scored detections (issue #15; the ``detection`` stage
in ``detection_stage`` runs them).

A detector predicts, per query, class logits over ``num_classes + 1`` (the last: no object)
and a box (centre, size) in the scene's coordinates. Training matches predictions to ground
truth one-to-one (DETR / 3DETR's Hungarian matching, solved by
``scipy.optimize.linear_sum_assignment``) on the cost

    cost = giou_cost · (−GIoU) + cls_cost · (−p(true class)) + center_cost · L1(centres),

3DETR's ScanNet weights being giou 2, cls 1, centre 0 (``scripts/scannet_ep1080.sh``:
``--matcher_giou_cost 2 --matcher_cls_cost 1 --matcher_center_cost 0``). The set loss then
sums, over matched pairs, centre L1 (weight 5), size L1 (1) and 1 − GIoU (1), each averaged
over the ground-truth boxes, the L1 terms in units of the scene's extent when a target gives it
(``extent`` (3,): 3DETR takes them on centres and sizes normalised by the scene's point range;
without it, in the boxes' own units), and a cross-entropy over every query whose unmatched queries
target "no object" with class weight 0.25 (``--loss_no_object_weight 0.25``). ScanNet boxes are
axis-aligned, so no heading terms.

Boxes here are (..., 6) = (cx, cy, cz, sx, sy, sz); ``detection_metrics.corners`` gives the
min / max form the metric reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.utils.data import Dataset

from mmpd_core.data.scannet import NYU40_IDS, Scene, detection_targets
from mmpd_core.tasks.detection_metrics import Detection, box_iou, corners

NUM_CLASSES = len(NYU40_IDS)  # ScanNet detection's 18


def to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 6) centre / size -> (..., 6) min / max corners."""
    half = boxes[..., 3:] / 2
    return torch.cat([boxes[..., :3] - half, boxes[..., :3] + half], dim=-1)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU and GIoU of axis-aligned boxes ``a`` (M, 6) and ``b`` (K, 6) in centre /
    size form: (M, K) each. GIoU = IoU − (enclosing volume − union) / enclosing volume."""
    a, b = to_corners(a)[:, None], to_corners(b)[None]  # (M, 1, 6), (1, K, 6)
    inter = torch.minimum(a[..., 3:], b[..., 3:]) - torch.maximum(a[..., :3], b[..., :3])
    inter = inter.clamp(min=0).prod(-1)  # (M, K)
    volume_a = (a[..., 3:] - a[..., :3]).clamp(min=0).prod(-1)
    volume_b = (b[..., 3:] - b[..., :3]).clamp(min=0).prod(-1)
    union = volume_a + volume_b - inter
    iou = inter / union.clamp(min=1e-9)
    hull = torch.maximum(a[..., 3:], b[..., 3:]) - torch.minimum(a[..., :3], b[..., :3])
    hull = hull.clamp(min=0).prod(-1)
    return iou, iou - (hull - union) / hull.clamp(min=1e-9)


@dataclass(frozen=True)
class SetCriterion:
    """3DETR's matcher and set loss (module docstring); defaults are its ScanNet settings."""

    num_classes: int
    giou_cost: float = 2.0
    cls_cost: float = 1.0
    center_cost: float = 0.0
    center_weight: float = 5.0
    size_weight: float = 1.0
    giou_weight: float = 1.0
    no_object_weight: float = 0.25

    @torch.no_grad()
    def match(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]):
        """Per scene, (query indices, target indices) of the optimal one-to-one assignment.
        ``logits`` (B, Q, C + 1), ``boxes`` (B, Q, 6); ``targets``: per scene ``labels`` (K,),
        ``boxes`` (K, 6) and optionally ``extent`` (3,)."""
        matches = []
        probs = logits.float().softmax(-1)
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.long)
                matches.append((empty, empty))
                continue
            _, giou = generalized_iou(boxes[b].float(), target["boxes"].float())  # (Q, K)
            cost = -self.giou_cost * giou - self.cls_cost * probs[b][:, target["labels"]]
            if self.center_cost:
                distance = torch.cdist(boxes[b, :, :3].float(), target["boxes"][:, :3].float(), p=1)
                cost = cost + self.center_cost * distance
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.long),
                            torch.as_tensor(cols, dtype=torch.long)))  # fmt: skip
        return matches

    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]):
        """(total loss, {term: float}) of one batch; see the module docstring."""
        matches = self.match(logits, boxes, targets)
        device = logits.device
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=device)
        pred, true, scale = [], [], []
        for b, (rows, cols) in enumerate(matches):
            classes[b, rows.to(device)] = targets[b]["labels"].to(device)[cols.to(device)]
            pred.append(boxes[b, rows.to(device)])
            true.append(targets[b]["boxes"].to(device)[cols.to(device)])
            extent = targets[b].get("extent", torch.ones(3))
            scale.append(extent.to(device).float().expand(len(rows), 3))
        weight = torch.ones(self.num_classes + 1, device=device)
        weight[-1] = self.no_object_weight
        logits_cq = logits.float().transpose(1, 2)  # (B, C + 1, Q)
        cls = nn.functional.cross_entropy(logits_cq, classes, weight)
        pred, true, scale = torch.cat(pred).float(), torch.cat(true).float(), torch.cat(scale)
        count = max(len(true), 1)
        center = ((pred[:, :3] - true[:, :3]).abs() / scale).sum() / count
        size = ((pred[:, 3:] - true[:, 3:]).abs() / scale).sum() / count
        giou = (1 - torch.diag(generalized_iou(pred, true)[1])).sum() / count
        total = cls + self.center_weight * center + self.size_weight * size
        total = total + self.giou_weight * giou
        terms = {"cls": cls.item(), "center": center.item(), "size": size.item(),
                 "giou": giou.item(), "matched": float(len(true))}  # fmt: skip
        return total, terms


# ---------------------------------------------------------------------------- data


@dataclass
class SceneTargets:
    """One scene centred for the detector: xyz (N, 3) with the xy centre of its extent at 0
    (z kept: the floor stays at its height), and its detection boxes in that frame."""

    name: str
    points: np.ndarray  # (N, 3) float32
    labels: np.ndarray  # (K,) int64 in 0..17
    boxes: np.ndarray  # (K, 6) float32 centre / size

    @classmethod
    def of(cls, scene: Scene) -> SceneTargets:
        xyz = scene.vertices[:, :3].astype(np.float32)
        shift = np.zeros(3, np.float32)
        shift[:2] = (xyz[:, :2].min(0) + xyz[:, :2].max(0)) / 2
        labels, boxes = detection_targets(scene.boxes)
        boxes = boxes.copy()
        boxes[:, :3] -= shift
        return cls(scene.name, xyz - shift, labels, boxes)


def rotate_boxes_z(boxes: np.ndarray, angle: float) -> np.ndarray:
    """Axis-aligned boxes (K, 6) after a rotation by ``angle`` about z: the rotated centre and
    the axis-aligned box enclosing the rotated box (3DETR's ``rotate_aligned_boxes``)."""
    c, s = math.cos(angle), math.sin(angle)
    out = boxes.copy()
    x, y = boxes[:, 0], boxes[:, 1]
    out[:, 0], out[:, 1] = c * x - s * y, s * x + c * y
    dx, dy = boxes[:, 3], boxes[:, 4]
    out[:, 3], out[:, 4] = abs(c) * dx + abs(s) * dy, abs(s) * dx + abs(c) * dy
    return out


class SceneDataset(Dataset):
    """``num_points`` of a scene per item (without replacement when it has enough, as 3DETR's
    ``random_sampling``). Training draws afresh every epoch, ``repeats`` times per scene, with
    3DETR's ScanNet augmentation: a flip of x and a flip of y (each p = 0.5) and a rotation
    about z uniform in ±5°; testing draws once (seeded) without augmentation. Items:
    ``points`` (N, 3), ``labels`` (K,), ``boxes`` (K, 6) and ``extent`` (3,), the sample's
    point range (the set loss's unit); ``collate`` batches them."""

    def __init__(self, scenes: list[SceneTargets], num_points: int, seed: int, *,
                 train: bool, repeats: int = 1):  # fmt: skip
        self.scenes, self.n, self.seed, self.train = scenes, num_points, seed, train
        self.repeats, self.epoch = repeats if train else 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.scenes) * self.repeats

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of {len(self)}")
        scene = self.scenes[index % len(self.scenes)]
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 0, index])
        count = len(scene.points)
        chosen = rng.choice(count, self.n, replace=count < self.n)
        points, boxes = scene.points[chosen].copy(), scene.boxes.copy()
        if self.train:
            for axis in (0, 1):
                if rng.random() < 0.5:
                    points[:, axis] *= -1
                    boxes[:, axis] *= -1
            angle = rng.uniform(-math.pi / 36, math.pi / 36)
            c, s = math.cos(angle), math.sin(angle)
            points[:, :2] = points[:, :2] @ np.array([[c, s], [-s, c]], np.float32)
            boxes = rotate_boxes_z(boxes, angle)
        extent = np.maximum(points.max(0) - points.min(0), 1e-3)
        return {"points": torch.from_numpy(points), "labels": torch.from_numpy(scene.labels),
                "boxes": torch.from_numpy(boxes.astype(np.float32)),
                "extent": torch.from_numpy(extent)}  # fmt: skip


def collate(items: list[dict]) -> dict:
    """Stacked points; per-scene targets as a list (the box count varies)."""
    return {"points": torch.stack([item["points"] for item in items]),
            "targets": [{k: item[k] for k in ("labels", "boxes", "extent")}
                        for item in items]}  # fmt: skip


class DetectionStep:
    """The engine's step: the detector on a batch, the set loss (its terms as metrics)."""

    def __init__(self, criterion: SetCriterion):
        self.criterion = criterion

    def __call__(self, model, batch, generator):
        out = model(batch["points"])
        loss, terms = self.criterion(out["logits"], out["boxes"], batch["targets"])
        terms.pop("matched")
        return loss, terms


# ---------------------------------------------------------------------------- inference


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float):
    """Indices kept by greedy class-aware 3D NMS: in score order, a box is dropped when it
    overlaps a kept box of the same class with IoU > ``threshold``. ``boxes`` (M, 6) min /
    max corners."""
    order, kept = np.argsort(-scores, kind="stable"), []
    for i in order:
        same = [k for k in kept if classes[k] == classes[i]]
        if not same or box_iou(boxes[i : i + 1], boxes[same]).max() <= threshold:
            kept.append(i)
    return np.array(kept, dtype=np.int64)


def detections(scene: str, logits: torch.Tensor, boxes: torch.Tensor, *, nms_iou: float = 0.25,
               conf_thresh: float = 0.05) -> list[Detection]:  # fmt: skip
    """One scene's queries as scored detections, 3DETR's ScanNet post-processing: objectness
    = 1 − p(no object); boxes with objectness <= ``conf_thresh`` dropped; class-aware NMS on
    objectness (the class: the most probable); every kept box then proposed for every class
    with score p(class) · objectness (``per_class_proposal``). ``logits`` (Q, C + 1),
    ``boxes`` (Q, 6) centre / size."""
    probs = logits.float().softmax(-1).cpu().numpy()
    objectness, classes = 1 - probs[:, -1], probs[:, :-1].argmax(-1)
    corners = to_corners(boxes.float()).cpu().numpy()
    keep = np.flatnonzero(objectness > conf_thresh)
    keep = keep[nms(corners[keep], objectness[keep], classes[keep], nms_iou)]
    return [Detection(scene, c, float(probs[q, c] * objectness[q]), corners[q].tolist())
            for q in keep for c in range(probs.shape[1] - 1)]  # fmt: skip


def truths(scenes: list[SceneTargets]) -> dict:
    """scene -> [(label, min / max corners)], the metric's ground truth."""
    return {s.name: [(int(label), box.tolist()) for label, box in
                     zip(s.labels, corners(s.boxes[:, :3], s.boxes[:, 3:]), strict=True)]
            for s in scenes}  # fmt: skip
