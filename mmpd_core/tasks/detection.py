"""3DETR's set prediction objective for axis-aligned boxes (issue #15, its matching part; no
stage runs it yet).

A detector predicts, per query, class logits over ``num_classes + 1`` (the last: no object)
and a box (centre, size) in the scene's coordinates. Training matches predictions to ground
truth one-to-one (DETR / 3DETR's Hungarian matching, solved by
``scipy.optimize.linear_sum_assignment``) on the cost

    cost = giou_cost · (−GIoU) + cls_cost · (−p(true class)) + center_cost · L1(centres),

3DETR's ScanNet weights being giou 2, cls 1, centre 0 (``scripts/scannet_ep1080.sh``:
``--matcher_giou_cost 2 --matcher_cls_cost 1 --matcher_center_cost 0``). The set loss then
sums, over matched pairs, centre L1 (weight 5), size L1 (1) and 1 − GIoU (1), each averaged
over the ground-truth boxes, and a cross-entropy over every query whose unmatched queries
target "no object" with class weight 0.25 (``--loss_no_object_weight 0.25``). ScanNet boxes are
axis-aligned, so no heading terms.

Boxes here are (..., 6) = (cx, cy, cz, sx, sy, sz); ``detection_metrics.corners`` gives the
min / max form the metric reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn


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
        ``logits`` (B, Q, C + 1), ``boxes`` (B, Q, 6); ``targets``: per scene ``labels`` (K,)
        and ``boxes`` (K, 6)."""
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
        pred, true = [], []
        for b, (rows, cols) in enumerate(matches):
            classes[b, rows.to(device)] = targets[b]["labels"].to(device)[cols.to(device)]
            pred.append(boxes[b, rows.to(device)])
            true.append(targets[b]["boxes"].to(device)[cols.to(device)])
        weight = torch.ones(self.num_classes + 1, device=device)
        weight[-1] = self.no_object_weight
        cls = nn.functional.cross_entropy(logits.float().transpose(1, 2), classes, weight)
        pred, true = torch.cat(pred).float(), torch.cat(true).float()  # (M, 6)
        count = max(len(true), 1)
        center = (pred[:, :3] - true[:, :3]).abs().sum() / count
        size = (pred[:, 3:] - true[:, 3:]).abs().sum() / count
        giou = (1 - torch.diag(generalized_iou(pred, true)[1])).sum() / count
        total = cls + self.center_weight * center + self.size_weight * size
        total = total + self.giou_weight * giou
        terms = {"cls": cls.item(), "center": center.item(), "size": size.item(),
                 "giou": giou.item(), "matched": float(len(true))}  # fmt: skip
        return total, terms
