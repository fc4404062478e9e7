import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from mmpd_core.models import create_model
from mmpd_core.stage1 import Stage1Model
from mmpd_core.tasks import zeroshot


class BagOfWords:
    """A text teacher whose embedding counts a few words: checkable by hand."""

    name, modality, dim = "txt", "text", 3
    WORDS = ("chair", "table", "lamp")

    def encode_texts(self, texts):
        return torch.tensor([[t.count(w) + 0.01 for w in self.WORDS] for t in texts])


def test_class_embeddings_average_templates():
    emb = zeroshot.class_embeddings(BagOfWords(), ["chair", "lamp"])
    assert emb.shape == (2, 3) and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    assert emb[0].argmax() == 0 and emb[1].argmax() == 2


def test_evaluate_counts_top1_and_top5():
    model = Stage1Model(
        create_model("point_mae_tiny", depth=1, num_groups=8, group_size=8), {"txt": 3}
    )
    torch.nn.init.zeros_(model.heads["txt"].weight)
    with torch.no_grad():
        model.heads["txt"].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # always says "table"
    emb = torch.eye(3)
    points = torch.rand(4, 64, 3) * 2 - 1
    loader = [{"points": points, "label": torch.tensor([1, 1, 0, 2])}]
    metrics = zeroshot.evaluate(model, "txt", loader, emb)
    assert metrics["top1"] == 0.5 and metrics["top5"] == 1.0  # only 3 classes: top-5 = all
    assert metrics["chance_top1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("suffix", [".npy", ".txt", ".ply"])
def test_load_cloud_formats_and_convention(tmp_path, suffix):
    rng = np.random.default_rng(0)
    pts = (rng.normal(size=(3000, 3)) * [1, 3, 1] + 5).astype(np.float32)  # tall along y
    path = tmp_path / f"c{suffix}"
    if suffix == ".npy":
        np.save(path, pts)
    elif suffix == ".txt":
        np.savetxt(path, np.hstack([pts, pts]), delimiter=",")  # x,y,z,nx,ny,nz like ModelNet
    else:
        vertex = np.array([tuple(p) for p in pts], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
        PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))
    cloud = zeroshot.load_cloud(path, num_points=512)
    assert cloud.shape == (512, 3)
    assert cloud.norm(dim=-1).max() == pytest.approx(1.0, abs=1e-5)
    assert cloud[:, 1].std() > 2 * cloud[:, 0].std()  # y stays up
    z_up = zeroshot.load_cloud(path, up="z", num_points=512)
    assert z_up[:, 2].std() > 2 * z_up[:, 0].std()  # the tall axis moved off y


def test_load_cloud_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="point cloud not found"):
        zeroshot.load_cloud(tmp_path / "none.npy")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((10, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        zeroshot.load_cloud(bad)
    with pytest.raises(ValueError, match="unsupported"):
        (tmp_path / "x.obj").write_text("v 0 0 0")
        zeroshot.load_cloud(tmp_path / "x.obj")
