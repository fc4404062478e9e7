"""A 3DETR-style detector on any encoder of the backbone contract, or on 3DETR's own encoder
(issue #15; the ``detection`` stage runs it).

3DETR (REFERENCE) encodes a PointNet++ set-abstraction pre-encoding of the scene with a
3-layer transformer, then decodes box queries placed at farthest-point-sampled seeds. The
transfer this module implements is the one PointGST's detection code uses, which is the likely
reading of the paper's "3DETR-based" results (it builds on Point-MAE-style encoders, not on
MaskPoint's scene pretraining): the pretrained encoder takes the place of 3DETR's pre-encoder
and encoder. Its grouping (FPS centres, kNN patches, mini-PointNet tokenizer) is the set
abstraction, its blocks the encoder:

- ``encoder.forward_features(points)``: tokens (B, G, D) at centres (B, G, 3);
- memory = project(tokens) + Fourier(centres); queries at ``num_queries`` FPS seeds of the
  centres, embedded by Fourier(seed) through an MLP (3DETR's query embedding); the Fourier
  features take coordinates normalised to the input's point range, [0, 1] per axis (3DETR's
  ``input_range``), so their frequencies do not depend on the scene's size;
- a ``depth``-layer transformer decoder (pre-norm, as 3DETR's); per query the class logits over
  ``num_classes + 1`` (the last: no object), a centre = seed + offset and a size (softplus),
  axis-aligned as ScanNet's boxes.

``ThreeDETREncoder`` is 3DETR's own encoder, trained from scratch (the ``3detr`` row of the
stage): a PointNet++ set-abstraction layer (FPS centres; the ``group_size`` nearest points
within ``radius``, xyz relative to the centre and divided by the radius; a shared MLP with
BatchNorm and ReLU, max-pooled) and a ``depth``-layer pre-norm transformer encoder (3DETR's
"vanilla" encoder: its ScanNet script's "masked" one, radius-masked attention with a
downsampling after the first layer, is not ported). One grouping difference: PointNet++'s ball
query takes the first ``group_size`` points in index order inside the ball, this takes the
nearest ones (points beyond the radius repeat the nearest, as ball query repeats its first).

Differences from 3DETR, by choice: no auxiliary per-layer losses, no angle bins (ScanNet's
boxes are axis-aligned), centres and sizes predicted in the input's units (the set loss
normalises them by the scene's extent, as 3DETR's), a fixed seeded Fourier basis.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmpd_core.geometry import farthest_point_sample, gather_points
from mmpd_core.geometry import group as point_mae_group


class FourierPositions(nn.Module):
    """xyz (..., 3) -> [sin, cos](2π · xyz @ B) (..., dim), a fixed Gaussian basis B (3, dim/2)
    of scale ``scale`` drawn from ``seed`` (3DETR's Fourier position embedding)."""

    def __init__(self, dim: int, scale: float = 1.0, seed: int = 0):
        super().__init__()
        basis = torch.randn(3, dim // 2, generator=torch.Generator().manual_seed(seed)) * scale
        self.register_buffer("basis", basis)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * xyz.float() @ self.basis  # (..., dim / 2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., dim)


class ThreeDETREncoder(nn.Module):
    """3DETR's encoder (module docstring) with the contract's ``dim`` and
    ``forward_features(points) -> {"tokens": (B, G, dim), "centers": (B, G, 3)}``."""

    def __init__(self, *, num_groups: int = 2048, group_size: int = 64, radius: float = 0.2,
                 mlp: tuple[int, ...] = (64, 128, 256), depth: int = 3, heads: int = 4,
                 ffn: int = 128, dropout: float = 0.1):  # fmt: skip
        super().__init__()
        self.num_groups, self.group_size, self.radius = num_groups, group_size, radius
        self.dim = mlp[-1]
        layers, width = [], 3
        for out in mlp:
            layers += [nn.Linear(width, out), nn.BatchNorm1d(out), nn.ReLU(inplace=True)]
            width = out
        self.pointnet = nn.Sequential(*layers)
        layer = nn.TransformerEncoderLayer(self.dim, heads, ffn, dropout, batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(self.dim),
                                             enable_nested_tensor=False)  # fmt: skip

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local xyz / radius (B, G, K, 3), centres (B, G, 3))."""
        groups, size = self.num_groups, self.group_size
        local, centers = point_mae_group(points, groups, size, skip_origin=False)  # nearest first
        outside = local.norm(dim=-1, keepdim=True) > self.radius  # (B, G, K, 1)
        local = torch.where(outside, local[:, :, :1], local)  # the nearest point, repeated
        return local / self.radius, centers

    def forward_features(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        local, centers = self.group(points.float())
        batch, groups, k, _ = local.shape
        features = self.pointnet(local.reshape(-1, 3))  # (B * G * K, dim)
        features = features.view(batch, groups, k, self.dim)  # (B, G, K, dim)
        tokens = self.encoder(features.max(dim=2).values)  # (B, G, dim)
        return {"tokens": tokens, "centers": centers}


class Detector3D(nn.Module):
    """``forward(points (B, N, 3)) -> {"logits": (B, Q, C + 1), "boxes": (B, Q, 6) centre /
    size, "seeds": (B, Q, 3)}`` (see the module docstring)."""

    def __init__(self, encoder: nn.Module, num_classes: int, *, num_queries: int = 256,
                 dim: int = 256, depth: int = 8, heads: int = 4, dropout: float = 0.1):  # fmt: skip
        super().__init__()
        self.encoder, self.num_queries = encoder, num_queries
        self.memory_in = nn.Linear(encoder.dim, dim)
        self.positions = FourierPositions(dim)
        self.query_in = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        layer = nn.TransformerDecoderLayer(dim, heads, 2 * dim, dropout, batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.decoder = nn.TransformerDecoder(layer, depth, norm=nn.LayerNorm(dim))
        self.classes = nn.Linear(dim, num_classes + 1)
        self.box = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 6))

    def forward(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder.forward_features(points)
        centers = features["centers"].float()  # (B, G, 3)
        low = points.float().amin(1, keepdim=True)  # (B, 1, 3): the scene's range, as 3DETR
        span = (points.float().amax(1, keepdim=True) - low).clamp(min=1e-6)
        memory = self.memory_in(features["tokens"].float())
        memory = memory + self.positions((centers - low) / span)
        q = min(self.num_queries, centers.shape[1])
        first = farthest_point_sample(centers, q, skip_origin=False)  # (B, Q)
        seeds = gather_points(centers, first)  # (B, Q, 3)
        queries = self.query_in(self.positions((seeds - low) / span))  # (B, Q, dim)
        out = self.decoder(queries, memory)  # (B, Q, dim)
        offset, size = self.box(out).split(3, dim=-1)
        boxes = torch.cat([seeds + offset, nn.functional.softplus(size)], dim=-1)  # (B, Q, 6)
        return {"logits": self.classes(out), "boxes": boxes, "seeds": seeds}
