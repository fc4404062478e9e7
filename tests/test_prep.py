import json

import numpy as np
import pytest
import torch

from mmpd_core import config
from mmpd_core.data import datasets, prep, readers, render
from mmpd_core.data.shapes import CATEGORIES
from mmpd_core.data.synthetic import SCAN_CATEGORIES

TINY = dict(
    pretrain_train_per_class=1,
    pretrain_test_per_class=1,
    pretrain_points=512,
    modelnet_train_per_class=2,
    modelnet_test_per_class=1,
    modelnet_points=128,
    scan_train_per_class=1,
    scan_test_per_class=1,
    scan_points=256,
    fewshot_ways=(5,),
    fewshot_shots=(1,),
    fewshot_folds=2,
    fewshot_query=1,
    render_views=2,
    render_resolution=16,
    captions_per_shape=2,
)


def tiny_config(tmp_path, name="out", **overrides):
    return config.load(
        "data_prep",
        smoke=False,
        out_dir=str(tmp_path / name),
        contact_sheet=str(tmp_path / f"{name}_sheet.png"),
        caption_cache=str(tmp_path / f"{name}_captions"),
        **{**TINY, **overrides},
    )


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    cfg = tiny_config(tmp)
    return cfg, prep.run_stage(cfg)


def test_embedded_layouts_read_back(embedded):
    _, manifest = embedded
    roots = {k: config.resolve(v) for k, v in manifest["roots"].items()}
    counts = manifest["counts"]
    assert counts["shapenet55"]["train"] == {c: 1 for c in CATEGORIES}
    assert sum(counts["modelnet40"]["train"].values()) == 2 * len(CATEGORIES)
    assert set(counts["scanobjectnn"]) == {
        f"{v}/{s}" for v in ("obj_only", "obj_bg", "pb_t50_rs") for s in ("train", "test")
    }
    assert counts["fewshot_folds"] == 2
    train = datasets.modelnet40_dat_dataset(roots["modelnet40"], "train", 128, dat_points=128)
    assert len(train) == 2 * len(CATEGORIES) == 80 and train[0]["points"].shape == (128, 3)
    pts, labels = readers.read_scanobjectnn(roots["scanobjectnn"], "pb_t50_rs", "test", 15)
    assert pts.shape == (15, 256, 3) and sorted(labels) == list(range(15))
    names = (roots["scanobjectnn"] / prep.SCAN_NAMES).read_text().split()
    assert names == list(SCAN_CATEGORIES)
    for subset in ("obj_only", "obj_bg", "pb_t50_rs"):
        assert counts["scanobjectnn"][f"{subset}/train"] == {c: 1 for c in SCAN_CATEGORIES}
    fold = readers.read_fewshot_fold(roots["fewshot"], 5, 1, 0)
    assert fold["train"][0].shape == (5, 128, 3) and sorted(fold["test"][1]) == [0, 1, 2, 3, 4]


def test_renders_and_captions_follow_ulip_layout(embedded):
    cfg, manifest = embedded
    renders = config.resolve(manifest["renders"])
    assert manifest["views_degrees"] == [0, 180]
    rgb_path, depth_path = render.render_paths(renders, "chair-1000000.npy", 180)
    assert rgb_path.name == "chair-1000000_r_180.png" and rgb_path.parent.name == "chair-1000000"
    image, depth = render.load_png(rgb_path), render.load_depth_png(depth_path)
    assert image.shape == (3, 16, 16) and (image < 1).any() and (depth > 0).any()
    texts = json.loads(config.resolve(manifest["captions"]).read_text())
    assert len(texts) == 2 * len(CATEGORIES)
    assert all(len(v) == 2 for v in texts.values())
    assert all("chair" in c for c in texts["chair-0000000.npy"])
    assert prep.contact_sheet(cfg, manifest).is_file()


def test_same_seed_same_bytes_and_other_seed_differs(embedded, tmp_path):
    _, manifest = embedded
    again = prep.run_stage(tiny_config(tmp_path, "again"))
    assert again["content_sha256"] == manifest["content_sha256"]
    written = (tmp_path / "again" / "manifest.json").read_bytes()
    assert "timings_s" in again and b"timings_s" not in written
    prep.run_stage(tiny_config(tmp_path, "again"))  # a rerun: the same bytes, for DVC too
    assert (tmp_path / "again" / "manifest.json").read_bytes() == written
    other = prep.run_stage(tiny_config(tmp_path, "other", seed=1))
    assert other["content_sha256"] != manifest["content_sha256"]


