"""Stage-1 training steps per second: targets from the teacher cache vs teachers run online.

Same Stage-1 model, batch and step function; only the source of the teacher targets differs.
``--teachers embedded`` uses the real embedded teachers (MiniLM, EfficientNet-Lite0/2 at their
configured input size) and their cache (`dvc repro teacher_cache` first). ``--teachers paper``
times the paper's teacher architectures (CLIP ViT-B/16 image + text, DINOv2 ViT-B/14 at 224 px)
randomly initialised — the cost of a forward pass does not depend on the weights — against an
in-memory cache of the same shapes. Prints both rates and the ratio.

    python benchmarks/bench_stage1_cache.py [--teachers embedded|paper] [--steps 3] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from types import SimpleNamespace

import torch

from mmpd_core import config
from mmpd_core.data.datasets import ShapeNet55Dataset
from mmpd_core.models import create_model
from mmpd_core.profiling import time_steps
from mmpd_core.stage1 import Stage1Model, Stage1Step, target_source
from mmpd_core.teachers.cache import TargetSource


def paper_teachers(tmp: str) -> list:
    """CLIP ViT-B/16 (image, text) and DINOv2-base architectures with random weights."""
    from transformers import Dinov2Config

    from mmpd_core.teachers import HFVisionTeacher, OpenClipTeacher

    Dinov2Config().save_pretrained(tmp)  # the defaults are dinov2-base (768 wide, patch 14)
    clip = dict(model="ViT-B-16", pretrained=None, allow_random=True)
    return [
        OpenClipTeacher("clip_image", modality="image", **clip),
        OpenClipTeacher("clip_text", modality="text", **clip),
        HFVisionTeacher("dinov2", tmp, image_size=224, mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225), allow_random=True),
    ]  # fmt: skip


def memory_cache(online: TargetSource, captions_per_shape: int = 5) -> TargetSource:
    """A cache-backed source with the online teachers' shapes (zeros: lookups cost the same)."""
    tensors = {}
    for name, dim in online.dims.items():
        if online.modality[name] == "image":
            feats = torch.zeros(len(online.names), len(online.degrees), 2, dim, dtype=torch.float16)
            tensors[name] = {"features": feats}
        else:
            feats = torch.zeros(len(online.names), captions_per_shape, dim, dtype=torch.float16)
            counts = torch.full((len(online.names),), captions_per_shape)
            tensors[name] = {"features": feats, "counts": counts}
    cached = TargetSource(online.names, online.modality, online.degrees, online.dims)
    cached.cache = SimpleNamespace(tensors=tensors)
    return cached


def sources(kind: str, data: dict, tmp: str) -> dict[str, TargetSource]:
    if kind == "embedded":
        return {
            "cache": target_source(config.load("pretrain_stage1", online=False), data)[0],
            "online": target_source(config.load("pretrain_stage1", online=True), data)[0],
        }
    online = TargetSource.online(paper_teachers(tmp), data, data["views_degrees"][::2])
    return {"cache": memory_cache(online), "online": online}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", choices=("embedded", "paper"), default="embedded")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    cfg = config.load("pretrain_stage1")
    data = json.loads(config.resolve(cfg.data_manifest).read_text())
    dataset = ShapeNet55Dataset(config.resolve(data["roots"]["shapenet55"]), "train", 1024)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(args.batch)])
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, targets in sources(args.teachers, data, tmp).items():
            torch.manual_seed(0)
            model = Stage1Model(create_model(cfg.model), targets.dims)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            step = Stage1Step(targets)

            def one(step=step, model=model, opt=opt):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss, _ = step(model, batch, torch.Generator().manual_seed(0))
                opt.zero_grad()
                loss.backward()
                opt.step()

            seconds = min(time_steps(one, repeats=args.steps))
            rates[label] = 1 / seconds
            print(f"{label:>6}: {1 / seconds:.2f} steps/s ({seconds:.3f} s/step)")
    ratio = rates["cache"] / rates["online"]
    print(
        f"cache / online: {ratio:.1f}x ({args.teachers} teachers, batch {args.batch}, {cfg.model})"
    )


if __name__ == "__main__":
    main()
