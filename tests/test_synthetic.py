import numpy as np
import pytest

from mmpd_core.data.captions import (
    TEMPLATE_SETS,
    ULIP_TEMPLATES,
    ZERO_SHOT_TEMPLATES,
    class_prompts,
    shape_captions,
)
from mmpd_core.data.primitives import box, cylinder, sphere, torus
from mmpd_core.data.shapes import CATEGORIES, sample_shape
from mmpd_core.data.synthetic import (
    INDEX_BLOCKS,
    SCAN_SUBSETS,
    clean_clouds,
    fewshot_episode,
    scan_cloud,
    shape_index,
    visible,
)


@pytest.mark.parametrize(
    "part, area",
    [
        (box("b", (1.0, 2.0, 3.0), (0, 0, 0)), 2 * (2 + 6 + 3)),
        (cylinder("c", 0.5, 0.0, 2.0), 2 * np.pi * 0.5 * 2 + 2 * np.pi * 0.25),
        (torus("t", 1.0, 0.2, segments=64), 4 * np.pi**2 * 1.0 * 0.2),
        (sphere("s", 1.0, segments=64), 4 * np.pi),
    ],
)
def test_primitive_areas_and_surface_samples(part, area):
    assert part.area() == pytest.approx(area, rel=2e-3)
    pts, nrm = part.sample(4000, np.random.default_rng(0))
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-6)
    if isinstance(part, type(sphere("s", 1.0))) and part.name == "s":
        assert np.allclose(np.linalg.norm(pts, axis=1), 1.0, atol=0.01)  # on the surface
        assert (np.einsum("ij,ij->i", pts, nrm) > 0.99).all()  # outward normals


def test_box_samples_are_area_weighted_and_on_faces():
    part = box("b", (1.0, 2.0, 4.0), (0, 0, 0))
    pts, nrm = part.sample(60000, np.random.default_rng(1))
    on_face = np.isclose(np.abs(pts), [0.5, 1.0, 2.0]).any(axis=1)
    assert on_face.all()
    share_x = (np.abs(nrm[:, 0]) == 1).mean()  # +-x faces: 2 * 2 * 4 = 16 of 28
    assert share_x == pytest.approx(16 / 28, abs=0.01)


def test_cylinder_side_is_uniform_along_height_and_caps_uniform_in_area():
    pts, nrm = cylinder("c", 1.0, 0.0, 1.0).sample(40000, np.random.default_rng(2))
    side = np.abs(nrm[:, 1]) < 0.5
    assert np.histogram(pts[side, 1], bins=4, range=(0, 1))[0].std() < 60  # ~uniform in y
    cap = ~side
    assert (np.hypot(pts[cap, 0], pts[cap, 2]) < np.sqrt(0.5)).mean() == pytest.approx(
        0.5, abs=0.02
    )


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_is_reproducible_and_normalised(category):
    a = sample_shape(category, 7, seed=3, num_points=1024)
    b = sample_shape(category, 7, seed=3, num_points=1024)
    c = sample_shape(category, 8, seed=3, num_points=1024)
    assert np.array_equal(a.points, b.points) and not np.array_equal(a.points, c.points)
    assert a.points.shape == (1024, 3) and a.points.dtype == np.float32
    assert np.linalg.norm(a.points, axis=1).max() == pytest.approx(1.0, abs=1e-5)
    assert np.abs(a.points.mean(0)).max() < 1e-5
    assert a.colors.min() >= 0 and a.colors.max() <= 1 and a.part_ids.max() < len(a.part_names)
    assert a.attributes["colour"] and isinstance(a.attributes["features"], list)


def test_categories_vary_within_class():
    """Proportions and optional parts differ from shape to shape (wide intra-class variation)."""
    for category in CATEGORIES:
        extents = [np.ptp(sample_shape(category, i, 0, 512).points, axis=0) for i in range(8)]
        assert np.std(extents, axis=0).max() > 0.02, category


