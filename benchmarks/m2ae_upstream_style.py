"""The upstream Point-M2AE computation layout (fine-tuning model), around an mmpd model's weights.

Same function and weights as ``mmpd_core.models.point_m2ae.PointM2AE``, computed the way the
upstream code lays it out (REFERENCE.md, the fixture README): plain-torch FPS (the kernel's
rule: start at 0, skip points near the origin) and kNN (squared distances by the matmul
expansion, k smallest) per scale, neighbourhoods and token gathers through flat indices with
per-sample offsets, every token embedding as Conv1d layers on (B*G, C, K) with the explicit
concatenation of global and point features, the local-attention mask from ``torch.cdist``
added as mask * -1e5 to explicit softmax(q k^T * scale) attention. Our own code.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from upstream_style import ConvTokenizer, ExplicitAttention

from mmpd_core.geometry import ORIGIN_SKIP_SQ_NORM


def plain_fps(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (B, n): the pointnet2 kernel's FPS over the whole batch at once."""
    batch, num_points, _ = xyz.shape
    rows = torch.arange(batch)
    distance = torch.full((batch, num_points), 1e10)
    distance[xyz.pow(2).sum(-1) <= ORIGIN_SKIP_SQ_NORM] = -1.0  # never picked, never updated
    farthest = torch.zeros(batch, dtype=torch.long)
    picked = torch.empty(batch, n, dtype=torch.long)
    for step in range(n):
        picked[:, step] = farthest
        centre = xyz[rows, farthest].unsqueeze(1)  # (B, 1, 3)
        distance = torch.minimum(distance, (xyz - centre).pow(2).sum(-1))  # (B, N)
        farthest = distance.argmax(-1)
    return picked


def plain_knn(centers: torch.Tensor, xyz: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, G, k) of the k nearest points, nearest first (upstream's expansion)."""
    dist = -2 * centers @ xyz.transpose(1, 2)  # (B, G, N)
    dist = dist + centers.pow(2).sum(-1, keepdim=True) + xyz.pow(2).sum(-1).unsqueeze(1)
    return dist.topk(k, dim=-1, largest=False).indices


class UpstreamStyleM2AE(nn.Module):
    """A deep copy of an mmpd ``PointM2AE`` (with a head) run in the upstream layout."""

    def __init__(self, model: nn.Module):
        super().__init__()
        twin = copy.deepcopy(model)
        self.config, self.pool = twin.config, twin.pool
        self.tokenizers = nn.ModuleList(ConvTokenizer(stage.tokenizer) for stage in twin.stages)
        self.pos_embeds = nn.ModuleList(stage.pos_embed for stage in twin.stages)
        self.blocks = nn.ModuleList(stage.blocks for stage in twin.stages)
        for blocks in self.blocks:
            for block in blocks:
                block.attn = ExplicitAttention(block.attn)
        self.norm, self.head = twin.norm, twin.head

    def group(self, xyz: torch.Tensor, num_group: int, group_size: int):
        """Upstream ``Group``: neighbourhoods (B, G, K, 3), centres, flat indices (B*G*K)."""
        batch, num_points, _ = xyz.shape
        fps_idx = plain_fps(xyz, num_group)  # (B, G)
        center = xyz[torch.arange(batch)[:, None], fps_idx]  # (B, G, 3)
        idx = plain_knn(center, xyz, group_size)  # (B, G, K)
        idx = (idx + torch.arange(batch).view(-1, 1, 1) * num_points).view(-1)  # (B*G*K,)
        neighborhood = xyz.reshape(batch * num_points, -1)[idx, :]  # (B*G*K, 3)
        neighborhood = neighborhood.view(batch, num_group, group_size, 3) - center.unsqueeze(2)
        return neighborhood, center, idx

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        cfg, source, scales = self.config, pts, []
        for num_group, group_size in zip(cfg.num_groups, cfg.group_sizes, strict=True):
            scales.append(self.group(source, num_group, group_size))
            source = scales[-1][1]
        for i, (neighborhood, center, idx) in enumerate(scales):
            if i == 0:
                x = self.tokenizers[0](neighborhood)  # (B, G, C)
            else:
                b, g1, _ = x.shape
                _, g2, k2, _ = neighborhood.shape
                x = self.tokenizers[i](x.reshape(b * g1, -1)[idx, :].reshape(b, g2, k2, -1))
            mask = (torch.cdist(center, center) >= cfg.local_radius[i]) * -100000.0
            pos = self.pos_embeds[i](center)
            for block in self.blocks[i]:
                x = block(x + pos, mask.unsqueeze(1))  # (B, 1, G, G) added to the logits
        x = self.norm(x)
        return self.head(self.pool(x, None))
