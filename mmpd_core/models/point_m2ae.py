"""Point-M2AE (Zhang et al., NeurIPS 2022): the multi-scale backbone.

Scale 0 groups the points (FPS + kNN) and embeds each group with Point-MAE's mini-PointNet;
scale i > 0 groups the **centres** of scale i - 1 and merges the K scale-(i - 1) tokens of each
group with a mini-PointNet over their features. Every scale adds its own position MLP
(Linear(3, d), GELU, Linear(d, d)) before each of its blocks and attends locally: −1e5 is
added to the logits of centre pairs at least ``local_radius[i]`` apart (upstream's fine-tuning
encoder). One LayerNorm on the coarsest tokens. Paper size: 512 / 256 / 64 tokens, 96 / 192 /
384 wide, 5 blocks each; 12.83 M parameters with a 40-class head (REFERENCE.md).

The contract (``contract.py``) at the **distillation level** ``distill_scale`` (default the
coarsest, 64 x 384 at paper size):

- ``group``: ``Patches`` of that level (its centres, and its kNN neighbourhood: offsets of the
  scale-below centres, upstream's ``neighborhoods[i]``, a point target of ``patch_points = K``
  per token); every scale is in ``levels`` (``Level``, finest first);
- ``random_masking``: exactly int(ratio * G) tokens of that level per sample;
- ``forward_patches``: the fine-tuning encoder on every token (matches upstream);
- ``forward_visible``: the same encoder on the visible hierarchy only (mmpd's Stage-2 student;
  upstream has no such path). The mask is pushed down: a finer token is hidden iff it lies in
  the kNN group of a masked token and of no visible one (tokens in no group stay visible, so
  that nothing masked is the full encoding). Each scale embeds only its visible tokens (so
  BatchNorm statistics never see hidden ones), packs them per sample (ascending index, padded
  to the batch maximum) and masks the padding keys; local attention as in fine-tuning.
- ``pool``: ModelNet40's mean + max (also upstream's linear-SVM feature) or, with
  ``pooling="scanobjectnn"``, concat(mean, max over tokens 1..G-1). ``pool`` is static in the
  contract (Stage-2 pools through the class), so each pooling is a subclass picked from the
  config (``PointM2AE(config)`` returns the right one).

``distill_scale`` below the coarsest (1: the 256 x 192 level where the upstream decoder ends)
works for the token-level contract (tokens, layers, masking, visible encoding: the finer
scales alone run), but not for the global one: heads and ``global`` pool the normed coarsest
tokens, so ``global != pool(tokens)`` and a Stage-2 global decoder, which pools the student's
tokens like the teacher, gets the wrong width. Use it with the local term only.

Upstream's pretraining-path quirks (mask push-down, padding, dropped tokens) are reproduced in
``point_m2ae_pretrain.py`` behind the ``*_quirk`` / ``drop_uncovered`` flags below; they do not
apply to ``forward_visible``, where they would break the contract (sample 0 of a batch would
see a masked token; padding would change real outputs; nothing masked would drop tokens).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from mmpd_core.geometry import farthest_point_sample, gather_points, knn
from mmpd_core.layers import Block, PatchTokenizer, init_weights, position_mlp
from mmpd_core.models.contract import Backbone, Encoding, Patches
from mmpd_core.models.point_mae import classification_head
from mmpd_core.shuffle import Masking, random_masking

MASK_BIAS = -1e5  # upstream adds mask * -1e5 to the attention logits, not -inf
POOLINGS = ("modelnet40", "scanobjectnn")


@dataclass(frozen=True)
class PointM2AEConfig:
    num_groups: tuple[int, ...] = (512, 256, 64)  # per scale, finest first
    group_sizes: tuple[int, ...] = (16, 8, 8)  # ScanObjectNN fine-tuning: (32, 16, 16)
    encoder_dims: tuple[int, ...] = (96, 192, 384)
    encoder_depths: tuple[int, ...] = (5, 5, 5)
    num_heads: int = 6
    mlp_ratio: float = 4.0
    local_radius: tuple[float, ...] = (0.32, 0.64, 1.28)  # <= 0: no local attention
    drop_path_rate: float = 0.1  # linspace over all blocks of all scales
    num_classes: int = 0  # 0: no classification head
    pooling: str = "modelnet40"  # "modelnet40": mean + max; "scanobjectnn": concat(mean, max)
    head_dropout: float = 0.5
    head_hidden: int = 256
    skip_origin: bool = True  # FPS never picks points within ~0.032 of the origin (upstream)
    tokenizer_hidden: int = 128  # scale-0 mini-PointNet widths (h, 2h, 4h); upstream 128
    distill_scale: int = -1  # the contract's level; -1: the coarsest
    # upstream quirks, faithful by default (see module docstrings)
    scan_max_skips_first: bool = True  # ScanObjectNN's max leaves token 0 out
    index0_quirk: bool = True  # pretraining push-down marks sample 0's token 0 visible
    drop_uncovered: bool = True  # pretraining drops finer tokens in no coarser kNN group
    padding_quirk: bool = True  # pretraining mask = radius mask x padding mask
    reuse_distance_quirk: bool = True  # pretraining reuses the last distances at equal length

    def __post_init__(self):
        for name in ("num_groups", "group_sizes", "encoder_dims", "encoder_depths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "local_radius", tuple(float(r) for r in self.local_radius))
        lengths = {len(self.num_groups), len(self.group_sizes), len(self.encoder_dims)}
        lengths |= {len(self.encoder_depths), len(self.local_radius)}
        if len(lengths) != 1:
            raise ValueError(f"per-scale fields of different lengths: {self}")
        if any(a <= b for a, b in zip(self.num_groups, self.num_groups[1:], strict=False)):
            raise ValueError(f"num_groups must decrease strictly, got {self.num_groups}")
        if any(d % self.num_heads for d in self.encoder_dims):
            raise ValueError(f"encoder_dims {self.encoder_dims} not divisible by heads")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not -self.num_scales <= self.distill_scale < self.num_scales:
            raise ValueError(f"distill_scale {self.distill_scale} outside the scales")

    @property
    def num_scales(self) -> int:
        return len(self.num_groups)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Level:
    """One scale: ``fps_idx`` (B, G) and ``knn_idx`` (B, G, K) index the level below (the
    points for scale 0, the previous centres above); ``neighborhood`` (B, G, K, 3) is the
    neighbours minus their centre ``centers`` (B, G, 3)."""

    fps_idx: torch.Tensor
    centers: torch.Tensor
    knn_idx: torch.Tensor
    neighborhood: torch.Tensor


def group_levels(points, num_groups, group_sizes, *, skip_origin: bool = True) -> tuple:
    """Hierarchical grouping: FPS + kNN over the points, then over each scale's centres."""
    levels, source = [], points
    for groups, size in zip(num_groups, group_sizes, strict=True):
        fps_idx = farthest_point_sample(source, groups, skip_origin=skip_origin)  # (B, G)
        centers = gather_points(source, fps_idx)  # (B, G, 3)
        knn_idx = knn(centers, source, size)  # (B, G, K)
        neighborhood = gather_points(source, knn_idx) - centers.unsqueeze(2)  # (B, G, K, 3)
        levels.append(Level(fps_idx, centers, knn_idx, neighborhood))
        source = centers
    return tuple(levels)


