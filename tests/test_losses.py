import math

import pytest
import torch
from open_clip.loss import ClipLoss

from mmpd_core.losses import (
    LogitScale,
    global_distillation_loss,
    local_distillation_loss,
    negative_cosine,
    stage1_loss,
    symmetric_infonce,
)


def test_infonce_equals_open_clip_cliploss():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 32, generator=gen), torch.randn(16, 32, generator=gen)
    scale = torch.tensor(1 / 0.07)
    ours = symmetric_infonce(a, b, scale)
    normed = torch.nn.functional.normalize
    theirs = ClipLoss()(normed(a, dim=-1), normed(b, dim=-1), scale)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_infonce_hand_computed_2x2():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # normalised: (1, 0), (0.7071, 0.7071)
    c = 1 / math.sqrt(2)
    # logits (scale 1) = [[1, c], [0, c]]; rows: -log softmax at the diagonal
    row0, row1 = (
        -math.log(math.e / (math.e + math.exp(c))),
        -math.log(math.exp(c) / (1 + math.exp(c))),
    )
    # columns of the logits = rows of the transpose [[1, 0], [c, c]]
    col0, col1 = -math.log(math.e / (math.e + 1)), -math.log(0.5)
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    assert symmetric_infonce(a, b, 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_logit_scale_init_and_clamp():
    scale = LogitScale()
    assert scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert scale().item() == pytest.approx(100.0)


def test_stage1_loss_sums_one_term_per_teacher():
    gen = torch.Generator().manual_seed(1)
    names = ["text", "clip_image", "dinov2"]
    point = {n: torch.randn(8, 16, generator=gen) for n in names}
    teacher = {n: torch.randn(8, 16, generator=gen) for n in names}
    total, terms = stage1_loss(point, teacher, 10.0)
    assert set(terms) == set(names)
    expected = sum(symmetric_infonce(point[n], teacher[n], 10.0) for n in names)
    assert torch.allclose(total, expected)
    scales = {"text": 5.0, "clip_image": 10.0, "dinov2": 20.0}
    total, terms = stage1_loss(point, teacher, scales)
    assert torch.allclose(
        terms["dinov2"], symmetric_infonce(point["dinov2"], teacher["dinov2"], 20.0)
    )
    with pytest.raises(ValueError, match="same teachers"):
        stage1_loss({"text": point["text"]}, teacher, 1.0)


def test_negative_cosine_hand_value_and_gradient():
    pred = torch.tensor([[1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0], [0.0, 1.0]], requires_grad=True)
    loss = negative_cosine(pred, target)
    c = 1 / math.sqrt(2)
    assert loss.item() == pytest.approx(((1 - c) + 0.0) / 2)
    loss.backward()
    # d(1 - cos)/dp = -(t_hat - cos * p_hat) / |p|, halved by the mean over 2 vectors
    assert torch.allclose(pred.grad, torch.tensor([[0.0, -c / 2], [0.0, 0.0]]), atol=1e-6)
    assert target.grad is None  # the teacher side is detached


def test_distillation_losses_average_over_all_tokens():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    per_token = 1 - torch.nn.functional.cosine_similarity(pred, target, dim=-1)
    assert torch.allclose(local_distillation_loss(pred, target), per_token.mean())
    assert torch.autograd.gradcheck(lambda p: local_distillation_loss(p, target), (pred,))
    g_pred, g_target = pred[:, 0], target[:, 0]
    assert torch.allclose(global_distillation_loss(g_pred, g_target), per_token[:, 0].mean())
    assert local_distillation_loss(target, target).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="differ"):
        local_distillation_loss(pred, target[:, :3])
