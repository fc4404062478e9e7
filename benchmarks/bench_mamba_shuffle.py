"""Stage-2 on PointMamba: does the token shuffle still remove the copy shortcut?

PointMamba's encoder is a state-space model over the Hilbert and trans-Hilbert serialisations
of the patch centres, so the order of its input matters. Stage-2 leaves that order alone: the
student reads its visible patches in their serialised order (masking drops tokens from both
sequences, ``PointMamba.random_masking``), and the token shuffle acts where it acts on every
backbone, inside the local decoder (a transformer, not part of the encoder): slot contents are
permuted before each slot's own centre is embedded. Without it a decoder can score on visible
slots by returning its input; ``copy_cos_visible`` (the cosine between a slot's input content
and the teacher token of that slot) measures how much that shortcut is worth.

This trains, on the embedded data (run ``make repro`` first), one Stage-1 ``point_mamba_small``
run and two Stage-2 runs distilling it, shuffle on and off, into ``runs/bench/mamba_shuffle/``;
prints their held-out Stage-2 metrics beside the pipeline's Point-MAE pair (``stage2`` and
``stage2:no_shuffle``) and a linear probe of each encoder on ModelNet40 (the ablation grid's
protocol and head seeds). About 5 minutes on 2 CPU cores.

    python benchmarks/bench_mamba_shuffle.py [--stage1-epochs 7] [--stage2-epochs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from mmpd_core import config, stage1, stage2
from mmpd_core.config import resolve, seed_runs
from mmpd_core.tasks import classification

OUT = "runs/bench/mamba_shuffle"
MODEL = "point_mamba_small"
METRICS = ("copy_cos_visible", "copy_cos_masked", "cos_visible", "cos_masked", "loss_local")


def one_run(cfg, out: str):
    """The first independent run of ``cfg`` written to ``out`` (its dvclive beside it)."""
    run = seed_runs(dataclasses.replace(cfg, pretrain_seeds=1))[0]
    return dataclasses.replace(run, out_dir=out, live_dir=f"{out}/live")


def held_out(result) -> dict[str, float]:
    return {k: round(result.final[f"eval/{k}"], 3) for k in METRICS}


def pipeline_metrics(run: str) -> dict[str, float] | None:
    """The held-out metrics a pipeline Stage-2 run logged (None before ``make repro``)."""
    path = resolve(config.live_dir(run)) / "metrics.json"
    if not path.is_file():
        return None
    evaluated = json.loads(path.read_text())["eval"]
    return {k: round(evaluated[k], 3) for k in METRICS}


def probe(run: str) -> list[float]:
    """ModelNet40 linear-probe accuracy per head seed of the ablation grid."""
    grid = config.load("ablations")
    cell = classification.Cell(run, "modelnet40", "linear")
    return [classification.run_seed(grid, cell, seed, {})["acc"] for seed in grid.seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1-epochs", type=int, default=None, help="default: params.yaml")
    parser.add_argument("--stage2-epochs", type=int, default=None, help="default: params.yaml")
    args = parser.parse_args()
    teacher = f"{OUT}/stage1"
    cfg1 = config.load("pretrain_stage1", model=MODEL, epochs=args.stage1_epochs)
    tick = time.perf_counter()
    stage1.train(one_run(cfg1, teacher))
    print(f"Stage-1 {MODEL}: {time.perf_counter() - tick:.0f} s", flush=True)
    rows = {}
    for shuffle in (True, False):
        name = f"stage2_{'shuffle' if shuffle else 'no_shuffle'}"
        cfg2 = config.load(
            "pretrain_stage2", model=MODEL, teacher=teacher, shuffle=shuffle,
            epochs=args.stage2_epochs,
        )  # fmt: skip
        tick = time.perf_counter()
        result = stage2.train(one_run(cfg2, f"{OUT}/{name}"))
        wall = time.perf_counter() - tick
        accs = np.array(probe(f"{OUT}/{name}"))
        rows[f"{MODEL}, shuffle {'on' if shuffle else 'off'}"] = {
            **held_out(result), "mn40_linear": f"{accs.mean():.1f} ± {accs.std(ddof=1):.1f}",
            "wall_s": round(wall),
        }  # fmt: skip
        print(name, rows[f"{MODEL}, shuffle {'on' if shuffle else 'off'}"], flush=True)
    for run, label in (("stage2", "on"), ("stage2:no_shuffle", "off")):
        found = pipeline_metrics(run)
        if found is not None:
            rows[f"point_mae_tiny (pipeline {run}), shuffle {label}"] = found
    print("\nheld-out Stage-2 metrics (cosines with the teacher's tokens)")
    for name, values in rows.items():
        print(f"  {name:48s} " + "  ".join(f"{k} {v}" for k, v in values.items()))
    path = resolve(OUT) / "shuffle.json"
    path.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
