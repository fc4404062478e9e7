"""Mamba's selective scan on CPU: the chunked parallel scan against the sequential reference.

``selective_scan`` vs ``selective_scan_ref`` (one recurrence step at a time, upstream's
reference shape, strided (batch, E, L, N) tensors), float32, state 16, batch 2, at PointMamba's
sequence lengths: the embedded size (``point_mamba_small``: 2 x 32 tokens, 256 channels), the
paper size (2 x 64 tokens, 768 channels) and L = 256 x 768 channels (the issue's 5x bar). Times
the forward pass (no grad) and forward + backward; checks both agree first. For the forward
pass it also times ``selective_scan``'s own one-step-at-a-time loop over time-major slices
(``_sequential_readout``, which it takes without grad for steps of more than
``SEQUENTIAL_STEP_ELEMENTS`` state entries): how much of the reference's time is its layout
rather than the recurrence. A second table finds that crossover: chunked against one step at a
time by the size of a step (batch x N x E).

Paths are timed in turns (the best of ``--repeats`` each), so all see the machine in the same
state; it prints the times and the ratios measured in this run. The reference writes its
decays and drive whole, 25 MB each at L = 256; with glibc's defaults freed blocks that size go
back to the system and the next call faults them in again, which makes timings swing by up
to 1.5x from run to run. So the script re-runs itself with glibc told to keep freed memory
(``--glibc-default`` keeps the defaults; the reference then loses most).

    python benchmarks/bench_selective_scan.py [--repeats 7] [--glibc-default]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

from mmpd_core.models import selective_scan as scan_module
from mmpd_core.models.selective_scan import selective_scan, selective_scan_ref

SIZES = {"embedded (L=64, E=256)": (64, 256), "paper (L=128, E=768)": (128, 768),
         "L=256, E=768": (256, 768)}  # fmt: skip
BAR = {"L=256, E=768": 5.0}  # the target forward speed-up
CROSSOVER = [(128, 768, batch) for batch in (1, 2, 4, 8)] + [(64, 256, b) for b in (4, 8, 16, 32)]
STATES = 16
BATCH = 2
KEEP_FREED = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "1000000000"}


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


@contextlib.contextmanager
def steps_one_at_a_time(always: bool):
    """``selective_scan`` without grad forced to its chunked scan, or to one step at a time."""
    saved = scan_module.SEQUENTIAL_STEP_ELEMENTS
    scan_module.SEQUENTIAL_STEP_ELEMENTS = 0 if always else 1 << 62
    try:
        yield
    finally:
        scan_module.SEQUENTIAL_STEP_ELEMENTS = saved


def forward_paths(inputs: dict, reference: bool = True) -> dict:
    """The chunked scan and the step loop (and the reference), without grad."""

    def forced(always):
        def run():
            with steps_one_at_a_time(always):
                selective_scan(**inputs)

        return run

    paths = {"parallel": forced(False), "time-major loop": forced(True)}
    return {"sequential": lambda: selective_scan_ref(**inputs), **paths} if reference else paths


def best_times(fns: dict, repeats: int) -> dict:
    """The fastest of ``repeats`` runs of each function (seconds), timed in turns after one
    warm-up each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def forward_backward(scan, args: dict):
    leaves = {k: v.requires_grad_(True) if torch.is_tensor(v) else v for k, v in args.items()}
    return lambda: scan(**leaves).square().sum().backward()


def row(name: str, label: str, best: dict, note: str = "") -> str:
    ref, par = best["sequential"], best["parallel"]
    return (f"{name:>24} {label:>9} {ref * 1e3:>9.1f}ms {par * 1e3:>7.1f}ms "
            f"{ref / par:>8.1f}x{note}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--glibc-default", action="store_true")
    args = parser.parse_args()
    if not args.glibc_default and any(os.environ.get(k) != v for k, v in KEEP_FREED.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP_FREED})
    allocator = "glibc defaults" if args.glibc_default else "glibc keeps freed memory"
    print(f"batch {BATCH}, state {STATES}, float32, {torch.get_num_threads()} threads, "
          f"{allocator}")  # fmt: skip
    print(f"{'size':>24} {'pass':>9} {'sequential':>11} {'parallel':>9} {'speed-up':>9}")
    gen = torch.Generator().manual_seed(0)
    for name, (length, channels) in SIZES.items():
        inputs = scan_inputs(BATCH, length, channels, gen)
        with torch.no_grad(), steps_one_at_a_time(False):
            diff = (selective_scan(**inputs) - selective_scan_ref(**inputs)).abs().max().item()
        with torch.no_grad():
            best = best_times(forward_paths(inputs), args.repeats)
        loop = best["time-major loop"]
        target = f" (bar >= {BAR[name]:.0f}x)" if name in BAR else ""
        print(row(name, "forward", best, f"{target}  max |diff| {diff:.1e}; time-major loop "
                  f"{loop * 1e3:.1f}ms, {best['sequential'] / loop:.1f}x"))  # fmt: skip
        paths = {"sequential": forward_backward(selective_scan_ref, dict(inputs)),
                 "parallel": forward_backward(selective_scan, dict(inputs))}  # fmt: skip
        print(row("", "+backward", best_times(paths, args.repeats)))
    print(f"\nwithout grad, chunked scan vs one step at a time; selective_scan takes the loop "
          f"above {scan_module.SEQUENTIAL_STEP_ELEMENTS} state entries a step")  # fmt: skip
    print(f"{'L':>5} {'E':>5} {'batch':>5} {'step (b N E)':>13} {'chunked':>9} {'loop':>9} "
          f"{'loop/chunked':>13}")  # fmt: skip
    for length, channels, batch in CROSSOVER:
        inputs = scan_inputs(batch, length, channels, gen)
        with torch.no_grad():
            best = best_times(forward_paths(inputs, reference=False), args.repeats)
        chunked, loop = best["parallel"], best["time-major loop"]
        print(f"{length:>5} {channels:>5} {batch:>5} {batch * STATES * channels:>13} "
              f"{chunked * 1e3:>7.2f}ms {loop * 1e3:>7.2f}ms {loop / chunked:>12.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
