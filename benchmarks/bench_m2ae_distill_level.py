"""Which Point-M2AE level Stage-2 should distil: the coarsest (the default) or scale 1.

``pretrain_stage2.distill_scale`` picks the level of a hierarchical encoder whose tokens Stage-2
distils (``stage2.py``). This measures the alternative once, on the embedded data, after
``make repro`` (it reads the ``stage1:m2ae`` runs and the ``stage2:m2ae`` runs the pipeline
trained): it trains ``stage2:m2ae`` again with ``distill_scale: 1`` (each independent run k from
Stage-1 run k, as the pipeline does) into ``runs/bench/m2ae_distill_scale1/``, then probes
both encoders with the ablation grid's linear protocol (head seed i probes run i, cycling) on its
datasets and
prints each run's held-out Stage-2 cosines, the accuracies and the paired differences. About
2 minutes on 2 CPU cores.

    python benchmarks/bench_m2ae_distill_level.py [--level 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from mmpd_core import config, stage2
from mmpd_core.config import resolve, seed_runs, seeded
from mmpd_core.tasks import classification

OUT = "runs/bench/m2ae_distill_scale{level}"


def train_alternative(level: int) -> list[str]:
    """Stage-2 ``stage2:m2ae`` with ``distill_scale`` = level, every independent run; their
    directories, in run order."""
    cfg = config.load("pretrain_stage2", variant="m2ae", distill_scale=level)
    dirs = []
    for k, run in enumerate(seed_runs(cfg)):
        out = f"{OUT.format(level=level)}/seed{k}"
        run = dataclasses.replace(run, out_dir=out, live_dir=f"{out}/live")
        tick = time.perf_counter()
        result = stage2.train(run)
        cos = {k: round(v, 3) for k, v in result.final.items() if k.startswith("eval/cos")}
        print(f"run {k}: {time.perf_counter() - tick:.0f} s, held-out {cos}", flush=True)
        dirs.append(out)
    return dirs


def probe(refs: list[str]) -> dict[str, list[float]]:
    """Linear-probe accuracy per ablation dataset; seed i probes run ``refs[i % len(refs)]``
    (as the grids pair them)."""
    grid = config.load("ablations")
    cache, out = {}, {}
    for dataset in grid.datasets:
        cell = classification.Cell(refs[0], dataset, "linear")
        out[dataset] = [
            classification.run_seed(grid, cell, seed, cache, refs[i % len(refs)])["acc"]
            for i, seed in enumerate(grid.seeds)
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=int, default=1, help="the alternative distill_scale")
    args = parser.parse_args()
    default = config.load("pretrain_stage2", variant="m2ae")
    runs = [seeded(default.run, k) for k in range(default.pretrain_seeds)]
    alternative = train_alternative(args.level)
    coarsest, finer = probe(runs), probe(alternative)
    seeds = len(config.load("ablations").seeds)
    print(f"\nlinear probe (%, mean ± std over {seeds} head seeds, {len(runs)} pretraining runs)")
    for dataset in coarsest:
        a, b = np.array(coarsest[dataset]), np.array(finer[dataset])
        diff = a - b
        print(
            f"{dataset:24s} coarsest {a.mean():5.1f} ± {a.std(ddof=1):4.1f}   "
            f"scale {args.level} {b.mean():5.1f} ± {b.std(ddof=1):4.1f}   "
            f"paired Δ {diff.mean():+5.1f} ± {diff.std(ddof=1):4.1f}"
        )
    record = {"coarsest": coarsest, f"scale{args.level}": finer, "runs": runs, "alt": alternative}
    path = resolve(OUT.format(level=args.level)) / "probe.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
