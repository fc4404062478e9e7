"""Serialising patch centres along space-filling curves (PointMamba's Hilbert orders).

Centres are snapped to a grid of ``grid_size`` (0.02), shifted so that each cloud's per-axis
minimum is 0, and ordered by their 3-D Hilbert index (Skilling, "Programming the Hilbert
curve", AIP Conf. Proc. 707, 2004): ``hilbert`` on (x, y, z), ``hilbert-trans`` on (y, x, z).
The curve has ``depth`` bits per axis: the bit length of the largest grid coordinate, taken
over the **whole batch** by upstream (Pointcept's serialisation, which PointMamba reuses), so
a cloud's order can depend on the other clouds in its batch; ``batch_depth=False`` takes each
cloud's own. Upstream also shifts the cloud index above the code bits and argsorts the
flattened batch: that is a per-cloud sort, done here per row (stable: two centres in one grid
cell keep their FPS order, as upstream's sort does on CPU).
"""

from __future__ import annotations

import torch

ORDERS = ("hilbert", "hilbert-trans")
AXES = {"hilbert": (0, 1, 2), "hilbert-trans": (1, 0, 2)}
MAX_DEPTH = 21  # 3 * 21 bits fit an int64 code


def hilbert_encode(grid: torch.Tensor, depth: int) -> torch.Tensor:
    """Hilbert index (...,) int64 of integer points ``grid`` (..., 3) in [0, 2^depth)^3.

    Skilling's transform on the three coordinates as integers: undo the excess work level by
    level (invert or exchange the lower bits), Gray-encode, then interleave the bits, most
    significant level first, x's bit above y's above z's."""
    x = [grid[..., axis].long() for axis in range(3)]
    for level in range(depth - 1, 0, -1):
        high, low = 1 << level, (1 << level) - 1
        for axis in range(3):
            on = (x[axis] & high) != 0
            if axis == 0:
                x[0] = torch.where(on, x[0] ^ low, x[0])
                continue
            swap = (x[0] ^ x[axis]) & low  # exchange the lower bits of x and this axis
            x[axis] = torch.where(on, x[axis], x[axis] ^ swap)
            x[0] = torch.where(on, x[0] ^ low, x[0] ^ swap)
    x[1] = x[1] ^ x[0]
    x[2] = x[2] ^ x[1]
    flip = torch.zeros_like(x[2])
    for level in range(depth - 1, 0, -1):
        flip = torch.where((x[2] >> level) & 1 == 1, flip ^ ((1 << level) - 1), flip)
    transposed = torch.stack(x, dim=-1) ^ flip.unsqueeze(-1)  # (..., 3)
    levels = torch.arange(depth, device=grid.device)  # (depth,)
    shifts = 3 * levels + 2 - torch.arange(3, device=grid.device)[:, None]  # (3, depth)
    bits = (transposed.unsqueeze(-1) >> levels) & 1  # (..., 3, depth)
    return (bits << shifts).sum(dim=(-2, -1))  # (...,), the bits are disjoint


def grid_coordinates(centers: torch.Tensor, grid_size: float) -> torch.Tensor:
    """(B, G, 3) int64 cells of the centres (B, G, 3), minus each cloud's per-axis minimum."""
    grid = torch.floor(centers / grid_size).long()  # (B, G, 3)
    return grid - grid.amin(dim=1, keepdim=True)


def curve_depth(grid: torch.Tensor, batch_depth: bool = True) -> list[int]:
    """Bits per axis for each cloud: of the largest coordinate of the batch (upstream) or of
    the cloud (``batch_depth=False``); at least 1."""
    largest = grid.amax(dim=(1, 2)).tolist()  # per cloud
    if batch_depth:
        largest = [max(largest)] * len(largest)
    depths = [max(1, int(value).bit_length()) for value in largest]
    if max(depths) > MAX_DEPTH:
        raise ValueError(f"centres span 2^{max(depths)} grid cells; at most 2^{MAX_DEPTH}")
    return depths


def serialization_orders(
    centers: torch.Tensor, grid_size: float = 0.02, batch_depth: bool = True
) -> torch.Tensor:
    """(2, B, G) int64: for ``hilbert`` and ``hilbert-trans``, the index of the i-th centre
    along the curve among the centres (B, G, 3) of each cloud."""
    grid = grid_coordinates(centers, grid_size)  # (B, G, 3)
    depths = curve_depth(grid, batch_depth)
    depths = torch.tensor(depths, device=grid.device)  # (B,)
    orders = []
    for name in ORDERS:
        swapped = grid[..., list(AXES[name])]  # (B, G, 3)
        codes = torch.empty(grid.shape[:2], dtype=torch.long, device=grid.device)  # (B, G)
        for depth in depths.unique().tolist():  # one depth for the batch, by default
            clouds = depths == depth
            codes[clouds] = hilbert_encode(swapped[clouds], depth)
        orders.append(torch.argsort(codes, dim=1, stable=True))
    return torch.stack(orders)  # (2, B, G)
