"""Table 3's PointMamba rows at the embedded scale, outside the pipeline (its 20-minute budget).

Trains, on the embedded data (run ``make repro`` first), into ``runs/bench/mamba_rows/``:

- Stage-1 on ``point_mamba_tiny`` (params.yaml's ``pretrain_stage1``, the model swapped);
- Stage-2 distilling it ("Ours (PointMamba)", ``pretrain_stage2``);
- the PointMamba baseline: masked point reconstruction with no teacher, the recipe of the
  pipeline's Point-MAE baseline (``variants.pretrain_stage2.point_mae``);

then fine-tunes both encoders (Table 3's full protocol, ``classification``'s recipe and seeds) on
the three ScanObjectNN variants and prints the rows beside the pipeline's Point-MAE rows
(``reports/results/classification.csv``), with each phase's wall time and the training step of
``point_mamba_tiny`` against ``point_mae_tiny``. One pretraining run per encoder, as the
pipeline's Point-M2AE rows; the spread is over fine-tuning seeds. About 5 minutes on 2 cores.

    python benchmarks/bench_mamba_rows.py
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pandas as pd
import torch
from bench_mamba_shuffle import one_run

from mmpd_core import config, create_model, stage1, stage2
from mmpd_core.config import resolve
from mmpd_core.tasks import classification

OUT = "runs/bench/mamba_rows"
MODEL = "point_mamba_tiny"
DATASETS = ("scanobjectnn/obj_bg", "scanobjectnn/obj_only", "scanobjectnn/pb_t50_rs")
SUBSETS = {"obj_bg": "OBJ_BG", "obj_only": "OBJ_ONLY", "pb_t50_rs": "PB_T50_RS"}  # -> column
COLUMNS = tuple(SUBSETS.values())
PIPELINE_ROWS = {"stage2:point_mae": "Point-MAE baseline (pipeline)",
                 "stage2": "Ours (Point-MAE, pipeline)"}  # fmt: skip


def step_ms(name: str, repeats: int = 5) -> float:
    """Median forward + backward + AdamW step (ms): batch 32 x 512 points, bf16 autocast."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=15).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(32, 512, 3, generator=gen) * 2 - 1
    labels = torch.randint(15, (32,), generator=gen)
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
    return 1e3 * float(np.median(times))


def pretrain() -> dict[str, float]:
    """The three pretraining runs; wall seconds of each."""
    walls = {}
    jobs = (
        ("stage1", stage1, config.load("pretrain_stage1", model=MODEL)),
        ("stage2", stage2, config.load("pretrain_stage2", model=MODEL, teacher=f"{OUT}/stage1")),
        ("point_mamba", stage2, config.load("pretrain_stage2", variant="point_mae", model=MODEL)),
    )
    for name, module, cfg in jobs:
        tick = time.perf_counter()
        module.train(one_run(cfg, f"{OUT}/{name}"))
        walls[name] = time.perf_counter() - tick
        print(f"{name} ({MODEL}): {walls[name]:.0f} s", flush=True)
    return walls


def fine_tune() -> tuple[pd.DataFrame, float]:
    """Table 3's full protocol on both encoders (``classification``'s grid, these cells)."""
    grid = config.load("classification")
    grid = dataclasses.replace(
        grid, checkpoints=(f"{OUT}/point_mamba", f"{OUT}/stage2"), datasets=DATASETS,
        protocols=("full",), only={}, protocol_only={}, reuse="",
        out_dir=f"{OUT}/classification", results_dir=f"{OUT}/results", table=f"{OUT}/results",
    )  # fmt: skip
    tick = time.perf_counter()
    frame = classification.run_stage(grid)
    return frame, time.perf_counter() - tick


def rows(frame: pd.DataFrame, labels: dict[str, str]) -> dict[str, dict[str, str]]:
    """{label: {column: 'mean ± std'}} of the full protocol's cells of ``frame``."""
    out = {}
    for _, r in frame[frame["protocol"] == "full"].iterrows():
        if r["checkpoint"] not in labels or r.get("subset") not in SUBSETS:
            continue
        column = SUBSETS[r["subset"]]
        cell = f"{r['acc_mean']:.1f} ± {r['acc_std']:.1f}"
        out.setdefault(labels[r["checkpoint"]], {})[column] = cell
    return out


def main() -> None:
    steps = {name: step_ms(name) for name in (MODEL, "point_mae_tiny")}
    ratio = steps[MODEL] / steps["point_mae_tiny"]
    print(f"training step (B 32 x 512, bf16): {MODEL} {steps[MODEL]:.0f} ms, point_mae_tiny "
          f"{steps['point_mae_tiny']:.0f} ms: {ratio:.1f}x")  # fmt: skip
    walls = pretrain()
    frame, walls["fine-tuning (12 runs)"] = fine_tune()
    ours = {f"{OUT}/point_mamba": "PointMamba baseline", f"{OUT}/stage2": "Ours (PointMamba)"}
    table = rows(frame, ours)
    pipeline = resolve("reports/results/classification.csv")
    if pipeline.is_file():
        table.update(rows(pd.read_csv(pipeline), PIPELINE_ROWS))
    print("\nTable 3, full fine-tuning, ScanObjectNN (embedded scale, mean ± std over 2 seeds)")
    print(f"  {'method':34s} " + "  ".join(f"{c:>12s}" for c in COLUMNS))
    for label, cells in table.items():
        print(f"  {label:34s} " + "  ".join(f"{cells.get(c, '-'):>12s}" for c in COLUMNS))
    print("wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()))
    path = resolve(OUT) / "rows.json"
    summary = {"rows": table, "wall_s": {k: round(v, 1) for k, v in walls.items()},
               "step_ms": {k: round(v, 1) for k, v in steps.items()}}  # fmt: skip
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
