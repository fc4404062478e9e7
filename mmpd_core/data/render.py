"""Batched point splatting with a z-buffer: RGB views and depth maps of coloured point clouds.

Pure PyTorch (CPU or GPU, whichever holds the inputs); no OpenGL or display. Conventions:

- y is up; clouds are normalised to the unit sphere and centred at the origin.
- ``num_views`` cameras at azimuths ``360 * v / V`` degrees and one elevation, looking at the
  origin; orthographic projection of the square [-EXTENT, EXTENT]^2 onto the image, so the
  origin lands on pixel (H // 2, W // 2) and a larger y is higher in the image. Azimuth 0 looks from
  +z (+x to the right); azimuth 90 looks from +x (+z to the left). No view is mirrored.
- Every point is a sphere of ``point_size`` pixels (default: ``default_point_size``, from the
  resolution and the point count) in a z-buffer: ``scatter_reduce(amin)`` of int64 keys that
  pack the quantised depth above the point index, so the nearest wins and ties are
  deterministic. No hole filling (a screen-space pass cost 2-5x the render on CPU): where the
  random spacing of the points leaves a gap, a farther surface shows through.
- Depth is the winning point's distance from a camera plane CAMERA_DISTANCE = 2.5 units from the
  origin (1.5 to 3.5 on a unit-sphere object); background depth is 0. 16-bit depth PNGs store
  ``round(depth * DEPTH_SCALE)``: millimetres for metre units, 0 = background.
- RGB in [0, 1] on a white background: the point colour times Lambertian shading, ``ambient +
  (1 - ambient) * max(0, n . l)`` with one light fixed to the camera (``LIGHT``, upper left
  front). Normals facing away from the camera are flipped first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = [
    "CAMERA_DISTANCE",
    "DEPTH_SCALE",
    "EXTENT",
    "LIGHT",
    "camera_poses",
    "contact_sheet",
    "default_point_size",
    "depth_to_rgb",
    "load_depth_png",
    "load_png",
    "project",
    "render_views",
    "save_depth_png",
    "save_png",
    "to_uint8",
]

EXTENT = 1.1  # half-width of the orthographic view, in object units
CAMERA_DISTANCE = 2.5  # camera plane to origin; depth = CAMERA_DISTANCE - (camera-space z)
DEPTH_SCALE = 1000.0  # depth PNG units per object unit (millimetres for metre-sized objects)
LIGHT = (-0.4, 0.6, 0.7)  # direction towards the light in camera axes: upper left, in front
_INDEX_BITS = 22  # point index packed under the quantised depth in one int64 key
_DEPTH_BITS = 28  # fractional bits of the quantised depth in that key (depth < 8 units)


def camera_poses(num_views: int = 12, elevation_deg: float = 30.0) -> torch.Tensor:
    """Rotations (V, 3, 3) whose rows are the camera's right, up and towards-camera axes.

    View ``v`` sits at azimuth ``360 * v / V`` degrees, measured from +z towards +x, raised by
    ``elevation_deg`` above the xz-plane and looking at the origin; each is a proper rotation,
    so no view is mirrored.
    """
    az = torch.arange(num_views, dtype=torch.float64) * (2 * math.pi / num_views)  # (V,)
    el = torch.tensor(math.radians(elevation_deg), dtype=torch.float64)
    toward = torch.stack(
        [torch.cos(el) * torch.sin(az), torch.sin(el).expand_as(az), torch.cos(el) * torch.cos(az)],
        dim=-1,
    )  # (V, 3) from the origin towards each camera
    right = torch.stack([torch.cos(az), torch.zeros_like(az), -torch.sin(az)], dim=-1)  # (V, 3)
    up = torch.linalg.cross(toward, right)  # (V, 3)
    return torch.stack([right, up, toward], dim=1).float()  # (V, 3, 3)


def project(
    points: torch.Tensor, poses: torch.Tensor, resolution: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthographic projection of clouds (B, N, 3) into every view of ``poses`` (V, 3, 3).

    Returns integer ``row``, ``col`` and float ``depth``, each (B, V, N). Row 0 is the top of
    the image; pixels outside [0, resolution) are off-image; depth is the distance from the
    camera plane at ``CAMERA_DISTANCE`` from the origin.
    """
    # (B, V, N, 3) in camera axes; elementwise, so batching cannot change a single cloud's pixels
    cam = (points.float()[:, None, :, None, :] * poses[None, :, None]).sum(-1)
    col = ((cam[..., 0] / EXTENT + 1) / 2 * resolution).floor().long()  # (B, V, N)
    row = ((1 - cam[..., 1] / EXTENT) / 2 * resolution).floor().long()  # (B, V, N): y up
    return row, col, CAMERA_DISTANCE - cam[..., 2]


