import numpy as np
import pytest
import torch
from conftest import unit_sphere_cloud

from mmpd_core.geometry import (
    chamfer_distance,
    farthest_point_sample,
    gather_points,
    group,
    knn,
)


def fps_kernel_reference(points: np.ndarray, n: int, skip_origin: bool = True, start: int = 0):
    """Literal port of the pointnet2_ops kernel's loops for one cloud, float32 (slow, plain)."""
    pts = points.astype(np.float32)
    temp = np.full(len(pts), 1e10, dtype=np.float32)
    out, old = [start], start
    for _ in range(1, n):
        best, besti = np.float32(-1.0), 0
        x1, y1, z1 = pts[old]
        for k, (x2, y2, z2) in enumerate(pts):
            if skip_origin and x2 * x2 + y2 * y2 + z2 * z2 <= np.float32(1e-3):
                continue
            d = (x2 - x1) * (x2 - x1) + (y2 - y1) * (y2 - y1) + (z2 - z1) * (z2 - z1)
            temp[k] = min(d, temp[k])
            if temp[k] > best:
                best, besti = temp[k], k
        old = besti
        out.append(old)
    return out


@pytest.mark.parametrize("skip_origin", [True, False])
def test_fps_equals_kernel_reference(skip_origin):
    clouds = unit_sphere_cloud(3, 200, seed=1)
    clouds = clouds / clouds.norm(dim=-1, keepdim=True)  # on the sphere: the origin is far out
    clouds[:, 7] = 0.0  # a point at the origin, which the kernel never picks
    clouds[:, 11] = 0.01  # squared norm 3e-4: also never picked
    got = farthest_point_sample(clouds, 24, skip_origin=skip_origin)
    for b in range(3):
        expected = fps_kernel_reference(clouds[b].numpy(), 24, skip_origin)
        assert got[b].tolist() == expected
    picked_origin = bool(((got == 7) | (got == 11)).any())
    assert picked_origin != skip_origin  # plain FPS does pick the far-out origin point here


def test_fps_hand_example():
    line = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [-5, 0, 0], [1.5, 0, 0]]])
    assert farthest_point_sample(line, 3).tolist() == [[0, 2, 3]]
    assert farthest_point_sample(line, 3, skip_origin=False).tolist() == [[0, 2, 1]]


