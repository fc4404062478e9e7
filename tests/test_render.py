import numpy as np
import pytest
import torch
from conftest import SHARED

from mmpd_core import render

WHITE = torch.ones(3)


def one_view(points, colors=None, normals=None, azimuth_views=1, res=32, size=0):
    pts = torch.tensor(points, dtype=torch.float32)[None]
    col = None if colors is None else torch.tensor(colors, dtype=torch.float32)[None]
    nrm = None if normals is None else torch.tensor(normals, dtype=torch.float32)[None]
    return render.render_views(
        pts, nrm, col, num_views=azimuth_views, elevation_deg=0.0, resolution=res, point_size=size
    )


def test_camera_axes_are_orthonormal_and_azimuth_zero_looks_from_plus_z():
    poses = render.camera_poses(4, 30.0)
    eye = torch.eye(3).expand(4, 3, 3)
    assert torch.allclose(poses @ poses.transpose(1, 2), eye, atol=1e-6)
    level = render.camera_poses(4, 0.0)
    assert torch.allclose(level[0], torch.eye(3), atol=1e-6)  # right=x, up=y, toward=+z
    assert torch.allclose(level[1, 2], torch.tensor([1.0, 0, 0]), atol=1e-6)  # 90 deg: from +x


def test_projection_centre_upright_and_sides():
    rgb, depth = one_view([[0, 0, 0], [0, 0.8, 0], [0.8, 0, 0]], colors=[[1, 0, 0]] * 3, res=33)
    img = rgb[0, 0]  # (3, H, W)
    red = (img[0] > 0.9) & (img[1] < 0.1)
    rows, cols = torch.nonzero(red, as_tuple=True)
    assert red[16, 16]  # the origin lands in the centre
    assert rows.min() < 16 and cols.max() > 16  # +y is up (smaller row), +x to the right
    assert depth[0, 0, 16, 16] == pytest.approx(render.CAMERA_DISTANCE)
    _, depth90 = one_view([[0.8, 0, 0]], azimuth_views=4, res=33)
    assert depth90[0, 1, 16, 16] == pytest.approx(render.CAMERA_DISTANCE - 0.8, abs=1e-5)


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_zbuffer_keeps_the_nearest_point(order):
    points = [[0, 0, 0.5], [0, 0, -0.5]]  # the first is nearer a camera on +z
    colors = [[0, 1, 0], [0, 0, 1]]
    rgb, depth = one_view([points[i] for i in order], colors=[colors[i] for i in order], res=9)
    assert torch.allclose(rgb[0, 0, :, 4, 4], torch.tensor([0.0, 1.0, 0.0]))
    assert depth[0, 0, 4, 4] == pytest.approx(render.CAMERA_DISTANCE - 0.5)


def test_background_and_ranges():
    rgb, depth = one_view([[0, 0, 0]], res=16, size=1)
    assert torch.equal(rgb[0, 0, :, 0, 0], WHITE) and depth[0, 0, 0, 0] == 0
    assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.shape == (1, 1, 3, 16, 16)
    assert (depth > 0).sum() == 9  # a radius-1 splat covers its 3 x 3 neighbourhood


def test_shading_follows_normals():
    rgb, _ = one_view([[0, 0, 0]], colors=[[1, 1, 1]], normals=[[0, 0, 1]], res=9)
    lit = rgb[0, 0, 0, 4, 4]
    rgb_back, _ = one_view([[0, 0, 0]], colors=[[1, 1, 1]], normals=[[0, 0, -1]], res=9)
    assert rgb_back[0, 0, 0, 4, 4] == pytest.approx(lit.item())  # back faces are flipped
    rgb_side, _ = one_view([[0, 0, 0]], colors=[[1, 1, 1]], normals=[[1, 0, 0]], res=9)
    assert rgb_side[0, 0, 0, 4, 4] == pytest.approx(0.35)  # light from the left: ambient only
    assert lit > 0.35


def test_batch_equals_single_renders_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    pts = torch.nn.functional.normalize(torch.randn(3, 500, 3, generator=gen), dim=-1) * 0.8
    cols = torch.rand(3, 500, 3, generator=gen)
    rgb, depth = render.render_views(pts, pts, cols, num_views=4, resolution=24)
    for b in range(3):
        one_rgb, one_depth = render.render_views(
            pts[b : b + 1], pts[b : b + 1], cols[b : b + 1], num_views=4, resolution=24
        )
        assert torch.equal(one_rgb[0], rgb[b]) and torch.equal(one_depth[0], depth[b])


def test_png_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(1)
    rgb = torch.rand(3, 8, 8, generator=gen)
    render.save_png(rgb, tmp_path / "a.png")
    assert torch.allclose(render.load_png(tmp_path / "a.png"), rgb, atol=0.5 / 255 + 1e-6)
    depth = torch.rand(8, 8, generator=gen) * 3
    render.save_depth_png(depth, tmp_path / "d.png")
    back = render.load_depth_png(tmp_path / "d.png")
    assert torch.allclose(back, depth, atol=0.5 / render.DEPTH_SCALE + 1e-6)
    sheet = render.contact_sheet(
        torch.stack([rgb, rgb]), tmp_path / "s.png", ncols=2, labels=["a", "b"]
    )
    assert render.load_png(sheet).shape == (3, 8 + 12, 16)


def test_renders_a_real_modelnet_shape():
    path = SHARED / "realdata/modelnet40_sample/modelnet40_normal_resampled/chair/chair_0962.txt"
    if not path.is_file():
        pytest.skip("../shared/realdata is absent (only in the development tree)")
    data = np.loadtxt(path, delimiter=",", dtype=np.float32)[::4]  # (2500, 6)
    pts = data[:, :3] - data[:, :3].mean(0)
    pts /= np.linalg.norm(pts, axis=1).max()
    _, depth = render.render_views(
        torch.from_numpy(pts)[None], torch.from_numpy(data[:, 3:])[None], None, resolution=64
    )
    coverage = (depth > 0).float().mean(dim=(-1, -2))  # (1, V)
    assert (coverage > 0.08).all() and (coverage < 0.8).all()
    rows, cols = torch.nonzero(depth[0, 0] > 0, as_tuple=True)
    assert abs(cols.float().mean() - 32) < 8 and abs(rows.float().mean() - 32) < 10
