"""The losses of the paper, one small function per equation.

- Eq. (1)-(2): symmetric InfoNCE between point and teacher embeddings (``symmetric_infonce``),
  shaped like open_clip's ``ClipLoss``, with a learnable, clamped CLIP logit scale.
- Eq. (3): the Stage-1 sum over the text teacher and every image teacher (``stage1_loss``).
- Eq. (4)-(5): negative-cosine distillation of tokens and of the global embedding; Eq. (6):
  the Stage-2 objective, their sum (``stage2_loss``).
- Point-MAE's masked patch reconstruction (Chamfer-L2), the "point clouds" target of Table 7.

All reductions are means (over samples, or over every token of every sample), so loss values
do not scale with the batch size; the paper writes Eq. (1)-(4) as sums.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmpd_core.geometry import chamfer_distance
from mmpd_core.shuffle import gather_tokens


class LogitScale(nn.Module):
    """CLIP's learnable temperature: stores log(1/tau), returns exp of it clamped to <= 100."""

    def __init__(self, init_tau: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_tau)))
        self.max_log = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log).exp()


def symmetric_infonce(
    feats_a: torch.Tensor, feats_b: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Eq. (1)/(2): symmetric cross-entropy over cosine similarities, sample i matches i.

    feats_a, feats_b: (B, D), L2-normalised here. logit_scale = 1/tau (already exponentiated).
    Returns the mean over both directions and all samples.
    """
    if feats_a.shape != feats_b.shape or feats_a.dim() != 2:
        raise ValueError(
            f"need two (B, D) batches of equal shape, got {feats_a.shape}, {feats_b.shape}"
        )
    a = F.normalize(feats_a, dim=-1)
    b = F.normalize(feats_b, dim=-1)
    logits = logit_scale * a @ b.T  # (B, B): row i = a_i against every b_j
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def stage1_loss(
    point_feats: Mapping[str, torch.Tensor],
    teacher_feats: Mapping[str, torch.Tensor],
    logit_scale: torch.Tensor | float | Mapping[str, torch.Tensor | float],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (3): L = L(P<->T) + sum_m L_m(P<->I), one symmetric InfoNCE term per teacher.

    point_feats[name] is the 3D embedding after that teacher's projection head, paired with
    teacher_feats[name]. ``logit_scale`` is shared or given per teacher. Returns the total
    and the per-teacher terms (for logging).
    """
    if set(point_feats) != set(teacher_feats) or not point_feats:
        raise ValueError(
            f"point and teacher features must name the same teachers: "
            f"{sorted(point_feats)} vs {sorted(teacher_feats)}"
        )
    terms = {}
    for name in sorted(point_feats):
        scale = logit_scale[name] if isinstance(logit_scale, Mapping) else logit_scale
        terms[name] = symmetric_infonce(point_feats[name], teacher_feats[name], scale)
    return torch.stack(list(terms.values())).sum(), terms


def negative_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(pred, target) over every vector along the last axis.

    The target is a frozen teacher's output and is detached: no gradient reaches it.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return (1.0 - F.cosine_similarity(pred, target.detach(), dim=-1)).mean()


def local_distillation_loss(
    pred_tokens: torch.Tensor, teacher_tokens: torch.Tensor
) -> torch.Tensor:
    """Eq. (4): negative cosine of decoder outputs vs teacher tokens (B, G, D), all N_t tokens."""
    return negative_cosine(pred_tokens, teacher_tokens)


def global_distillation_loss(
    pred_global: torch.Tensor, teacher_global: torch.Tensor
) -> torch.Tensor:
    """Eq. (5): negative cosine between the global decoder output and the teacher's (B, D)."""
    return negative_cosine(pred_global, teacher_global)


def stage2_loss(terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Eq. (6): L = L_local (Eq. 4) + L_global (Eq. 5), the sum of the terms a configuration
    trains (an ablation drops one; Point-MAE's point loss may stand in for Eq. 4; joint
    training adds the Stage-1 alignment of Eq. 3)."""
    if not terms:
        raise ValueError("Eq. (6) needs at least one loss term")
    return torch.stack(list(terms.values())).sum()


def masked_point_loss(
    pred_patches: torch.Tensor, neighborhood: torch.Tensor, mask_idx: torch.Tensor
) -> torch.Tensor:
    """Point-MAE's objective (Table 7 "point clouds"): Chamfer-L2 between the predicted and the
    true points of every masked patch, averaged over patches.

    pred_patches (B, G, 3K) per slot in centre order; neighborhood (B, G, K, 3) relative to
    the centres; mask_idx (B, M) the masked groups.
    """
    batch, groups, k, _ = neighborhood.shape
    pred = gather_tokens(pred_patches, mask_idx).reshape(-1, k, 3)  # (B*M, K, 3)
    target = gather_tokens(neighborhood.reshape(batch, groups, k * 3), mask_idx)  # (B, M, 3K)
    return chamfer_distance(pred.float(), target.reshape(-1, k, 3).float(), norm=2)
