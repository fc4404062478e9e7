"""Cost of a model: parameters, FLOPs and measured step time (for benchmarks and Table 5)."""

from __future__ import annotations

import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmpd_core.config import ModelsStage
from mmpd_core.engine import autocast_context
from mmpd_core.models import create_model
from mmpd_core.tables import write_table
from mmpd_core.tracking import log_rows, machine, progress


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def classification_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    points: torch.Tensor,
    labels: torch.Tensor,
    *,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """One forward + backward + optimizer step of classification training; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(points.device, amp_dtype):
        loss = F.cross_entropy(model(points), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def training_step_flops(model: nn.Module, points: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass (matmuls and convolutions, as torch counts them)."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(points), labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(step, *, warmup: int = 1, repeats: int = 3) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``step()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def profile_model(
    name: str, *, batch_size: int, num_points: int, num_classes: int, repeats: int, seed: int
) -> dict[str, float | str]:
    """Parameters, FLOPs and fp32 / bf16-autocast training-step time of one model (CPU)."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes).train()
    gen = torch.Generator().manual_seed(seed)
    points = torch.rand(batch_size, num_points, 3, generator=gen) * 2 - 1
    labels = torch.randint(num_classes, (batch_size,), generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    flops = training_step_flops(model, points, labels)
    row: dict[str, float | str] = {
        "model": name,
        "params_M": count_parameters(model) / 1e6,
        "step_GFLOP": flops / 1e9,
    }
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        times = time_steps(
            lambda dtype=dtype: classification_step(
                model, optimizer, points, labels, amp_dtype=dtype
            ),
            repeats=repeats,
        )
        row[f"{label}_step_s"] = min(times)
        row[f"{label}_GFLOP_per_s"] = flops / 1e9 / min(times)
    return row


def run_stage(cfg: ModelsStage) -> pd.DataFrame:
    """The ``models`` stage: ``profile_model`` for every name (a progress bar), written to
    ``<out_dir>/tables/models.{md,csv}`` and logged to dvclive."""
    results = pd.DataFrame(
        [
            profile_model(
                name, batch_size=cfg.batch_size, num_points=cfg.num_points,
                num_classes=cfg.num_classes, repeats=cfg.repeats, seed=cfg.seed,
            )
            for name in progress(cfg.models, desc="models")
        ]
    )  # fmt: skip
    caption = (
        f"Backbone cost, batch {cfg.batch_size} x {cfg.num_points} points, measured on "
        f"{machine()} (step = forward + backward + AdamW; best of {cfg.repeats})."
    )
    write_table(results, f"{cfg.out_dir}/tables/models", caption=caption)
    log_rows("models", results, key="model")
    return results
