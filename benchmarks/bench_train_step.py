"""One classification training step of the paper-size Point-MAE (B=32, 1024 points) on CPU.

Times forward + backward + AdamW step for: the upstream computation layout (Conv1d tokenizer
with concatenation, explicit attention, float32), mmpd in float32 (fused tokenizer matmuls,
SDPA) and mmpd with bf16 autocast. All three start from the same weights; the script checks
they compute the same logits first. Prints times and ratios measured in this one run, plus the
ratio to the ~5.2 s that REFERENCE.md gives for the upstream code on this machine class.

    python benchmarks/bench_train_step.py [--batch 32] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from upstream_style import max_abs_diff, time_three_ways, upstream_layout

from mmpd_core import create_model
from mmpd_core.profiling import training_step_flops

UPSTREAM_REFERENCE_S = 5.2  # REFERENCE.md: upstream Point-MAE, same step, this CPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model("point_mae", num_classes=40)
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(args.batch, args.points, 3, generator=gen) * 2 - 1
    labels = torch.randint(40, (args.batch,), generator=gen)
    baseline = upstream_layout(model)
    diff = max_abs_diff(model, baseline, points)
    print(f"logits max |mmpd - upstream layout| = {diff:.2e} (eval mode, same weights)")
    flops = training_step_flops(model.train(), points, labels)
    print(
        f"{flops / 1e9:.0f} GFLOP per step (torch flop counter); {torch.get_num_threads()} threads"
    )

    results = time_three_ways(model, baseline, points, labels, args.repeats)
    base = results["upstream layout fp32"]
    print("\nratio to the upstream layout measured here / to the 5.2 s upstream reference:")
    for name, seconds in results.items():
        print(f"{name:>22}: {seconds / base:.2f}x / {seconds / UPSTREAM_REFERENCE_S:.2f}x")


if __name__ == "__main__":
    main()