def default_point_size(resolution: int, num_points: int, scale: float = 0.7) -> float:
    """Splat radius in pixels, proportional to the point spacing on the visible half of a
    unit-sphere-sized surface: large enough to close it, no larger (silhouettes grow with it)."""
    return max(1.0, scale * resolution / math.sqrt(num_points / 2))


def _splat_offsets(radius: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel offsets (S, 2) of a round footprint (pixel centres within ``radius + 0.5``) and
    how far a sphere of that radius bulges towards the camera at each (S,), in pixels. The bulge
    lets neighbouring splats meet where their spheres intersect instead of the nearer disc
    covering the other whole."""
    reach = radius + 0.5
    r = torch.arange(-math.floor(reach), math.floor(reach) + 1, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")  # each (2R+1, 2R+1)
    sq = (dx**2 + dy**2).float()
    keep = sq <= reach**2  # a round footprint
    bulge = (reach**2 - sq[keep]).sqrt()  # (S,)
    return torch.stack([dy[keep], dx[keep]], dim=-1), bulge  # (S, 2), (S,)


def render_views(
    points: torch.Tensor,
    normals: torch.Tensor | None,
    colors: torch.Tensor | None,
    *,
    num_views: int = 12,
    elevation_deg: float = 30.0,
    resolution: int = 128,
    point_size: float | None = None,
    ambient: float = 0.35,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render clouds (B, N, 3) with normals and colours in [0, 1] (each (B, N, 3) or None)
    from ``num_views`` azimuths (see ``camera_poses``).

    Returns ``rgb (B, V, 3, H, W)`` in [0, 1] (white background) and ``depth (B, V, H, W)``
    (the winning point's distance from the camera plane, 0 where nothing is drawn). Without
    normals the points are shaded flat; without colours they are grey (0.7). Deterministic, and
    each cloud's images do not depend on the rest of the batch.
    """
    _check_inputs(points, normals, colors)
    batch, n, _ = points.shape
    res = resolution
    poses = camera_poses(num_views, elevation_deg).to(points.device)  # (V, 3, 3)
    row, col, depth = project(points, poses, res)  # each (B, V, N)
    radius = point_size if point_size is not None else default_point_size(res, n)
    winner = _zbuffer(row, col, depth, radius, res)  # (B, V, H*W) point index or -1
    hit = winner >= 0  # (B, V, HW)
    idx = winner.clamp_min(0)  # (B, V, HW)
    shade = _shade(points, normals, colors, poses, ambient).transpose(2, 3)  # (B, V, 3, N)
    rgb = torch.gather(shade, 3, idx.unsqueeze(2).expand(-1, -1, 3, -1))  # (B, V, 3, HW)
    rgb.masked_fill_(~hit.unsqueeze(2), 1.0)
    dmap = torch.gather(depth, 2, idx).masked_fill_(~hit, 0.0)  # (B, V, HW)
    shape = (batch, num_views, res, res)
    return rgb.view(*shape[:2], 3, res, res), dmap.view(shape)  # (B, V, 3, H, W), (B, V, H, W)


def _check_inputs(points, normals, colors) -> None:
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, N, 3), got {tuple(points.shape)}")
    for name, t in (("normals", normals), ("colors", colors)):
        if t is not None and t.shape != points.shape:
            raise ValueError(
                f"{name} must match points {tuple(points.shape)}, got {tuple(t.shape)}"
            )
    if points.shape[1] >= 1 << _INDEX_BITS:
        raise ValueError(
            f"at most {(1 << _INDEX_BITS) - 1} points per cloud, got {points.shape[1]}"
        )


def _zbuffer(row, col, depth, radius: float, res: int) -> torch.Tensor:
    """Index of the nearest splat covering each pixel (B, V, H*W), -1 where none does.

    One ``scatter_reduce(amin)`` per footprint offset on int64 keys that pack the quantised
    depth above the point index: the nearest wins, ties go to the lower index.
    """
    batch, views, n = depth.shape
    offsets, bulge = _splat_offsets(radius, depth.device)  # (S, 2), (S,)
    bulge = bulge * (2 * EXTENT / res)  # (S,) in object units
    point = torch.arange(n, device=depth.device)  # (N,)
    empty = torch.iinfo(torch.long).max
    zbuf = torch.full((batch, views, res * res + 1), empty, device=depth.device)
    for (dy, dx), lift in zip(offsets.tolist(), bulge.tolist(), strict=True):
        r, c = row + dy, col + dx  # each (B, V, N)
        inside = (r >= 0) & (r < res) & (c >= 0) & (c < res)
        pixel = torch.where(inside, r * res + c, res * res)  # off-image goes to a spare slot
        quantised = ((depth - lift).clamp(0, 7.99) * (1 << _DEPTH_BITS)).long()  # (B, V, N)
        zbuf.scatter_reduce_(2, pixel, (quantised << _INDEX_BITS) | point, "amin")
    zbuf = zbuf[..., : res * res]  # (B, V, HW)
    return torch.where(zbuf == empty, -1, zbuf & ((1 << _INDEX_BITS) - 1))


