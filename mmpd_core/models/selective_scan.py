"""Mamba's selective scan (Gu & Dao, 2023, Algorithm 2) in pure PyTorch.

Per channel e of E and state entry n of N, with Δ = softplus(δ + δ_bias) and Ā = exp(Δ A):

    s_t = Ā_t * s_{t-1} + Δ_t B_t u_t        (s_{-1} = 0)
    y_t = <s_t, C_t> + D u_t,   then y * SiLU(z)

Layouts follow ``mamba_ssm``'s ``selective_scan_fn`` (channel-major): u, δ, z (batch, E, L);
A (E, N); B, C (batch, N, L); D, δ_bias (E,). The scan runs in float32 (float64 inputs stay
float64) and returns u's dtype.

- ``selective_scan_ref``: the recurrence one step at a time (upstream's reference shape);
- ``selective_scan``: the same through ``chunked_scan``, a parallel scan over chunks, inside an
  autograd function with a hand-written backward (the adjoint recurrence, run backwards). It
  works time-major and state-major, states (L, batch, N, E): every step is a contiguous slice
  and every operation runs along the channels (N = 16 is too short a row to vectorise), the
  readout Σ_n C s included. Like the CUDA kernel it recomputes the states in the backward pass
  rather than keeping the (L, batch, N, E) tensor, unless that tensor is small
  (``SAVE_STATES_MAX`` elements: the embedded model's scans, where the recomputation costs a
  third of the backward pass and the memory is tens of MB); on CPU it works on blocks of
  channels small enough to stay in cache. Without grad only the decays of that size are
  written, by pass 1 as it reaches each step; the drive is made from its factors Δ u and B at
  each step and the states are read out as they go. On CPU, without grad and with large steps
  (batch x N x E above ``SEQUENTIAL_STEP_ELEMENTS``), it runs the recurrence one step at a time
  instead, on the same time-major slices (``_sequential_readout``): each step's work then
  outweighs the Python loop, and the chunked scan's second pass is waste.

Two element-wise functions are written differently from torch's own because its CPU kernels
for them do not vectorise (measured on a 2-core AVX-512 machine): ``softplus`` avoids float32
``log1p`` (4x faster than ``F.softplus``), and exp(Δ A) is taken as exp2(Δ A log2 e) (``exp``
is 3x slower than ``exp2`` there). The reference shares the first (the discretisation) and
keeps ``torch.exp``.

On a CUDA tensor ``selective_scan`` uses ``mamba_ssm``'s kernel when that package imports;
nothing imports it otherwise, so the package never needs CUDA or a compiler.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from mmpd_core.geometry import _autocast_off

BLOCK_ELEMENTS = 1 << 20  # CPU, with grad: states of a channel block (4 MB in float32) stay
# in cache through the many passes of training
NO_GRAD_BLOCK_ELEMENTS = 1 << 23  # CPU, without grad: only the decays are written (the drive
# and the states never are), so large blocks (32 MB) cut the Python loop
SEQUENTIAL_STEP_ELEMENTS = 1 << 15  # CPU, without grad: steps of more state entries (b N e)
# than this run one at a time (``_sequential_readout``): the work of a step then outweighs the
# Python loop, and the chunked scan's second pass is waste (crossover between 33 k and 49 k
# on 2 CPU cores, ``bench_selective_scan.py``)
SAVE_STATES_MAX = 1 << 23  # states (and decays) of at most this many elements are kept for
# the backward pass (2 x 32 MB in float32); larger scans recompute them there
LOG2E = math.log2(math.e)  # exp(x) = exp2(x log2 e)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class _Softplus(torch.autograd.Function):
    """softplus(x) = max(x, 0) + log1p(exp(-|x|)), with log1p(y) = log(u) + (y − (u − 1)) / u,
    u = 1 + y (log(u) corrected to first order for the rounding of u): softplus to an ulp or
    two (``F.softplus`` returns x itself above 20), without the float32 ``log1p`` CPU kernel.
    Backward: sigmoid(x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        y = x.abs().neg_().exp_()  # exp(-|x|) in (0, 1]
        u = y + 1
        log1p = torch.sub(y, u - 1, out=y).div_(u).add_(u.log_())  # y's buffer, reused
        return log1p.add_(x.clamp_min(0))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``F.softplus(x)`` (β = 1) through ``_Softplus``."""
    return _Softplus.apply(x)


def _discretise(delta, delta_bias, delta_softplus):
    """Δ (batch, E, L) with the bias and softplus applied, in the compute dtype."""
    delta = delta.to(_compute_dtype(delta))
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]
    return softplus(delta) if delta_softplus else delta


def _output(y, u, D, z):
    """y + D u, gated by SiLU(z), in u's dtype."""
    if D is not None:
        y = torch.addcmul(y, u.to(y.dtype), D.to(y.dtype)[:, None])
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
        time_major = [_transpose(x.to(delta.dtype)) for x in (delta, u, B, C)]  # (L, b, ...)
        y = _SelectiveScan.apply(*time_major[:2], A.to(delta.dtype), *time_major[2:])  # (L,b,E)
        return _output(_transpose(y, back=True), u, D, z)  # (b, E, L)


def _transpose(x: torch.Tensor, back: bool = False) -> torch.Tensor:
    """(b, E, L) -> (L, b, E) contiguous (``back``: the inverse), as one 2-D transpose, which
    PyTorch copies in cache-sized tiles: twice as fast as ``permute(2, 0, 1).contiguous()``."""
    if back:
        length, batch, channels = x.shape
        return x.reshape(length, -1).t().contiguous().view(batch, channels, length)
    batch, channels, length = x.shape
    return x.reshape(-1, length).t().contiguous().view(length, batch, channels)


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
    shorter than ``x``; the missing last coefficient is 0. ``x`` may be a pair (p, q) of
    (L, ...) tensors that broadcast to it, x = p * q, which is then never written.

    The L steps are cut into C chunks of T ≈ √L. Pass 1 scans every chunk from a zero state,
    all chunks at once (T vectorised steps), keeping only each chunk's end state; C steps then
    give the state entering each chunk, from each chunk's total decay; pass 2 scans every chunk
    again from that state, writing the output: 2T + C operations on contiguous slices, not L.

    - ``rate``: (r (L', ...), a) when coef = exp2(r * a) (L' = len(coef), r broadcasting
      against a): a chunk's total decay is then one exp2 of r summed over the chunk, not
      T − 1 products. ``coef`` may then be None: pass 1 makes each step's coefficients
      from r as it reaches them (in cache, not one exp2 over a whole (L, ...) tensor before
      the scan) and pass 2 reads them back (a forward scan then needs all L rates);
    - ``readout``: R (L, ..., N) returns Σ_N R_t h_t (L, ..., e) for states (L, ..., N, e),
      contracted step by step in pass 2, so the states are never written.
    """
    factored = isinstance(x, tuple)
    length = len(x[0]) if factored else len(x)
    if coef is None and rate is None:
        raise ValueError("chunked_scan needs coef, or rate to make it from")
    if coef is None and not reverse and len(rate[0]) < length:
        raise ValueError(f"a forward scan needs {length} rates, got {len(rate[0])}")
    chunk = chunk or math.isqrt(max(length - 1, 0)) + 1
    chunks = -(-length // chunk)

    def by_chunk(v):  # (L, ...) -> (C, T, ...), trailing zeros: no drive, no decay
        return _pad(v, chunks * chunk).reshape(chunks, chunk, *v.shape[1:])

    # every input cut once into its T steps, (C, ...) views: the loops below only index lists
    if factored:
        drives = list(zip(*(by_chunk(v).unbind(1) for v in x), strict=True))
    else:
        drives = by_chunk(x).unbind(1)
    made = coef is None  # made from the rates in pass 1, step by step, kept for pass 2
    if rate is not None:  # padded steps count as no decay: only the last chunk has any, and
        rates, a = by_chunk(rate[0]), rate[1]  # its total is unused
        total = _decay(rates.sum(1), a)  # (C, ...): each chunk's total decay
        rates = rates.unbind(1)
    if made:  # (T, C, ...): each step's coefficients contiguous
        coefs = total.new_empty(chunk, *total.shape).unbind(0)
    else:
        coef = by_chunk(coef)
        total = coef.prod(1) if rate is None else total  # (C, ...)
        coefs = coef.unbind(1)

    def step(j, previous, out):  # x_j + coef_j * previous, into ``out`` (not ``previous``)
        if not factored:
            return torch.addcmul(drives[j], coefs[j], previous, out=out)
        return torch.mul(coefs[j], previous, out=out).addcmul_(*drives[j])

    def make(j):  # coef_j = exp2(r_j * a), computed where pass 2 will read it
        if made:
            _decay(rates[j], a, out=coefs[j])

    steps = range(chunk - 1, -1, -1) if reverse else range(chunk)
    end = torch.mul(*drives[steps[0]]) if factored else drives[steps[0]].clone()  # (C, ...)
    make(steps[0])
    spare = torch.empty_like(end)  # it and ``end`` take turns holding the state
    for j in steps[1:]:  # pass 1: each chunk's end state from zero
        make(j)
        end, spare = step(j, end, out=spare), end
    entering = torch.zeros_like(end)  # (C, ...): the state entering each chunk
    order = range(chunks - 1, 0, -1) if reverse else range(chunks - 1)
    for c in order:
        after = c - 1 if reverse else c + 1
        torch.addcmul(end[c], total[c], entering[c], out=entering[after])
    previous = entering  # pass 2, from the entering states
    if readout is None:
        h = end.new_empty(chunks, chunk, *end.shape[1:])  # (C, T, ...)
        for j in steps:
            previous = step(j, previous, out=h[:, j])
        return h.reshape(chunks * chunk, *h.shape[2:])[:length]  # (L, ...)
    readout = by_chunk(readout).transpose(0, 1).unsqueeze(-2).contiguous()  # (T, C, ..., 1, N)
    y = end.new_empty(chunk, chunks, *end.shape[1:-2], 1, end.shape[-1])  # (T, C, ..., 1, e)
    spare = end  # spent: it and ``previous`` now take turns
    for j in steps:
        previous, spare = step(j, previous, out=spare), previous
        torch.matmul(readout[j], previous, out=y[j])  # (C, ..., 1, e), all contiguous
    y = y.transpose(0, 1).squeeze(-2)  # (C, T, ..., e)
    return y.reshape(chunks * chunk, *y.shape[2:])[:length]  # (L, ..., e)


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x`` (l, ...) with zero steps appended up to ``length``."""
    missing = length - x.shape[0]
    return torch.cat([x, x.new_zeros(missing, *x.shape[1:])]) if missing else x


def _decay(rate, A2, out=None):
    """Ā = exp(Δ A) = exp2(Δ A log2 e) of rates Δ (..., 1, e) and A2 = A^T log2 e (N, e):
    (..., N, e), into ``out`` if given."""
    return torch.mul(rate, A2, out=out).exp2_()


def _drive(delta, u, B):
    """The factors of Δ u B (L, b, N, e): Δ u (L, b, 1, e) and B (L, b, N, 1)."""
    return (delta * u).unsqueeze(2), B.unsqueeze(-1)


def _states(delta, u, A2, B):
    """Ā and the states s (L, b, N, e) of channels (L, b, e), with A2 = A^T log2 e (N, e)."""
    rate = delta.unsqueeze(2)  # (L, b, 1, e)
    decay = _decay(rate, A2)  # (L, b, N, e)
    return decay, chunked_scan(decay, _drive(delta, u, B), rate=(rate, A2))


def _sequential_readout(delta, u, A2, B, C):
    """Σ_n C_t s_t (L, b, e), the recurrence one step at a time on time-major slices: Δ, u
    (L, b, e), A2 = A^T log2 e (N, e), B, C (L, b, N). Five operations a step, on (b, N, e)
    states that stay in cache."""
    rates = delta.unsqueeze(2).unbind(0)  # L x (b, 1, e)
    drives = (delta * u).unsqueeze(2).unbind(0)  # L x (b, 1, e)
    inputs, readouts = B.unsqueeze(-1).unbind(0), C.unsqueeze(2).unbind(0)  # (b, N, 1), (b, 1, N)
    state = delta.new_zeros(delta.shape[1], *A2.shape)  # (b, N, e)
    decay = torch.empty_like(state)
    y = delta.new_empty(len(delta), delta.shape[1], 1, delta.shape[2])  # (L, b, 1, e)
    for t, out in enumerate(y.unbind(0)):
        state.mul_(_decay(rates[t], A2, out=decay)).addcmul_(drives[t], inputs[t])
        torch.matmul(readouts[t], state, out=out)
    return y.squeeze(2)


def _one_step_at_a_time(delta: torch.Tensor, A2: torch.Tensor) -> bool:
    """Whether a readout scan of Δ (L, b, e) with A2 (N, e) should run one step at a time: on
    CPU, when a step holds more than ``SEQUENTIAL_STEP_ELEMENTS`` state entries. Not on other
    devices, where every step would cost its kernel launches."""
    return delta.device.type == "cpu" and delta.shape[1] * A2.numel() > SEQUENTIAL_STEP_ELEMENTS


def _channel_blocks(delta: torch.Tensor, states: int, grad: bool = True) -> list[slice]:
    """Channel slices whose (L, b, N, e) states hold about ``BLOCK_ELEMENTS`` (CPU; without
    ``grad``, ``NO_GRAD_BLOCK_ELEMENTS``) or all channels (other devices, where a Python loop
    costs more than memory traffic)."""
    length, batch, channels = delta.shape
    size = channels
    if delta.device.type == "cpu":
        budget = BLOCK_ELEMENTS if grad else NO_GRAD_BLOCK_ELEMENTS
        size = max(1, budget // (length * batch * states))
    return [slice(start, start + size) for start in range(0, channels, size)]


class _SelectiveScan(torch.autograd.Function):
    """y_t = Σ_n C_t s_t for time-major Δ, u (L, b, E), A (E, N), B, C (L, b, N).

    Backward: with g_t = dLoss/ds_t = C_t gy_t + Ā_{t+1} g_{t+1} (the reverse scan),
    dC_t = Σ_e s_t gy_t; through Ā_t = exp(Δ_t A), k_t = g_t s_{t-1} Ā_t gives
    dΔ_t += Σ_n k_t A and dA = Σ_{t,b} k_t Δ_t; through the drive Δ_t u_t B_t,
    m_t = Σ_n g_t B_t gives dΔ_t += m_t u_t, du_t = m_t Δ_t and dB_t = Σ_e g_t Δ_t u_t."""

    @staticmethod
    def forward(ctx, delta, u, A, B, C):
        A2 = A.t() * LOG2E  # (N, E)
        grad = any(ctx.needs_input_grad)
        keep = grad and delta.numel() * A.shape[1] <= SAVE_STATES_MAX
        kept, ys = [], []  # (decay, states) per channel block, for the backward pass; outputs
        for part in _channel_blocks(delta, A.shape[1], grad):
            d, x, a2 = delta[..., part], u[..., part], A2[:, part]
            if keep:
                decay, states = _states(d, x, a2, B)  # (L, b, N, e)
                ys.append(torch.matmul(C.unsqueeze(2), states).squeeze(2))  # (L, b, e)
                kept.append((decay, states))
            elif _one_step_at_a_time(d, a2):
                ys.append(_sequential_readout(d, x, a2, B, C))  # (L, b, e)
            else:  # the decays made by the scan, step by step
                drive, rate = _drive(d, x, B), (d.unsqueeze(2), a2)
                ys.append(chunked_scan(None, drive, rate=rate, readout=C))  # (L, b, e)
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)  # (L, b, E)
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
        A_t = A.t()  # (N, E)
        A2 = A_t * LOG2E
        B_rows, C_cols = B.unsqueeze(2), C.unsqueeze(-1)  # (L, b, 1, N), (L, b, N, 1)
        for i, part in enumerate(_channel_blocks(delta, A.shape[1])):
            d, x, a, gy_part = delta[..., part], u[..., part], A_t[:, part], gy[..., part]
            decay, states = kept[i] if kept else _states(d, x, A2[:, part], B)  # (L, b, N, e)
            rate = (d[1:].unsqueeze(2), A2[:, part])
            g = chunked_scan(decay[1:], (gy_part.unsqueeze(2), C_cols), reverse=True, rate=rate)
            g_C += torch.linalg.vecdot(states, gy_part.unsqueeze(2))  # (L, b, N): Σ_e s gy
            k = states[:-1].mul_(g[1:]).mul_(decay[1:])  # (L-1, b, N, e): the states are spent
            g_delta[1:, :, part] = torch.linalg.vecdot(k, a, dim=-2)  # Σ_n k A
            g_A[part] = (k * d[1:].unsqueeze(2)).sum((0, 1)).t()
            m = torch.matmul(B_rows, g).squeeze(2)  # (L, b, e): Σ_n B g
            g_B += torch.linalg.vecdot(g, (d * x).unsqueeze(2))  # (L, b, N): Σ_e g Δ u
            g_delta[..., part] += m * x
            g_u[..., part] = m * d
        return g_delta, g_u, g_A, g_B, g_C