def covered(knn_idx: torch.Tensor, groups: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) True for the tokens of the level below that lie in the kNN group (knn_idx
    (B, G, K)) of a token where ``groups`` (B, G) is True."""
    hits = groups.unsqueeze(-1).expand_as(knn_idx).flatten(1).long()  # (B, G*K)
    counts = knn_idx.new_zeros(knn_idx.shape[0], size).scatter_add_(1, knn_idx.flatten(1), hits)
    return counts > 0  # (B, size)


def pack(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Visible tokens (B, G) first, in ascending index: ``order`` (B, L) and ``valid`` (B, L),
    L the longest row of the batch (upstream's packing)."""
    counts = visible.sum(1)  # (B,)
    length = int(counts.max())
    order = torch.argsort((~visible).to(torch.uint8), dim=1, stable=True)[:, :length]  # (B, L)
    valid = torch.arange(length, device=visible.device) < counts.unsqueeze(1)  # (B, L)
    return order, valid


def radius_mask(centers: torch.Tensor, radius: float) -> torch.Tensor:
    """(B, T, T) True where two centres (B, T, 3) are at least ``radius`` apart (upstream's
    ``torch.cdist`` and ``>=``); all False for radius <= 0."""
    if radius <= 0:
        return centers.new_zeros(centers.shape[:2] + centers.shape[1:2], dtype=torch.bool)
    return torch.cdist(centers, centers) >= radius