def _shade(points, normals, colors, poses, ambient: float) -> torch.Tensor:
    """Per-view colour of every point (B, V, N, 3): ``colour * (ambient + (1 - ambient) *
    max(0, n . l))`` with the normal turned towards the camera and ``LIGHT`` fixed to it."""
    grey = torch.full_like(points, 0.7)  # (B, N, 3)
    base = grey if colors is None else colors.float().clamp(0, 1)  # (B, N, 3)
    views = poses.shape[0]
    if normals is None:
        return base.unsqueeze(1).expand(-1, views, -1, -1)  # (B, V, N, 3)
    light_cam = torch.tensor(LIGHT, device=points.device)
    light = (light_cam / light_cam.norm()) @ poses  # (V, 3): camera-space light in world space
    toward = poses[:, 2]  # (V, 3)
    n = torch.nn.functional.normalize(normals.float(), dim=-1)  # (B, N, 3)
    facing = (n[:, None] * toward[None, :, None]).sum(-1).sign()  # (B, V, N) flip back faces
    facing = torch.where(facing == 0, torch.ones_like(facing), facing)
    lambert = (n[:, None] * light[None, :, None]).sum(-1) * facing  # (B, V, N)
    intensity = ambient + (1 - ambient) * lambert.clamp_min(0)  # (B, V, N)
    return base.unsqueeze(1) * intensity.unsqueeze(-1)  # (B, V, N, 3)


# --- files ------------------------------------------------------------------------------------


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(3, H, W) floats in [0, 1] -> (H, W, 3) uint8."""
    return (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def save_png(rgb: torch.Tensor, path: str | Path) -> None:
    """(3, H, W) floats in [0, 1] as an 8-bit RGB PNG (from any device)."""
    Image.fromarray(to_uint8(rgb)).save(path)


def load_png(path: str | Path) -> torch.Tensor:
    """An RGB PNG as (3, H, W) floats in [0, 1]."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W)


def save_depth_png(depth: torch.Tensor, path: str | Path) -> None:
    """(H, W) depth as a 16-bit greyscale PNG of ``round(depth * DEPTH_SCALE)`` (0 = background;
    depths beyond 65.535 units saturate)."""
    if depth.dim() != 2:
        raise ValueError(f"depth must have shape (H, W), got {tuple(depth.shape)}")
    mm = (depth * DEPTH_SCALE).round().clamp(0, 65535).cpu().numpy().astype(np.uint16)
    Image.fromarray(mm).save(path)


def load_depth_png(path: str | Path) -> torch.Tensor:
    """A 16-bit depth PNG back as (H, W) floats in object units (0 = background)."""
    image = Image.open(path)
    if image.mode not in ("I;16", "I"):
        raise ValueError(f"{path}: expected a 16-bit greyscale depth PNG, got mode {image.mode}")
    array = np.asarray(image, dtype=np.float32)  # (H, W)
    return torch.from_numpy(array / DEPTH_SCALE)


def depth_to_rgb(depth: torch.Tensor) -> torch.Tensor:
    """(H, W) depth -> (3, H, W) grey image, near = dark, background = white (for viewing and
    for image teachers that take 3 channels)."""
    hit = depth > 0
    if not hit.any():
        return depth.new_ones(3, *depth.shape)
    lo, hi = depth[hit].min(), depth[hit].max()
    grey = torch.where(hit, 0.15 + 0.7 * (depth - lo) / (hi - lo + 1e-6), torch.ones_like(depth))
    return grey.expand(3, -1, -1).clone()  # (3, H, W)


def contact_sheet(
    images: torch.Tensor, path: str | Path, ncols: int = 8, labels: Sequence[str] | None = None
) -> Path:
    """Tile (N, 3, H, W) images in [0, 1] into one PNG, row by row, with an optional text label
    under each tile (cut to fit its width). Creates the parent folder; returns the path."""
    n, _, h, w = images.shape
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    ncols = max(1, min(ncols, n))
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


def render_paths(renders: Path, name: str, degrees: int) -> tuple[Path, Path]:
    """ULIP file names of one view: ``<stem>/<stem>_r_<deg>.png`` and ``..._depth0001.png``."""
    stem = name.removesuffix(".npy")
    base = renders / stem / f"{stem}_r_{degrees:03d}"
    return base.with_name(base.name + ".png"), base.with_name(base.name + "_depth0001.png")
