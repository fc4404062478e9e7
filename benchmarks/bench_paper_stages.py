"""Relative cost of every paper-profile training stage, measured on this CPU at paper size.

One training step (forward, backward, AdamW; bf16 autocast) of each stage's model at the paper
profile's size (``point_mae``, 1,024 points; fine-tuning with the upstream per-step resampling
of the stored 8,192 / 2,048 points; ScanNet detection: the 3DETR-style detector on 40,000
points, Point-MAE's encoder on 2,048 groups of 64, 256 queries, 8 decoder layers, with an
assumed 12 boxes per scene), per sample, as a ratio to the Point-MAE baseline's pretraining
step. The README turns the ratios into GPU hours by anchoring them on the paper's
Table 5 (Point-MAE pretraining: 15.2 h on one A100 for 300 epochs of ShapeNet-55).

    python benchmarks/bench_paper_stages.py [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy

import torch

from mmpd_core import config
from mmpd_core.engine import autocast_context
from mmpd_core.models import create_model
from mmpd_core.profiling import time_steps
from mmpd_core.stage1 import Stage1Model, Stage1Step
from mmpd_core.stage2 import Stage2Step, build_model
from mmpd_core.tasks import classification, detection
from mmpd_core.tasks.detector import Detector3D
from mmpd_core.teachers.cache import TargetSource

TEACHER_DIMS = {"clip_image": 512, "clip_text": 512, "dinov2": 768}  # the paper's teachers


class RandomCache:
    """Cached targets of the paper's teachers (random: only their shapes matter here)."""

    def __init__(self, shapes: int):
        self.tensors = {
            "clip_image": {"features": torch.randn(shapes, 30, 2, 512)},
            "clip_text": {
                "features": torch.randn(shapes, 5, 512),
                "counts": torch.full((shapes,), 5),
            },
            "dinov2": {"features": torch.randn(shapes, 30, 2, 768)},
        }


def targets(batch: int) -> TargetSource:
    modality = {"clip_image": "image", "clip_text": "text", "dinov2": "image"}
    source = TargetSource(
        [f"s{i}" for i in range(batch)], modality, list(range(0, 360, 12)), TEACHER_DIMS
    )
    source.cache = RandomCache(batch)
    return source


def stage2_model(variant: str, teacher):
    cfg = config.load("pretrain_stage2", variant=variant, profile="paper", smoke=False)
    student = copy.deepcopy(teacher).train() if teacher is not None else create_model(cfg.model)
    return build_model(cfg, student, TEACHER_DIMS if cfg.joint else None), cfg


def steps(batch: int) -> dict:
    """name -> (model, step_fn, batch dict)."""
    clouds = torch.rand(batch, 1024, 3) * 2 - 1
    names = [f"s{i}" for i in range(batch)]
    pretrain = {"points": clouds, "name": names}
    teacher = create_model("point_mae").eval()
    out = {}
    for name, variant in (("Point-MAE baseline", "point_mae"), ("Stage-2", ""), ("joint", "joint")):
        frozen = None if variant in ("point_mae", "joint") else teacher  # no teacher there
        model, cfg = stage2_model(variant, frozen)
        align = Stage1Step(targets(batch)) if cfg.joint else None
        step = Stage2Step(frozen, mask_ratio=0.6, shuffle=cfg.shuffle, align=align)
        out[name] = (model, step, pretrain)
    out["Stage-1"] = (
        Stage1Model(create_model("point_mae"), TEACHER_DIMS),
        Stage1Step(targets(batch)),
        pretrain,
    )
    for name, family, stored, groups in (
        ("fine-tune ModelNet40", "modelnet40", 8192, 64),
        ("fine-tune ScanObjectNN", "scanobjectnn", 2048, 128),
    ):
        recipe = config.load("finetune", profile="paper", smoke=False).recipes[family]
        model = create_model("point_mae", num_classes=40, num_groups=groups)
        data = {"points": torch.rand(batch, stored, 3) * 2 - 1, "label": torch.arange(batch) % 40}
        out[name] = (model, classification.ClassifierStep(recipe), data)
    out["fine-tune ScanNet detection"] = detection_step(batch)
    return out


def detection_step(batch: int, boxes: int = 12):
    """The paper profile's detector and one batch of random scenes with ``boxes`` boxes each."""
    cfg = config.load("detection", profile="paper", smoke=False)
    recipe = cfg.recipe
    encoder = create_model(cfg.model, num_groups=recipe.num_groups, group_size=recipe.group_size)
    model = Detector3D(encoder, detection.NUM_CLASSES, **cfg.detector)
    scene = torch.rand(batch, recipe.num_points, 3) * torch.tensor([6.0, 6.0, 3.0])
    targets = [{"labels": torch.randint(0, detection.NUM_CLASSES, (boxes,)),
                "boxes": torch.cat([torch.rand(boxes, 3) * 5, 0.3 + torch.rand(boxes, 3)], 1),
                "extent": torch.tensor([6.0, 6.0, 3.0])} for _ in range(batch)]  # fmt: skip
    step = detection.DetectionStep(detection.SetCriterion(detection.NUM_CLASSES))
    return model, step, {"points": scene, "targets": targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    per_sample = {}
    for name, (model, step, batch) in steps(args.batch).items():
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def one(model=model, step=step, batch=batch, optimizer=optimizer):
            with autocast_context("cpu", torch.bfloat16):
                loss, _ = step(model, batch, torch.Generator().manual_seed(0))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        per_sample[name] = min(time_steps(one, warmup=1, repeats=args.repeats)) / args.batch
    base = per_sample["Point-MAE baseline"]
    print(f"{'stage':<26}{'s / sample (CPU)':>18}{'ratio to Point-MAE':>20}")
    for name, seconds in per_sample.items():
        print(f"{name:<26}{seconds:>18.3f}{seconds / base:>20.2f}")


if __name__ == "__main__":
    main()