def attention_bias(mask: torch.Tensor) -> torch.Tensor:
    """Boolean mask (B, T, T) -> additive bias (B, 1, T, T): −1e5 where True."""
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    return torch.where(mask, MASK_BIAS, zero).unsqueeze(1)  # (B, 1, T, T)


class Stage(nn.Module):
    """One scale: token embedding, position MLP, blocks (position added before each)."""

    def __init__(self, config: PointM2AEConfig, scale: int, drop_path: list[float]):
        super().__init__()
        dim = config.encoder_dims[scale]
        if scale == 0:
            self.tokenizer = PatchTokenizer(dim, config.tokenizer_hidden)
        else:
            prev = config.encoder_dims[scale - 1]
            self.tokenizer = PatchTokenizer(dim, in_dim=prev, widths=(prev, prev, dim))
        self.pos_embed = position_mlp(dim, hidden=dim)
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, rate) for rate in drop_path
        )

    def forward(self, x, centers, bias, layers=()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens (B, T, D) at centres (B, T, 3) with the additive bias (B, 1, T, T); returns
        the output and the outputs of the blocks numbered ``layers``."""
        pos = self.pos_embed(centers)  # (B, T, D)
        picked = []
        for index, block in enumerate(self.blocks):
            x = block(x + pos, bias)
            if index in layers:
                picked.append(x)
        return x, picked


class PointM2AE(Backbone):
    """Hierarchical grouping, per-scale embedding, local-attention blocks, final norm."""

    arch = "point_m2ae"
    config_class = PointM2AEConfig

    def __new__(cls, config: PointM2AEConfig | None = None, *args, **kwargs):
        if cls is PointM2AE and config is not None:
            cls = _pooling_class(config)
        return super().__new__(cls)

    def __init__(self, config: PointM2AEConfig):
        super().__init__()
        self.config = config
        self.distill = config.distill_scale % config.num_scales
        top = config.encoder_dims[-1]
        self.dim = config.encoder_dims[self.distill]
        self.patch_points = config.group_sizes[self.distill]
        self.global_dim = top if config.pooling == "modelnet40" else 2 * top
        rates = torch.linspace(0, config.drop_path_rate, sum(config.encoder_depths), device="cpu")
        rates, first = rates.tolist(), 0
        self.stages = nn.ModuleList()
        for scale, depth in enumerate(config.encoder_depths):
            self.stages.append(Stage(config, scale, rates[first : first + depth]))
            first += depth
        self.norm = nn.LayerNorm(top)
        self.head = self.make_head(config.num_classes) if config.num_classes else None
        self.apply(init_weights)

    @property
    def blocks(self) -> nn.ModuleList:
        """The blocks of the distillation level (``layers`` counts these)."""
        return self.stages[self.distill].blocks

    def make_head(self, num_classes: int) -> nn.Module:
        cfg = self.config
        return classification_head(self.global_dim, cfg.head_hidden, num_classes, cfg.head_dropout)

    # ---------------------------------------------------------------- the contract

    def group(self, points: torch.Tensor) -> Patches:
        cfg = self.config
        levels = group_levels(points, cfg.num_groups, cfg.group_sizes, skip_origin=cfg.skip_origin)
        level = levels[self.distill]
        return Patches(level.neighborhood, level.centers, levels)

    def random_masking(
        self, patches: Patches, ratio: float, generator: torch.Generator | None = None
    ) -> Masking:
        """Exactly int(ratio * G) tokens of the distillation level per sample (upstream's
        coarsest-level masking, drawn from ``generator`` instead of numpy)."""
        batch, groups = patches.centers.shape[:2]
        device = patches.centers.device
        return random_masking(batch, groups, ratio, generator=generator, device=device)

    def visible_hierarchy(self, patches: Patches, masking: Masking) -> list[torch.Tensor]:
        """Visible tokens (B, G_i) of scales 0..distill: a finer token is hidden iff it is in
        the kNN group of a hidden token and of no visible one."""
        hidden, levels = masking.mask, patches.levels
        visible = [~hidden]
        for scale in range(self.distill, 0, -1):
            knn_idx, size = levels[scale].knn_idx, levels[scale - 1].centers.shape[1]
            hidden = covered(knn_idx, hidden, size) & ~covered(knn_idx, ~hidden, size)
            visible.insert(0, ~hidden)
        return visible

    def forward_visible(self, patches: Patches, masking: Masking) -> Encoding:
        """The visible hierarchy only; tokens (B, V, D) in ``keep_idx`` order, no cls."""
        visible = self.visible_hierarchy(patches, masking)
        scales, _ = self.forward_scales(patches.levels, visible, upto=self.distill)
        tokens = scales[-1]["tokens"]  # (B, V, D): V visible in every sample, no padding
        return {"tokens": self._level_norm(tokens), "cls": None}

    def forward_patches(self, patches: Patches, layers: tuple[int, ...] = ()) -> dict:
        scales, picked = self.forward_scales(patches.levels, layers=tuple(layers))
        top = self.norm(scales[-1]["tokens"])  # (B, G_top, D_top)
        tokens = self._level_norm(scales[self.distill]["tokens"])  # (B, G, D)
        features = {
            "tokens": tokens,
            "cls": None,
            "global": self.pool(top, None),
            "centers": patches.centers,
            # every scale's output (the coarsest through the final norm, as upstream's
            # segmentation model reads them), finest first: dense heads propagate each
            "scales": [
                (level.centers, self.norm(s["tokens"]) if i == len(scales) - 1 else s["tokens"])
                for i, (level, s) in enumerate(zip(patches.levels, scales, strict=True))
            ],
        }
        if layers:
            features["layers"] = [self._level_norm(x) for x in picked]
        return features

    def _level_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final norm at the coarsest level; finer levels have none upstream."""
        return self.norm(tokens) if self.distill == len(self.stages) - 1 else tokens

    # ---------------------------------------------------------------- the encoder

    def forward_scales(self, levels, visible=None, *, upto: int | None = None, layers=()):
        """Scales 0..upto (default all) on every token (``visible`` None: fine-tuning) or on
        the visible tokens (B, G_i) of each scale, packed. Returns one dict per scale (``embed``
        and ``tokens`` (B, L, D) before / after the blocks, ``attn_mask`` (B, L, L) True where
        −1e5 is added, ``order`` / ``valid`` (B, L) of the packing or None) and the outputs of
        the distillation level's blocks numbered ``layers``."""
        upto = len(self.stages) - 1 if upto is None else upto
        scales, full, picked = [], None, []
        for scale in range(upto + 1):
            level, stage = levels[scale], self.stages[scale]
            groups = level.neighborhood if scale == 0 else gather_points(full, level.knn_idx)
            if visible is None:  # groups (B, G, K, C)
                x, centers, order, valid = stage.tokenizer(groups), level.centers, None, None
                mask = radius_mask(centers, self.config.local_radius[scale])  # (B, G, G)
            else:
                order, valid = pack(visible[scale])  # (B, L)
                embedded = stage.tokenizer(groups[visible[scale]].unsqueeze(0))[0]  # (N, D)
                x = embedded.new_zeros(*valid.shape, embedded.shape[-1])  # (B, L, D)
                x = x.masked_scatter(valid.unsqueeze(-1), embedded)  # (B, L, D)
                centers = gather_points(level.centers, order) * valid.unsqueeze(-1)  # (B, L, 3)
                mask = radius_mask(centers, self.config.local_radius[scale])  # (B, L, L)
                mask = mask | ~valid.unsqueeze(1)  # padding keys never attended
            here = layers if scale == self.distill else ()
            out, chosen = stage(x, centers, attention_bias(mask), here)
            picked += chosen
            scales.append({"embed": x, "tokens": out, "attn_mask": mask, "order": order,
                           "valid": valid})  # fmt: skip
            if visible is None:
                full = out  # (B, G, D)
            else:  # outputs back at their token positions, zeros where hidden
                full = out.new_zeros(*visible[scale].shape, out.shape[-1])  # (B, G, D)
                full = full.masked_scatter(visible[scale].unsqueeze(-1), out[valid])
        return scales, picked

    @staticmethod
    def pool(tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        """ModelNet40 head input and upstream's linear-SVM feature: mean + max (B, D)."""
        return tokens.mean(dim=1) + tokens.amax(dim=1)


class PointM2AEScanObjectNN(PointM2AE):
    """``pooling="scanobjectnn"``: upstream leaves token 0 out of the max (the quirk)."""

    @staticmethod
    def pool(tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        """concat(mean over all tokens, max over tokens 1..G-1) (B, 2D)."""
        return torch.cat([tokens.mean(dim=1), tokens[:, 1:].amax(dim=1)], dim=-1)


class PointM2AEScanObjectNNAllTokens(PointM2AE):
    """``pooling="scanobjectnn"`` with ``scan_max_skips_first=False``: max over all tokens."""

    @staticmethod
    def pool(tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        """concat(mean, max) over all tokens (B, 2D)."""
        return torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=-1)


def _pooling_class(config: PointM2AEConfig) -> type[PointM2AE]:
    if config.pooling == "modelnet40":
        return PointM2AE
    return PointM2AEScanObjectNN if config.scan_max_skips_first else PointM2AEScanObjectNNAllTokens


def point_m2ae(**overrides) -> PointM2AE:
    """Paper size: 512 / 256 / 64 groups of 16 / 8 / 8, widths 96 / 192 / 384, 5 + 5 + 5
    blocks, 6 heads, radii 0.32 / 0.64 / 1.28, drop path 0.1 (12.83 M with 40 classes)."""
    return PointM2AE(dataclasses.replace(PointM2AEConfig(), **overrides))


def point_m2ae_small(**overrides) -> PointM2AE:
    """The embedded CPU default, sized like ``point_mae_tiny`` for 512-point clouds (1024 work
    too): 48 / 24 / 12 groups of 16 / 8 / 8 (each scale halves the tokens; the finest covers
    the cloud 1.5 times), widths 36 / 72 / 144, 2 + 2 + 2 blocks, 6 heads, radii as upstream,
    a scale-0 mini-PointNet of half upstream's widths: 0.95 M parameters with a 40-class head
    (951,560), a training step ~1.2x point_mae_tiny's on CPU (B 32, 512 points, bf16)."""
    small = PointM2AEConfig(
        num_groups=(48, 24, 12),
        encoder_dims=(36, 72, 144),
        encoder_depths=(2, 2, 2),
        tokenizer_hidden=64,
    )
    return PointM2AE(dataclasses.replace(small, **overrides))
