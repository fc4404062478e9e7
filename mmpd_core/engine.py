"""One training loop for every stage (Stage-1 alignment, Stage-2 distillation, fine-tuning).

A stage supplies ``step_fn(model, batch, generator) -> (loss, metrics)``, the loss of one
micro-batch; ``train`` does the rest: seeded data order, AdamW with a warmup + cosine schedule,
gradient accumulation and clipping, bf16 autocast, DDP under ``torchrun``, a tqdm bar and
dvclive metrics on rank 0, an atomic checkpoint every epoch and an exact resume.

Reproducibility. Every epoch re-seeds torch / numpy / random from (seed, epoch, rank) (dropout,
drop-path, DataLoader worker seeds); the sampler shuffles with (seed, epoch); ``step_fn`` gets a
CPU ``torch.Generator`` seeded from (seed, epoch, micro-step, rank) — draw on CPU, then move
(the project's convention); the checkpoint restores weights, optimizer, schedule and torch RNG
states. So a run killed during epoch k+1 and resumed with the same config ends with
bit-identical weights and history (on CPU; CUDA kernels may be nondeterministic).

Checkpoints, in ``cfg.out_dir``, after epoch ``e`` (0-based), the older pair then deleted::

    epoch-000e.safetensors   unwrapped model weights (checkpoint.save_checkpoint); metadata:
                             config = checkpoint_config (default: model.config.to_dict()),
                             extra = {"epoch", "train_config", "metrics"}, git SHA
    epoch-000e.state.pt      torch.save of plain data and tensors only (weights_only=True):
                             epoch, world_size, steps_per_epoch, config, optimizer, scheduler,
                             rng {"torch", "cuda"}, history

The weights are written before the state file and old pairs are deleted after both, so the
newest state file always names a complete checkpoint (``latest_checkpoint``).

Distributed (helpers in ``mmpd_core.distributed``). Under ``torchrun`` (WORLD_SIZE > 1) the
process group is initialised (NCCL on CUDA, gloo on CPU), BatchNorm becomes SyncBatchNorm (with
a CPU path for gloo), the model is wrapped in DDP and each rank takes ``batch_size //
world_size`` samples of every global batch (``DistributedSampler``). DDP averages gradients over
ranks, so training equals a 1-process run with the same global batch when ``step_fn``'s loss is
a mean over the samples of its micro-batch (cross-entropy, MSE, Chamfer averaged per cloud) and
it draws nothing at random (its generator and dropout differ per rank) — up to rounding, which
max-pooling near-ties can amplify in float32 (tests/ddp_worker.py). Batch-coupled losses
(InfoNCE over in-batch negatives) see only the local batch unless ``step_fn`` gathers features.
Checkpoints and ``out_dir`` must be on a file system every rank reads; only rank 0 writes."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from dvclive import Live
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from mmpd_core.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint, unwrap
from mmpd_core.distributed import (
    WorldInfo,
    all_ranks,
    convert_sync_batchnorm,
    mean_over_ranks,
    setup_distributed,
    world_info,
)
from mmpd_core.tracking import progress

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}
# No weight decay for parameters whose own name (the last dotted part) contains one of these:
# cls/mask tokens, learned positions (cls_pos, a pos_embed Parameter), CLIP temperatures.
# Matching the whole dotted name would also exempt ``tokenizer.*`` and the ``pos_embed.N``
# MLP, which upstream Point-MAE decays.
NO_DECAY_KEYWORDS = ("token", "pos", "logit_scale")
# Fields that may change between a run and its resume without changing the trajectory.
RESUME_FREE_FIELDS = ("num_workers", "out_dir", "live_dir", "eval_every")
_EPOCH_SEED, _STEP_SEED = 0, 1  # domain tags of derive_seed


@dataclass(frozen=True)
class TrainConfig:
    """Run shape of one training stage. Effective batch = ``batch_size * accumulation``."""

    epochs: int
    batch_size: int  # GLOBAL micro-batch, split evenly over DDP ranks
    lr: float  # peak learning rate (of groups without their own "lr")
    weight_decay: float
    warmup_epochs: int  # linear warmup, then cosine to min_lr over the remaining epochs
    min_lr: float
    grad_clip: float  # max global grad norm; 0 = off
    accumulation: int  # micro-batches per optimizer step (1 = off)
    amp: str  # "none" | "bf16" (autocast on the training device, CPU included)
    seed: int
    num_workers: int
    out_dir: str  # checkpoints
    live_dir: str  # dvclive directory of the stage
    eval_every: int  # epochs between eval_fn calls; 0 = only after the last epoch
    drop_last: bool = True

    def __post_init__(self):
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {self.amp!r}")
        if min(self.epochs, self.batch_size, self.accumulation) < 1:
            raise ValueError("epochs, batch_size and accumulation must be >= 1")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs], got {self.warmup_epochs}")
        if self.lr <= 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got {self.min_lr}, {self.lr}")


def config_from(stage_cfg, **overrides) -> TrainConfig:
    """The TrainConfig of a stage config: the fields they share (epochs, lr, amp, ...), evals
    every epochs // 5 epochs, then ``overrides`` (a stage's out_dir is usually its run dir,
    not its checkpoint folder)."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    values = {n: getattr(stage_cfg, n) for n in names if hasattr(stage_cfg, n)}
    values["eval_every"] = max(1, stage_cfg.epochs // 5)
    return TrainConfig(**{**values, **overrides})


@dataclass
class TrainResult:
    """What ``train`` returns; ``history`` holds one dict per epoch (resumed epochs included)."""

    history: list[dict]
    final: dict  # the last epoch's record (train means, lr, timing, eval metrics)
    checkpoint: Path  # weights of the last epoch
    wall_time_s: float  # of this call
    steps_per_s: float  # optimizer steps of this call per second
    peak_memory_mb: float  # CUDA max allocated, else the process's peak resident set


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the last good checkpoint is left untouched."""


# ---------------------------------------------------------------------------- optimisation


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """True for biases, norm weights, every <=1-D tensor and NO_DECAY_KEYWORDS parameters."""
    leaf = name.rsplit(".", 1)[-1]  # "cls_token", not "tokenizer.first_conv.0.weight"
    return param.ndim <= 1 or leaf == "bias" or any(k in leaf for k in NO_DECAY_KEYWORDS)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups ``decay`` / ``no_decay`` of the trainable parameters (frozen ones left out)."""
    groups = {"decay": [], "no_decay": []}
    for name, param in unwrap(model).named_parameters():
        if param.requires_grad:
            groups["no_decay" if no_weight_decay(name, param) else "decay"].append(param)
    decays = {"decay": weight_decay, "no_decay": 0.0}
    return [{"name": k, "params": v, "weight_decay": decays[k]} for k, v in groups.items() if v]


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR factor of optimizer step ``step``: linear to 1 over the warmup, then cosine to
    ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(param_groups: list[dict], cfg: TrainConfig, steps_per_epoch: int):
    """AdamW + a per-step ``LambdaLR`` of ``warmup_cosine``.

    The closed-form factor keeps the schedule exact on resume (only ``last_epoch`` is state)
    and scales every group's own lr, so a group's floor is its lr * min_lr / lr.
    """
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup, total = cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
    ratio = cfg.min_lr / cfg.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, warmup_steps=warmup, total_steps=total, min_ratio=ratio),
    )
    return optimizer, scheduler


