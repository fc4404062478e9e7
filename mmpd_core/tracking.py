"""Metrics logging with dvclive: one directory per stage, never editing dvc.yaml."""

from __future__ import annotations

from pathlib import Path

from dvclive import Live

from mmpd_core.config import resolve

DVCLIVE_ROOT = "reports/dvclive"


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
