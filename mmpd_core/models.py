"""The point encoder: Point-MAE's standard transformer, its classification head and variants.

``create_model("point_mae")`` builds the paper's backbone (384 dim, depth 12, 6 heads, 64
groups of 32 points); ``point_mae_tiny`` (128 dim, depth 4, 4 heads, 32 groups of 16 points,
for 512-point clouds) is the embedded-default / test size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmpd_core.checkpoint import load_checkpoint, save_checkpoint
from mmpd_core.geometry import group
from mmpd_core.layers import PatchTokenizer, TransformerStack, position_mlp


@dataclass(frozen=True)
class ModelConfig:
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


VARIANTS: dict[str, ModelConfig] = {
    "point_mae": ModelConfig(),
    # the embedded-default / test size: 32 groups of 16 points cover a 512-point cloud
    "point_mae_tiny": ModelConfig(
        trans_dim=128, depth=4, num_heads=4, drop_path_rate=0.1, num_groups=32, group_size=16
    ),
}


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


class PointTransformer(nn.Module):
    """Patch tokenizer + centre positional MLP + cls token + pre-norm blocks + final norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        dim = config.trans_dim
        self.tokenizer = PatchTokenizer(dim)
        self.pos_embed = position_mlp(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.transformer = TransformerStack(
            dim, config.depth, config.num_heads, config.mlp_ratio, config.drop_path_rate
        )
        self.head = None
        if config.num_classes:
            self.head = classification_head(
                2 * dim, config.head_hidden, config.num_classes, config.head_dropout
            )
        self.apply(init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.blocks

    def tokenize(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Group the cloud (B, N, 3), embed each patch: tokens (B, G, D), centers, neighborhood."""
        neighborhood, centers = self.group(points)
        return {
            "tokens": self.tokenizer(neighborhood),
            "centers": centers,
            "neighborhood": neighborhood,
        }

    def forward_encoder(
        self, tokens: torch.Tensor, centers: torch.Tensor, *, with_cls: bool = True
    ) -> torch.Tensor:
        """Run the blocks on (a subset of) patch tokens (B, T, D) at their centres (B, T, 3).

        ``with_cls=False`` is the masked-modelling encoder of upstream pretraining: only the
        given (visible) tokens, no cls token. Returns normed tokens, cls first if present.
        """
        pos = self.pos_embed(centers)  # (B, T, D)
        if with_cls:
            batch = tokens.shape[0]
            tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)  # (B,1+T,D)
            pos = torch.cat([self.cls_pos.expand(batch, -1, -1), pos], dim=1)  # (B, 1+T, D)
        return self.transformer(tokens, pos)

    def forward_patches(
        self, neighborhood: torch.Tensor, centers: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Encode grouped patches (B, G, K, 3) at centres (B, G, 3) with the cls token:
        tokens (B, G, D) after the final norm, cls (B, D), global (B, 2D), centers."""
        out = self.forward_encoder(self.tokenizer(neighborhood), centers)  # (B, 1+G, D)
        cls, tokens = out[:, 0], out[:, 1:]
        return {
            "tokens": tokens,
            "cls": cls,
            "global": torch.cat([cls, tokens.amax(dim=1)], dim=-1),  # (B, 2D)
            "centers": centers,
        }

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This model's grouping of (B, N, 3): neighborhood (B, G, K, 3), centers (B, G, 3)."""
        cfg = self.config
        return group(points, cfg.num_groups, cfg.group_size, skip_origin=cfg.skip_origin)

    def forward_features(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """tokens (B, G, D) after the final norm, cls (B, D), global (B, 2D), centers (B, G, 3)."""
        return self.forward_patches(*self.group(points))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes); needs a model built with ``num_classes > 0``."""
        if self.head is None:
            raise RuntimeError("this model has no classification head (num_classes=0)")
        return self.head(self.forward_features(points)["global"])


def init_weights(module: nn.Module) -> None:
    """trunc-normal(0.02) Linear weights, zero biases, unit norms (upstream initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm | nn.BatchNorm1d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


ENCODER_FILE = "encoder.safetensors"  # what every pretraining run leaves for downstream tasks


def save_encoder(run_dir, encoder: PointTransformer, *, extra: dict | None = None) -> Path:
    """Write ``<run_dir>/encoder.safetensors``: the encoder's weights and its ModelConfig."""
    path = Path(run_dir) / ENCODER_FILE
    save_checkpoint(path, encoder, config=encoder.config.to_dict(), extra=extra)
    return path


def load_encoder(path, **overrides) -> PointTransformer:
    """The encoder of a pretraining run (its directory or its ``encoder.safetensors``).

    ``overrides`` change ModelConfig fields that hold no weights (``num_classes`` adds a fresh
    head, ``drop_path_rate``); every stored encoder weight must load (strict, reported).
    """
    path = Path(path)
    path = path / ENCODER_FILE if path.is_dir() else path
    tensors, meta = load_checkpoint(path)
    config = dataclasses.replace(ModelConfig(**meta["config"]), **overrides)
    encoder = PointTransformer(config)
    missing, unexpected = encoder.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise KeyError(f"{path}: missing encoder keys {missing}, unexpected keys {unexpected}")
    return encoder


def create_model(name: str, **overrides) -> PointTransformer:
    """Build a named variant; keyword overrides replace fields of its ``ModelConfig``."""
    if name not in VARIANTS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(VARIANTS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise TypeError(f"unknown ModelConfig fields for {name!r}: {sorted(unknown)}")
    return PointTransformer(dataclasses.replace(VARIANTS[name], **overrides))
