"""PointMamba's training step against Point-MAE's at the embedded sizes, on CPU.

One classification step (forward, backward, AdamW) on B clouds of 512 points under bf16
autocast (the recipe's) for ``point_mae_tiny``, ``point_mamba_tiny`` (the pipeline's PointMamba
rows) and ``point_mamba_small``; the median of several steps after two warm-up steps, and each
PointMamba size as a ratio to ``point_mae_tiny`` measured in this run. The selective scan runs
in float32 under the autocast (``models/selective_scan.py``).

    python benchmarks/bench_mamba_step.py [--batch 32] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mmpd_core import create_model

MODELS = ("point_mae_tiny", "point_mamba_tiny", "point_mamba_small")


def median_step_ms(name: str, batch: int, repeats: int) -> tuple[float, int]:
    """(median step in ms, parameters) of ``name`` with a 15-class head."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=15).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(batch, 512, 3, generator=gen) * 2 - 1
    labels = torch.randint(15, (batch,), generator=gen)
    times = []
    for i in range(repeats + 2):
        tick = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(points)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - tick)
    return 1e3 * float(np.median(times)), sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"B {args.batch} x 512 points, bf16 autocast, {torch.get_num_threads()} threads")
    base = None
    for name in MODELS:
        ms, params = median_step_ms(name, args.batch, args.repeats)
        base = base or ms
        print(f"{name:>18s} {params / 1e6:5.2f} M  {ms:7.0f} ms  {ms / base:4.1f}x point_mae_tiny")


if __name__ == "__main__":
    main()
