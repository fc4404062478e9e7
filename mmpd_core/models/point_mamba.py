"""PointMamba (Liang et al., NeurIPS 2024): the state-space backbone.

Point-MAE's patches, mini-PointNet tokens and centre MLP; then the tokens are serialised twice
along space-filling curves of their centres (``serialization.py``: Hilbert, then
"trans-Hilbert" with x and y swapped), each copy scaled and shifted by its own per-channel
**order indicator** (positions are not), and the two copies concatenated into one sequence of
2G tokens. The positional embedding, permuted the same way, is added **once**, before the
first block (Point-MAE adds it before every block). Blocks: x + DropPath(Mamba(LayerNorm(x)))
with no MLP, then a final LayerNorm; Mamba's selective scan is in ``selective_scan.py``.
Classification (upstream's ``avg_head``): the mean over the 2G tokens into Point-MAE's
3-layer head. Sizes: ``point_mamba`` (384 wide, depth 12, 64 groups of 32; 12,297,768
parameters with a 40-class head, as upstream), ``point_mamba_small`` (0.94 M) and
``point_mamba_tiny`` (0.68 M; the pipeline's PointMamba rows: depth 4, state 8, 16 x 32).

The contract (``contract.py``) at G tokens:

- each patch occurs twice in the sequence; its **token is the mean of its two outputs**, back
  in FPS order. The mean over the G tokens is then exactly the mean over the 2G outputs, so
  ``pool`` (mean over tokens, no cls token) equals upstream's head input and
  ``global == pool(tokens)``. ``layers`` are merged the same way, after the final norm;
- ``forward_visible`` (the Stage-2 student; upstream's pretraining encoder sorts every patch
  along one curve, then drops the masked ones): the visible patches alone are tokenised and
  serialised among themselves (their grid minimum and curve depth come from visible centres
  only), both curves, tokens back in ``keep_idx`` order. Masked patches therefore cannot
  change the visible encoding, and nothing masked gives the full encoding.
- The Stage-2 token shuffle is unchanged: it permutes slot contents inside mmpd's transformer
  decoder, in FPS slot order, after this encoder; the SSM never sees shuffled tokens.
  (Upstream's own pretraining, with an order-sensitive 4-block Mamba decoder and one curve
  drawn per step, is not ported; ``forward_one_order`` is its encoder with nothing masked.)

Upstream quirks, faithful by default: ``batch_depth`` (the curve depth is the bit length of
the largest grid coordinate of the whole batch, so a small cloud's order depends on its
batch-mates; False: each cloud's own). ``mixer_init``: "upstream" re-initialises every Linear
and Conv1d as PointMamba's pretraining model does (trunc-normal 0.02, zero biases, so the dt
bias is 0 and Δ starts at softplus(0)); "mamba" keeps Mamba's own initialisation (dt bias for
Δ log-uniform in [1e-3, 0.1], out_proj scaled by 1/√depth).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmpd_core.layers import DropPath, PatchTokenizer, init_weights, position_mlp
from mmpd_core.models.contract import Encoding, Patches
from mmpd_core.models.point_mae import PatchBackbone
from mmpd_core.models.selective_scan import selective_scan
from mmpd_core.models.serialization import serialization_orders
from mmpd_core.shuffle import Masking, gather_tokens

MIXER_INITS = ("upstream", "mamba")


@dataclass(frozen=True)
class PointMambaConfig:
    trans_dim: int = 384
    depth: int = 12
    num_groups: int = 64
    group_size: int = 32
    d_state: int = 16  # Mamba's defaults (upstream passes no ssm_cfg)
    d_conv: int = 4
    expand: int = 2
    drop_path_rate: float = 0.1  # upstream: 0.1 pretraining, 0.3-0.5 fine-tuning recipes
    num_classes: int = 0  # 0: no classification head
    head_dropout: float = 0.5
    head_hidden: int = 256
    skip_origin: bool = True  # FPS never picks points within ~0.032 of the origin (upstream)
    tokenizer_hidden: int = 128  # mini-PointNet widths (h, 2h, 4h); upstream 128
    grid_size: float = 0.02  # serialisation grid
    batch_depth: bool = True  # upstream quirk: the curve depth is the whole batch's
    mixer_init: str = "upstream"  # or "mamba" (see the module docstring)

    def __post_init__(self):
        if self.mixer_init not in MIXER_INITS:
            raise ValueError(f"mixer_init must be one of {MIXER_INITS}, got {self.mixer_init!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class MambaMixer(nn.Module):
    """Mamba's mixer (``mamba_simple.Mamba``, its reference path), parameter names as there:
    in_proj -> (x, z); x through a causal depthwise Conv1d and SiLU; x_proj -> (dt, B, C);
    Δ = softplus(dt_proj(dt)) with dt_proj's bias entering the scan as ``delta_bias``;
    y = selective scan (A = -exp(A_log), skip D) gated by SiLU(z); out_proj."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        inner, self.rank, self.d_state = expand * dim, math.ceil(dim / 16), d_state
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, self.rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.rank, inner)
        states = torch.arange(1, d_state + 1, dtype=torch.float32)
        self.A_log = nn.Parameter(torch.log(states).repeat(inner, 1))  # (E, N)
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def scan_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The selective scan's arguments for tokens (B, L, D), channel-major like upstream."""
        length = x.shape[1]
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        u = F.silu(self.conv1d(u.transpose(1, 2))[..., :length])  # (B, E, L), causal
        widths = [self.rank, self.d_state, self.d_state]
        dt, B, C = self.x_proj(u.transpose(1, 2)).split(widths, dim=-1)  # (B, L, r / N / N)
        return {
            "u": u,
            "delta": F.linear(dt, self.dt_proj.weight).transpose(1, 2),  # (B, E, L), no bias
            "A": -torch.exp(self.A_log.float()),  # (E, N)
            "B": B.transpose(1, 2),  # (B, N, L)
            "C": C.transpose(1, 2),  # (B, N, L)
            "D": self.D.float(),
            "z": z.transpose(1, 2),  # (B, E, L)
            "delta_bias": self.dt_proj.bias.float(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = selective_scan(**self.scan_inputs(x), delta_softplus=True)  # (B, E, L)
        return self.out_proj(y.transpose(1, 2))  # (B, L, D)

    def reset_mamba_parameters(self, depth: int) -> None:
        """Mamba's own initialisation (``mamba_simple`` and its model's GPT-2 rescale)."""
        for layer in (self.in_proj, self.x_proj, self.conv1d, self.out_proj):
            layer.reset_parameters()
        with torch.no_grad():
            self.out_proj.weight /= math.sqrt(depth)
            bound = self.rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -bound, bound)
            low, high = math.log(1e-3), math.log(1e-1)
            dt = torch.exp(torch.rand_like(self.dt_proj.bias) * (high - low) + low)
            dt = dt.clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)


