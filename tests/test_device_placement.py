"""Every stage's training step and evaluation keeps its tensors on the model's device.

The model sits on the ``meta`` device as a stand-in GPU and ``DeviceCheck`` fails any
operation that mixes devices (tests/device_check.py), so a batch a stage forgets to move, or a
target drawn on the CPU and used on the model's device, fails here instead of hours into a GPU
run. Batches arrive on the CPU, as a DataLoader yields them; steps get them after
``engine.to_device`` (the engine's job), evaluations get them raw (their own job).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from device_check import DeviceCheck, DeviceMismatch
from test_stage2 import SMALL, batch_of, fake_targets, make, shapes

from mmpd_core import config, engine
from mmpd_core.data.datasets import CloudDataset
from mmpd_core.models.point_mae import PointMAE
from mmpd_core.stage1 import Stage1Model, Stage1Step, retrieval_accuracy
from mmpd_core.stage2 import evaluate
from mmpd_core.tasks import classification, features, zeroshot

META = torch.device("meta")


def test_the_check_catches_a_cpu_batch_next_to_a_meta_model():
    model = PointMAE(dataclasses.replace(SMALL, num_classes=3)).to(META).eval()
    with DeviceCheck(), pytest.raises(DeviceMismatch, match="meta"):
        model(shapes(2))
    with DeviceCheck():
        assert model(shapes(2).to(META)).shape == (2, 3)


def test_stage1_step_and_retrieval_evaluation():
    targets = fake_targets({"txt": 12, "img": 8})
    model = Stage1Model(PointMAE(SMALL), targets.dims).to(META)
    step = Stage1Step(targets)
    with DeviceCheck():
        loss, metrics = step(model, engine.to_device(batch_of(), META), torch.Generator())
        loss.backward()
        assert loss.device == META and set(metrics) >= {"loss_txt", "batch_top1_img"}
        scores = retrieval_accuracy(model, [batch_of()], targets)  # raw CPU batches
    assert set(scores) == {"retrieval_top1_txt", "retrieval_top1_img"}


@pytest.mark.parametrize("variant", ["", "point_targets", "joint", "point_mae"])
def test_stage2_step_and_evaluation(variant):
    model, step, _ = make(variant)
    model.to(META)  # the teacher follows the batch (Stage2Step.teacher_targets)
    with DeviceCheck():
        loss, _ = step(model, engine.to_device(batch_of(), META), torch.Generator())
        loss.backward()
        model.eval()
        metrics = evaluate(model, step, [batch_of()], seed=0)
    assert "loss" in metrics


def recipe(fps_points: int) -> config.Recipe:
    return config.Recipe(
        epochs=1, batch_size=4, lr=1e-3, weight_decay=0.05, warmup_epochs=0, min_lr=1e-6,
        grad_clip=10.0, amp="none", num_points=256, fps_points=fps_points, vote=True,
        augment="scale_translate", drop_path_rate=0.0, head_epochs=2, head_lr=1e-2,
        grouping={"point_mae": {"num_groups": 16}},
    )  # fmt: skip


@pytest.mark.parametrize("fps_points", [0, 300])
def test_classification_step_votes_features_heads_and_batchnorm(fps_points, monkeypatch):
    adamw = torch.optim.AdamW  # the heads' fused AdamW has no meta kernel: placement only here
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, fused=None, **k: adamw(*a, **k))
    rec = recipe(fps_points)
    clouds = shapes(6, 512)
    sampled = CloudDataset(clouds[:, :256].numpy(), [0, 1, 2, 0, 1, 2], 256, normalize=False)
    stored = CloudDataset(clouds.numpy(), [0, 1, 2, 0, 1, 2], 512, normalize=False)
    model = PointMAE(dataclasses.replace(SMALL, num_classes=3)).to(META)
    batch = {
        "points": stored.points if fps_points else sampled.points,
        "label": torch.arange(6) % 3,
    }
    with DeviceCheck():
        loss, _ = classification.ClassifierStep(rec)(
            model, engine.to_device(batch, META), torch.Generator()
        )
        loss.backward()
        classification.refresh_batchnorm(model, sampled)
        classification.predict(model, sampled, rec, votes=2, seed=0, stored=stored)
        feats, labels = features.extract_features(model, sampled, amp="none")
        for protocol in ("linear", "mlp3"):
            head = classification.train_head(protocol, feats, labels, 3, model, rec, seed=0)
            assert head(feats).device == META


def test_zero_shot_evaluation():
    targets = fake_targets({"txt": 12, "img": 8})
    model = Stage1Model(PointMAE(SMALL), targets.dims).to(META)
    batch = {"points": shapes(4), "label": torch.arange(4)}
    with DeviceCheck():
        scores = zeroshot.evaluate(model, "txt", [batch], torch.randn(5, 12))
    assert scores["samples"] == 4
