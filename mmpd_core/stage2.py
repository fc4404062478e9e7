"""Stage-2: masked point distillation from the frozen Stage-1 encoder (paper Section 4.2).

Per batch the cloud is grouped once (FPS + kNN). The frozen teacher (the Stage-1 encoder, eval
mode) encodes the **full** cloud: its tokens z^1 (B, G, D) are the local targets, its global
feature f^1 = [cls, max over tokens] (B, 2D) the global target. The student encoder sees the
cls token and the visible patches only; they are tokenized alone, so not even BatchNorm
statistics carry masked points. Then

- local distillation, Eq. (4): [visible tokens, mask tokens] in centre order, contents
  permuted (``shuffle``), **then** the positional embedding of each slot's own centre added
  before every decoder block; slot i is scored against the teacher token of group i, for every
  slot, visible and masked (negative cosine);
- global distillation, Eq. (5): the encoder's outputs, unshuffled and without positions,
  through a transformer (or token-wise MLP) decoder, pooled like the teacher ([cls, max]);
- Eq. (6): the sum.

One model runs every pretraining ablation: shuffle or a term off (Table 4), point targets
(Table 7), random student init (Table 8), the masked-point baselines (no teacher) and joint
single-stage training (Table 8: Stage-1 alignment on the same encoder, whose own full-cloud
features, detached, are the distillation targets).

Point targets are the architecture's own reconstruction objective (``models.point_model``):
Point-M2AE's upsampling decoder over its mask push-down, Chamfer-L2 at scale 1 (the
Point-M2AE baseline); elsewhere Point-MAE's, Chamfer-L2 of the masked patches from the local
decoder. With an architecture's own model the global term reads the coarsest visible tokens of
that encoder pass (no second pass).

Hierarchical encoders (Point-M2AE) distil one level, ``distill_scale``. Default: the coarsest
(64 x 384 at paper size), whose tokens carry the whole hierarchy and whose pooled output is the
global feature every downstream task reads, so Stage-2 trains every scale. Distilling a finer
level (1: 256 x 192, where upstream's decoder ends) runs the student up to that level only: the
local and the global term both read its tokens, and the coarser scales keep their Stage-1
weights. The token shuffle permutes the distilled level's tokens.

Order-sensitive encoders (PointMamba, a state-space model over Hilbert and trans-Hilbert
serialisations of the centres) run unchanged: the student reads its visible patches in their
serialised order (masking drops tokens from both sequences), because permuting an SSM's input
would destroy the spatial order it reads and change the encoder, which the method does not do.
The token shuffle acts where it acts on every backbone, in the local decoder (a transformer),
on the encoder's outputs: slot contents are permuted before each slot's own centre is embedded,
so a decoder cannot score on visible slots by copying its input. ``copy_cos_visible`` measures
that shortcut; ``benchmarks/bench_mamba_shuffle.py`` compares it with and without the shuffle on
``point_mamba_small`` beside the Point-MAE pair (README, "PointMamba").
"""

from __future__ import annotations

import copy
import dataclasses
import json

import torch
import torch.nn.functional as F
from torch import nn

from mmpd_core import engine
from mmpd_core.checkpoint import unwrap
from mmpd_core.config import Stage2Stage, resolve, resolve_run
from mmpd_core.data.datasets import ShapeNet55Dataset
from mmpd_core.distributed import is_main_process
from mmpd_core.layers import Mlp, TransformerStack, init_weights, position_mlp
from mmpd_core.losses import (
    LogitScale,
    global_distillation_loss,
    local_distillation_loss,
    masked_point_loss,
    stage2_loss,
)
from mmpd_core.models import (
    Backbone,
    Patches,
    create_model,
    encoder_config,
    load_encoder,
    point_model,
    save_encoder,
)
from mmpd_core.shuffle import Masking, gather_tokens, random_permutation
from mmpd_core.stage1 import Stage1Step
from mmpd_core.teachers.cache import TargetSource, TeacherCache
from mmpd_core.tracking import train_seeds, write_cost