class MambaBlock(nn.Module):
    """x + DropPath(mixer(norm(x))): PointMamba's ``block_scan.Block`` (no fused add-norm)."""

    def __init__(self, config: PointMambaConfig, drop_path: float = 0.0):
        super().__init__()
        dim = config.trans_dim
        self.norm = nn.LayerNorm(dim)
        self.mixer = MambaMixer(dim, config.d_state, config.d_conv, config.expand)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mixer(self.norm(x)))


class OrderIndicator(nn.Module):
    """Per-channel scale and shift marking which curve a token copy follows."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


class PointMamba(PatchBackbone):
    """Patch tokens, two curve orders with order indicators, Mamba blocks, final norm."""

    arch = "point_mamba"
    config_class = PointMambaConfig

    def __init__(self, config: PointMambaConfig):
        super().__init__()
        self.config = config
        dim = config.trans_dim
        self.dim, self.global_dim, self.patch_points = dim, dim, config.group_size
        self.tokenizer = PatchTokenizer(dim, config.tokenizer_hidden)
        self.pos_embed = position_mlp(dim)
        self.order_indicators = nn.ModuleList(OrderIndicator(dim) for _ in range(2))
        rates = torch.linspace(0, config.drop_path_rate, config.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(MambaBlock(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim)
        self.head = self.make_head(config.num_classes) if config.num_classes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Upstream's: trunc-normal(0.02) Linear and Conv1d weights, zero biases, unit norms,
        order indicators N(1, 0.02^2) and N(0, 0.02^2); ``mixer_init="mamba"`` then restores
        Mamba's own mixer initialisation."""
        self.apply(init_weights)
        for block in self.blocks:
            nn.init.trunc_normal_(block.mixer.conv1d.weight, std=0.02)
            nn.init.zeros_(block.mixer.conv1d.bias)
            if self.config.mixer_init == "mamba":
                block.mixer.reset_mamba_parameters(self.config.depth)
        for indicator in self.order_indicators:
            nn.init.normal_(indicator.gamma, mean=1.0, std=0.02)
            nn.init.normal_(indicator.beta, std=0.02)

    # ---------------------------------------------------------------- the contract

    def forward_visible(self, patches: Patches, masking: Masking) -> Encoding:
        """The visible patches only, serialised among themselves; no cls token."""
        visible, centers = self.visible_patches(patches, masking)  # (B, V, K, 3), (B, V, 3)
        tokens, _ = self.forward_encoder(self.tokenizer(visible), centers)  # (B, V, D)
        return {"tokens": tokens, "cls": None}

    def forward_patches(self, patches: Patches, layers: tuple[int, ...] = ()) -> dict:
        tokens = self.tokenizer(patches.neighborhood)  # (B, G, D)
        tokens, picked = self.forward_encoder(tokens, patches.centers, tuple(layers))
        features = {
            "tokens": tokens,
            "cls": None,
            "global": self.pool(tokens, None),
            "centers": patches.centers,
        }
        if layers:
            features["layers"] = picked
        return features

    @staticmethod
    def pool(tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        """Mean over tokens (B, D): upstream's ``avg_head`` over the 2G outputs."""
        return tokens.mean(dim=1)

    # ---------------------------------------------------------------- the encoder

    def forward_encoder(self, tokens: torch.Tensor, centers: torch.Tensor, layers=()):
        """Patch tokens (B, T, D) at centres (B, T, 3) -> normed tokens (B, T, D) in the
        input order (each the mean of its two occurrences) and the ``layers`` outputs."""
        sequence, pos, orders = self.serialize(tokens, self.pos_embed(centers), centers)
        out, picked = self.forward_sequence(sequence + pos, layers)  # (B, 2T, D), pos once
        return merge_orders(out, orders), [merge_orders(x, orders) for x in picked]

    def serialize(self, tokens, pos, centers) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[Hilbert copy, trans-Hilbert copy] of tokens (B, T, D), each through its order
        indicator (B, 2T, D); the positions (B, T, D) permuted alike, without indicator
        (B, 2T, D); the orders (2, B, T)."""
        cfg = self.config
        orders = serialization_orders(centers, cfg.grid_size, cfg.batch_depth)  # (2, B, T)
        pairs = zip(self.order_indicators, orders, strict=True)
        copies = [indicator(gather_tokens(tokens, order)) for indicator, order in pairs]
        positions = [gather_tokens(pos, order) for order in orders]  # (B, T, D) each
        return torch.cat(copies, dim=1), torch.cat(positions, dim=1), orders

    def forward_sequence(self, x: torch.Tensor, layers=()) -> tuple[torch.Tensor, list]:
        """The blocks and final norm on a sequence (B, L, D) with positions already added;
        the outputs of the blocks numbered ``layers``, each through the final norm."""
        picked = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in layers:
                picked.append(self.norm(x))
        return self.norm(x), picked

    def forward_one_order(self, patches: Patches, which: int = 0):
        """Upstream's pretraining encoder (``MaskMamba``) with nothing masked: the patches
        sorted along one curve (0: Hilbert, 1: trans-Hilbert) with that curve's indicator,
        positions added, blocks, norm. Returns tokens (B, G, D) in curve order, and the
        order (B, G)."""
        cfg = self.config
        order = serialization_orders(patches.centers, cfg.grid_size, cfg.batch_depth)[which]
        tokens = gather_tokens(self.tokenizer(patches.neighborhood), order)  # (B, G, D)
        pos = self.pos_embed(gather_tokens(patches.centers, order))  # (B, G, D)
        out, _ = self.forward_sequence(self.order_indicators[which](tokens) + pos)
        return out, order


def merge_orders(sequence: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """(B, 2T, D) outputs of [Hilbert copy, trans-Hilbert copy] -> (B, T, D) in the input
    order: the mean of each token's two occurrences."""
    halves = sequence.chunk(2, dim=1)  # (B, T, D) each
    inverse = orders.argsort(dim=-1)  # (2, B, T): the curve position of each input token
    return (gather_tokens(halves[0], inverse[0]) + gather_tokens(halves[1], inverse[1])) / 2


def point_mamba(**overrides) -> PointMamba:
    """The paper's backbone: 384 wide, depth 12, 64 groups of 32 points (12.30 M with 40
    classes, upstream's PointMambaScan; its encoder alone 12.12 M)."""
    return PointMamba(dataclasses.replace(PointMambaConfig(), **overrides))


def point_mamba_small(**overrides) -> PointMamba:
    """The embedded CPU size, like ``point_mae_tiny`` for 512-point clouds: 128 wide, depth 6,
    32 groups of 16 points (a 64-token sequence), a mini-PointNet of half upstream's widths:
    0.94 M parameters with a 40-class head."""
    small = PointMambaConfig(
        trans_dim=128, depth=6, num_groups=32, group_size=16, tokenizer_hidden=64
    )
    return PointMamba(dataclasses.replace(small, **overrides))


def point_mamba_tiny(**overrides) -> PointMamba:
    """The pipeline's embedded size (20-minute budget): ``point_mamba_small`` with depth 4 (as
    ``point_mae_tiny``), 8 state entries per channel instead of Mamba's 16, and 16 groups of
    32 points (a 32-token sequence; the same 512 points). The scan is three quarters of a
    small Mamba's step and scales with depth x state x sequence: 0.68 M parameters with a
    40-class head."""
    return point_mamba_small(
        **{"depth": 4, "d_state": 8, "num_groups": 16, "group_size": 32, **overrides}
    )
