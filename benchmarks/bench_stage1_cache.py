"""Stage-1 training steps per second: targets from the teacher cache vs teachers run online.

Same model, batch and step function; only the source of the teacher targets differs. Needs the
embedded data and teacher cache (`dvc repro teacher_cache`). Prints both rates and the ratio.

    python benchmarks/bench_stage1_cache.py [--steps 5] [--batch 32]
"""

from __future__ import annotations

import argparse
import json

import torch

from mmpd_core import config
from mmpd_core.data.datasets import ShapeNet55Dataset
from mmpd_core.models import create_model
from mmpd_core.profiling import time_steps
from mmpd_core.stage1 import Stage1Model, Stage1Step, target_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    cfg = config.load("pretrain_stage1")
    data = json.loads(config.resolve(cfg.data_manifest).read_text())
    root = config.resolve(data["roots"]["shapenet55"])
    dataset = ShapeNet55Dataset(root, "train", cfg.num_points, seed=0)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(args.batch)])
    rates = {}
    for online in (False, True):
        targets, _ = target_source(config.load("pretrain_stage1", online=online), data)
        torch.manual_seed(0)
        model = Stage1Model(create_model(cfg.model), {n: targets.dims[n] for n in cfg.teachers})
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step = Stage1Step(targets)

        def one(step=step, model=model, opt=opt):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = step(model, batch, torch.Generator().manual_seed(0))
            opt.zero_grad()
            loss.backward()
            opt.step()

        seconds = min(time_steps(one, repeats=args.steps))
        label = "online" if online else "cache"
        rates[label] = 1 / seconds
        print(f"{label:>6}: {1 / seconds:.2f} steps/s ({seconds:.3f} s/step)")
    print(
        f"cache / online: {rates['cache'] / rates['online']:.1f}x (batch {args.batch}, {cfg.model})"
    )


if __name__ == "__main__":
    main()
