"""3D detection metrics: mAP at axis-aligned 3D IoU thresholds, as ScanNet detection reports
them (issue #15; the ``detection`` stage scores with them).

The evaluation of VoteNet and 3DETR (``eval_det_cls``): per class, the detections of every
scene sorted by score; a detection is a true positive when its best-overlapping ground-truth
box of that class in its scene has IoU >= the threshold and was not matched before, otherwise
a false positive (a duplicate of a matched box included); precision and recall over that
ranking; AP is the area under the precision envelope (VOC's all-point ``voc_ap``, not the
11-point 2007 metric). mAP averages the classes that have ground truth.

Boxes are axis-aligned, (..., 6) = (x_min, y_min, z_min, x_max, y_max, z_max); ``corners``
converts (centre, size).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def corners(center, size) -> np.ndarray:
    """(..., 3) centres and (..., 3) full sizes -> (..., 6) min / max corners."""
    center, half = np.asarray(center, dtype=np.float64), np.asarray(size, dtype=np.float64) / 2
    return np.concatenate([center - half, center + half], axis=-1)


def box_iou(a, b) -> np.ndarray:
    """IoU of axis-aligned boxes ``a`` (M, 6) against ``b`` (K, 6): (M, K)."""
    a, b = np.asarray(a, dtype=np.float64)[:, None], np.asarray(b, dtype=np.float64)[None]
    low, high = np.maximum(a[..., :3], b[..., :3]), np.minimum(a[..., 3:], b[..., 3:])
    inter = np.clip(high - low, 0, None).prod(-1)
    volume = lambda box: np.clip(box[..., 3:] - box[..., :3], 0, None).prod(-1)  # noqa: E731
    union = volume(a) + volume(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone precision envelope (VOC all-point AP)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision at recall >= r
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum())


@dataclass(frozen=True)
class Detection:
    scene: str
    label: int
    score: float
    box: Sequence[float]  # (6,): min / max corners


def average_precision(detections: Iterable[Detection], truths: dict, label: int,
                      threshold: float) -> float:  # fmt: skip
    """AP of class ``label``; ``truths``: scene -> [(label, box), ...]. NaN when the class has
    no ground-truth box."""
    gt = {scene: np.array([box for lab, box in boxes if lab == label], dtype=np.float64)
          for scene, boxes in truths.items()}  # fmt: skip
    positives = sum(len(boxes) for boxes in gt.values())
    if positives == 0:
        return float("nan")
    matched = {scene: np.zeros(len(boxes), bool) for scene, boxes in gt.items()}
    ranked = sorted((d for d in detections if d.label == label), key=lambda d: -d.score)
    hits = np.zeros(len(ranked))
    for i, det in enumerate(ranked):
        boxes = gt.get(det.scene, np.zeros((0, 6)))
        if len(boxes) == 0:
            continue
        ious = box_iou(np.asarray(det.box)[None], boxes)[0]
        best = int(ious.argmax())
        if ious[best] >= threshold and not matched[det.scene][best]:
            matched[det.scene][best] = True
            hits[i] = 1
    tp = np.cumsum(hits)
    recall = tp / positives
    precision = tp / np.arange(1, len(ranked) + 1) if len(ranked) else np.zeros(0)
    return voc_ap(recall, precision)


def mean_average_precision(detections: Sequence[Detection], truths: dict, labels: Sequence[int],
                           thresholds: Sequence[float] = (0.25, 0.5)) -> dict:  # fmt: skip
    """{threshold: {"per_class": {label: AP}, "map": mean over classes with ground truth}},
    APs in percent (``mAP@0.25`` / ``mAP@0.5`` of ScanNet detection)."""
    out = {}
    for threshold in thresholds:
        per_class = {c: 100 * average_precision(detections, truths, c, threshold) for c in labels}
        present = [v for v in per_class.values() if not np.isnan(v)]
        out[threshold] = {"per_class": per_class,
                          "map": float(np.mean(present)) if present else float("nan")}  # fmt: skip
    return out
