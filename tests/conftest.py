"""Shared fixtures. Anything from ../shared (upstream reference outputs, real ModelNet40 shapes)
is optional: tests that need it skip cleanly in a user's clone, where it is absent."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

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


BIN = Path(sys.executable).parent


def run(args, cwd):
    """Run a command with the venv's tools on PATH; fail with its output."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def compare_arrays(ours: dict, reference, tol: float) -> tuple[list[str], dict[str, float]]:
    """Every array of an upstream reference ``.npz`` against our tensors of the same name:
    integer and boolean arrays exactly, float arrays to ``tol``. Returns the problems and the
    max abs error of each float array."""
    problems, errors = [], {}
    for name, expected in reference.items():
        got = ours[name].detach().numpy()
        if got.shape != expected.shape:
            problems.append(f"{name}: shape {got.shape} != {expected.shape}")
        elif expected.dtype.kind in "bi":
            if not np.array_equal(got, expected):
                problems.append(f"{name}: {np.sum(got != expected)} entries differ")
        else:
            errors[name] = float(np.abs(got - expected).max())
            if errors[name] > tol:
                problems.append(f"{name}: max abs error {errors[name]:.2e}")
    return problems, errors


def copy_repo(dest: Path, **params) -> Path:
    """The tracked and untracked-but-not-ignored files of the repository in ``dest``, with
    top-level ``params`` set in its params.yaml, committed (dvclive wants a commit)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    edit_params(dest, params)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], dest)
    return dest


def edit_params(repo: Path, values: dict) -> None:
    """Set dotted keys (``"teacher_cache.paper.teachers"``) in ``repo``'s params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


PRETRAINING_NOTEBOOKS = {"notebooks/10_pretrain_stage1.ipynb": "pretrain_stage1",
                         "notebooks/20_pretrain_stage2.ipynb": "pretrain_stage2"}  # fmt: skip


def variant_groups(pipeline: dict) -> dict[str, tuple[str, list[str]]]:
    """{dvc stage: (pretrain_stage1 | pretrain_stage2, the variants it runs)} for the stages
    of a dvc.yaml ``stages`` mapping that run a pretraining notebook with ``-p variant a,b``."""
    found = {}
    for name, stage in pipeline.items():
        argv = shlex.split(stage.get("cmd", ""))
        section = next((PRETRAINING_NOTEBOOKS[a] for a in argv if a in PRETRAINING_NOTEBOOKS), None)
        if section and "variant" in argv:
            found[name] = (section, argv[argv.index("variant") + 1].split(","))
    return found
