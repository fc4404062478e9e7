"""Point-M2AE pretraining: upstream's masked encoder path and the upsampling decoder.

``PointM2AEPretrain`` wraps a ``PointM2AE`` encoder (its stages) with what only pretraining
has: a LayerNorm per scale (``encoder_norms``), the ``mask_token``, decoder levels from the
coarsest scale down (``decoder_blocks`` with their ``decoder_pos_embeds``, ``propagation``:
3-NN interpolation + fuse + residual MLP), ``decoder_norm`` and ``rec_head``; the loss is
Chamfer-L2 between the predicted points of every masked token of the last decoder level and
that token's neighbourhood (scale 1 at paper size: 8 offsets of scale-0 centres, while
``rec_head`` predicts ``group_sizes[0]`` = 16 points, as upstream). It can serve the
Point-M2AE baseline.

The encoder path follows upstream's pretraining encoder, quirks included, each behind a flag
of the encoder's config (default faithful):

- ``index0_quirk``: upstream pushes the coarsest mask down by zeroing the kNN indices of masked
  groups and scattering "visible" to all of them, so flat index 0 (sample 0's token 0 of every
  finer scale) is visible whenever anything is masked: outputs depend on the batch;
- ``drop_uncovered``: a finer token is visible only if a visible coarser group holds it, so
  even the unmasked path drops tokens that are in no group (off: only tokens held by masked
  groups alone are hidden);
- ``padding_quirk``: visible tokens are packed, padded with zero features at the origin, and
  the bias is radius mask x padding mask, so real pairs are never masked and real tokens near
  the origin attend to padding (off: the padding mask alone, upstream's intent);
- ``reuse_distance_quirk``: the centre distances of the previous scale are reused when the
  packed length is the same (only with ``padding_quirk``, the only user of the distances).

Between scales the visible positions of a scale's embedded tokens carry its block outputs and
the masked ones keep their embeddings (the next scale gathers from that full set).

Stage-2 uses it as Point-M2AE's own point-reconstruction objective (the Point-M2AE baseline and
Table 7's "point clouds" row): ``for_encoder`` builds the decoder of upstream's shape for any
encoder size, with ``share_final_norm`` (the coarsest pretraining norm *is* the encoder's final
``norm``, so the saved encoder's features are upstream's linear-SVM feature; upstream's
fine-tuning re-initialises that norm), and ``forward_levels`` takes the mask the Stage-2 step
drew at the coarsest scale.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from mmpd_core.geometry import chamfer_distance, gather_points, square_distance
from mmpd_core.layers import Block, position_mlp
from mmpd_core.models.point_m2ae import PointM2AE, attention_bias, covered, pack
from mmpd_core.shuffle import gather_tokens, random_masking


@dataclass(frozen=True)
class PointM2AEDecoderConfig:
    decoder_dims: tuple[int, ...] = (384, 192)  # coarsest first; [0] = the coarsest encoder dim
    decoder_depths: tuple[int, ...] = (1, 1)
    decoder_up_blocks: tuple[int, ...] = (1,)  # residual blocks of each propagation
    mask_ratio: float = 0.8  # of the coarsest tokens

    def __post_init__(self):
        for name in ("decoder_dims", "decoder_depths", "decoder_up_blocks"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def for_encoder(cls, encoder: PointM2AE, **overrides) -> PointM2AEDecoderConfig:
        """Upstream's decoder shape for ``encoder``'s widths: one block per level from the
        coarsest scale down to scale 1 (upstream's (384, 192) at paper size)."""
        dims = encoder.config.encoder_dims[1:][::-1]  # coarsest first, down to scale 1
        shape = {"decoder_dims": dims, "decoder_depths": (1,) * len(dims),
                 "decoder_up_blocks": (1,) * (len(dims) - 1)}  # fmt: skip
        return cls(**{**shape, **overrides})


def pointwise(layers: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-point layers (Linear / BatchNorm1d / activation) on (B, N, C), as Conv1d(k=1) and
    BatchNorm1d on (B, C, N) do upstream."""
    batch, points, _ = x.shape
    return layers(x.reshape(batch * points, -1)).reshape(batch, points, -1)  # (B, N, C')


class ResidualPointMLP(nn.Module):
    """Upstream ``ConvBNReLURes1D``: GELU(net2(net1(x)) + x), net1 Linear-BN-GELU, net2
    Linear-BN."""

    def __init__(self, dim: int):
        super().__init__()
        self.net1 = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.GELU())
        self.net2 = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C)
        return self.act(self.net2(self.net1(x)) + x)


class TokenPropagation(nn.Module):
    """Upstream ``PointNetFeaturePropagation``: the coarse tokens interpolated (3-NN, weights
    1 / (d^2 + 1e-8) normalised) to the fine centres, after the fine skip tokens (channel
    concat), then Linear-BN-GELU ``fuse`` and residual ``blocks``. Squared distances are
    clamped at 0 (``geometry.square_distance``): every coarse centre is also a fine one, and
    upstream's unclamped expansion can leave a tiny negative residue there (a weight of the
    wrong sign); the fixture matches either way."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int):
        super().__init__()
        self.fuse = nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.GELU())
        self.blocks = nn.Sequential(*(ResidualPointMLP(out_dim) for _ in range(blocks)))

    def forward(self, centers, coarse_centers, skip, coarse) -> torch.Tensor:
        """centers (B, N, 3), coarse_centers (B, S, 3), skip (B, N, C1), coarse (B, S, C2)."""
        if coarse_centers.shape[1] == 1:
            interpolated = coarse.expand(-1, centers.shape[1], -1)  # (B, N, C2)
        else:
            dist = square_distance(centers, coarse_centers)  # (B, N, S)
            dist, idx = dist.topk(3, dim=-1, largest=False, sorted=True)  # (B, N, 3)
            weight = 1.0 / (dist + 1e-8)
            weight = weight / weight.sum(dim=-1, keepdim=True)  # (B, N, 3)
            neighbours = gather_points(coarse, idx)  # (B, N, 3, C2)
            interpolated = (neighbours * weight.unsqueeze(-1)).sum(dim=2)  # (B, N, C2)
        x = torch.cat([skip, interpolated], dim=-1)  # (B, N, C1 + C2)
        return pointwise(nn.Sequential(self.fuse, self.blocks), x)  # (B, N, out)