# ---------------------------------------------------------------------------- seeds and data


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1])) % 2**63


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's legacy global RNG and random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global state third-party code draws from)
    random.seed(seed)


def default_device() -> torch.device:
    """This process's GPU (its ``LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", world_info().local_rank)


def seed_worker(worker_id: int) -> None:
    """A DataLoader worker seeds numpy and random from its torch seed, which the loader
    derives from the main process's RNG (re-seeded every epoch): augmentation drawn in a
    worker is as reproducible as in the main process."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 (the global state third-party code draws from)
    random.seed(seed)


def build_loader(dataset, cfg: TrainConfig, world: WorldInfo, collate_fn=None) -> DataLoader:
    """Shuffled by (seed, epoch) via ``DistributedSampler``; batch_size // world_size per rank;
    workers seeded (``seed_worker``)."""
    if cfg.batch_size % world.world_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not divisible by {world.world_size} ranks"
        )
    sampler = DistributedSampler(
        dataset, world.world_size, world.rank, shuffle=True, seed=cfg.seed, drop_last=cfg.drop_last
    )
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size // world.world_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        drop_last=cfg.drop_last,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker if cfg.num_workers else None,
    )


def autocast_context(device: torch.device | str, dtype: torch.dtype | None):
    """bf16/fp16 autocast on ``device`` when ``dtype`` is given, else a no-op context."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def recalibrate_batchnorm(
    encoder: nn.Module, dataset, *, batch_size: int = 32, amp: str = "none", collate_fn=None
):
    """Recompute a pretrained encoder's BatchNorm running statistics over ``dataset``'s clouds
    with its final weights: a cumulative average over the whole set, every other module in
    eval mode (no drop path), under ``amp`` as in training. Why: the running variance starts
    at 1 and momentum 0.1 forgets it by 0.9 per step, while a point tokenizer's first
    BatchNorm sees variances near 1e-5; a short schedule (the embedded Stage-1: 84 steps,
    0.9^84 = 1.4e-4) ends with statistics that still hold the initial value, and eval-mode
    features collapse (held-out retrieval and zero-shot at chance). Run it on every rank with
    the same data: under DDP the layers are synchronised and reduce in lockstep."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    device = next(encoder.parameters()).device
    training, momenta = encoder.training, [m.momentum for m in norms]
    encoder.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
        norm.train()
    with autocast_context(device, AMP_DTYPES[amp]):
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn):
            encoder.forward_features(batch["points"].to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    encoder.train(training)


def to_device(batch, device: torch.device):
    """Move every tensor of a (nested) dict / list / tuple batch; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------------------- checkpoints


@dataclass
class _Run:
    """What ``train`` sets up once: device, (wrapped) model, data, optimizer, restored state."""

    world: WorldInfo
    device: torch.device
    module: nn.Module  # unwrapped
    model: nn.Module  # DDP-wrapped when distributed
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps: int  # optimizer steps per epoch
    history: list[dict]
    last: Path | None  # weights of the last complete checkpoint

    @property
    def info(self) -> dict:
        """Run facts stored with the training state and checked on resume."""
        return {"world_size": self.world.world_size, "steps_per_epoch": self.steps}


def checkpoint_paths(out_dir: str | Path, epoch: int) -> tuple[Path, Path]:
    """(weights, training state) of the checkpoint written after 0-based ``epoch``."""
    stem = f"epoch-{epoch:04d}"
    return Path(out_dir) / f"{stem}.safetensors", Path(out_dir) / f"{stem}.state.pt"


def _epoch_of(path: Path) -> int:
    return int(path.name.split(".")[0].removeprefix("epoch-"))


def latest_checkpoint(out_dir: str | Path) -> tuple[Path, Path] | None:
    """(weights, state) of the newest complete checkpoint in ``out_dir``, or None."""
    for state in sorted(Path(out_dir).glob("epoch-[0-9]*.state.pt"), key=_epoch_of, reverse=True):
        weights, _ = checkpoint_paths(out_dir, _epoch_of(state))
        if weights.is_file():
            return weights, state
    return None


def remove_checkpoints(out_dir: str | Path, keep: int | None = None) -> None:
    """Delete the ``epoch-*`` checkpoint files in ``out_dir`` (all but epoch ``keep``), and
    ``out_dir`` itself when that leaves it empty."""
    for path in Path(out_dir).glob("epoch-[0-9]*"):
        if _epoch_of(path) != keep:
            path.unlink(missing_ok=True)
    if keep is None and Path(out_dir).is_dir() and not any(Path(out_dir).iterdir()):
        Path(out_dir).rmdir()


def _save(run: _Run, cfg: TrainConfig, ckpt_config: dict) -> Path:
    """Write the checkpoint of the run's last epoch, then delete the older ones."""
    epoch = run.history[-1]["epoch"]
    weights, state_path = checkpoint_paths(cfg.out_dir, epoch)
    extra = {"epoch": epoch, "train_config": dataclasses.asdict(cfg), "metrics": run.history[-1]}
    save_checkpoint(weights, run.module, config=ckpt_config, extra=extra)
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    state = {
        **run.info,  # world_size, steps_per_epoch
        "epoch": epoch,
        "config": dataclasses.asdict(cfg),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
        "history": run.history,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(state_path, buffer.getvalue())
    remove_checkpoints(cfg.out_dir, keep=epoch)
    return weights


def _restore(paths: tuple[Path, Path], run: _Run, cfg: TrainConfig) -> list[dict]:
    """Load a checkpoint written by ``_save`` into the run; returns its history."""
    weights, state_path = paths
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    now = {**dataclasses.asdict(cfg), **run.info}
    saved = {**state["config"], **{k: state[k] for k in run.info}}
    diff = [k for k in now if k not in RESUME_FREE_FIELDS and saved.get(k) != now[k]]
    if diff:
        details = ", ".join(f"{k}: saved {saved.get(k)!r} vs {now[k]!r}" for k in diff)
        raise ValueError(f"{state_path}: cannot resume, the run differs ({details})")
    run.module.load_state_dict(load_checkpoint(weights)[0], strict=True)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["history"]


def _default_checkpoint_config(module: nn.Module) -> dict:
    """An encoder's architecture and config (``models.encoder_config``), else its config."""
    config = getattr(module, "config", None)
    if not hasattr(config, "to_dict"):
        return {}
    arch = getattr(module, "arch", "")
    return {"arch": arch, **config.to_dict()} if arch else config.to_dict()


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on ``device``, else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


# ---------------------------------------------------------------------------- the loop


def train(
    model: nn.Module,
    step_fn,
    dataset,
    cfg: TrainConfig,
    *,
    eval_fn=None,
    collate_fn=None,
    resume: bool = False,
    param_groups: list[dict] | None = None,
    checkpoint_config: dict | None = None,
    finalize=None,
) -> TrainResult:
    """Train ``model`` (in place, moved to the device) for ``cfg.epochs`` epochs of ``step_fn``.

    ``step_fn(model, batch, generator) -> (loss, {name: float})`` gets the (DDP-wrapped)
    model, a batch on the device and a seeded CPU generator; it returns the same metric names
    every step; the loss is divided by ``cfg.accumulation`` here. ``eval_fn(module, epoch) ->
    {name: number}`` runs on rank 0 only, on the unwrapped module in eval mode under
    ``no_grad``, every ``cfg.eval_every`` epochs and after the last; it must not use
    collectives. ``param_groups`` (AdamW groups over the model's parameters) replace the
    default ``parameter_groups`` decay rule. ``checkpoint_config`` is stored as the weights'
    config (default: ``model.config.to_dict()`` when the model has one, else ``{}``).
    ``resume=True`` continues from ``latest_checkpoint(cfg.out_dir)`` (a fresh start when
    there is none); ``resume=False`` deletes earlier ``epoch-*`` checkpoints there. Under DDP
    the BatchNorm layers of ``model`` are replaced by synchronised ones (same state dict); the
    caller destroys the process group when done. ``finalize(module)`` runs on every rank after
    the last epoch's steps, before its evaluation and checkpoint (``recalibrate_batchnorm``).
    """
    start = time.perf_counter()
    run = _prepare(model, dataset, cfg, collate_fn, param_groups, resume)
    world, history = run.world, run.history
    if checkpoint_config is None:
        checkpoint_config = _default_checkpoint_config(run.module)
    live = None
    if world.is_main:
        live = Live(dir=cfg.live_dir, dvcyaml=None, save_dvc_exp=False, resume=resume)
    first = len(history)
    try:
        for epoch in range(first, cfg.epochs):
            seed_everything(derive_seed(cfg.seed, _EPOCH_SEED, epoch, world.rank))
            run.loader.sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            tick = time.perf_counter()
            record = _run_epoch(run, step_fn, cfg, epoch)
            if finalize is not None and epoch == cfg.epochs - 1:
                finalize(run.module)
            seconds = time.perf_counter() - tick
            record["time/epoch_s"] = seconds
            record["time/samples_per_s"] = run.steps * cfg.accumulation * cfg.batch_size / seconds
            due = epoch == cfg.epochs - 1 or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)
            if eval_fn is not None and due and world.is_main:
                record.update(_evaluate(eval_fn, run.module, epoch))
            history.append(record)
            run.last = checkpoint_paths(cfg.out_dir, epoch)[0]
            if world.is_main:
                _save(run, cfg, checkpoint_config)
                _log_epoch(live, record)
    finally:
        if live is not None:
            live.end()
    if world.distributed:
        dist.barrier()  # rank 0 has written the last checkpoint
    wall = time.perf_counter() - start
    return TrainResult(
        history=history,
        final=dict(history[-1]),
        checkpoint=run.last,
        wall_time_s=wall,
        steps_per_s=(cfg.epochs - first) * run.steps / wall,
        peak_memory_mb=peak_memory_mb(run.device),
    )


def _prepare(model, dataset, cfg, collate_fn, param_groups, resume) -> _Run:
    """Device and process group, SyncBatchNorm, loader, optimizer, resume, then DDP."""
    world = world_info()
    device = setup_distributed(world)
    module = model.to(device)
    if world.distributed:
        module = convert_sync_batchnorm(module, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loader = build_loader(dataset, cfg, world, collate_fn)
    steps = len(loader) // cfg.accumulation
    if steps == 0:
        raise ValueError(f"{len(dataset)} samples give no optimizer step of {cfg.batch_size}")
    groups = param_groups or parameter_groups(module, cfg.weight_decay)
    optimizer, scheduler = build_optimizer(groups, cfg, steps)
    run = _Run(world, device, module, module, loader, optimizer, scheduler, steps, [], None)
    found = latest_checkpoint(cfg.out_dir) if resume else None
    if found:
        run.history, run.last = _restore(found, run, cfg), found[0]
    elif not resume and world.is_main:
        remove_checkpoints(cfg.out_dir)
    if world.distributed:
        kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        run.model = DistributedDataParallel(module, **kwargs)
    return run


def _evaluate(eval_fn, module: nn.Module, epoch: int) -> dict[str, float]:
    """``eval_fn`` on the unwrapped module in eval mode without gradients; keys ``eval/...``."""
    module.eval()
    with torch.no_grad():
        return {f"eval/{k}": float(v) for k, v in eval_fn(module, epoch).items()}


def _run_epoch(run: _Run, step_fn, cfg: TrainConfig, epoch: int) -> dict:
    """One epoch of optimizer steps; the record of per-epoch means (averaged over ranks)."""
    model, optimizer, world, accum = run.model, run.optimizer, run.world, cfg.accumulation
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums, count, norms = {}, 0, []
    batches = iter(run.loader)
    bar = progress(total=run.steps, desc=f"epoch {epoch}", leave=False, disable=not world.is_main)
    for step in range(run.steps):
        finite = True
        for micro in range(accum):
            batch = to_device(next(batches), run.device)
            seed = derive_seed(cfg.seed, _STEP_SEED, epoch, step * accum + micro, world.rank)
            generator = torch.Generator().manual_seed(seed)
            skip_sync = world.distributed and micro < accum - 1
            with model.no_sync() if skip_sync else contextlib.nullcontext():
                with autocast_context(run.device, AMP_DTYPES[cfg.amp]):
                    loss, metrics = step_fn(model, batch, generator)
                (loss / accum).backward()
            value = loss.item()
            finite = finite and math.isfinite(value)
            for name, number in {"loss": value, **metrics}.items():
                sums[name] = sums.get(name, 0.0) + float(number)
            count += 1
        norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf).item()
        if not all_ranks(finite and math.isfinite(norm)):
            raise NonFiniteLossError(
                f"non-finite loss ({value}) or grad norm ({norm}) at epoch {epoch}, step {step}; "
                f"the last good checkpoint is {run.last or 'none (no epoch finished)'}"
            )
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        run.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        norms.append(norm)
        bar.update()
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", refresh=False)  # update() refreshes
    bar.close()
    means = {f"train/{k}": v / count for k, v in sums.items()}
    means["train/grad_norm"] = sum(norms) / len(norms)
    return {"epoch": epoch, "lr": lr, **mean_over_ranks(means)}


def _log_epoch(live: Live, record: dict) -> None:
    """One dvclive step per epoch (step = epoch, also after a resume)."""
    live.step = record["epoch"]
    for name, value in record.items():
        if name != "epoch":
            live.log_metric(name, value)
    live.next_step()
