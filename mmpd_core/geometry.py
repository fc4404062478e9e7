"""Point-cloud geometry in pure PyTorch: farthest point sampling, kNN, grouping, Chamfer.

Every function runs on CPU and GPU and is vectorised over the batch. No CUDA extension is
imported anywhere; the semantics follow the upstream Point-MAE helpers (REFERENCE.md).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "ORIGIN_SKIP_SQ_NORM",
    "chamfer_distance",
    "estimate_normals",
    "farthest_point_sample",
    "gather_points",
    "group",
    "knn",
    "square_distance",
]

# The pointnet2_ops kernel never selects points whose squared norm is <= this value.
ORIGIN_SKIP_SQ_NORM = 1e-3


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick ``points[b, idx[b, ...]]`` for every batch element.

    points: (B, N, C); idx: (B, *S) integer indices into N. Returns (B, *S, C).
    """
    batch, channels = points.shape[0], points.shape[-1]
    flat = idx.reshape(batch, -1)  # (B, S)
    picked = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, channels))  # (B, S, C)
    return picked.reshape(*idx.shape, channels)  # (B, *S, C)


def _check_cloud(points: torch.Tensor, name: str = "points") -> None:
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(points.shape)}")


def farthest_point_sample(
    points: torch.Tensor,
    n: int,
    *,
    skip_origin: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Farthest point sampling: indices (B, n) of ``n`` well-spread points of each cloud.

    By default this is an exact port of the pointnet2_ops CUDA kernel used by Point-MAE: the
    first index is 0, the running distance starts at 1e10, and points with squared norm
    <= 1e-3 are never selected and never update the running distance. ``skip_origin=False``
    gives plain FPS. A ``generator`` draws a random start index per cloud instead of 0
    (the dataset-time FPS of the upstream loaders).

    On CPU the clouds run in chunks of about ``CPU_CHUNK_POINTS`` points, so that each of the
    n steps works in cache (3x faster for 600 clouds of 4,096 points; the indices are the
    same, every cloud being independent). On a GPU the whole batch runs at once.
    """
    _check_cloud(points)
    batch, num_points, _ = points.shape
    if not 0 < n <= num_points:
        raise ValueError(f"cannot sample {n} centres from clouds of {num_points} points")
    xyz = points.detach().float().transpose(1, 2).contiguous()  # (B, 3, N)
    if generator is None:
        start = torch.zeros(batch, dtype=torch.long, device=points.device)
    else:
        start = torch.randint(num_points, (batch,), generator=generator, device="cpu")
        start = start.to(points.device)
    chunk = max(1, CPU_CHUNK_POINTS // num_points) if points.device.type == "cpu" else batch
    parts = [
        _fps(xyz[i : i + chunk], start[i : i + chunk], n, skip_origin)
        for i in range(0, batch, chunk)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


CPU_CHUNK_POINTS = 1 << 18  # clouds x points per FPS chunk on CPU (a few MB per step)


def _fps(xyz: torch.Tensor, current: torch.Tensor, n: int, skip_origin: bool) -> torch.Tensor:
    """The kernel's loop on clouds xyz (B, 3, N) from start indices (B,): indices (B, n)."""
    batch, _, num_points = xyz.shape
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]  # each (B, N)
    dist = torch.full((batch, num_points), 1e10, device=xyz.device)  # (B, N)
    if skip_origin:
        valid = (x * x + y * y + z * z) > ORIGIN_SKIP_SQ_NORM  # (B, N)
        dist.masked_fill_(~valid, -1.0)  # masked points never win the argmax and stay at -1
    idx = torch.empty((batch, n), dtype=torch.long, device=xyz.device)
    for step in range(n):
        idx[:, step] = current
        if step == n - 1:
            break
        centre = torch.gather(xyz, 2, current.view(batch, 1, 1).expand(-1, 3, 1))  # (B, 3, 1)
        dx, dy, dz = x - centre[:, 0], y - centre[:, 1], z - centre[:, 2]  # each (B, N)
        step_dist = dx * dx + dy * dy + dz * dz  # (B, N), summed in the kernel's order
        torch.minimum(dist, step_dist, out=dist)  # masked entries stay -1 (< any distance)
        current = dist.argmax(dim=1)  # first maximum, as the kernel's strict '>' does
    return idx


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances (B, N, M) between src (B, N, C) and dst (B, M, C).

    Uses the expansion |s|^2 + |d|^2 - 2 s.d as the upstream helpers do (one matmul).
    """
    cross = torch.bmm(src, dst.transpose(1, 2))  # (B, N, M)
    src_sq = src.pow(2).sum(-1, keepdim=True)  # (B, N, 1)
    dst_sq = dst.pow(2).sum(-1).unsqueeze(1)  # (B, 1, M)
    return (src_sq + dst_sq - 2.0 * cross).clamp_min_(0.0)


def _autocast_off(device: torch.device):
    """Autocast disabled on ``device`` (nothing to disable where autocast does not exist)."""
    if device.type in AUTOCAST_DEVICES:
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def knn(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, Q, k) of the k nearest ``points`` of each ``query``, nearest first.

    Always in float32, as upstream: under a bf16 autocast the distance matmul would otherwise
    run in bf16 and change about 1.5 % of the neighbours of a 1024-point cloud."""
    _check_cloud(points)
    _check_cloud(query, "query")
    if k > points.shape[1]:
        raise ValueError(f"k={k} neighbours requested from clouds of {points.shape[1]} points")
    with _autocast_off(points.device):
        dist = square_distance(query.float(), points.float())  # (B, Q, N), float32
    return dist.topk(k, dim=-1, largest=False, sorted=True).indices  # (B, Q, k)


