"""Dense prediction on any encoder of the backbone contract: a per-point segmentation head and
the metrics of semantic and part segmentation (issue #14; ``dense`` and ``dense_stage`` run
them in the ``segmentation`` stage).

Head (Point-MAE's part-segmentation model, ``segmentation/models/pt.py`` upstream, for any
backbone; a multi-scale encoder such as Point-M2AE gives every scale's output tokens instead of
tapped blocks, each propagated from its own centres, as Point-M2AE's segmentation model does):

- the tokens after several encoder blocks (``Features['layers']``): Point-MAE taps blocks
  3, 7 and 11 of 12 (0-based); ``tap_layers(depth)`` scales that rule to another depth;
- concatenated per token (B, G, L·D); a global feature of their max and mean over the G tokens;
  for part segmentation a learned embedding of the object category (upstream: one-hot → 64);
- propagated from the G token centres to each of the N points by inverse squared-distance
  weighting of the 3 nearest centres (``propagate``: PointNet++ feature propagation, as
  upstream's ``PointNetFeaturePropagation``), then a propagation MLP (upstream: 1536, 1024),
  concatenated with the global and category features and classified point-wise by
  Conv1d-BN-ReLU layers (upstream: 512, dropout 0.5, 256).

Metrics (``confusion`` and the two score functions): semantic segmentation reports overall
accuracy, mean class accuracy and mean IoU over all points (S3DIS Area 5); part segmentation
reports instance mIoU (mean over shapes of the shape's mean part IoU) and class mIoU (mean over
categories of their shapes' mean), a part absent from both prediction and ground truth counting
as IoU 1 (the ShapeNetPart convention of PointNet and Point-MAE).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mmpd_core.geometry import square_distance

UPSTREAM_TAPS = (3, 7, 11)  # Point-MAE's part segmentation, blocks of its depth-12 encoder
UPSTREAM_DEPTH = 12


def tap_layers(depth: int) -> tuple[int, ...]:
    """Blocks (0-based) whose tokens the head reads: upstream's 3, 7, 11 of 12, scaled to
    ``depth`` (block i of 12 ends at the fraction (i + 1) / 12 of the stack); distinct, so a
    shallow stack gives fewer taps (depth 4: 0, 2, 3)."""
    if depth < 1:
        raise ValueError(f"depth must be positive, got {depth}")
    taps = (round((i + 1) * depth / UPSTREAM_DEPTH) - 1 for i in UPSTREAM_TAPS)
    return tuple(sorted({max(0, t) for t in taps}))


def propagate(
    centers: torch.Tensor, features: torch.Tensor, points: torch.Tensor, k: int = 3
) -> torch.Tensor:
    """Features (B, G, C) at ``centers`` (B, G, 3) interpolated at ``points`` (B, N, 3): the k
    nearest centres of each point weighted by 1 / (squared distance + 1e-8), normalised
    (PointNet++ feature propagation). Returns (B, N, C).

    The weights are scattered into a dense (B, N, G) matrix applied as one batched matmul:
    the same sums as gathering the k neighbours' features, without the (B, N, k, C) copy."""
    if centers.shape[:2] != features.shape[:2]:
        raise ValueError(f"centers {tuple(centers.shape)} and features {tuple(features.shape)}")
    k = min(k, centers.shape[1])
    dist = square_distance(points.float(), centers.float())  # (B, N, G)
    near, idx = dist.topk(k, dim=-1, largest=False)  # (B, N, k)
    weights = 1.0 / (near + 1e-8)
    weights = weights / weights.sum(-1, keepdim=True)  # (B, N, k)
    dense = torch.zeros_like(dist).scatter_(-1, idx, weights)  # (B, N, G)
    return torch.bmm(dense.to(features.dtype), features)  # (B, N, C)


def _conv_bn_relu(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv1d(inputs, outputs, 1, bias=False), nn.BatchNorm1d(outputs), nn.ReLU()]


