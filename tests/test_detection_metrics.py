"""Detection mAP on hand-built cases (mmpd_core/tasks/detection_metrics.py)."""

import math

import numpy as np
import pytest

from mmpd_core.tasks.detection_metrics import (
    Detection,
    average_precision,
    box_iou,
    corners,
    mean_average_precision,
    voc_ap,
)

CHAIR, TABLE, SOFA = 0, 1, 2
UNIT = corners([0, 0, 0], [1, 1, 1])  # a 1 m cube at the origin


def test_box_iou_by_hand():
    shifted = corners([0.5, 0, 0], [1, 1, 1])  # overlap 0.5 m^3, union 1.5 m^3
    far = corners([5, 5, 5], [1, 1, 1])
    iou = box_iou([UNIT], [UNIT, shifted, far])
    assert iou[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    inside = corners([0, 0, 0], [0.5, 0.5, 0.5])  # 0.125 inside 1
    assert box_iou([inside], [UNIT])[0, 0] == pytest.approx(0.125)


def test_voc_ap_is_the_area_under_the_precision_envelope():
    # ranking TP, FP, TP with 2 positives: recall 0.5, 0.5, 1; precision 1, 0.5, 2/3
    ap = voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_perfect_boxes_give_ap_one_and_a_shift_crosses_the_threshold():
    truths = {"scene0": [(CHAIR, UNIT), (TABLE, corners([3, 0, 0], [2, 1, 1]))],
              "scene1": [(CHAIR, corners([1, 1, 0], [1, 1, 1]))]}  # fmt: skip
    perfect = [Detection(s, lab, 0.9, box) for s, boxes in truths.items() for lab, box in boxes]
    result = mean_average_precision(perfect, truths, [CHAIR, TABLE, SOFA])
    for threshold in (0.25, 0.5):
        assert result[threshold]["per_class"][CHAIR] == pytest.approx(100.0)
        assert result[threshold]["per_class"][TABLE] == pytest.approx(100.0)
        assert math.isnan(result[threshold]["per_class"][SOFA])  # no ground truth: left out
        assert result[threshold]["map"] == pytest.approx(100.0)
    # a chair shifted by half its width: IoU 1/3, a hit at 0.25, a miss at 0.5
    shifted = [Detection("scene0", CHAIR, 0.9, corners([0.5, 0, 0], [1, 1, 1]))]
    one = {"scene0": [(CHAIR, UNIT)]}
    assert average_precision(shifted, one, CHAIR, 0.25) == pytest.approx(1.0)
    assert average_precision(shifted, one, CHAIR, 0.5) == pytest.approx(0.0)


def test_a_duplicate_detection_is_a_false_positive():
    one = {"scene0": [(CHAIR, UNIT)]}
    # TP (0.9) then its duplicate, a FP (0.8): full recall was reached at precision 1, AP = 1
    twice = [Detection("scene0", CHAIR, 0.9, UNIT), Detection("scene0", CHAIR, 0.8, UNIT)]
    assert average_precision(twice, one, CHAIR, 0.5) == pytest.approx(1.0)
    # two chairs, the duplicate of the first outranks the detection of the second: TP, FP, TP
    two = {"scene0": [(CHAIR, UNIT), (CHAIR, corners([4, 0, 0], [1, 1, 1]))]}
    ranked = [Detection("scene0", CHAIR, 0.9, UNIT), Detection("scene0", CHAIR, 0.8, UNIT),
              Detection("scene0", CHAIR, 0.7, corners([4, 0, 0], [1, 1, 1]))]  # fmt: skip
    assert average_precision(ranked, two, CHAIR, 0.5) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a detection in a scene without that class is a false positive; another class's is ignored
    stray = [
        *ranked[:1],
        Detection("scene9", CHAIR, 0.95, UNIT),
        Detection("scene0", TABLE, 1, UNIT),
    ]
    assert average_precision(stray, two, CHAIR, 0.5) == pytest.approx(0.5 * 0.5)
