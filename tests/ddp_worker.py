"""A tiny classification run of ``mmpd_core.engine.train``, for the DDP equivalence test.

``torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT`` trains with two gloo
ranks; ``tests/test_engine.py`` runs the same ``run(OUT)`` in its own process as the
1-process reference. Both leave their checkpoints in ``OUT/ckpt`` and metrics in ``OUT/live``.

The run is in float64: the tokenizer's max-pooling over a patch has near-ties (margins of
~1e-6 between the top two points), so float32 rounding differences of the synchronised
BatchNorm (~1e-6) can move a max's gradient to another point and the runs drift apart by
~1e-2. In float64 the two runs agree to rounding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmpd_core.engine import TrainConfig, TrainResult, train
from mmpd_core.models import create_model

NUM_CLASSES, NUM_SAMPLES, NUM_POINTS = 3, 32, 64
DTYPE = torch.float64


def make_dataset(seed: int = 0, dtype: torch.dtype = DTYPE) -> list[dict]:
    """Random clouds in a box whose label is set by a per-class anisotropic scaling."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0]], dtype=dtype)
    labels = torch.arange(NUM_SAMPLES) % NUM_CLASSES
    points = torch.rand(NUM_SAMPLES, NUM_POINTS, 3, generator=gen, dtype=dtype) * 2 - 1
    points = points * scales[labels][:, None]  # (S, N, 3)
    return [{"points": p, "label": int(y)} for p, y in zip(points, labels, strict=True)]


def make_model(dtype: torch.dtype = DTYPE, seed: int = 0, **overrides) -> torch.nn.Module:
    """A one-block point transformer with BatchNorm in tokenizer and head; no dropout unless
    ``overrides`` (point_mae config fields) set some."""
    torch.manual_seed(seed)
    model = create_model(
        "point_mae_tiny",
        num_classes=NUM_CLASSES,
        trans_dim=32,
        depth=1,
        num_heads=2,
        num_groups=8,
        group_size=16,
        head_hidden=32,
        **{"drop_path_rate": 0.0, "head_dropout": 0.0, **overrides},
    )
    return model.to(dtype)


def classification_step(model, batch, generator):
    """Mean cross-entropy of the micro-batch (a per-sample mean: DDP-equivalent)."""
    logits = model(batch["points"])
    accuracy = (logits.argmax(-1) == batch["label"]).float().mean().item()
    return F.cross_entropy(logits, batch["label"]), {"accuracy": accuracy}


def config(out: Path, **overrides) -> TrainConfig:
    """2 epochs of 4 steps of 8 clouds, checkpoints in ``out/ckpt``, dvclive in ``out/live``."""
    values = dict(
        epochs=2,
        batch_size=8,
        lr=1e-3,
        weight_decay=0.05,
        warmup_epochs=1,
        min_lr=1e-5,
        grad_clip=1.0,
        accumulation=1,
        amp="none",
        seed=0,
        num_workers=0,
        out_dir=str(out / "ckpt"),
        live_dir=str(out / "live"),
        eval_every=0,
    )
    return TrainConfig(**{**values, **overrides})


def run(out: Path) -> TrainResult:
    """The equivalence run: same model, data and global batch for any number of ranks."""
    return train(make_model(), classification_step, make_dataset(), config(out))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]))
    if dist.is_initialized():
        dist.destroy_process_group()
