import re

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
from mmpd_core.data.readers import SCANOBJECTNN_CLASSES
from mmpd_core.data.shapes import BUILDERS, CATEGORIES, sample_shape
from mmpd_core.data.synthetic import (
    INDEX_BLOCKS,
    SCAN_CATEGORIES,
    SCAN_SUBSETS,
    clean_clouds,
    cut_holes,
    density_weights,
    fewshot_episode,
    modelnet_clouds,
    modelnet_nuisances,
    nuisance_rng,
    scan_cloud,
    scan_clouds,
    scan_objects,
    shape_index,
    visible,
)

MODELNET40 = (
    "airplane bathtub bed bench bookshelf bottle bowl car chair cone cup curtain desk door "
    "dresser flower_pot glass_box guitar keyboard lamp laptop mantel monitor night_stand person "
    "piano plant radio range_hood sink sofa stairs stool table tent toilet tv_stand vase "
    "wardrobe xbox"
).split()

# Words a caption's attributes must not use for the shape's own category (names, synonyms).
SYNONYMS = {
    "airplane": ["plane", "aircraft", "jet"], "bathtub": ["tub", "bath"],
    "bookshelf": ["bookcase", "shelf"], "car": ["vehicle", "automobile"],
    "chair": ["armchair"], "cone": ["pylon"], "cup": ["mug"], "curtain": ["drape", "drapes"],
    "desk": ["workstation"], "dresser": ["chest", "cabinet", "commode"],
    "flower_pot": ["pot", "planter"], "glass_box": ["glass", "vitrine", "aquarium"],
    "keyboard": ["keypad"], "lamp": ["light"], "laptop": ["notebook", "computer"],
    "mantel": ["fireplace", "mantelpiece"], "monitor": ["screen", "display", "widescreen"],
    "night_stand": ["nightstand", "bedside"], "person": ["human", "man", "woman", "figure"],
    "piano": ["grand", "keyboard"], "plant": ["tree", "bush", "houseplant"],
    "radio": ["stereo", "boombox"], "range_hood": ["hood", "extractor"],
    "sink": ["basin", "washbasin"], "sofa": ["couch", "settee"], "stairs": ["staircase", "steps"],
    "table": ["tabletop"], "tent": ["shelter"], "toilet": ["lavatory", "wc"],
    "tv_stand": ["stand", "console"], "vase": ["urn"], "wardrobe": ["closet", "armoire"],
    "xbox": ["console", "gaming"],
}  # fmt: skip


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


def test_the_forty_modelnet40_categories_have_builders():
    assert CATEGORIES == tuple(sorted(BUILDERS)) == tuple(MODELNET40)


def _own_words(category: str) -> list[str]:
    return [
        category,
        category.replace("_", " "),
        category.replace("_", ""),
        *SYNONYMS.get(category, []),
    ]


@pytest.mark.parametrize("category", CATEGORIES)
def test_caption_attributes_never_name_the_category(category):
    """Attributes describe parts, counts and proportions: the category is for the template."""
    words = _own_words(category)
    for index in range(12):
        attributes = sample_shape(category, index, seed=5, num_points=64).attributes
        text = " ".join(attributes["adjectives"] + attributes["features"]).lower()
        for word in words:
            assert not re.search(rf"\b{re.escape(word)}(e?s)?\b", text), (category, word, text)


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


def test_modelnet_nuisances_are_seeded_by_category_index_and_seed():
    a = modelnet_clouds("train", 1, 512, seed=0)
    b = modelnet_clouds("train", 1, 512, seed=0)
    c = modelnet_clouds("train", 1, 512, seed=1)
    assert a.points.shape == (40, 512, 3) and a.normals.shape == (40, 512, 3)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.normals, b.normals)
    assert not np.array_equal(a.points, c.points)
    assert np.array_equal(a.labels, np.arange(40))
    assert np.allclose(np.linalg.norm(a.normals, axis=-1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(a.points, axis=-1).max(-1), 1.0, atol=1e-5)


def test_modelnet_nuisances_change_the_clean_cloud_without_rotating_it():
    shape = sample_shape("table", 3, 0, 4096)
    clouds = [modelnet_nuisances(shape, 1024, nuisance_rng("table", 3, s))[0] for s in range(6)]
    clean = shape.points
    # anisotropic scale: the extents' ratios change from draw to draw
    ratios = [np.ptp(c, 0) / np.ptp(clean, 0) for c in clouds]
    assert max(np.ptp(r / r.mean()) for r in ratios) > 0.1
    # no rotation: the top stays up (the highest points lie above the legs' floor points)
    for cloud in clouds:
        assert cloud[:, 1].max() - cloud[:, 1].min() > 0.5 * np.ptp(clean[:, 1])
        top, low = cloud[cloud[:, 1] > np.quantile(cloud[:, 1], 0.9)], cloud[:, 1].min()
        assert np.ptp(top[:, 0]) > 0.5 * np.ptp(cloud[:, 0]) and low < 0


def test_missing_regions_empty_their_balls():
    points = sample_shape("dresser", 0, 0, 4096).points
    keep = cut_holes(points, 3, np.random.default_rng(4))
    again = cut_holes(points, 3, np.random.default_rng(4))
    assert np.array_equal(keep, again) and 0 < (~keep).sum() < len(points) // 2
    assert cut_holes(points, 0, np.random.default_rng(4)).all()
    # every removed point has removed neighbours: holes are balls, not scattered points
    gone = points[~keep]
    nearest = np.sort(np.linalg.norm(gone[:, None] - gone[None], axis=-1), axis=1)[:, 1]
    assert np.median(nearest) < 0.05


def test_density_is_not_area_weighted():
    shape = sample_shape("chair", 1, 0, 4096)
    weights = density_weights(shape, np.random.default_rng(0))
    per_part = [weights[shape.part_ids == p].mean() for p in np.unique(shape.part_ids)]
    assert weights.min() > 0 and max(per_part) / min(per_part) > 1.2


def test_scan_categories_are_fifteen_builders_in_release_order():
    assert len(SCAN_CATEGORIES) == len(set(SCAN_CATEGORIES)) == len(SCANOBJECTNN_CLASSES) == 15
    assert set(SCAN_CATEGORIES) <= set(CATEGORIES)
    same = [a for a, b in zip(SCANOBJECTNN_CLASSES, SCAN_CATEGORIES, strict=True) if a == b]
    assert same == ["chair", "desk", "door", "table", "bed", "sink", "sofa", "toilet"]
    objects = scan_objects("test", 1, seed=0, full_points=1024)
    scans = scan_clouds("test", "obj_bg", 1, 0, num_points=256, full_points=1024, clean=objects)
    assert np.array_equal(scans.labels, np.arange(15)) and scans.points.shape == (15, 256, 3)
