"""Point-MAE's standard transformer (Pang et al.), the paper's default backbone.

FPS + kNN patches -> mini-PointNet tokens -> pre-norm blocks with the centre MLP added before
every block -> final norm; a cls token for classification; global feature [cls, max over
tokens]. Masking: exactly int(ratio * G) random groups per sample. Sizes: ``point_mae`` (384
wide, depth 12, 6 heads, 64 groups of 32 points; 22.1 M parameters with a 40-class head) and
``point_mae_tiny`` (128 wide, depth 4, 4 heads, 32 groups of 16 points for 512-point clouds,
a mini-PointNet of half the widths: the embedded default and the tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from mmpd_core.geometry import group
from mmpd_core.layers import PatchTokenizer, TransformerStack, init_weights, position_mlp
from mmpd_core.models.contract import Backbone, Encoding, Patches
from mmpd_core.shuffle import Masking, gather_tokens, random_masking


@dataclass(frozen=True)
class PointMAEConfig:
    trans_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    num_groups: int = 64
    group_size: int = 32
    num_classes: int = 0  # 0: no classification head (pretraining / feature extraction)
    head_dropout: float = 0.5
    head_hidden: int = 256
    skip_origin: bool = True  # FPS never picks points within ~0.032 of the origin (upstream)
    tokenizer_hidden: int = 128  # mini-PointNet widths (h, 2h, 4h); upstream 128

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def classification_head(in_dim: int, hidden: int, num_classes: int, dropout: float):
    """Upstream ``cls_head_finetune``: (Linear-BN-ReLU-Dropout) x2 + Linear.

    Indices 0, 1, 4, 5, 8 hold weights, as in the released checkpoints.
    """
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class PatchBackbone(Backbone):
    """Point-MAE's single level of patches, its masking and its head, shared by the backbones
    built on them (Point-MAE, PointMamba). The config holds ``num_groups``, ``group_size``,
    ``skip_origin``, ``head_hidden`` and ``head_dropout``."""

    def make_head(self, num_classes: int) -> nn.Module:
        cfg = self.config
        return classification_head(self.global_dim, cfg.head_hidden, num_classes, cfg.head_dropout)

    def group(self, points: torch.Tensor) -> Patches:
        """FPS centres (index 0 first, origin skipped as upstream) and kNN patches."""
        cfg = self.config
        neighborhood, centers = group(
            points, cfg.num_groups, cfg.group_size, skip_origin=cfg.skip_origin
        )
        return Patches(neighborhood, centers)

    def random_masking(
        self, patches: Patches, ratio: float, generator: torch.Generator | None = None
    ) -> Masking:
        """Upstream 'rand' masking: exactly int(ratio * G) groups of every sample."""
        batch, groups = patches.centers.shape[:2]
        device = patches.centers.device
        return random_masking(batch, groups, ratio, generator=generator, device=device)

    @staticmethod
    def visible_patches(patches: Patches, masking: Masking) -> tuple[torch.Tensor, torch.Tensor]:
        """The visible patches (B, V, K, 3) and their centres (B, V, 3), in keep_idx order."""
        batch, groups, k, _ = patches.neighborhood.shape
        flat = patches.neighborhood.reshape(batch, groups, k * 3)  # (B, G, 3K)
        visible = gather_tokens(flat, masking.keep_idx).reshape(batch, -1, k, 3)  # (B, V, K, 3)
        return visible, gather_tokens(patches.centers, masking.keep_idx)  # (B, V, 3)


class PointMAE(PatchBackbone):
    """Patch tokenizer + centre positional MLP + cls token + pre-norm blocks + final norm."""

    arch = "point_mae"
    config_class = PointMAEConfig

    def __init__(self, config: PointMAEConfig):
        super().__init__()
        self.config = config
        dim = config.trans_dim
        self.dim, self.global_dim, self.patch_points = dim, 2 * dim, config.group_size
        self.tokenizer = PatchTokenizer(dim, config.tokenizer_hidden)
        self.pos_embed = position_mlp(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.transformer = TransformerStack(
            dim, config.depth, config.num_heads, config.mlp_ratio, config.drop_path_rate
        )
        self.head = self.make_head(config.num_classes) if config.num_classes else None
        self.apply(init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.blocks

    # ---------------------------------------------------------------- the contract

    def forward_encoder(
        self, tokens: torch.Tensor, centers: torch.Tensor, *, with_cls: bool = True, layers=()
    ):
        """Run the blocks on (a subset of) patch tokens (B, T, D) at their centres (B, T, 3).

        ``with_cls=False`` is the masked-modelling encoder of upstream pretraining: only the
        given (visible) tokens, no cls token. Returns normed tokens, cls first if present
        (and the ``layers`` outputs when asked for: ``(tokens, [layer, ...])``).
        """
        pos = self.pos_embed(centers)  # (B, T, D)
        if with_cls:
            batch = tokens.shape[0]
            tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)  # (B,1+T,D)
            pos = torch.cat([self.cls_pos.expand(batch, -1, -1), pos], dim=1)  # (B, 1+T, D)
        if layers:
            return self.transformer.forward_layers(tokens, pos, tuple(layers))
        return self.transformer(tokens, pos)

    def forward_visible(self, patches: Patches, masking: Masking) -> Encoding:
        """The cls token and the visible patches only, tokenized alone."""
        visible, centers = self.visible_patches(patches, masking)  # (B, V, K, 3), (B, V, 3)
        out = self.forward_encoder(self.tokenizer(visible), centers)  # (B, 1+V, D)
        return {"tokens": out[:, 1:], "cls": out[:, 0]}

    def forward_patches(self, patches: Patches, layers: tuple[int, ...] = ()) -> dict:
        tokens = self.tokenizer(patches.neighborhood)  # (B, G, D)
        out = self.forward_encoder(tokens, patches.centers, layers=layers)
        out, picked = out if layers else (out, None)
        cls, tokens = out[:, 0], out[:, 1:]  # (B, D), (B, G, D)
        features = {
            "tokens": tokens,
            "cls": cls,
            "global": self.pool(tokens, cls),
            "centers": patches.centers,
        }
        if layers:
            features["layers"] = [layer[:, 1:] for layer in picked]  # (B, G, D) each
        return features

    @staticmethod
    def pool(tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        """[cls, max over tokens] (B, 2D)."""
        return torch.cat([cls, tokens.amax(dim=1)], dim=-1)


def point_mae(**overrides) -> PointMAE:
    """The paper's backbone: 384 wide, depth 12, 6 heads, 64 groups of 32 points."""
    return PointMAE(dataclasses.replace(PointMAEConfig(), **overrides))


def point_mae_tiny(**overrides) -> PointMAE:
    """128 wide, depth 4, 4 heads, 32 groups of 16 points (512-point clouds), a mini-PointNet
    of half upstream's widths (it holds about 80 % of the tiny model's FLOPs)."""
    tiny = PointMAEConfig(
        trans_dim=128, depth=4, num_heads=4, num_groups=32, group_size=16, tokenizer_hidden=64
    )
    return PointMAE(dataclasses.replace(tiny, **overrides))
