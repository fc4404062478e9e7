"""Attention on CPU: SDPA's fused kernel vs the plain softmax math, forward + backward.

``layers.Attention`` uses ``layers.math_attention`` on CPU in bf16 up to ``CPU_MATH_MAX_TOKENS``
tokens and ``scaled_dot_product_attention`` otherwise (float32, longer sequences, GPU). This
prints, for the shapes the backbones run (B = 32; the embedded models and the paper-size ones,
with Point-M2AE's radius mask where it has one), the best of a few forward + backward passes of
each under bf16 autocast and in float32, their ratio, and which one the layer picks. A few
seconds.

    python benchmarks/bench_attention_cpu.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from mmpd_core.layers import CPU_MATH_MAX_TOKENS, math_attention

SHAPES = [  # (what, tokens, width, heads, radius mask)
    ("point_mae_tiny", 32, 128, 4, False),
    ("point_m2ae_small scale 0", 48, 36, 6, True),
    ("point_m2ae_small scale 1", 24, 72, 6, True),
    ("point_m2ae_small scale 2", 12, 144, 6, True),
    ("point_mae (1k points)", 64, 384, 6, False),
    ("point_mae (2k points)", 128, 384, 6, False),
    ("point_m2ae scale 2", 64, 384, 6, True),
    ("point_m2ae scale 1", 256, 192, 6, True),
    ("point_m2ae scale 0", 512, 96, 6, True),
]


def best_ms(attend, q, k, v, bias, dtype, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        grads = [t.detach().requires_grad_(True) for t in (q, k, v)]
        tick = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
            out = attend(*grads, None if bias is None else bias.to(grads[0].dtype))
            out.float().sum().backward()
        best = min(best, time.perf_counter() - tick)
    return 1000 * best


def main() -> None:
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads; math in bf16 up to {CPU_MATH_MAX_TOKENS} tokens")
    print(f"{'shape':28s} {'dtype':5s} {'sdpa ms':>8s} {'math ms':>8s} {'math/sdpa':>9s}  picks")
    for name, tokens, width, heads, masked in SHAPES:
        q, k, v = torch.randn(3, 32, heads, tokens, width // heads).unbind(0)
        bias = None
        if masked:
            bias = torch.where(torch.rand(32, 1, tokens, tokens) > 0.5, -1e5, 0.0)
        for dtype in ("bf16", "fp32"):
            fused = best_ms(F.scaled_dot_product_attention, q, k, v, bias, dtype)
            plain = best_ms(math_attention, q, k, v, bias, dtype)
            pick = "math" if dtype == "bf16" and tokens <= CPU_MATH_MAX_TOKENS else "sdpa"
            print(f"{name:28s} {dtype:5s} {fused:8.1f} {plain:8.1f} {plain / fused:9.2f}  {pick}")


if __name__ == "__main__":
    main()
