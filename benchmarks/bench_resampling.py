"""What Point-MAE's per-step resampling costs and changes at the embedded scale.

Upstream fine-tuning draws every step's input afresh: FPS of ``fps_points`` points from the
stored cloud, then a random ``num_points`` of them (``transfer.datasets.<family>.fps_points``;
the paper profile sets 1,200 / 2,400). The embedded default keeps one fixed FPS subset per
cloud (``fps_points: 0``). This runs the embedded Table 3 full-protocol grid (every encoder of
``params.yaml: classification``, every dataset, every seed) both ways, in one process, and prints
each cell's accuracy side by side with the time per fine-tuning run. Needs the pipeline's data
and pretraining runs (``dvc repro classification`` first); about 20 minutes on 2 CPU cores.

    python benchmarks/bench_resampling.py [--fps-points 600] [--out /tmp/bench_resampling]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd

from mmpd_core import config
from mmpd_core.tasks import classification


def grid(fps_points: int, out: Path) -> tuple[pd.DataFrame, float]:
    cfg = config.load("classification", protocols=["full"])
    recipes = {
        name: dataclasses.replace(recipe, fps_points=fps_points)
        for name, recipe in cfg.recipes.items()
    }
    where = out / f"fps{fps_points}"
    cfg = dataclasses.replace(
        cfg,
        recipes=recipes,
        results_dir=str(where / "results"),
        out_dir=str(where / "runs"),
        table=str(where / "grid"),
    )
    tick = time.perf_counter()
    frame = classification.run_stage(cfg)
    return frame, time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps-points", type=int, default=600, help="upstream-style FPS size")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_resampling"))
    args = parser.parse_args()

    keys = ["dataset", "subset", "checkpoint"]
    columns = [*keys, "acc_mean", "acc_std", "wall_time_s_mean"]
    fixed, fixed_s = grid(0, args.out)
    fresh, fresh_s = grid(args.fps_points, args.out)
    both = fixed[columns].merge(
        fresh[columns],
        on=keys,
        suffixes=("_fixed", "_resampled"),
    )
    both["delta"] = both["acc_mean_resampled"] - both["acc_mean_fixed"]
    pd.set_option("display.width", 200)
    print(both.round(2).to_string(index=False))
    ratio = both["wall_time_s_mean_resampled"].mean() / both["wall_time_s_mean_fixed"].mean()
    print(
        f"\nresampled - fixed accuracy: mean {both['delta'].mean():+.2f} points "
        f"(range {both['delta'].min():+.1f} .. {both['delta'].max():+.1f}); "
        f"mean spread over seeds {both['acc_std_fixed'].mean():.2f} / "
        f"{both['acc_std_resampled'].mean():.2f}"
    )
    print(
        f"time per fine-tuning run: {ratio:.2f}x; whole grid {fixed_s:.0f} s fixed vs "
        f"{fresh_s:.0f} s resampled ({fresh_s / fixed_s:.2f}x)"
    )


if __name__ == "__main__":
    main()