class SegmentationHead(nn.Module):
    """Per-point logits from an encoder's ``Features`` (see the module docstring).

    ``width``: the channels propagated to each point: L·D for L tapped layers of width D, or
    the sum of the scales' widths for a multi-scale encoder (``Features['scales']``);
    ``num_categories`` > 0 adds the category embedding (part segmentation). Widths default to
    upstream's: propagation (1536, 1024), classifier (512, 256), category embedding 64.

    The classifier's first layer reads [propagated, global, category] at every point; the
    global and category parts are the same at all N points, so upstream's Conv1d over the
    concatenation is applied as a Conv1d on the propagated part (``local_in``) plus a Linear
    on the per-cloud part (``shared_in``), broadcast over the points: the same function and
    parameter count, without expanding a (B, 2·L·D, N) tensor."""

    def __init__(
        self, width: int, num_classes: int, num_categories: int = 0, *,
        propagation: Sequence[int] = (1536, 1024), hidden: Sequence[int] = (512, 256),
        category_dim: int = 64, dropout: float = 0.5,
    ):  # fmt: skip
        super().__init__()
        if not hidden:
            raise ValueError("the classifier needs at least one hidden layer")
        layers, inputs = [], width + 3  # propagated tokens and the point's own xyz (upstream)
        for out in propagation:
            layers += _conv_bn_relu(inputs, out)
            inputs = out
        self.propagation = nn.Sequential(*layers)
        self.category = None
        if num_categories:
            self.category = nn.Sequential(*_conv_bn_relu(num_categories, category_dim))
        self.num_categories = num_categories
        shared = 2 * width + (category_dim if num_categories else 0)
        self.local_in = nn.Conv1d(inputs, hidden[0], 1, bias=False)
        self.shared_in = nn.Linear(shared, hidden[0], bias=False)
        classifier = [nn.BatchNorm1d(hidden[0]), nn.ReLU()]
        if dropout:
            classifier.append(nn.Dropout(dropout))
        inputs = hidden[0]
        for out in hidden[1:]:
            classifier += _conv_bn_relu(inputs, out)
            inputs = out
        classifier.append(nn.Conv1d(inputs, num_classes, 1))
        self.classifier = nn.Sequential(*classifier)

    def forward(
        self, points: torch.Tensor, features: dict, category: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``points`` (B, N, 3), the encoder's ``features`` (with ``layers``, or a multi-scale
        encoder's ``scales``: [(centres (B, G_s, 3), tokens (B, G_s, D_s))], each scale then
        propagated from its own centres), ``category`` (B,) integer ids when the head has
        categories. Returns logits (B, classes, N)."""
        if features.get("scales"):
            levels = [(centers, tokens.float()) for centers, tokens in features["scales"]]
        elif features.get("layers"):
            tokens = torch.cat([t.float() for t in features["layers"]], dim=-1)  # (B, G, L·D)
            levels = [(features["centers"], tokens)]
        else:
            raise ValueError("features hold no 'layers': call forward_features(points, layers)")
        shared = [torch.cat([t.max(1).values for _, t in levels], -1),
                  torch.cat([t.mean(1) for _, t in levels], -1)]  # the global feature  # fmt: skip
        if self.category is not None:
            if category is None:
                raise ValueError("this head embeds the object category: pass category ids")
            one_hot = nn.functional.one_hot(category, self.num_categories).float()
            shared.append(self.category(one_hot.unsqueeze(-1)).squeeze(-1))  # (B, category_dim)
        local = [propagate(centers, tokens, points) for centers, tokens in levels]  # (B, N, ·)
        local = torch.cat([*local, points.float()], dim=-1).transpose(1, 2)  # (B, width+3, N)
        x = self.local_in(self.propagation(local))  # (B, H, N)
        x = x + self.shared_in(torch.cat(shared, dim=-1)).unsqueeze(-1)  # (B, H, 1) broadcast
        return self.classifier(x)


# ---------------------------------------------------------------------------- metrics


def confusion(pred, target, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(num_classes, num_classes) counts, rows the true class, columns the predicted one;
    points whose target is ``ignore_index`` are left out."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"{pred.size} predictions for {target.size} targets")
    keep = target != ignore_index if ignore_index is not None else slice(None)
    pred, target = pred[keep], target[keep]
    if len(target) and (target.min() < 0 or target.max() >= num_classes or pred.min() < 0
                        or pred.max() >= num_classes):  # fmt: skip
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    flat = target.astype(np.int64) * num_classes + pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def semantic_scores(matrix: np.ndarray) -> dict:
    """Overall accuracy, mean class accuracy and mean IoU (percent) of a confusion matrix;
    classes absent from the ground truth are left out of both means (and reported as NaN in
    ``iou`` / ``acc``)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true, hit = matrix.sum(1), np.diag(matrix)
    union = true + matrix.sum(0) - hit
    present = true > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(present, hit / true, np.nan)
        iou = np.where(present, hit / union, np.nan)
    return {
        "oa": 100 * hit.sum() / max(matrix.sum(), 1),
        "macc": 100 * float(np.nanmean(acc)) if present.any() else float("nan"),
        "miou": 100 * float(np.nanmean(iou)) if present.any() else float("nan"),
        "acc": 100 * acc,
        "iou": 100 * iou,
    }


def shape_iou(pred, target, parts: Sequence[int]) -> float:
    """Mean IoU over a category's ``parts`` for one shape; a part in neither the prediction
    nor the ground truth counts as 1 (PointNet's ShapeNetPart convention)."""
    pred, target = np.asarray(pred), np.asarray(target)
    ious = []
    for part in parts:
        p, t = pred == part, target == part
        union = np.logical_or(p, t).sum()
        ious.append(1.0 if union == 0 else np.logical_and(p, t).sum() / union)
    return float(np.mean(ious))


def part_scores(preds, targets, categories, parts_of: dict) -> dict:
    """Instance mIoU (mean over shapes), class mIoU (mean over categories of their shapes'
    mean) and the per-category means, in percent. ``preds`` / ``targets``: per-shape label
    arrays; ``categories``: each shape's category; ``parts_of``: category -> its part labels."""
    per_shape: dict = {}
    for pred, target, category in zip(preds, targets, categories, strict=True):
        per_shape.setdefault(category, []).append(shape_iou(pred, target, parts_of[category]))
    every = [iou for ious in per_shape.values() for iou in ious]
    per_class = {c: 100 * float(np.mean(v)) for c, v in per_shape.items()}
    return {
        "instance_miou": 100 * float(np.mean(every)),
        "class_miou": float(np.mean(list(per_class.values()))),
        "per_class": per_class,
    }
