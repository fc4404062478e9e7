import numpy as np
import pytest
import torch
from conftest import SHARED
from PIL import Image

from mmpd_core.data import render

WHITE = torch.ones(3)
MODELNET = SHARED / "realdata" / "modelnet40_sample" / "modelnet40_normal_resampled"


def one_view(points, colors=None, normals=None, *, res=11, size=0.0):
    """Render one cloud, given as nested lists, from azimuth 0 at elevation 0.

    Returns (rgb (1, 3, H, W), depth (1, H, W))."""
    pts = torch.tensor(points, dtype=torch.float32)[None]  # (1, N, 3)
    col = None if colors is None else torch.tensor(colors, dtype=torch.float32)[None]
    nrm = None if normals is None else torch.tensor(normals, dtype=torch.float32)[None]
    rgb, depth = render.render_views(
        pts, nrm, col, num_views=1, elevation_deg=0.0, resolution=res, point_size=size
    )
    return rgb[0], depth[0]


def test_cameras_are_proper_rotations_looking_from_plus_z_then_plus_x():
    poses = render.camera_poses(4, 30.0)
    assert torch.allclose(poses @ poses.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(poses), torch.ones(4), atol=1e-6)  # never mirrored
    level = render.camera_poses(4, 0.0)
    assert torch.allclose(level[0], torch.eye(3), atol=1e-6)  # right=x, up=y, toward=+z
    assert torch.allclose(level[1, 2], torch.tensor([1.0, 0, 0]), atol=1e-6)  # 90 deg: from +x
    assert torch.allclose(level[1, 0], torch.tensor([0, 0, -1.0]), atol=1e-6)  # +z to the left
    assert poses[0, 2, 1] == pytest.approx(0.5)  # 30 deg above the xz-plane


def test_projection_lands_on_the_expected_pixels():
    # At 11 px the pixel centres sit at -1.0, -0.8, ..., 1.0 object units (EXTENT = 1.1).
    pts = torch.tensor([[[0.0, 0, 0], [0.4, 0.4, 0], [0, 0, 0.4], [0.4, 0, 0]]])
    row, col, depth = render.project(pts, render.camera_poses(4, 0.0), 11)  # each (1, 4, 4)
    assert row[0, 0].tolist() == [5, 3, 5, 5] and col[0, 0].tolist() == [5, 7, 5, 7]
    assert col[0, 1].tolist() == [5, 5, 3, 5]  # from +x: +z is left, +x straight ahead
    assert depth[0, 1, 3] == pytest.approx(render.CAMERA_DISTANCE - 0.4)
    assert col[0, 2, 1] == 3  # from -z, +x is on the left
    raised_row, _, _ = render.project(pts, render.camera_poses(1, 30.0), 11)
    assert raised_row[0, 0, 2] > 5  # seen from above, a point towards the camera drops


def test_rendered_image_is_centred_upright_and_not_mirrored():
    rgb, depth = one_view([[0, 0, 0], [0, 0.8, 0], [0.8, 0, 0]], colors=[[1, 0, 0]] * 3, res=33)
    red = (rgb[0, 0] > 0.9) & (rgb[0, 1] < 0.1)  # (H, W)
    rows, cols = torch.nonzero(red, as_tuple=True)
    assert red[16, 16] and depth[0, 16, 16] == pytest.approx(render.CAMERA_DISTANCE)
    assert rows.min() < 16 and cols.max() > 16  # +y is up (smaller row), +x to the right
    assert rows.max() == 16 and cols.min() == 16


@pytest.mark.parametrize("size", [0.0, 3.0])
@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_zbuffer_keeps_the_nearest_point(order, size):
    points = [[0, 0, 0.5], [0, 0, -0.5]]  # the first is nearer a camera on +z
    colors = [[0, 1, 0], [0, 0, 1]]
    rgb, depth = one_view(
        [points[i] for i in order], colors=[colors[i] for i in order], res=9, size=size
    )
    drawn = depth[0] > 0  # (H, W)
    assert (rgb[0, :, drawn] == torch.tensor([[0.0], [1], [0]])).all()  # green everywhere
    assert torch.allclose(depth[0, drawn], torch.tensor(render.CAMERA_DISTANCE - 0.5))


