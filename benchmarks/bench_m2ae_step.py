"""One Point-M2AE classification training step at paper size on CPU (ScanObjectNN setting).

B=32 clouds of 2048 points, groups 512 / 256 / 64 of 32 / 16 / 16 points, 15 classes, the
ScanObjectNN head. Times forward + backward + AdamW for: the upstream computation layout
(``m2ae_upstream_style.py``: Conv1d tokenizers, explicit masked attention, plain-torch FPS /
kNN with flat-index gathers, float32), mmpd in float32 (fused tokenizer matmuls, SDPA with the
additive mask, batched FPS) and mmpd with bf16 autocast. All start from the same weights; the
script checks they compute the same logits first. Prints times and ratios measured in this run.

    python benchmarks/bench_m2ae_step.py [--batch 32] [--points 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from m2ae_upstream_style import UpstreamStyleM2AE
from upstream_style import max_abs_diff, time_three_ways

from mmpd_core import create_model

BAR = {"mmpd fp32": 0.8, "mmpd bf16 autocast": 0.5}  # the target ratios to the upstream layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(
        "point_m2ae", num_classes=15, pooling="scanobjectnn", group_sizes=(32, 16, 16)
    )
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(args.batch, args.points, 3, generator=gen) * 2 - 1
    labels = torch.randint(15, (args.batch,), generator=gen)
    baseline = UpstreamStyleM2AE(model)
    diff = max_abs_diff(model, baseline, points)
    print(f"logits max |mmpd - upstream layout| = {diff:.2e} (eval mode, same weights)")
    print(f"batch {args.batch} x {args.points} points; {torch.get_num_threads()} threads")

    results = time_three_ways(model, baseline, points, labels, args.repeats)
    base = results["upstream layout fp32"]
    print("\nratio to the upstream layout measured here (target):")
    for name, seconds in results.items():
        target = f" (<= {BAR[name]})" if name in BAR else ""
        print(f"{name:>22}: {seconds / base:.2f}x{target}")


if __name__ == "__main__":
    main()