def test_fps_random_start_uses_generator():
    clouds = unit_sphere_cloud(4, 100)
    a = farthest_point_sample(clouds, 10, generator=torch.Generator().manual_seed(3))
    b = farthest_point_sample(clouds, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    starts = torch.randint(100, (4,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[:, 0], starts)
    for i in range(4):
        assert a[i].tolist() == fps_kernel_reference(clouds[i].numpy(), 10, start=int(starts[i]))


@pytest.mark.parametrize("generator", [None, 5])
def test_fps_cpu_chunks_match_one_pass(monkeypatch, generator):
    """Chunks of 3 clouds (CPU_CHUNK_POINTS / 100 points; the last chunk holds 1) give the
    indices of the one-pass loop, random starts included."""
    from mmpd_core import geometry

    clouds = unit_sphere_cloud(7, 100, seed=4)

    def run():
        g = None if generator is None else torch.Generator().manual_seed(generator)
        return farthest_point_sample(clouds, 12, generator=g)

    whole = run()
    monkeypatch.setattr(geometry, "CPU_CHUNK_POINTS", 300)
    chunked = run()
    assert torch.equal(chunked, whole)
    start = int(whole[3, 0])
    assert chunked[3].tolist() == fps_kernel_reference(clouds[3].numpy(), 12, start=start)


def test_fps_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        farthest_point_sample(torch.zeros(10, 3), 4)
    with pytest.raises(ValueError, match="cannot sample 20 centres from clouds of 10 points"):
        farthest_point_sample(torch.zeros(1, 10, 3), 20)


def test_knn_sorted_nearest_first():
    clouds = unit_sphere_cloud(2, 300, seed=2)
    query = clouds[:, :5]
    idx = knn(query, clouds, 8)
    exact = torch.cdist(query.double(), clouds.double())
    expected = exact.argsort(dim=-1)[..., :8]
    assert torch.equal(idx, expected)
    assert idx[..., 0].tolist() == [[0, 1, 2, 3, 4]] * 2  # each query point is its own nearest


def test_group_shapes_and_reconstruction():
    clouds = unit_sphere_cloud(2, 256, seed=3)
    neighborhood, centers = group(clouds, 16, 8)
    assert neighborhood.shape == (2, 16, 8, 3) and centers.shape == (2, 16, 3)
    assert torch.equal(centers, gather_points(clouds, farthest_point_sample(clouds, 16)))
    absolute = neighborhood + centers.unsqueeze(2)
    assert torch.allclose(absolute[:, :, 0], centers)  # each centre is its own nearest point
    exact = "donot_use_mm_for_euclid_dist"
    members = torch.cdist(absolute.reshape(2, -1, 3), clouds, compute_mode=exact).min(-1).values
    assert members.max() < 1e-6  # every grouped point is a point of the cloud


def test_group_too_few_points():
    with pytest.raises(ValueError, match="too small for 64 groups of 32 points"):
        group(torch.randn(1, 20, 3), 64, 32)


def test_group_matches_upstream_reference(pointmae_reference):
    ref = np.load(pointmae_reference / "pointmae_reference.npz")
    neighborhood, centers = group(torch.from_numpy(ref["points"]), 32, 16)
    np.testing.assert_allclose(centers.numpy(), ref["centers"], atol=1e-6)
    np.testing.assert_allclose(neighborhood.numpy(), ref["neighborhood"], atol=1e-6)


def test_chamfer_hand_computed():
    pred = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    target = torch.tensor([[[0.0, 0, 0], [0, 2, 0]]])
    # dist1 = [0, 1]; dist2 = [0, 4] (nearest of (0,2,0) is the origin)
    assert chamfer_distance(pred, target, norm=2).item() == pytest.approx(0.5 + 2.0)
    assert chamfer_distance(pred, target, norm=1).item() == pytest.approx((0.5 + 1.0) / 2)


def test_chamfer_matches_brute_force_and_has_gradients():
    gen = torch.Generator().manual_seed(4)
    pred = torch.randn(3, 20, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 30, 3, generator=gen, dtype=torch.float64)
    d = torch.stack([torch.cdist(p, t) ** 2 for p, t in zip(pred, target, strict=True)])
    expected = d.min(2).values.mean() + d.min(1).values.mean()
    assert torch.allclose(chamfer_distance(pred, target), expected)
    assert torch.autograd.gradcheck(lambda p: chamfer_distance(p, target, norm=1), (pred,))


def test_knn_is_float32_under_bf16_autocast():
    """Upstream computes neighbours in float32; under autocast the distance matmul would run
    in bf16 and change about 1.5 % of the neighbours of 8 x 1024 points."""
    from mmpd_core.geometry import knn

    points = unit_sphere_cloud(8, 1024, seed=3)
    centers = points[:, ::16]  # (8, 64, 3)
    exact = knn(centers, points, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(knn(centers, points, 32), exact)
        from mmpd_core.geometry import square_distance

        rough = square_distance(centers, points).topk(32, dim=-1, largest=False).indices
    assert not torch.equal(rough, exact)  # what the guard prevents


def test_estimated_normals_of_a_sphere_point_outward():
    from mmpd_core.geometry import estimate_normals

    points = torch.randn(2, 2000, 3, generator=torch.Generator().manual_seed(0))
    points = points / points.norm(dim=-1, keepdim=True)
    normals = estimate_normals(points, k=16, chunk=300)  # chunks give the same neighbours
    assert torch.allclose(normals.norm(dim=-1), torch.ones(2, 2000), atol=1e-5)
    assert (normals * points).sum(-1).min() > 0.98