def group(
    points: torch.Tensor, num_groups: int, group_size: int, *, skip_origin: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-MAE grouping: FPS centres, then the kNN patch of each centre, relative to it.

    Returns ``(neighborhood (B, G, K, 3), centers (B, G, 3))``; groups follow FPS order.
    """
    _check_cloud(points)
    if group_size > points.shape[1] or num_groups > points.shape[1]:
        raise ValueError(
            f"clouds of {points.shape[1]} points are too small for {num_groups} groups of "
            f"{group_size} points"
        )
    center_idx = farthest_point_sample(points, num_groups, skip_origin=skip_origin)  # (B, G)
    centers = gather_points(points, center_idx)  # (B, G, 3)
    patch_idx = knn(centers, points, group_size)  # (B, G, K)
    neighborhood = gather_points(points, patch_idx) - centers.unsqueeze(2)  # (B, G, K, 3)
    return neighborhood, centers


def chamfer_distance(pred: torch.Tensor, target: torch.Tensor, *, norm: int = 2) -> torch.Tensor:
    """Chamfer distance with the upstream extension's definition (scalar, batch-averaged).

    dist1: squared distance of each predicted point to its nearest target point; dist2 the
    reverse. ``norm=2``: mean(dist1) + mean(dist2). ``norm=1``: (mean(sqrt dist1) +
    mean(sqrt dist2)) / 2.
    """
    if pred.dim() != 3 or target.dim() != 3 or pred.shape[-1] != target.shape[-1]:
        raise ValueError(f"chamfer needs (B, N, C) and (B, M, C), got {pred.shape}, {target.shape}")
    diff = pred.unsqueeze(2) - target.unsqueeze(1)  # (B, N, M, C), exact like the extension
    dist = diff.pow(2).sum(-1)  # (B, N, M)
    dist1 = dist.min(dim=2).values  # (B, N)
    dist2 = dist.min(dim=1).values  # (B, M)
    if norm == 2:
        return dist1.mean() + dist2.mean()
    if norm == 1:
        # sqrt(0) has an infinite gradient; the tiny floor keeps backprop finite.
        return (dist1.clamp_min(1e-12).sqrt().mean() + dist2.clamp_min(1e-12).sqrt().mean()) / 2
    raise ValueError(f"norm must be 1 or 2, got {norm}")


def estimate_normals(points: torch.Tensor, k: int = 16, chunk: int = 2048) -> torch.Tensor:
    """Unit normals (B, N, 3) of clouds (B, N, 3) by PCA: the direction of least variance of
    each point's ``k`` nearest neighbours, turned away from the cloud's centroid. Neighbours
    are searched ``chunk`` query points at a time (memory N x chunk per cloud)."""
    _check_cloud(points)
    normals = []
    for cloud in points.float().split(1):  # (1, N, 3)
        idx = torch.cat(
            [knn(cloud[:, s : s + chunk], cloud, k) for s in range(0, cloud.shape[1], chunk)], 1
        )  # (1, N, k)
        neighbours = gather_points(cloud, idx)  # (1, N, k, 3)
        centred = neighbours - neighbours.mean(dim=2, keepdim=True)  # (1, N, k, 3)
        covariance = centred.transpose(-1, -2) @ centred  # (1, N, 3, 3)
        normal = torch.linalg.eigh(covariance).eigenvectors[..., 0]  # (1, N, 3), least variance
        outward = ((cloud - cloud.mean(dim=1, keepdim=True)) * normal).sum(-1, keepdim=True)
        normals.append(torch.where(outward < 0, -normal, normal))
    return torch.cat(normals)  # (B, N, 3)
