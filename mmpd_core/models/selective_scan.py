"""Mamba's selective scan (Gu & Dao, 2023, Algorithm 2) in pure PyTorch.

Per channel e of E and state entry n of N, with Δ = softplus(δ + δ_bias) and Ā = exp(Δ A):

    s_t = Ā_t * s_{t-1} + Δ_t B_t u_t        (s_{-1} = 0)
    y_t = <s_t, C_t> + D u_t,   then y * SiLU(z)

Layouts follow ``mamba_ssm``'s ``selective_scan_fn`` (channel-major): u, δ, z (batch, E, L);
A (E, N); B, C (batch, N, L); D, δ_bias (E,). The scan runs in float32 (float64 inputs stay
float64) and returns u's dtype.

- ``selective_scan_ref``: the recurrence one step at a time (upstream's reference shape);
- ``selective_scan``: the same through ``chunked_scan``, a parallel scan over chunks in
  time-major layout (every step a contiguous slice), inside an autograd function with a
  hand-written backward (the adjoint recurrence, run backwards). Like the CUDA kernel it
  recomputes the states in the backward pass rather than keeping the (L, batch, E, N) tensor,
  unless that tensor is small (``SAVE_STATES_MAX`` elements: the embedded model's scans, where
  the recomputation costs a third of the backward pass and the memory is tens of MB); on CPU
  it works on blocks of channels small enough to stay in cache.

On a CUDA tensor ``selective_scan`` uses ``mamba_ssm``'s kernel when that package imports;
nothing imports it otherwise, so the package never needs CUDA or a compiler.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from mmpd_core.geometry import _autocast_off

BLOCK_ELEMENTS = 1 << 19  # CPU, with grad: states of a channel block (2 MB in float32) stay
# in cache through the many passes of training
NO_GRAD_BLOCK_ELEMENTS = 1 << 21  # CPU, without grad: the states are never written (readout),
# so 4x larger blocks cut the Python loop; 32 MB blocks lose again to fresh-page faults
SAVE_STATES_MAX = 1 << 23  # states (and decays) of at most this many elements are kept for
# the backward pass (2 x 32 MB in float32); larger scans recompute them there


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _discretise(delta, delta_bias, delta_softplus):
    """Δ (batch, E, L) with the bias and softplus applied, in the compute dtype."""
    delta = delta.to(_compute_dtype(delta))
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _output(y, u, D, z):
    """y + D u, gated by SiLU(z), in u's dtype."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(u.dtype)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence step by step: the slow reference the parallel scan is tested against."""
    delta = _discretise(delta, delta_bias, delta_softplus)  # (b, E, L)
    A, B, C, u_ = (x.to(delta.dtype) for x in (A, B, C, u))
    decay = torch.exp(torch.einsum("bel,en->beln", delta, A))  # (b, E, L, N)
    drive = torch.einsum("bel,bnl,bel->beln", delta, B, u_)  # (b, E, L, N)
    state = delta.new_zeros(u.shape[0], A.shape[0], A.shape[1])  # (b, E, N)
    ys = []
    for t in range(u.shape[2]):
        state = decay[:, :, t] * state + drive[:, :, t]
        ys.append(torch.einsum("ben,bn->be", state, C[:, :, t]))
    return _output(torch.stack(ys, dim=2), u, D, z)  # (b, E, L)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """``selective_scan_ref``'s result through the parallel scan (or the CUDA kernel of
    ``mamba_ssm`` on a CUDA tensor, when installed)."""
    kernel = cuda_selective_scan() if u.is_cuda else None
    if kernel is not None:
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    with _autocast_off(u.device):  # float32 even under a bf16 autocast
        delta = _discretise(delta, delta_bias, delta_softplus)
        time_major = [x.to(delta.dtype).permute(2, 0, 1).contiguous() for x in (delta, u, B, C)]
        y = _SelectiveScan.apply(*time_major[:2], A.to(delta.dtype), *time_major[2:])  # (L,b,E)
        return _output(y.permute(1, 2, 0), u, D, z)  # (b, E, L)


@functools.cache
def cuda_selective_scan():
    """``mamba_ssm``'s ``selective_scan_fn`` if it imports (a CUDA build), else None."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # absent, or present without its compiled kernel
        return None
    return selective_scan_fn


# ---------------------------------------------------------------- time-major building blocks


