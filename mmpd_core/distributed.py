"""Process-group plumbing for DDP under ``torchrun``: rank info, setup, SyncBatchNorm on CPU
(gloo) and small collectives used by the training engine. Single-process runs need none of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_info() -> WorldInfo:
    """Rank, world size and local rank from torchrun's environment (0, 1, 0 without it)."""
    env = os.environ
    return WorldInfo(
        int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    )


def is_main_process() -> bool:
    """True on rank 0 (and in single-process runs): the rank that logs and writes files."""
    return world_info().is_main


def setup_distributed(world: WorldInfo) -> torch.device:
    """Join the process group when launched with WORLD_SIZE > 1; return this rank's device."""
    cuda = torch.cuda.is_available()
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if not cuda:
        return torch.device("cpu")
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; each rank's input gets the sum of every rank's output gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm synchronised over CPU (gloo) ranks; torch's SyncBatchNorm is GPU-only.

    In training mode under a process group, mean and biased variance are taken over the
    global batch with autograd-aware all-reduces, so forward and backward match one BatchNorm
    over the concatenated batch. Otherwise it is a plain BatchNorm over any (N, C, ...) input.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an (N, C, ...) input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)  # (1, C, 1, ...)
        count = torch.tensor(float(x.numel() // x.shape[1]))
        dist.all_reduce(count)
        mean = _AllReduceSum.apply(x.sum(dims)) / count  # (C,)
        var = _AllReduceSum.apply(((x - mean.view(shape)) ** 2).sum(dims)) / count  # (C,)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                n = self.num_batches_tracked.item()
                m = 1.0 / n if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * count / (count - 1), alpha=m)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm*d -> SyncBatchNorm (GlooSyncBatchNorm on CPU), sharing its tensors."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        sync = GlooSyncBatchNorm(
            model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats
        )
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(sync, name, getattr(model, name))
        return sync.train(model.training)
    for name, child in model.named_children():
        model.add_module(name, convert_sync_batchnorm(child, device))
    return model


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average each value over ranks (every rank must hold the same keys)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    keys = sorted(values)
    total = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=comm_device())
    dist.all_reduce(total)
    return dict(zip(keys, (total / dist.get_world_size()).tolist(), strict=True))


def all_ranks(flag: bool) -> bool:
    """True when ``flag`` holds on every rank (one all-reduce when distributed)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    value = torch.tensor(int(flag), device=comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def barrier() -> None:
    """Wait for every rank; nothing to wait for without a process group (one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def comm_device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
