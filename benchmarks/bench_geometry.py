"""Farthest point sampling and grouping on CPU: mmpd's batched FPS against a naive loop.

The naive loop is the direct port of the kernel: one cloud at a time, one new centre at a
time (a Python loop over clouds x centres, each step a distance update over the cloud's
points). Both must return identical indices; the script checks that before printing times
and ratios measured in this run. Then the CPU chunking of a large batch (the data
preparation's FPS of every ModelNet40 cloud) against one pass over the whole batch.

    python benchmarks/bench_geometry.py [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

from mmpd_core import geometry
from mmpd_core.geometry import ORIGIN_SKIP_SQ_NORM, farthest_point_sample, group
from mmpd_core.profiling import time_steps


def naive_fps(points: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.empty(points.shape[0], n, dtype=torch.long)
    for b, cloud in enumerate(points):
        dist = torch.full((cloud.shape[0],), 1e10)
        valid = cloud.pow(2).sum(-1) > ORIGIN_SKIP_SQ_NORM
        current = 0
        for step in range(n):
            out[b, step] = current
            d = (cloud - cloud[current]).pow(2).sum(-1)
            dist = torch.where(valid, torch.minimum(dist, d), torch.full_like(d, -1.0))
            current = int(dist.argmax())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    print(f"{torch.get_num_threads()} threads")
    for batch, num_points, n in [(32, 8192, 512), (32, 1024, 64)]:
        points = torch.rand(batch, num_points, 3, generator=gen) * 2 - 1
        same = torch.equal(farthest_point_sample(points, n), naive_fps(points, n))
        fast = min(
            time_steps(lambda p=points, n=n: farthest_point_sample(p, n), repeats=args.repeats)
        )
        slow = min(time_steps(lambda p=points, n=n: naive_fps(p, n), warmup=0, repeats=1))
        print(
            f"FPS {batch}x{num_points}->{n}: batched {fast * 1e3:.1f} ms, naive loop "
            f"{slow * 1e3:.0f} ms, speed-up {slow / fast:.1f}x, identical indices: {same}"
        )
    points = torch.rand(600, 4096, 3, generator=gen) * 2 - 1
    chunked = min(time_steps(lambda: farthest_point_sample(points, 1024), warmup=0, repeats=1))
    idx = farthest_point_sample(points, 1024)
    default, geometry.CPU_CHUNK_POINTS = geometry.CPU_CHUNK_POINTS, 1 << 40  # one chunk
    whole = min(time_steps(lambda: farthest_point_sample(points, 1024), warmup=0, repeats=1))
    same = torch.equal(idx, farthest_point_sample(points, 1024))
    geometry.CPU_CHUNK_POINTS = default
    print(
        f"FPS 600x4096->1024: chunks of {default // 4096} clouds {chunked:.2f} s, one pass "
        f"{whole:.2f} s, speed-up {whole / chunked:.1f}x, identical indices: {same}"
    )
    for batch, num_points, groups, size in [(32, 1024, 64, 32), (32, 2048, 128, 32)]:
        points = torch.rand(batch, num_points, 3, generator=gen) * 2 - 1
        t = min(time_steps(lambda p=points, g=groups, k=size: group(p, g, k), repeats=args.repeats))
        print(f"group {batch}x{num_points} -> {groups} groups x {size}: {t * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