def chunked_scan(coef, x, chunk=None, reverse=False, rate=None, readout=None):
    """h_t = x_t + coef_t * h_{t-1} along dim 0 of (L, ...) tensors, from h_{-1} = 0
    (``reverse``: h_t = x_t + coef_t * h_{t+1}, from h_L = 0). ``coef`` may be one step
    shorter than ``x``; the missing last coefficient is 0.

    The L steps are cut into C chunks of T ≈ √L. Pass 1 scans every chunk from a zero state,
    all chunks at once (T vectorised steps), keeping only each chunk's end state; C steps then
    give the state entering each chunk, from each chunk's total decay; pass 2 scans every chunk
    again from that state, writing the output: 2T + C operations on contiguous slices, not L.

    - ``rate``: (r (L', ..., e), A (e, N)) when coef = exp(r ⊗ A) (L' = len(coef)): a chunk's
      total decay is then one exp of r summed over the chunk, not T − 1 products;
    - ``readout``: R (L, ..., N) returns Σ_N h_t R_t (L, ..., e), contracted step by step in
      pass 2, so the (L, ..., e, N) states are never written (the forward pass without grad).
    """
    length, rest = x.shape[0], x.shape[1:]
    chunk = chunk or math.isqrt(max(length - 1, 0)) + 1
    chunks = -(-length // chunk)
    coef, x = (_pad(v, chunks * chunk) for v in (coef, x))  # (C*T, ...): trailing zeros
    coef = coef.reshape(chunks, chunk, *rest)  # (C, T, ...)
    x = x.reshape(chunks, chunk, *rest)  # (C, T, ...)
    steps = range(chunk - 1, -1, -1) if reverse else range(chunk)
    end = x[:, steps[0]]  # (C, ...)
    for j in steps[1:]:
        end = torch.addcmul(x[:, j], coef[:, j], end)
    if rate is None:
        total = coef.prod(1)  # (C, ...)
    else:  # padded steps count as no decay: only the last chunk has any, and its total is unused
        r, a = rate
        summed = _pad(r, chunks * chunk).reshape(chunks, chunk, *r.shape[1:]).sum(1)
        total = (summed.unsqueeze(-1) * a).exp_()  # (C, ..., e, N)
    entering = torch.zeros_like(end)  # (C, ...): the state entering each chunk
    order = range(chunks - 1, 0, -1) if reverse else range(chunks - 1)
    for c in order:
        after = c - 1 if reverse else c + 1
        torch.addcmul(end[c], total[c], entering[c], out=entering[after])
    previous = entering
    if readout is None:
        h = torch.empty_like(x)  # (C, T, ...)
        for j in steps:
            previous = torch.addcmul(x[:, j], coef[:, j], previous, out=h[:, j])
        return h.reshape(chunks * chunk, *rest)[:length]  # (L, ...)
    readout = _pad(readout, chunks * chunk)
    readout = readout.reshape(chunks, chunk, *readout.shape[1:]).unsqueeze(-2)  # (C, T, .., 1, N)
    y = x.new_empty(chunks, chunk, *rest[:-1])  # (C, T, ..., e)
    for j in steps:
        previous = torch.addcmul(x[:, j], coef[:, j], previous)
        torch.linalg.vecdot(previous, readout[:, j], out=y[:, j])
    return y.reshape(chunks * chunk, *rest[:-1])[:length]  # (L, ..., e)


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x`` (l, ...) with zero steps appended up to ``length``."""
    missing = length - x.shape[0]
    return torch.cat([x, x.new_zeros(missing, *x.shape[1:])]) if missing else x


def _decay_drive(delta, u, A, B):
    """decay = exp(Δ A) and drive = Δ u B, each (L, b, e, N), of channels (L, b, e), A (e, N)."""
    decay = (delta.unsqueeze(-1) * A).exp_()  # (L, b, e, N)
    drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (L, b, e, N)
    return decay, drive


def _states(delta, u, A, B):
    """decay = exp(Δ A) and the states s (L, b, e, N) of channels (L, b, e) with A (e, N)."""
    decay, drive = _decay_drive(delta, u, A, B)
    return decay, chunked_scan(decay, drive, rate=(delta, A))


def _channel_blocks(delta: torch.Tensor, states: int, grad: bool = True) -> list[slice]:
    """Channel slices whose (L, b, e, N) states hold about ``BLOCK_ELEMENTS`` (CPU; without
    ``grad``, ``NO_GRAD_BLOCK_ELEMENTS``) or all channels (other devices, where a Python loop
    costs more than memory traffic)."""
    length, batch, channels = delta.shape
    size = channels
    if delta.device.type == "cpu":
        budget = BLOCK_ELEMENTS if grad else NO_GRAD_BLOCK_ELEMENTS
        size = max(1, budget // (length * batch * states))
    return [slice(start, start + size) for start in range(0, channels, size)]


class _SelectiveScan(torch.autograd.Function):
    """y_t = <s_t, C_t> for time-major Δ, u (L, b, E), A (E, N), B, C (L, b, N).

    Backward: with g_t = dLoss/ds_t = gy_t C_t + Ā_{t+1} g_{t+1} (the reverse scan),
    dC_t = Σ_e gy_t s_t; through Ā_t = exp(Δ_t A), k_t = g_t s_{t-1} Ā_t gives
    dΔ_t += Σ_n k_t A and dA = Σ_{t,b} k_t Δ_t; through the drive Δ_t u_t B_t,
    m_t = Σ_n g_t B_t gives dΔ_t += m_t u_t, du_t = m_t Δ_t and dB_t = Σ_e g_t Δ_t u_t.
    Contractions over the channels e are products summed over dim -2 (strided, 16-wide
    rows): 3x faster here than ``einsum``'s batched 1 x e by e x N products."""

    @staticmethod
    def forward(ctx, delta, u, A, B, C):
        y = delta.new_empty(delta.shape)  # (L, b, E)
        grad = any(ctx.needs_input_grad)
        keep = grad and delta.numel() * A.shape[1] <= SAVE_STATES_MAX
        kept = []  # (decay, states) per channel block, for the backward pass
        for part in _channel_blocks(delta, A.shape[1], grad):
            d, x, a = delta[..., part], u[..., part], A[part]
            if keep:
                decay, states = _states(d, x, a, B)
                y[..., part] = torch.einsum("lben,lbn->lbe", states, C)
                kept.append((decay, states))
            else:
                decay, drive = _decay_drive(d, x, a, B)
                y[..., part] = chunked_scan(decay, drive, rate=(d, a), readout=C)
        if grad:
            ctx.save_for_backward(delta, u, A, B, C)
            ctx.kept = kept or None  # intermediates, not inputs or outputs: safe on ctx
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        kept, ctx.kept = ctx.kept, None
        with _autocast_off(gy.device):
            return _SelectiveScan.gradients(gy, *ctx.saved_tensors, kept=kept)

    @staticmethod
    def gradients(gy, delta, u, A, B, C, kept=None):
        """``kept``: the forward pass's (decay, states) per channel block, else recomputed."""
        g_delta, g_u, g_A = torch.empty_like(delta), torch.empty_like(u), torch.empty_like(A)
        g_B, g_C = torch.zeros_like(B), torch.zeros_like(C)
        g_delta[0] = 0  # s_{-1} = 0: Δ_0 reaches the loss through the drive alone
        B_rows = B.unsqueeze(2)  # (L, b, 1, N)
        for i, part in enumerate(_channel_blocks(delta, A.shape[1])):
            d, x, a, gy_part = delta[..., part], u[..., part], A[part], gy[..., part]
            decay, states = kept[i] if kept else _states(d, x, a, B)  # (L, b, e, N)
            gyC = gy_part.unsqueeze(-1) * C.unsqueeze(2)
            g = chunked_scan(decay[1:], gyC, reverse=True, rate=(d[1:], a))  # (L, b, e, N)
            g_C += _sum_channels(states, gy_part)
            k = torch.mul(g[1:], states[:-1], out=gyC[1:])  # (L-1, b, e, N): gyC is spent
            k *= decay[1:]
            g_delta[1:, :, part] = torch.linalg.vecdot(k, a)
            g_A[part] = (k * d[1:].unsqueeze(-1)).sum((0, 1))
            m = torch.linalg.vecdot(g, B_rows)  # (L, b, e)
            g_B += _sum_channels(g, d * x)
            g_delta[..., part] += m * x
            g_u[..., part] = m * d
        return g_delta, g_u, g_A, g_B, g_C


def _sum_channels(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_e t[..., e, :] w[..., e]: (L, b, e, N), (L, b, e) -> (L, b, N)."""
    return (t * w.unsqueeze(-1)).sum(-2)
