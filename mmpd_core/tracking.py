"""What a run tells the person watching it and the record it leaves: text progress bars, the
machine it ran on, dvclive metrics (one directory per stage, never editing dvc.yaml) and the
cost of every training run."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from dvclive import Live
from tqdm import tqdm

from mmpd_core.config import read_params, resolve

DVCLIVE_ROOT = "reports/dvclive"


def progress(iterable=None, *, desc: str = "", total: int | None = None, **kwargs) -> tqdm:
    """A text progress bar with a time estimate (tqdm). Text, not a widget: it reads the same in
    a terminal, in Jupyter and in the log of a pipeline run (``mmpd_core.runner`` sets
    ``TQDM_MININTERVAL`` so that a log gets an update every few seconds, not every step)."""
    return tqdm(iterable, desc=desc, total=total, **kwargs)


def machine() -> str:
    """A short description of where this ran, for table captions."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def context(smoke: bool | None = None, params_path=None) -> str:
    """'Profile: ...; machine: ...' for captions: the params.yaml profile (and smoke flag,
    ``None`` reading it from params.yaml) and where this ran."""
    params = read_params(params_path)
    smoke = params.get("smoke", False) if smoke is None else smoke
    profile = params.get("profile", "embedded")
    name = {
        "embedded": "embedded default (procedural stand-ins)",
        "cpu": "cpu profile (procedural stand-ins, longer schedules, 3 pretraining runs)",
    }.get(profile, "paper profile")
    return f"Profile: {name}{' at smoke size' if smoke else ''}; machine: {machine()}"


def live(stage: str, *, resume: bool = False) -> Live:
    """A dvclive logger writing to ``reports/dvclive/<stage>`` (metrics.json, plots/)."""
    return Live(
        dir=str(resolve(DVCLIVE_ROOT) / stage),
        dvcyaml=None,
        save_dvc_exp=False,
        resume=resume,
        report=None,
    )


def log_summary(stage: str, metrics: dict[str, float]) -> Path:
    """Write a flat ``{name: value}`` summary as the stage's metrics.json; returns its path."""
    with live(stage) as logger:
        for name, value in metrics.items():
            logger.log_metric(name, value, plot=False)
    return resolve(DVCLIVE_ROOT) / stage / "metrics.json"


def log_rows(stage: str, frame, key: str) -> Path:
    """Log every numeric column of every row as ``<row key>/<column>`` (e.g. point_mae/params_M)."""
    metrics = {
        f"{row[key]}/{column}": float(row[column])
        for _, row in frame.iterrows()
        for column in frame.columns
        if column != key
    }
    return log_summary(stage, metrics)


def write_cost(live_dir: str | Path, result) -> Path:
    """``<live_dir>/cost.json``: wall time, steps/s and peak memory of a training run (an
    ``engine.TrainResult``) and the machine it ran on, for the training-cost table."""
    cost = {
        "wall_time_s": round(result.wall_time_s, 2),
        "steps_per_s": round(result.steps_per_s, 3),
        "peak_memory_mb": round(result.peak_memory_mb, 1),
        "epochs": len(result.history),
        "device": machine(),
    }
    path = Path(live_dir) / "cost.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cost, indent=2) + "\n")
    return path


def train_seeds(cfg, train_one, *, resume: bool = False) -> list:
    """Train every independent run of a pretraining config in turn (``config.seed_runs``:
    seeds ``seed``, ``seed + 1``, ...), then record them in ``<run dir>/seeds.json`` (what
    ``config.seed_refs`` reads downstream) and create the run's dvclive ``seeds/`` folder
    (where runs past the first log). Returns ``train_one``'s result for each, in order."""
    from mmpd_core.config import SEEDS_FILE, seed_runs, seeded
    from mmpd_core.distributed import is_main_process

    runs = seed_runs(cfg)
    results = [train_one(run, resume=resume) for run in runs]
    if is_main_process():
        record = {
            "run": cfg.run,
            "seeds": [run.seed for run in runs],
            "runs": [seeded(cfg.run, k) for k in range(len(runs))],
        }
        seeds = resolve(cfg.live_dir) / "seeds"  # dvclive of runs past the first: seed<k>/
        seeds.mkdir(parents=True, exist_ok=True)
        # a file even for a single run: git keeps no empty folder, and DVC tracks this one
        (seeds / "runs.json").write_text(json.dumps(record, indent=1) + "\n")
        path = resolve(cfg.out_dir) / SEEDS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
    return results
