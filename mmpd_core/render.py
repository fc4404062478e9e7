"""Batched point splatting with a z-buffer: RGB views and depth maps of coloured point clouds.

Pure PyTorch (CPU or GPU, whichever holds the inputs); no OpenGL or display. Conventions:

- y is up; clouds are normalised to the unit sphere and centred at the origin.
- ``num_views`` cameras at evenly spaced azimuths and one elevation, orthographic projection of
  the square [-1.1, 1.1]^2 onto the image. Azimuth 0 looks from +z towards the origin (+x to
  the right); azimuth 90 looks from +x (so +z is then to the left).
- Depth is the distance from a camera plane 2.5 units from the origin (about 1.5 to 3.5 on the
  object); background depth is 0. 16-bit depth PNGs store millimetres.
- RGB: Lambertian shading (ambient + one light from the upper left front, in camera space) of
  the point colours, on a white background. Normals facing away from the camera are flipped.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

EXTENT = 1.1  # half-width of the orthographic view, in object units
CAMERA_DISTANCE = 2.5
DEPTH_SCALE = 1000.0  # depth PNG units per object unit (millimetres for metre-sized objects)
_INDEX_BITS = 22  # point index packed under the quantised depth in one int64 key


def camera_poses(num_views: int = 12, elevation_deg: float = 30.0) -> torch.Tensor:
    """Rotations (V, 3, 3) whose rows are the camera's right, up and towards-camera axes."""
    az = torch.arange(num_views, dtype=torch.float64) * (2 * math.pi / num_views)  # (V,)
    el = torch.tensor(math.radians(elevation_deg), dtype=torch.float64)
    toward = torch.stack(
        [torch.cos(el) * torch.sin(az), torch.sin(el).expand_as(az), torch.cos(el) * torch.cos(az)],
        dim=-1,
    )  # (V, 3) from the origin towards each camera
    right = torch.stack([torch.cos(az), torch.zeros_like(az), -torch.sin(az)], dim=-1)  # (V, 3)
    up = torch.linalg.cross(toward, right)  # (V, 3)
    return torch.stack([right, up, toward], dim=1).float()  # (V, 3, 3)


def default_point_size(resolution: int, num_points: int) -> int:
    """Splat radius in pixels so that about half the points (the visible side) close the surface."""
    return max(1, round(0.6 * resolution / math.sqrt(num_points / 2)))