def test_equally_deep_splats_split_their_overlap_like_spheres():
    # Pixel centres of an 11 px image: x = -1.0 + 0.2 * col. Points on columns 3 and 7.
    rgb, depth = one_view([[-0.4, 0, 0], [0.4, 0, 0]], colors=[[1, 0, 0], [0, 0, 1]], size=3.0)
    red = rgb[0, 0, 5] > 0.5  # middle row, (W,)
    assert red[:5].all() and not red[6:].any()  # each sphere keeps its own side
    assert torch.allclose(depth[0, 5, 1:10], torch.tensor(render.CAMERA_DISTANCE))


def test_background_shapes_and_ranges():
    rgb, depth = one_view([[0, 0, 0]], res=16, size=1.0)
    assert rgb.dtype == depth.dtype == torch.float32
    assert rgb.shape == (1, 3, 16, 16) and depth.shape == (1, 16, 16)
    assert torch.equal(rgb[0, :, 0, 0], WHITE) and depth[0, 0, 0] == 0
    assert (depth > 0).sum() == 9  # a radius-1 splat covers its 3 x 3 neighbourhood
    assert torch.equal(rgb[0, :, depth[0] == 0], torch.ones(3, 16 * 16 - 9))
    gen = torch.Generator().manual_seed(0)
    cloud = torch.randn(2, 300, 3, generator=gen) * 0.4
    colors = torch.rand(2, 300, 3, generator=gen) * 1.4 - 0.2  # out of range: clamped
    rgb, depth = render.render_views(cloud, cloud, colors, num_views=3, resolution=20)
    assert rgb.shape == (2, 3, 3, 20, 20) and depth.shape == (2, 3, 20, 20)
    assert rgb.min() >= 0 and rgb.max() <= 1 and depth.min() >= 0


def test_shading_follows_normals():
    white = [[1, 1, 1]]
    lit, _ = one_view([[0, 0, 0]], colors=white, normals=[[0, 0, 1]], res=9)
    back, _ = one_view([[0, 0, 0]], colors=white, normals=[[0, 0, -1]], res=9)
    right, _ = one_view([[0, 0, 0]], colors=white, normals=[[1, 0, 0]], res=9)
    left, _ = one_view([[0, 0, 0]], colors=white, normals=[[-2, 0, 0]], res=9)  # not unit
    light = torch.nn.functional.normalize(torch.tensor(render.LIGHT), dim=0)
    assert lit[0, 0, 4, 4] == pytest.approx(0.35 + 0.65 * light[2].item())
    assert back[0, 0, 4, 4] == lit[0, 0, 4, 4]  # back faces are flipped
    assert right[0, 0, 4, 4] == pytest.approx(0.35)  # light from the left: ambient only
    assert left[0, 0, 4, 4] == pytest.approx(0.35 - 0.65 * light[0].item())  # edge-on, lit


def test_batch_equals_single_renders_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    pts = torch.nn.functional.normalize(torch.randn(3, 500, 3, generator=gen), dim=-1) * 0.8
    cols = torch.rand(3, 500, 3, generator=gen)
    rgb, depth = render.render_views(pts, pts, cols, num_views=4, resolution=24)
    again_rgb, again_depth = render.render_views(pts, pts, cols, num_views=4, resolution=24)
    assert torch.equal(rgb, again_rgb) and torch.equal(depth, again_depth)
    for b in range(3):
        one = slice(b, b + 1)
        one_rgb, one_depth = render.render_views(
            pts[one], pts[one], cols[one], num_views=4, resolution=24
        )
        assert torch.equal(one_rgb[0], rgb[b]) and torch.equal(one_depth[0], depth[b])


def test_bad_inputs_are_rejected():
    pts = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="normals"):
        render.render_views(pts, torch.zeros(1, 5, 3), None)
    with pytest.raises(ValueError, match="points"):
        render.render_views(torch.zeros(4, 3), None, None)