class PointM2AEPretrain(nn.Module):
    """Upstream's pretraining model around a ``PointM2AE`` encoder; see the module docstring."""

    arch = "point_m2ae"  # its upstream checkpoints load through the Point-M2AE adapter

    def __init__(
        self,
        encoder: PointM2AE,
        config: PointM2AEDecoderConfig | None = None,
        *,
        share_final_norm: bool = False,
    ):
        super().__init__()
        config = config or PointM2AEDecoderConfig()
        enc = encoder.config
        dims, top = config.decoder_dims, enc.num_scales - 1
        expected = [enc.encoder_dims[top - k] for k in range(len(dims))]
        if list(dims) != expected or len(dims) > enc.num_scales:
            raise ValueError(f"decoder_dims {dims} must be encoder_dims from the coarsest down")
        self.encoder, self.config = encoder, config
        self.encoder_norms = nn.ModuleList(nn.LayerNorm(d) for d in enc.encoder_dims)
        if share_final_norm:  # one module under two names (checkpoints store both)
            self.encoder_norms[top] = encoder.norm
        self.mask_token = nn.Parameter(torch.zeros(1, dims[0]))
        rates = torch.linspace(0, enc.drop_path_rate, sum(config.decoder_depths), device="cpu")
        rates, first = rates.tolist(), 0
        self.decoder_blocks = nn.ModuleList()
        for dim, depth in zip(dims, config.decoder_depths, strict=True):
            blocks = [Block(dim, enc.num_heads, enc.mlp_ratio, r) for r in rates[first:][:depth]]
            self.decoder_blocks.append(nn.ModuleList(blocks))
            first += depth
        self.decoder_pos_embeds = nn.ModuleList(position_mlp(d, hidden=d) for d in dims)
        self.propagation = nn.ModuleList(
            TokenPropagation(dims[k] + dims[k - 1], dims[k], config.decoder_up_blocks[k - 1])
            for k in range(1, len(dims))
        )
        self.decoder_norm = nn.LayerNorm(dims[-1])
        self.rec_head = nn.Linear(dims[-1], 3 * enc.group_sizes[0])
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder_blocks.apply(_xavier)  # upstream's decoder-block init

    @property
    def rec_scale(self) -> int:
        """The scale the decoder ends at and reconstructs (1 at paper size)."""
        return self.encoder.config.num_scales - len(self.config.decoder_dims)

    # ---------------------------------------------------------------- masking

    def random_mask(self, levels, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exactly int(mask_ratio * G) coarsest tokens per sample (B, G), True = masked."""
        centers = levels[-1].centers
        batch, groups = centers.shape[:2]
        masking = random_masking(
            batch, groups, self.config.mask_ratio, generator=generator, device=centers.device
        )
        return masking.mask

    def push_down(self, levels, masked_top: torch.Tensor) -> list[torch.Tensor]:
        """Masked tokens (B, G_i) of every scale, finest first, from the coarsest mask."""
        cfg = self.encoder.config
        masked = [masked_top]
        for scale in range(len(levels) - 1, 0, -1):
            knn_idx, size = levels[scale].knn_idx, levels[scale - 1].centers.shape[1]
            hidden, visible = masked[0], covered(knn_idx, ~masked[0], size)  # (B, G_i-1)
            below = ~visible if cfg.drop_uncovered else covered(knn_idx, hidden, size) & ~visible
            if cfg.index0_quirk and hidden.any():
                below = below.clone()
                below[0, 0] = False  # the zeroed indices of masked groups hit flat index 0
            masked.insert(0, below)
        return masked

    # ---------------------------------------------------------------- encoder

    def forward_encoder(self, levels, masked: list[torch.Tensor]) -> list[dict]:
        """Upstream's pretraining encoder. Per scale: ``tokens`` (B, L, D) the packed visible
        outputs after ``encoder_norms`` (padding rows included), ``valid`` (B, L) and
        ``attn_mask`` (B, L, L) True where −1e5 is added."""
        cfg, outputs, full, dist = self.encoder.config, [], None, None
        for scale, (level, stage) in enumerate(zip(levels, self.encoder.stages, strict=True)):
            groups = level.neighborhood if scale == 0 else gather_points(full, level.knn_idx)
            embedded = stage.tokenizer(groups)  # (B, G, D): masked tokens too, as upstream
            visible = ~masked[scale]
            order, valid = pack(visible)  # (B, L)
            x = gather_tokens(embedded, order) * valid.unsqueeze(-1)  # (B, L, D), zero padding
            centers = gather_points(level.centers, order) * valid.unsqueeze(-1)  # (B, L, 3)
            mask = ~(valid.unsqueeze(2) & valid.unsqueeze(1))  # (B, L, L) padding mask
            radius = cfg.local_radius[scale]
            if cfg.padding_quirk and radius > 0:
                reuse = cfg.reuse_distance_quirk and dist is not None
                if not (reuse and dist.shape[1] == centers.shape[1]):
                    dist = torch.cdist(centers, centers)  # (B, L, L)
                mask = mask & (dist >= radius)
            x, _ = stage(x, centers, attention_bias(mask))
            outputs.append({"tokens": self.encoder_norms[scale](x), "valid": valid,
                            "attn_mask": mask})  # fmt: skip
            full = embedded.masked_scatter(visible.unsqueeze(-1), x[valid])  # (B, G, D)
        return outputs

    # ---------------------------------------------------------------- decoder

    def forward_decoder(self, levels, masked, encoded) -> torch.Tensor:
        """The decoder from the coarsest scale down to ``rec_scale``: (B, G, C) after
        ``decoder_norm``, tokens in their natural order."""
        top = len(levels) - 1
        centers, hidden = levels[top].centers, masked[top]
        batch, _, dim = encoded[top]["tokens"].shape
        order = torch.cat(
            [centers[~hidden].reshape(batch, -1, 3), centers[hidden].reshape(batch, -1, 3)], 1
        )  # (B, G, 3): visible centres, then masked ones
        num_masked = order.shape[1] - encoded[top]["tokens"].shape[1]
        x = torch.cat([encoded[top]["tokens"], self.mask_token.expand(batch, num_masked, dim)], 1)
        for k, blocks in enumerate(self.decoder_blocks):
            scale = top - k
            if k > 0:
                out, visible = encoded[scale], ~masked[scale]
                skip = out["tokens"].new_zeros(*visible.shape, out["tokens"].shape[-1])
                skip = skip.masked_scatter(visible.unsqueeze(-1), out["tokens"][out["valid"]])
                order, previous = levels[scale].centers, order  # (B, G_s, 3)
                x = self.propagation[k - 1](order, previous, skip, x)  # (B, G_s, C)
            pos = self.decoder_pos_embeds[k](order)
            for block in blocks:
                x = block(x + pos)
        return self.decoder_norm(x)

    def forward_loss(self, levels, masked, decoded) -> dict:
        """Chamfer-L2 of the masked tokens of ``rec_scale``: ``rec_points`` (L, K0, 3),
        ``rec_target`` (L, K, 3) sample by sample, and the ``loss``."""
        hidden = masked[self.rec_scale]
        rec = self.rec_head(decoded[hidden])  # (L, 3 K0)
        points = rec.reshape(rec.shape[0], -1, 3)  # (L, K0, 3)
        target = levels[self.rec_scale].neighborhood[hidden]  # (L, K, 3)
        loss = chamfer_distance(points.float(), target.float(), norm=2)
        return {"rec_points": points, "rec_target": target, "loss": loss}

    def forward(self, points, generator=None, *, masked_top=None) -> dict:
        """One pretraining pass on clouds (B, N, 3); ``masked_top`` (B, G) overrides the draw.
        Returns ``loss`` with the masks, encoder outputs, decoder output and points."""
        levels = self.encoder.group(points).levels
        if masked_top is None:
            masked_top = self.random_mask(levels, generator)
        return self.forward_levels(levels, masked_top)

    def forward_levels(self, levels, masked_top: torch.Tensor) -> dict:
        """``forward`` on grouped clouds (``Patches.levels``) with the coarsest mask (B, G)."""
        masked = self.push_down(levels, masked_top)
        encoded = self.forward_encoder(levels, masked)
        decoded = self.forward_decoder(levels, masked, encoded)
        out = self.forward_loss(levels, masked, decoded)
        return {**out, "masked": masked, "encoded": encoded, "decoded": decoded}

    def forward_svm_feature(self, points) -> dict:
        """Upstream's unmasked path (its linear-SVM feature): nothing masked at the coarsest
        scale, pushed down all the same. Returns ``feature`` (B, D) = mean + max of the
        normed coarsest tokens, and ``masked`` / ``encoded`` per scale."""
        levels = self.encoder.group(points).levels
        nothing = torch.zeros(levels[-1].centers.shape[:2], dtype=torch.bool, device=points.device)
        masked = self.push_down(levels, nothing)
        encoded = self.forward_encoder(levels, masked)
        top = encoded[-1]["tokens"]
        return {"feature": top.mean(1) + top.amax(1), "masked": masked, "encoded": encoded}


def _xavier(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