def test_real_source_renders_real_layout(tmp_path):
    real = tmp_path / "real"
    rng = np.random.default_rng(0)
    clouds = {
        f"0269115{i}-a-b{i}.npy": rng.normal(size=(600, 3)).astype(np.float32) for i in range(3)
    }
    readers.write_shapenet55(
        real / prep.SHAPENET,
        {"train": dict(list(clouds.items())[:2]), "test": dict(list(clouds.items())[2:])},
    )
    names = ["airplane", "night_stand"]
    shapes = {
        "train": {
            "airplane_0001": rng.normal(size=(50, 6)),
            "night_stand_0002": rng.normal(size=(50, 6)),
        }
    }
    shapes["test"] = {"airplane_0003": rng.normal(size=(50, 6))}
    readers.write_modelnet40(real / prep.MODELNET, names, shapes)
    for subset in ("obj_only", "obj_bg", "pb_t50_rs"):
        for split in ("train", "test"):
            readers.write_scanobjectnn(
                real / prep.SCAN, subset, split, rng.normal(size=(4, 64, 3)), [0, 1, 2, 14]
            )
    cfg = tiny_config(tmp_path, source="real", real_root=str(real))
    manifest = prep.run_stage(cfg)
    assert manifest["roots"]["shapenet55"] == str(real / prep.SHAPENET)
    assert manifest["counts"]["shapenet55"]["train"] == {"02691150": 1, "02691151": 1}
    assert manifest["counts"]["modelnet40"]["test"] == {"airplane": 1}
    rgb_path, _ = render.render_paths(config.resolve(manifest["renders"]), "02691152-a-b2.npy", 0)
    assert rgb_path.is_file()
    assert not (real / prep.SHAPENET / "renders").exists()  # nothing written into the real data


def test_missing_real_dataset_names_the_file(tmp_path):
    cfg = tiny_config(tmp_path, source="real", real_root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere/ShapeNet55-34/ShapeNet-55/train\.txt"):
        prep.run_stage(cfg)


def test_real_shapes_are_rendered_whole_normalised_and_shaded(tmp_path):
    """The teachers should see a ShapeNet cloud as the encoder does: all its stored points,
    on the unit sphere, shaded with estimated normals (not 2,048 raw points, flat)."""
    rng = np.random.default_rng(1)
    cloud = (rng.normal(size=(3000, 3)) * [3.0, 1.0, 0.5] + 7.0).astype(np.float32)
    readers.write_shapenet55(tmp_path, {"train": {"02691156-x.npy": cloud}})
    points, normals, colors = prep._surfaces(tmp_path, ["02691156-x.npy"], {}, "cpu")
    assert points.shape == (1, 3000, 3) and colors is None
    assert torch.allclose(points.mean(1), torch.zeros(1, 3), atol=1e-5)
    assert points.norm(dim=-1).max().item() == pytest.approx(1.0)
    assert torch.allclose(normals.norm(dim=-1), torch.ones(1, 3000), atol=1e-4)


def test_released_ulip_renders_are_checked_and_used_as_they_are(embedded, tmp_path):
    _, manifest = embedded
    ulip = config.resolve(manifest["renders"])  # a folder in the ULIP layout
    again = tiny_config(tmp_path, "ulip", renders_dir=str(ulip))
    used = prep.run_stage(again)
    assert config.resolve(used["renders"]) == ulip
    assert not (tmp_path / "ulip" / prep.SHAPENET / "renders").exists()  # nothing rendered
    name = next(iter(json.loads(config.resolve(used["captions"]).read_text())))
    missing = render.render_paths(ulip, name, manifest["views_degrees"][1])[1]
    moved = missing.rename(missing.with_suffix(".bak"))
    try:
        with pytest.raises(FileNotFoundError, match=f"1 rendered views missing, e.g. {missing}"):
            prep.run_stage(tiny_config(tmp_path, "ulip2", renders_dir=str(ulip)))
    finally:
        moved.rename(missing)
