"""Metrics every task reports: accuracy, and mean ± std over seeds (or folds)."""

from __future__ import annotations

import numpy as np
import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction (records store percent: ``100 * accuracy``)."""
    return (logits.argmax(dim=1) == labels).float().mean().item()


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarise(rows: list[dict], keys=("acc", "acc_vote", "train_acc", "wall_time_s")) -> dict:
    """``<key>_mean`` / ``<key>_std`` over per-seed rows (accuracies in percent, times in
    seconds); a key that is NaN for some row (no voted accuracy for frozen protocols) is left
    out."""
    out = {}
    for key in keys:
        if key not in rows[0]:
            continue
        values = np.array([r[key] for r in rows], dtype=float)
        if np.isnan(values).any():
            continue
        out[f"{key}_mean"], out[f"{key}_std"] = mean_std(values)
    return out