class LocalDecoder(nn.Module):
    """Eq. (4) decoder: mask tokens fill the masked groups, contents are shuffled, positions
    are not; a linear head maps every slot to a target (a teacher token or 3K coordinates)."""

    def __init__(self, dim: int, out_dim: int, depth: int, num_heads: int):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = position_mlp(dim)
        self.transformer = TransformerStack(dim, depth, num_heads)
        self.head = nn.Linear(dim, out_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def decoder_input(
        self, visible: torch.Tensor, masking: Masking, perm: torch.Tensor
    ) -> torch.Tensor:
        """Slot contents before positions: slot i holds group perm[i]'s token (B, G, D)."""
        batch, _, dim = visible.shape
        masked = self.mask_token.expand(batch, masking.mask_idx.shape[1], dim)  # (B, M, D)
        ordered = gather_tokens(torch.cat([visible, masked], 1), masking.restore_idx)  # (B, G, D)
        return gather_tokens(ordered, perm)  # (B, G, D)

    def forward(self, slots: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """slots (B, G, D) from ``decoder_input``; slot i sits at centre i (B, G, 3)."""
        return self.head(self.transformer(slots, self.pos_embed(centers)))  # (B, G, out)


class GlobalDecoder(nn.Module):
    """Eq. (5) decoder: the student's outputs [cls, visible] (no shuffle, no positions) through
    a transformer or a token-wise MLP, pooled like the teacher's global feature (the
    backbone's ``pool``), then a linear head to the teacher's global feature (B, out). The
    pooled width is ``out`` unless the tokens are a finer level than the teacher's global
    feature pools (a hierarchical encoder distilling ``distill_scale``)."""

    def __init__(self, dim: int, out_dim: int, kind: str, depth: int, num_heads: int, pool):
        super().__init__()
        if kind == "transformer":
            self.body = TransformerStack(dim, depth, num_heads)
        else:  # a token-wise MLP
            self.body = nn.Sequential(nn.LayerNorm(dim), Mlp(dim, 4 * dim))
        pooled = pool(torch.zeros(1, 2, dim), torch.zeros(1, dim)).shape[-1]
        self.head = nn.Linear(pooled, out_dim)
        self.pool = pool
        self.apply(init_weights)

    def forward(self, encoded: dict) -> torch.Tensor:
        """``encoded``: the backbone's ``forward_visible`` output (tokens, cls or None)."""
        cls, tokens = encoded["cls"], encoded["tokens"]
        x = tokens if cls is None else torch.cat([cls[:, None], tokens], dim=1)  # (B, 1+V, D)
        x = self.body(x)
        if cls is None:
            return self.head(self.pool(x, None))
        return self.head(self.pool(x[:, 1:], x[:, 0]))  # (B, out)


class Stage2Model(nn.Module):
    """Student encoder + local / global decoders (+ Stage-1 heads for joint training)."""

    def __init__(
        self,
        encoder: Backbone,
        *,
        local_target: str,
        global_distill: bool,
        decoder_depth: int,
        decoder_heads: int,
        global_decoder: str = "transformer",
        global_decoder_depth: int = 1,
        teacher_dims: dict[str, int] | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.local_target = local_target
        dim, width = encoder.dim, encoder.global_dim
        self.local = self.native = None
        if local_target == "points":  # the architecture's own objective, if it has one
            self.native = point_model(encoder)  # shares the encoder's modules
        if local_target != "none" and self.native is None:
            out_dim = dim if local_target == "features" else 3 * encoder.patch_points
            self.local = LocalDecoder(dim, out_dim, decoder_depth, decoder_heads)
        self.global_decoder = None
        if global_distill:
            self.global_decoder = GlobalDecoder(
                dim, width, global_decoder, global_decoder_depth, decoder_heads, type(encoder).pool
            )
        self.heads = self.logit_scales = None
        if teacher_dims:
            self.heads = nn.ModuleDict({n: nn.Linear(width, d) for n, d in teacher_dims.items()})
            self.logit_scales = nn.ModuleDict({n: LogitScale() for n in teacher_dims})

    def forward(self, patches: Patches, masking: Masking, perm: torch.Tensor) -> dict:
        """Predictions: ``local`` (B, G, out) with its ``slots`` or the architecture's own
        ``point_loss``, ``global`` (B, global_dim), and for joint training ``full`` (the
        encoder on the whole cloud) and ``embeddings``. The student sees the visible patches
        only (``forward_visible``, or the point model's own masked encoder pass)."""
        out = {}
        if self.native is not None:
            reconstruction = self.native.forward_levels(patches.levels, masking.mask)
            out["point_loss"] = reconstruction["loss"]
            encoded = {"tokens": reconstruction["encoded"][-1]["tokens"], "cls": None}
        else:
            encoded = self.encoder.forward_visible(patches, masking)
        if self.local is not None:
            out["slots"] = self.local.decoder_input(encoded["tokens"], masking, perm)
            out["local"] = self.local(out["slots"], patches.centers)
        if self.global_decoder is not None:
            out["global"] = self.global_decoder(encoded)
        if self.heads is not None:
            out["full"] = self.encoder.forward_patches(patches)
            out["embeddings"] = {n: h(out["full"]["global"]) for n, h in self.heads.items()}
        return out

    def scales(self) -> dict[str, torch.Tensor]:
        return {name: scale() for name, scale in self.logit_scales.items()}


def token_cosines(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, prefix: str):
    """Mean cosine of (B, G, D) predictions vs targets over masked and over visible groups."""
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)  # (B, G)
    return {
        f"{prefix}_masked": cos[mask].mean().item(),
        f"{prefix}_visible": cos[~mask].mean().item(),
    }


class Stage2Step:
    """``step_fn`` for the engine: mask, shuffle, distil (Eq. 6), plus the joint/point variants.

    Logged per step: each loss term; ``cos_masked`` / ``cos_visible`` (decoder output vs teacher
    token); ``copy_cos_visible`` (the slot's *input* content vs the teacher token of that slot:
    what a decoder returning its input would score — the shortcut the shuffle removes).
    """

    def __init__(
        self,
        teacher: Backbone | None,
        *,
        mask_ratio: float,
        shuffle: bool,
        align: Stage1Step | None = None,
    ):
        self.teacher = None if teacher is None else teacher.eval().requires_grad_(False)
        self.mask_ratio, self.shuffle, self.align = mask_ratio, shuffle, align

    @torch.no_grad()
    def teacher_targets(self, patches: Patches) -> dict[str, torch.Tensor]:
        """The frozen teacher on the full cloud: tokens (B, G, D), global (B, global_dim)."""
        self.teacher.to(patches.centers.device).eval()
        return self.teacher.forward_patches(patches)

    def draw(self, encoder: Backbone, patches: Patches, generator) -> tuple[Masking, torch.Tensor]:
        """The backbone's masking and the content permutation of one batch (identity without
        shuffle)."""
        masking = encoder.random_masking(patches, self.mask_ratio, generator)
        batch, groups = patches.centers.shape[:2]
        device = patches.centers.device
        if self.shuffle:
            return masking, random_permutation(batch, groups, generator=generator, device=device)
        return masking, torch.arange(groups, device=device).expand(batch, groups)

    def __call__(self, model, batch, generator):
        module = unwrap(model)
        patches = module.encoder.group(batch["points"])
        masking, perm = self.draw(module.encoder, patches, generator)
        out = model(patches, masking, perm)
        if self.teacher is not None:
            targets = self.teacher_targets(patches)
        else:  # joint training: the model's own full-cloud features, detached
            full = out.get("full", {})  # cls is None for a backbone without a cls token
            targets = {k: v.detach() for k, v in full.items() if isinstance(v, torch.Tensor)}
        terms, metrics = {}, {}
        if module.local_target == "features":
            terms["local"] = local_distillation_loss(out["local"], targets["tokens"])
            metrics.update(
                token_cosines(out["local"].detach(), targets["tokens"], masking.mask, "cos")
            )
            metrics.update(
                token_cosines(out["slots"].detach(), targets["tokens"], masking.mask, "copy_cos")
            )
        elif "point_loss" in out:
            terms["local"] = out["point_loss"]
        elif module.local_target == "points":
            terms["local"] = masked_point_loss(out["local"], patches.neighborhood, masking.mask_idx)
        if "global" in out:
            terms["global"] = global_distillation_loss(out["global"], targets["global"])
        if self.align is not None:
            terms["align"], align_metrics = self.align.align_loss(
                out["embeddings"], batch["name"], module.scales(), generator, gather=model.training
            )  # evaluation runs on rank 0 alone: no collective there
            metrics.update(align_metrics)
        metrics.update({f"loss_{name}": term.item() for name, term in terms.items()})
        return stage2_loss(terms), metrics


def level_overrides(cfg: Stage2Stage) -> dict:
    """Config fields Stage-2 sets on its encoders: ``distill_scale`` unless left to the model."""
    return {} if cfg.distill_scale is None else {"distill_scale": cfg.distill_scale}


def build_student(cfg: Stage2Stage, teacher: Backbone | None) -> Backbone:
    """A copy of the teacher (``init: teacher``) or a fresh encoder of the same shape."""
    if teacher is not None and cfg.init == "teacher":
        return copy.deepcopy(teacher).train().requires_grad_(True)
    if teacher is not None:
        return type(teacher)(teacher.config)
    return create_model(cfg.model, **level_overrides(cfg))


def build_model(cfg: Stage2Stage, student: Backbone, teacher_dims=None) -> Stage2Model:
    return Stage2Model(
        student,
        local_target=cfg.local_target,
        global_distill=cfg.global_distill,
        decoder_depth=cfg.decoder_depth,
        decoder_heads=cfg.decoder_heads,
        global_decoder=cfg.global_decoder,
        global_decoder_depth=cfg.global_decoder_depth,
        teacher_dims=teacher_dims,
    )


def evaluate(module: Stage2Model, step: Stage2Step, loader, seed: int) -> dict[str, float]:
    """Held-out loss terms and cosines with a fixed masking per batch (comparable over epochs)."""
    sums, count = {}, 0
    for i, batch in enumerate(loader):
        device = next(module.parameters()).device
        batch = engine.to_device(batch, device)
        loss, metrics = step(module, batch, torch.Generator().manual_seed(seed + i))
        for name, value in {"loss": loss.item(), **metrics}.items():
            sums[name] = sums.get(name, 0.0) + value
        count += 1
    return {name: value / count for name, value in sums.items()}


def run_stage(cfg: Stage2Stage, *, resume: bool = False) -> list[engine.TrainResult]:
    """Every independent run (``pretrain_seeds``) of one Stage-2 configuration; one result
    each. Seed k distils the k-th run of its Stage-1 teacher."""
    return train_seeds(cfg, train, resume=resume)


def train(cfg: Stage2Stage, *, resume: bool = False) -> engine.TrainResult:
    """Train one Stage-2 configuration on the pretraining shapes; write its encoder."""
    data_manifest = json.loads(resolve(cfg.data_manifest).read_text())
    root = resolve(data_manifest["roots"]["shapenet55"])
    train_set = ShapeNet55Dataset(root, "train", cfg.num_points, seed=cfg.seed)
    test_set = ShapeNet55Dataset(root, "test", cfg.num_points, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    teacher = None
    if cfg.teacher:
        teacher = load_encoder(resolve_run(cfg.teacher), **level_overrides(cfg))
    align, teacher_dims = None, None
    if cfg.joint:
        targets = TargetSource.from_cache(TeacherCache(resolve(cfg.cache_dir), cfg.teachers))
        align, teacher_dims = Stage1Step(targets), {n: targets.dims[n] for n in cfg.teachers}
    model = build_model(cfg, build_student(cfg, teacher), teacher_dims)
    step = Stage2Step(teacher, mask_ratio=cfg.mask_ratio, shuffle=cfg.shuffle, align=align)
    loader = torch.utils.data.DataLoader(test_set, batch_size=64)
    out_dir = resolve(cfg.out_dir)
    result = engine.train(
        model,
        step,
        train_set,
        engine.config_from(
            cfg, out_dir=str(out_dir / "checkpoints"), live_dir=str(resolve(cfg.live_dir))
        ),
        eval_fn=lambda module, epoch: evaluate(module, step, loader, cfg.seed),
        resume=resume,
        checkpoint_config={
            "model": encoder_config(model.encoder),
            "stage2": dataclasses.asdict(cfg),
        },
        finalize=lambda module: engine.recalibrate_batchnorm(
            module.encoder, train_set, batch_size=cfg.batch_size, amp=cfg.amp
        ),  # the student saw visible patches only: its statistics become the whole cloud's
    )
    if is_main_process():
        save_encoder(
            out_dir,
            model.encoder,
            extra={"stage": "pretrain_stage2", "config": dataclasses.asdict(cfg)},
        )
        write_cost(resolve(cfg.live_dir), result)
        engine.remove_checkpoints(out_dir / "checkpoints")  # finished: the encoder stays
    return result
