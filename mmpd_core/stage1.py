"""Stage-1: multi-teacher multimodal alignment (paper Section 4.1, Eq. (1)-(3)).

The point encoder's global feature (concat of cls and max-pooled tokens) goes through one
projection head per teacher into that teacher's embedding space; Eq. (3) sums a symmetric
InfoNCE term per teacher (the text teacher and every image teacher), each with its own
learnable temperature. Targets come from the teacher cache (or online teachers).
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn

from mmpd_core import engine
from mmpd_core.checkpoint import load_checkpoint, save_checkpoint
from mmpd_core.config import Stage1Stage, resolve, resolve_run
from mmpd_core.data.datasets import ShapeNet55Dataset
from mmpd_core.distributed import is_main_process
from mmpd_core.losses import LogitScale, stage1_loss
from mmpd_core.models import (
    Backbone,
    build_encoder,
    create_model,
    encoder_config,
    load_encoder,
    save_encoder,
)
from mmpd_core.teachers.cache import TargetSource, TeacherCache
from mmpd_core.tracking import train_seeds, write_cost

FINAL = "stage1.safetensors"


class Stage1Model(nn.Module):
    """Point encoder + teacher-specific projection heads + per-teacher temperatures."""

    def __init__(self, encoder: Backbone, teacher_dims: dict[str, int]):
        super().__init__()
        self.encoder = encoder
        width = encoder.global_dim
        self.heads = nn.ModuleDict({n: nn.Linear(width, d) for n, d in teacher_dims.items()})
        self.logit_scales = nn.ModuleDict({n: LogitScale() for n in teacher_dims})

    def forward(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """3D embeddings (B, D_t) in each teacher's space."""
        feature = self.encoder.forward_features(points)["global"]  # (B, global_dim)
        return {name: head(feature) for name, head in self.heads.items()}

    def scales(self) -> dict[str, torch.Tensor]:
        return {name: scale() for name, scale in self.logit_scales.items()}


class Stage1Step:
    """``step_fn`` for the training engine: Eq. (3) on one batch of clouds."""

    def __init__(self, targets: TargetSource):
        self.targets = targets
        self.position = {name: i for i, name in enumerate(targets.names)}

    def indices(self, names) -> torch.Tensor:
        return torch.tensor([self.position[n] for n in names])

    def align_loss(
        self, feats: dict, names, scales: dict, generator, *, gather: bool = True
    ) -> tuple[torch.Tensor, dict]:
        """Eq. (3) for 3D embeddings ``feats`` of the shapes ``names``, with drawn targets.

        In training under DDP (``gather``), features and targets are gathered so every rank
        sees the global batch's negatives (the gather keeps the gradient of the local part).
        Evaluation runs on rank 0 alone and must pass ``gather=False``: a collective there
        would wait for ranks that never join.
        """
        device = next(iter(feats.values())).device
        wanted = self.targets.draw(self.indices(names), generator)
        wanted = {k: v.to(device) for k, v in wanted.items()}
        if gather and dist.is_available() and dist.is_initialized():
            feats = {k: torch.cat(dist_nn.all_gather(v)) for k, v in feats.items()}
            wanted = {k: torch.cat(dist_nn.all_gather(v)).detach() for k, v in wanted.items()}
        total, terms = stage1_loss(feats, wanted, scales)
        metrics = {f"loss_{name}": term.item() for name, term in terms.items()}
        for name, feat in feats.items():
            metrics[f"batch_top1_{name}"] = _top1(feat.detach(), wanted[name])
        return total, metrics

    def __call__(self, model, batch, generator):
        module = getattr(model, "module", model)  # DDP wraps the model
        feats = model(batch["points"])
        return self.align_loss(
            feats, batch["name"], module.scales(), generator, gather=model.training
        )


