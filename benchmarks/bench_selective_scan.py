"""Mamba's selective scan on CPU: the chunked parallel scan against the sequential reference.

``selective_scan`` (time-major, chunked ``linear_scan``) vs ``selective_scan_ref`` (one
recurrence step at a time, upstream's reference shape), float32, state 16, at PointMamba's
sequence lengths: the embedded size (``point_mamba_small``: 2 x 32 tokens, 256 channels), the
paper size (2 x 64 tokens, 768 channels) and L = 256 x 768 channels. Times the forward pass
(no grad) and forward + backward; checks both agree first. Prints times and the ratios
measured in this run, and the forward pass's ceiling: the exponentials exp(Δ·A) and the drive
Δ·u·B over (L, b, E, N), which both paths compute, timed alone; sequential time over that
shared time is the speed-up a scan costing nothing would reach.

    python benchmarks/bench_selective_scan.py [--batch 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from mmpd_core.models.selective_scan import _discretise, selective_scan, selective_scan_ref

SIZES = {"embedded (L=64, E=256)": (64, 256), "paper (L=128, E=768)": (128, 768),
         "L=256, E=768": (256, 768)}  # fmt: skip
BAR = {"L=256, E=768": 5.0}  # the target forward speed-up
STATES = 16


def scan_inputs(batch: int, length: int, channels: int, gen: torch.Generator) -> dict:
    """Arguments as a PointMamba mixer passes them (A = -(1..16), softplus Δ with a bias)."""
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    return {
        "u": rand(batch, channels, length), "delta": rand(batch, channels, length),
        "A": -torch.arange(1.0, STATES + 1).repeat(channels, 1),
        "B": rand(batch, STATES, length), "C": rand(batch, STATES, length),
        "D": torch.ones(channels), "z": rand(batch, channels, length),
        "delta_bias": rand(channels) - 2, "delta_softplus": True,
    }  # fmt: skip


def best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` runs after one warm-up (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def shared_part(args: dict):
    """The discretisation both paths compute before scanning (as the reference writes it)."""

    def run():
        delta = _discretise(args["delta"], args["delta_bias"], args["delta_softplus"])
        torch.exp(torch.einsum("bel,en->beln", delta, args["A"]))
        torch.einsum("bel,bnl,bel->beln", delta, args["B"], args["u"])

    return run


def forward_backward(scan, args: dict):
    leaves = {k: v.requires_grad_(True) if torch.is_tensor(v) else v for k, v in args.items()}
    return lambda: scan(**leaves).square().sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"batch {args.batch}, state {STATES}, float32, {torch.get_num_threads()} threads")
    print(f"{'size':>24} {'pass':>9} {'sequential':>11} {'parallel':>9} {'speed-up':>9}")
    gen = torch.Generator().manual_seed(0)
    for name, (length, channels) in SIZES.items():
        inputs = scan_inputs(args.batch, length, channels, gen)
        with torch.no_grad():
            diff = (selective_scan(**inputs) - selective_scan_ref(**inputs)).abs().max().item()
            ref = best_time(lambda i=inputs: selective_scan_ref(**i), args.repeats)
            par = best_time(lambda i=inputs: selective_scan(**i), args.repeats)
            shared = best_time(shared_part(inputs), args.repeats)
        target = f" (bar >= {BAR[name]:.0f}x)" if name in BAR else ""
        print(f"{name:>24} {'forward':>9} {ref * 1e3:>9.1f}ms {par * 1e3:>7.1f}ms "
              f"{ref / par:>8.1f}x{target}  max |diff| {diff:.1e}; shared exp / drive "
              f"{shared * 1e3:.1f}ms ({shared / ref:.0%} of sequential): ceiling "
              f"{ref / shared:.1f}x")  # fmt: skip
        ref = best_time(forward_backward(selective_scan_ref, dict(inputs)), args.repeats)
        par = best_time(forward_backward(selective_scan, dict(inputs)), args.repeats)
        print(f"{'':>24} {'+backward':>9} {ref * 1e3:>9.1f}ms {par * 1e3:>7.1f}ms "
              f"{ref / par:>8.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
