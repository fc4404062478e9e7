"""The upstream Point-MAE computation layout, rebuilt from mmpd modules for timing comparisons.

Same function and weights as mmpd's model, computed the way the upstream code lays it out:
the patch tokenizer as Conv1d layers on (B*G, C, K) with the 512-channel concatenation of
global and point features, and attention as explicit softmax(q k^T * scale) v. Our own code,
written from the structure described in REFERENCE.md.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmpd_core.layers import Attention, PatchTokenizer


class ExplicitAttention(nn.Module):
    def __init__(self, attn: Attention):
        super().__init__()
        self.num_heads, self.qkv, self.proj = attn.num_heads, attn.qkv, attn.proj

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask``: an additive bias (B, 1, T, T) added to the scaled logits."""
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        attn = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5  # (B, H, T, T)
        if attn_mask is not None:
            attn = attn + attn_mask
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, d))


class ConvTokenizer(nn.Module):
    def __init__(self, tokenizer: PatchTokenizer):
        super().__init__()
        conv = lambda lin: _conv(lin)  # noqa: E731
        first, second = tokenizer.first_conv, tokenizer.second_conv
        self.first_conv = nn.Sequential(
            conv(first[0]), first[1], nn.ReLU(inplace=True), conv(first[3])
        )
        self.second_conv = nn.Sequential(
            conv(second[0]), second[1], nn.ReLU(inplace=True), conv(second[3])
        )

    def forward(self, neighborhood: torch.Tensor) -> torch.Tensor:
        b, g, k, c = neighborhood.shape
        x = neighborhood.reshape(b * g, k, c).transpose(2, 1)  # (BG, C, K)
        f = self.first_conv(x)  # (BG, 256, K)
        f = torch.cat([f.max(dim=2, keepdim=True)[0].expand(-1, -1, k), f], dim=1)  # (BG, 512, K)
        f = self.second_conv(f)  # (BG, C, K)
        return f.max(dim=2)[0].reshape(b, g, -1)  # (B, G, C)


def _conv(linear: nn.Linear) -> nn.Conv1d:
    conv = nn.Conv1d(linear.in_features, linear.out_features, 1)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[..., None])
        conv.bias.copy_(linear.bias)
    return conv


def upstream_layout(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the tokenizer and attention in the upstream layout."""
    twin = copy.deepcopy(model)
    twin.tokenizer = ConvTokenizer(twin.tokenizer)
    for block in twin.blocks:
        block.attn = ExplicitAttention(block.attn)
    return twin


def max_abs_diff(a: nn.Module, b: nn.Module, points: torch.Tensor) -> float:
    a.eval(), b.eval()
    with torch.no_grad():
        return (a(points) - b(points)).abs().max().item()


def time_three_ways(model, baseline, points, labels, repeats: int) -> dict[str, float]:
    """Seconds per classification training step (forward + backward + AdamW; best of
    ``repeats``) of the upstream layout in float32, mmpd in float32 and mmpd under bf16
    autocast, each from the same weights; prints every run."""
    from mmpd_core.profiling import classification_step, time_steps

    runs = {
        "upstream layout fp32": (baseline, None),
        "mmpd fp32": (model, None),
        "mmpd bf16 autocast": (copy.deepcopy(model), torch.bfloat16),
    }
    results = {}
    for name, (net, dtype) in runs.items():
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=0.05)
        times = time_steps(
            lambda net=net, opt=opt, dtype=dtype: classification_step(
                net, opt, points, labels, amp_dtype=dtype
            ),
            repeats=repeats,
        )
        results[name] = min(times)
        print(f"{name:>22}: {min(times):.3f} s/step (runs: {', '.join(f'{t:.2f}' for t in times)})")
    return results