def _top1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of rows of ``a`` whose most similar row of ``b`` (cosine) is its own pair."""
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T  # (B, B)
    return (sim.argmax(dim=1) == torch.arange(len(a), device=a.device)).float().mean().item()


@torch.no_grad()
def retrieval_accuracy(model: Stage1Model, loader, targets: TargetSource) -> dict[str, float]:
    """Held-out 3D -> teacher top-1 retrieval: each shape against every other held-out shape,
    using view 0 in RGB for image teachers and the first caption for text teachers."""
    model.eval()
    device = next(model.parameters()).device
    feats, wanted = {}, {}
    position = {name: i for i, name in enumerate(targets.names)}
    for batch in loader:
        indices = torch.tensor([position[n] for n in batch["name"]])
        out = model(batch["points"].to(device))
        targets_now = targets.fixed(indices)
        for name in out:
            feats.setdefault(name, []).append(out[name].cpu())
            wanted.setdefault(name, []).append(targets_now[name].cpu())
    return {
        f"retrieval_top1_{name}": _top1(torch.cat(feats[name]), torch.cat(wanted[name]))
        for name in feats
    }


def train_config(cfg: Stage1Stage) -> engine.TrainConfig:
    return engine.config_from(
        cfg,
        out_dir=str(resolve(cfg.out_dir) / "checkpoints"),
        live_dir=str(resolve(cfg.live_dir)),
    )


def target_source(cfg: Stage1Stage, data_manifest: dict) -> tuple[TargetSource, dict]:
    """Targets from the cache (default) or online teachers, and the teachers' specs."""
    cache_manifest = json.loads((resolve(cfg.cache_dir) / "manifest.json").read_text())
    specs = {n: cache_manifest["teachers"][n]["spec"] for n in cfg.teachers}
    if not cfg.online:
        source = TargetSource.from_cache(TeacherCache(resolve(cfg.cache_dir), cfg.teachers))
    else:
        from mmpd_core.teachers import build_teacher

        teachers = [build_teacher(specs[n]) for n in cfg.teachers]
        degrees = cache_manifest["views_degrees"]  # the same views as the cache
        source = TargetSource.online(teachers, data_manifest, degrees)
    source.caption_top_k = cfg.caption_top_k
    source.use_captions(cfg.captions)
    return source, specs


def run_stage(cfg: Stage1Stage, *, resume: bool = False) -> list[engine.TrainResult]:
    """Every independent run (``pretrain_seeds``) of Stage-1; one result each."""
    return train_seeds(cfg, train, resume=resume)


def train(cfg: Stage1Stage, *, resume: bool = False) -> engine.TrainResult:
    """Train Stage-1 on the pretraining shapes; held-out retrieval is the periodic eval."""
    data_manifest = json.loads(resolve(cfg.data_manifest).read_text())
    targets, specs = target_source(cfg, data_manifest)
    root = resolve(data_manifest["roots"]["shapenet55"])
    train_set = ShapeNet55Dataset(root, "train", cfg.num_points, seed=cfg.seed)
    test_set = ShapeNet55Dataset(root, "test", cfg.num_points, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    encoder = load_encoder(resolve_run(cfg.init)) if cfg.init else create_model(cfg.model)
    model = Stage1Model(encoder, {n: targets.dims[n] for n in cfg.teachers})
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=64)
    ckpt_config = {
        "model": encoder_config(model.encoder),
        "teachers": specs,
        "captions": cfg.captions,
    }
    result = engine.train(
        model,
        Stage1Step(targets),
        train_set,
        train_config(cfg),
        eval_fn=lambda module, epoch: retrieval_accuracy(module, test_loader, targets),
        resume=resume,
        checkpoint_config=ckpt_config,
        finalize=lambda module: engine.recalibrate_batchnorm(
            module.encoder, train_set, batch_size=cfg.batch_size, amp=cfg.amp
        ),
    )
    if is_main_process():
        out_dir = resolve(cfg.out_dir)
        save_checkpoint(out_dir / FINAL, model, config=ckpt_config, extra={"final": result.final})
        save_encoder(out_dir, model.encoder, extra={"stage": "pretrain_stage1", "init": cfg.init})
        write_cost(resolve(cfg.live_dir), result)
        engine.remove_checkpoints(train_config(cfg).out_dir)  # finished: the final files stay
    return result


def load_stage1(run: str) -> tuple[Stage1Model, dict]:
    """The final Stage-1 model of a run (name or directory) and its config (encoder + teacher
    specs)."""
    path = resolve_run(run) / FINAL
    tensors, meta = load_checkpoint(path)
    config = meta["config"]
    encoder = build_encoder(config["model"], str(path))
    dims = {n: tensors[f"heads.{n}.weight"].shape[0] for n in config["teachers"]}
    model = Stage1Model(encoder, dims)
    model.load_state_dict(tensors, strict=True)
    return model.eval(), config
