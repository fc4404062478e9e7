"""Transforms of the upstream recipes: hand-checkable values, bounds and seeding."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from mmpd_core.data.transforms import (
    fps_sample,
    normalize_unit_sphere,
    random_sample,
    rotate_up,
    scale_translate,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normalize_unit_sphere_known_cloud():
    cloud = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 2, 0], [0, -2, 0]]) + 5.0
    expected = torch.tensor([[0.5, 0, 0], [-0.5, 0, 0], [0, 1, 0], [0, -1, 0]])
    torch.testing.assert_close(normalize_unit_sphere(cloud), expected)


def test_normalize_unit_sphere_batched_is_per_cloud():
    clouds = torch.randn(4, 50, 3, generator=gen()) * torch.tensor([1.0, 3, 10, 0.1]).view(4, 1, 1)
    out = normalize_unit_sphere(clouds)
    torch.testing.assert_close(out[2], normalize_unit_sphere(clouds[2]))
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(4, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.norm(dim=-1).amax(dim=1), torch.ones(4))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_normalize_unit_sphere_rejects_non_finite(bad):
    cloud = torch.randn(10, 3, generator=gen())
    cloud[3, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        normalize_unit_sphere(cloud)


@pytest.mark.parametrize("value", [0.0, 0.1, 1000.0])
def test_normalize_unit_sphere_rejects_degenerate_cloud(value):
    with pytest.raises(ValueError, match="all 7 points coincide"):
        normalize_unit_sphere(torch.full((7, 3), value))


def test_random_sample_picks_distinct_rows_reproducibly():
    cloud = torch.arange(60, dtype=torch.float32).view(20, 3)  # every row distinct
    picked = random_sample(cloud, 8, gen(3))
    assert picked.shape == (8, 3)
    rows = (picked[:, 0] / 3).long()  # row index of each picked point
    assert len(set(rows.tolist())) == 8
    torch.testing.assert_close(picked, cloud[rows])
    torch.testing.assert_close(random_sample(cloud, 8, gen(3)), picked)
    assert not torch.equal(random_sample(cloud, 8, gen(4)), picked)


def test_random_sample_names_sizes_when_too_few_points():
    with pytest.raises(ValueError, match=r"1024 points .* cloud of 100"):
        random_sample(torch.zeros(100, 3), 1024, gen())


def test_fps_sample_is_plain_fps_from_index_zero():
    cloud = torch.tensor([[5.0, 0, 0], [0, 0, 0], [1, 0, 0], [-5, 0, 0]])
    # From (5,0,0): (-5,0,0) is farthest; then the origin (distance 5 to both) beats (1,0,0),
    # which the kernel's origin skip would have picked instead.
    expected = torch.tensor([[5.0, 0, 0], [-5, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(fps_sample(cloud, 3), expected)


def test_scale_translate_bounds_and_seed():
    clouds = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]).expand(256, 2, 3)
    out = scale_translate(clouds, gen(1))
    shift, scale = out[:, 1], out[:, 0] - out[:, 1]  # each (256, 3)
    assert shift.min() >= -0.2 and shift.max() <= 0.2
    assert scale.min() >= 2 / 3 - 1e-6 and scale.max() <= 3 / 2 + 1e-6
    assert scale.min() < 0.75 and scale.max() > 1.4  # the whole range is used
    assert len(torch.unique(scale[:, 0])) == 256  # one draw per cloud
    torch.testing.assert_close(scale_translate(clouds, gen(1)), out)


def test_rotate_up_keeps_y_and_norms():
    cloud = torch.randn(100, 3, generator=gen())
    out = rotate_up(cloud, gen(2))
    torch.testing.assert_close(out[:, 1], cloud[:, 1])
    torch.testing.assert_close(out.norm(dim=-1), cloud.norm(dim=-1))
    torch.testing.assert_close(out[:, [0, 2]].norm(dim=-1), cloud[:, [0, 2]].norm(dim=-1))
    torch.testing.assert_close(rotate_up(cloud, gen(2)), out)


def test_rotate_up_angle_matches_upstream_matrix_and_covers_circle():
    x_axis = torch.tensor([[1.0, 0.0, 0.0]]).expand(1000, 1, 3)
    out = rotate_up(x_axis, gen(5))[:, 0]  # (1000, 3): first row of each R = (cos, 0, sin)
    angle = torch.atan2(out[:, 2], out[:, 0]) % (2 * math.pi)
    torch.testing.assert_close(out[:, 1], torch.zeros(1000))
    counts = torch.histc(angle, bins=4, min=0, max=2 * math.pi)
    assert counts.min() > 200  # uniform over [0, 2π): every quadrant gets about 250


def test_transforms_chain_with_torchvision_compose():
    compose = pytest.importorskip("torchvision.transforms").Compose
    cloud = torch.randn(64, 3, generator=gen())

    def pipeline(seed):
        g = gen(seed)
        steps = [partial(random_sample, n=16, generator=g), normalize_unit_sphere]
        return compose([*steps, partial(scale_translate, generator=g)])

    out = pipeline(7)(cloud)
    assert out.shape == (16, 3)
    torch.testing.assert_close(pipeline(7)(cloud), out)