def _splat_offsets(radius: int, device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    keep = dx**2 + dy**2 <= radius**2 + radius  # a round footprint
    return torch.stack([dy[keep], dx[keep]], dim=-1)  # (S, 2)


def render_views(
    points: torch.Tensor,
    normals: torch.Tensor | None,
    colors: torch.Tensor | None,
    *,
    num_views: int = 12,
    elevation_deg: float = 30.0,
    resolution: int = 128,
    point_size: int | None = None,
    ambient: float = 0.35,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render clouds (B, N, 3) from ``num_views`` azimuths.

    Returns ``rgb (B, V, 3, H, W)`` in [0, 1] (white background) and ``depth (B, V, H, W)``
    (0 where nothing is drawn). Without normals the points are shaded flat; without colours
    they are grey.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, N, 3), got {tuple(points.shape)}")
    batch, n, _ = points.shape
    if n >= 1 << _INDEX_BITS:
        raise ValueError(f"at most {1 << _INDEX_BITS} points per cloud can be rendered, got {n}")
    device, res = points.device, resolution
    poses = camera_poses(num_views, elevation_deg).to(device)  # (V, 3, 3)
    # (B, V, N, 3) in camera axes (right, up, toward); elementwise, so batching cannot change it
    cam = (points.float()[:, None, :, None, :] * poses[None, :, None]).sum(-1)
    depth = CAMERA_DISTANCE - cam[..., 2]  # (B, V, N)
    col = ((cam[..., 0] / EXTENT + 1) / 2 * res).floor().long()  # (B, V, N)
    row = ((1 - cam[..., 1] / EXTENT) / 2 * res).floor().long()  # (B, V, N): y up -> row up
    radius = point_size if point_size is not None else default_point_size(res, n)
    winner = _zbuffer(row, col, depth, radius, res)  # (B, V, H*W) point index or -1
    shade = _shade(points, normals, colors, poses, ambient)  # (B, V, N, 3)
    hit = winner >= 0
    idx = winner.clamp_min(0)  # (B, V, HW)
    rgb = torch.gather(shade, 2, idx.unsqueeze(-1).expand(-1, -1, -1, 3))  # (B, V, HW, 3)
    rgb = torch.where(hit.unsqueeze(-1), rgb, torch.ones_like(rgb))
    dmap = torch.where(hit, torch.gather(depth, 2, idx), torch.zeros_like(depth[..., :1]))
    rgb = rgb.view(batch, num_views, res, res, 3).permute(0, 1, 4, 2, 3)  # (B, V, 3, H, W)
    return rgb.contiguous(), dmap.view(batch, num_views, res, res)


def _zbuffer(row, col, depth, radius: int, res: int) -> torch.Tensor:
    """Index of the nearest point covering each pixel (B, V, H*W), -1 where none does."""
    batch, views, n = depth.shape
    offsets = _splat_offsets(radius, depth.device)  # (S, 2)
    r = row.unsqueeze(-1) + offsets[:, 0]  # (B, V, N, S)
    c = col.unsqueeze(-1) + offsets[:, 1]  # (B, V, N, S)
    inside = (r >= 0) & (r < res) & (c >= 0) & (c < res)
    pixel = torch.where(inside, r * res + c, res * res)  # off-image splats go to a spare slot
    quantised = (depth.clamp(0, 7.99) * (1 << 28)).long()  # depth in 28 fractional bits
    point = torch.arange(n, device=depth.device)
    key = (quantised << _INDEX_BITS) | point  # (B, V, N): nearer first, then lower index
    key = key.unsqueeze(-1).expand_as(pixel)  # (B, V, N, S)
    empty = torch.iinfo(torch.long).max
    zbuf = torch.full((batch, views, res * res + 1), empty, device=depth.device)
    zbuf.scatter_reduce_(2, pixel.reshape(batch, views, -1), key.reshape(batch, views, -1), "amin")
    zbuf = zbuf[..., : res * res]  # (B, V, HW)
    return torch.where(zbuf == empty, -1, zbuf & ((1 << _INDEX_BITS) - 1))


def _shade(points, normals, colors, poses, ambient: float) -> torch.Tensor:
    """Per-view colour of every point (B, V, N, 3)."""
    base = torch.full_like(points, 0.7) if colors is None else colors.float()  # (B, N, 3)
    views = poses.shape[0]
    if normals is None:
        return base.unsqueeze(1).expand(-1, views, -1, -1)
    light_cam = torch.tensor([-0.4, 0.6, 0.7], device=points.device)
    light = (light_cam / light_cam.norm()) @ poses  # (V, 3): camera-space light in world space
    toward = poses[:, 2]  # (V, 3)
    n = normals.float()
    facing = (n[:, None] * toward[None, :, None]).sum(-1).sign()  # (B, V, N) flip back faces
    facing = torch.where(facing == 0, torch.ones_like(facing), facing)
    lambert = (n[:, None] * light[None, :, None]).sum(-1) * facing  # (B, V, N)
    intensity = ambient + (1 - ambient) * lambert.clamp_min(0)
    return base.unsqueeze(1) * intensity.unsqueeze(-1)  # (B, V, N, 3)


# --- files ------------------------------------------------------------------------------------


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(3, H, W) floats in [0, 1] -> (H, W, 3) uint8."""
    return (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def save_png(rgb: torch.Tensor, path: str | Path) -> None:
    Image.fromarray(to_uint8(rgb)).save(path)


def load_png(path: str | Path) -> torch.Tensor:
    """An RGB PNG as (3, H, W) floats in [0, 1]."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def save_depth_png(depth: torch.Tensor, path: str | Path) -> None:
    """(H, W) depth as a 16-bit PNG in units of 1/DEPTH_SCALE (0 = background)."""
    mm = (depth * DEPTH_SCALE).round().clamp(0, 65535).cpu().numpy().astype(np.uint16)
    Image.fromarray(mm).save(path)


def load_depth_png(path: str | Path) -> torch.Tensor:
    """A 16-bit depth PNG back as (H, W) floats in object units."""
    array = np.asarray(Image.open(path), dtype=np.float32)
    return torch.from_numpy(array / DEPTH_SCALE)


def depth_to_rgb(depth: torch.Tensor) -> torch.Tensor:
    """(H, W) depth -> (3, H, W) grey image, near = dark, background = white (for viewing and
    for image teachers that take 3 channels)."""
    hit = depth > 0
    if not hit.any():
        return torch.ones(3, *depth.shape)
    lo, hi = depth[hit].min(), depth[hit].max()
    grey = torch.where(hit, 0.15 + 0.7 * (depth - lo) / (hi - lo + 1e-6), torch.ones_like(depth))
    return grey.expand(3, -1, -1).clone()


def contact_sheet(images: torch.Tensor, path: str | Path, ncols: int = 8, labels=None) -> Path:
    """Tile (N, 3, H, W) images into one PNG, with an optional text label under each tile."""
    n, _, h, w = images.shape
    rows, label_h = math.ceil(n / ncols), 12 if labels else 0
    sheet = Image.new("RGB", (ncols * w, rows * (h + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        x, y = (i % ncols) * w, (i // ncols) * (h + label_h)
        sheet.paste(Image.fromarray(to_uint8(images[i])), (x, y))
        if labels:
            draw.text((x + 2, y + h), str(labels[i])[: w // 6], fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