def test_default_point_size_grows_with_resolution_and_shrinks_with_points():
    assert render.default_point_size(224, 2048) > render.default_point_size(128, 2048)
    assert render.default_point_size(128, 4096) < render.default_point_size(128, 1024)
    assert render.default_point_size(32, 8192) == 1.0
    assert 2.0 <= render.default_point_size(128, 2048) <= 4.0  # a few pixels


def test_default_splats_close_a_sphere_without_growing_it_much():
    gen = torch.Generator().manual_seed(0)
    sphere = torch.nn.functional.normalize(torch.randn(1, 2048, 3, generator=gen), dim=-1)
    _, depth = render.render_views(sphere, None, None, num_views=2, resolution=128)
    centres = (torch.arange(128) + 0.5) / 128 * 2 * render.EXTENT - render.EXTENT  # (W,)
    radius = torch.hypot(centres[:, None], centres[None, :])  # (H, W) from the image centre
    front = depth[..., radius < 0.9]  # (1, 2, P) where only the near hemisphere belongs
    assert (front < render.CAMERA_DISTANCE).float().mean() > 0.9  # few back points show
    reach = (render.default_point_size(128, 2048) + 1) * 2 * render.EXTENT / 128
    assert (depth[..., radius > 1 + reach] == 0).all()  # splats overhang by at most a radius


def test_png_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(1)
    rgb = torch.rand(3, 8, 8, generator=gen)
    render.save_png(rgb, tmp_path / "a.png")
    assert torch.allclose(render.load_png(tmp_path / "a.png"), rgb, atol=0.5 / 255 + 1e-6)
    depth = torch.rand(8, 8, generator=gen) * 3
    depth[0, 0] = 0  # background survives as 0
    render.save_depth_png(depth, tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode in ("I;16", "I")
    back = render.load_depth_png(tmp_path / "d.png")
    assert torch.allclose(back, depth, atol=0.5 / render.DEPTH_SCALE + 1e-6) and back[0, 0] == 0
    with pytest.raises(ValueError, match="16-bit"):
        render.load_depth_png(tmp_path / "a.png")


def test_contact_sheet_tiles_and_labels(tmp_path):
    tiles = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8), torch.zeros(3, 8, 8)])
    sheet = render.contact_sheet(tiles, tmp_path / "sub" / "s.png", ncols=2, labels="abc")
    image = render.load_png(sheet)
    assert image.shape == (3, 2 * (8 + 12), 16)
    assert image[:, :8, :8].max() == 0 and image[:, 20:28, :8].max() == 0  # tiles 0 and 2
    assert image[:, :8, 8:].min() == 1  # tile 1
    assert image[:, 8:20, :8].min() < 1  # a label is drawn under tile 0


def test_renders_a_real_modelnet_chair_upright_and_centred():
    path = MODELNET / "chair" / "chair_0962.txt"
    if not path.is_file():
        pytest.skip("../shared/realdata is absent (only in the development tree)")
    data = torch.from_numpy(np.loadtxt(path, delimiter=",", dtype=np.float32)[::4])  # (2500, 6)
    pts = data[:, :3] - data[:, :3].mean(0)
    pts = pts / pts.norm(dim=1).max()
    rgb, depth = render.render_views(pts[None], data[None, :, 3:], None, resolution=64)
    drawn = (rgb < 1).any(dim=2)  # (1, V, H, W)
    coverage = drawn.float().mean(dim=(-1, -2))  # (1, V)
    assert torch.equal(drawn, depth > 0)
    assert (coverage > 0.08).all() and (coverage < 0.8).all()
    rows, cols = torch.nonzero(depth[0, 0] > 0, as_tuple=True)
    assert abs(cols.float().mean() - 32) < 8 and abs(rows.float().mean() - 32) < 10
    top, bottom = pts[:, 1].argmax(), pts[:, 1].argmin()  # highest and lowest points
    row, _, _ = render.project(pts[None, [top, bottom]], render.camera_poses(12), 64)
    assert (row[0, :, 0] < row[0, :, 1]).all()  # the chair's top is drawn above its feet