def test_shapes_are_upright():
    table = sample_shape("table", 0, 0, 4096)
    top = table.part_ids == table.part_names.index("top")
    assert table.points[top, 1].mean() > table.points[~top, 1].mean()  # y is up


def test_roles_use_disjoint_shapes():
    starts = sorted(INDEX_BLOCKS.values())
    assert len(set(starts)) == len(starts)
    pretrain = {shape_index("pretrain", s, i) for s in ("train", "test") for i in range(500)}
    downstream = {
        shape_index(role, s, i)
        for role in ("modelnet", "scanobjectnn")
        for s in ("train", "test")
        for i in range(500)
    }
    assert not pretrain & downstream
    a = clean_clouds("pretrain", "train", 2, 256, seed=0)
    b = clean_clouds("modelnet", "train", 2, 256, seed=0)
    assert not any(np.array_equal(p, q) for p in a.points for q in b.points)
    with pytest.raises(ValueError, match="outside its block"):
        shape_index("pretrain", "train", 10**6)


def test_visibility_keeps_the_near_side():
    pts, _ = sphere("s", 1.0).sample(5000, np.random.default_rng(0))
    seen = visible(pts, np.array([0.0, 0.0, 1.0]))
    assert (pts[seen, 2] > 0).all() and 0.25 < seen.mean() < 0.5  # grazing points drop out


@pytest.mark.parametrize("subset", SCAN_SUBSETS)
def test_scans_are_partial_normalised_clouds(subset):
    obj = sample_shape("chair", 0, 0, 4096).points
    cloud = scan_cloud(obj, subset, np.random.default_rng(0), clutter_seed=6_000_000)
    assert cloud.shape == (2048, 3) and np.isfinite(cloud).all()
    assert np.linalg.norm(cloud, axis=1).max() == pytest.approx(1.0, abs=1e-5)
    again = scan_cloud(obj, subset, np.random.default_rng(0), clutter_seed=6_000_000)
    assert np.array_equal(cloud, again)
    with pytest.raises(ValueError, match="unknown ScanObjectNN subset"):
        scan_cloud(obj, "hardest", np.random.default_rng(0), 0)


def test_fewshot_episode_structure():
    train_labels, test_labels = np.repeat(np.arange(6), 25), np.repeat(np.arange(6), 22)
    ep = fewshot_episode(train_labels, test_labels, 5, 10, 20, np.random.default_rng(0))
    assert len(ep["support"]) == 50 and len(ep["query"]) == 100 and len(set(ep["classes"])) == 5
    assert np.array_equal(train_labels[ep["support"]], ep["classes"][ep["support_label"]])
    assert np.array_equal(test_labels[ep["query"]], ep["classes"][ep["query_label"]])
    assert len(set(ep["support"])) == 50
    with pytest.raises(ValueError, match="needed"):
        fewshot_episode(train_labels, test_labels, 5, 30, 20, np.random.default_rng(0))


def test_captions_are_diverse_and_describe_the_shape():
    shape = sample_shape("chair", 0, 0, 256)
    caps = shape_captions("chair", shape.attributes, 5, np.random.default_rng(0))
    assert len(caps) == len(set(caps)) >= 3
    assert all("chair" in c for c in caps)
    features = shape.attributes["features"]
    assert any(f in c for c in caps for f in features)
    assert class_prompts("monitor")[0] == "a point cloud model of computer monitor."
    assert len(class_prompts("cup")) == len(ZERO_SHOT_TEMPLATES)


def test_ulip_templates_are_its_64_distinct_prompts_for_the_paper_rows():
    assert TEMPLATE_SETS == {"mmpd20": ZERO_SHOT_TEMPLATES, "ulip64": ULIP_TEMPLATES}
    assert len(ULIP_TEMPLATES) == len(set(ULIP_TEMPLATES)) == 64
    assert all(t.count("{}") == 1 for t in ULIP_TEMPLATES)
    prompts = class_prompts("monitor", ULIP_TEMPLATES)
    assert prompts[:2] == ["a point cloud model of computer monitor.",
                           "There is a computer monitor in the scene."]  # fmt: skip
