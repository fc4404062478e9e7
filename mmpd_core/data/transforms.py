"""Point-cloud transforms of the upstream recipes (REFERENCE.md, "Recipes"), on torch tensors.

Every function takes a cloud (N, 3); the random augmentations also take a batch (B, N, 3) and draw
one set of parameters per cloud, as the upstream training loops do. Randomness comes only from the
explicit ``generator`` argument (``None`` falls back to torch's global generator).

Bind the parameters with ``functools.partial`` and chain with ``torchvision.transforms.Compose``,
which calls each callable in turn and works on plain tensors::

    from functools import partial
    from torchvision.transforms import Compose

    gen = torch.Generator().manual_seed(0)
    train_transform = Compose([partial(random_sample, n=1024, generator=gen),
                               normalize_unit_sphere,
                               partial(scale_translate, generator=gen)])
"""

from __future__ import annotations

import math

import torch

from mmpd_core.geometry import farthest_point_sample

__all__ = [
    "fps_sample",
    "normalize_unit_sphere",
    "random_sample",
    "rotate_up",
    "scale_translate",
]

SCALE_RANGE = (2.0 / 3.0, 3.0 / 2.0)  # Point-MAE PointcloudScaleAndTranslate
TRANSLATE_RANGE = (-0.2, 0.2)


def _check_xyz(points: torch.Tensor, batched: bool = True) -> None:
    ok_dims = points.dim() >= 2 if batched else points.dim() == 2
    if not ok_dims or points.shape[-1] != 3:
        expected = "(N, 3) or (B, N, 3)" if batched else "(N, 3)"
        raise ValueError(f"expected a point cloud of shape {expected}, got {tuple(points.shape)}")


def normalize_unit_sphere(points: torch.Tensor) -> torch.Tensor:
    """Subtract the centroid and divide by the largest norm (the upstream ``pc_normalize``).

    points: (..., N, 3). Every cloud comes back centred with its farthest point at norm 1.
    """
    _check_xyz(points)
    if not torch.isfinite(points).all():
        raise ValueError("cannot normalise a point cloud holding NaN or Inf values")
    extent = points.amax(dim=-2) - points.amin(dim=-2)  # (..., 3), exact: no rounding
    if (extent == 0).all(dim=-1).any():
        raise ValueError(
            f"cannot normalise a degenerate cloud: all {points.shape[-2]} points coincide"
        )
    centred = points - points.mean(dim=-2, keepdim=True)  # (..., N, 3)
    radius = centred.norm(dim=-1, keepdim=True).amax(dim=-2, keepdim=True)  # (..., 1, 1)
    return centred / radius


def random_sample(
    points: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` distinct points of a cloud (N, 3) in random order (ShapeNet-55 pretraining)."""
    _check_xyz(points, batched=False)
    if not 0 < n <= points.shape[0]:
        raise ValueError(
            f"cannot sample {n} points without replacement from a cloud of {points.shape[0]}"
        )
    device = generator.device if generator is not None else points.device
    order = torch.randperm(points.shape[0], generator=generator, device=device)  # (N,)
    return points[order[:n].to(points.device)]  # (n, 3)


def fps_sample(points: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` points of a cloud (N, 3) by plain FPS from index 0 (no origin skip), in FPS order."""
    _check_xyz(points, batched=False)
    idx = farthest_point_sample(points.unsqueeze(0), n, skip_origin=False)[0]  # (n,)
    return points[idx]  # (n, 3)


def _uniform(points, low, high, generator, shape) -> torch.Tensor:
    device = generator.device if generator is not None else points.device
    u = torch.rand(shape, generator=generator, device=device).to(points)
    return low + (high - low) * u


def scale_translate(points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ModelNet40 fine-tuning augmentation: per-axis scale U(2/3, 3/2), then shift U(-0.2, 0.2).

    points: (N, 3) or (B, N, 3); each cloud draws its own scale and shift.
    """
    _check_xyz(points)
    params_shape = (*points.shape[:-2], 1, 3)
    scale = _uniform(points, *SCALE_RANGE, generator, params_shape)  # (..., 1, 3)
    shift = _uniform(points, *TRANSLATE_RANGE, generator, params_shape)  # (..., 1, 3)
    return points * scale + shift


def rotate_up(points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ScanObjectNN fine-tuning augmentation: rotation about the up (y) axis by U[0, 2π).

    points: (N, 3) or (B, N, 3); each cloud draws its own angle. Row vectors are multiplied by
    [[c, 0, s], [0, 1, 0], [-s, 0, c]] as upstream ``PointcloudRotate`` does.
    """
    _check_xyz(points)
    angle = _uniform(points, 0.0, 2.0 * math.pi, generator, points.shape[:-2])  # (...,)
    c, s = angle.cos(), angle.sin()
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rows = [c, zero, s, zero, one, zero, -s, zero, c]
    rotation = torch.stack(rows, dim=-1).reshape(*angle.shape, 3, 3)  # (..., 3, 3)
    return points @ rotation  # (..., N, 3)
