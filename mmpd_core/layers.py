"""Building blocks of the Point-MAE standard transformer.

Parameter names follow timm's ``Block`` (``norm1``, ``attn.qkv``, ``mlp.fc1``) and the upstream
patch encoder (``first_conv.{0,1,3}``, ``second_conv.{0,1,3}``) so that upstream checkpoints map
key for key (see ``mmpd_core.upstream``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # (B, 1, 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# On CPU in bf16, up to this many tokens the plain softmax(q k^T / sqrt(d) + bias) v is faster
# than SDPA's fused CPU kernel, forward + backward: 0.1-0.6x its time at the embedded sizes and
# at Point-MAE's 64-128 tokens, while the fused kernel wins from 256 tokens (Point-M2AE's finer
# scales at paper size) and in float32 at every size (1.1-3x).
# ``benchmarks/bench_attention_cpu.py`` prints both.
CPU_MATH_MAX_TOKENS = 128


def math_attention(q, k, v, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + attn_mask) v on (B, H, T, d): SDPA's reference math."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, T, T)
    if attn_mask is not None:
        logits = logits + attn_mask
    return logits.softmax(dim=-1) @ v  # (B, H, T, d)


class Attention(nn.Module):
    """Multi-head self-attention; qkv has no bias. ``scaled_dot_product_attention`` except for
    short bf16 sequences on CPU (``CPU_MATH_MAX_TOKENS``), where ``math_attention`` is faster."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask``: an additive bias (B, 1, T, T) on the logits (Point-M2AE adds -1e5
        where a pair is masked), cast to the compute dtype; None attends everywhere."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D/H)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and tokens <= CPU_MATH_MAX_TOKENS:
            out = math_attention(q, k, v, attn_mask)  # (B, H, T, D/H)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask)  # (B, H, T, D/H)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))  # (B, T, D)


class Block(nn.Module):
    """Pre-norm ViT block: x + DropPath(attn(norm1 x)), then x + DropPath(mlp(norm2 x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def position_mlp(dim: int, hidden: int = 128) -> nn.Sequential:
    """Positional embedding of patch centres: Linear(3, 128) -> GELU -> Linear(128, dim)."""
    return nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))


class TransformerStack(nn.Module):
    """Blocks with the positional embedding added to the input of every block, then a norm.

    Used by the encoder and by every decoder (Point-MAE, Stage-2 local/global). With
    ``pos=None`` no position enters (the Stage-2 global decoder).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist() if depth else []
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x if pos is None else x + pos)
        return self.norm(x)

    def forward_layers(
        self, x: torch.Tensor, pos: torch.Tensor | None, layers: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward`` plus the outputs of the blocks numbered ``layers`` (0-based), each
        through the final norm (Point-MAE's segmentation features)."""
        picked = []
        for index, block in enumerate(self.blocks):
            x = block(x if pos is None else x + pos)
            if index in layers:
                picked.append(self.norm(x))
        return self.norm(x), picked


class PatchTokenizer(nn.Module):
    """Mini-PointNet turning each group of K points into one token (upstream ``Encoder``).

    Widths (h, 2h, 4h): upstream's h = 128 gives 3 -> 128 -> 256, then 512 -> 512 -> out.
    Conv1d(k=1) layers are stored as ``nn.Linear`` acting on channels-last points, which is
    the same map. The 4h -> 4h layer sees concat(global feature, point feature); its global
    half is applied once per group instead of once per point (same result, ~25% fewer FLOPs).
    BatchNorm runs over all points of all groups, as BatchNorm1d on (B*G, C, K) does upstream.
    The max over a group is ``max`` (upstream's; its backward scatters to the arg-max, where
    ``amax`` would compare, count and divide over the whole group: 5x dearer on CPU).

    ``in_dim`` and ``widths`` (h1, h2, h4) generalise it to groups of C-channel features:
    Point-M2AE merges K tokens of width d with ``in_dim=d, widths=(d, d, out_dim)``.
    """

    def __init__(
        self,
        out_dim: int,
        hidden: int = 128,
        *,
        in_dim: int = 3,
        widths: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        self.in_dim = in_dim
        self.widths = widths or (hidden, 2 * hidden, 4 * hidden)
        h1, h2, h4 = self.widths
        self.first_conv = nn.Sequential(
            nn.Linear(in_dim, h1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True), nn.Linear(h1, h2)
        )
        self.second_conv = nn.Sequential(
            nn.Linear(2 * h2, h4), nn.BatchNorm1d(h4), nn.ReLU(inplace=True), nn.Linear(h4, out_dim)
        )

    def forward(self, neighborhood: torch.Tensor) -> torch.Tensor:
        """Groups (B, G, K, C) -> tokens (B, G, out_dim)."""
        batch, groups, k, _ = neighborhood.shape
        _, h2, h4 = self.widths
        points = neighborhood.reshape(batch * groups * k, self.in_dim)  # (BGK, C)
        feat = self.first_conv(points).view(batch * groups, k, h2)  # (BG, K, 2h)
        global_feat = feat.max(dim=1).values  # (BG, 2h)
        fuse = self.second_conv[0]
        w_global, w_point = fuse.weight[:, :h2], fuse.weight[:, h2:]  # (4h, 2h) each
        hidden = F.linear(feat, w_point).add_(F.linear(global_feat, w_global, fuse.bias)[:, None])
        hidden = self.second_conv[2](self.second_conv[1](hidden.view(-1, h4)))  # (BGK, 4h)
        tokens = self.second_conv[3](hidden).view(batch * groups, k, -1)  # (BG, K, C)
        return tokens.max(dim=1).values.view(batch, groups, -1)  # (B, G, C)


def init_weights(module: nn.Module) -> None:
    """trunc-normal(0.02) Linear weights, zero biases, unit norms (upstream initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm | nn.BatchNorm1d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
