"""Shared fixtures. Anything from ../shared (upstream reference outputs, real ModelNet40 shapes)
is optional: tests that need it skip cleanly in a user's clone, where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
POINTMAE_REFERENCE = SHARED / "reference" / "pointmae_small"


@pytest.fixture
def pointmae_reference() -> Path:
    if not (POINTMAE_REFERENCE / "pointmae_reference.npz").is_file():
        pytest.skip("../shared/reference/pointmae_small is absent (only in the development tree)")
    return POINTMAE_REFERENCE


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def unit_sphere_cloud(batch: int, num_points: int, seed: int = 0) -> torch.Tensor:
    """Random clouds normalised like the datasets: centred, max norm 1."""
    gen = torch.Generator().manual_seed(seed)
    pts = torch.randn(batch, num_points, 3, generator=gen)
    pts = pts - pts.mean(dim=1, keepdim=True)
    return pts / pts.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
