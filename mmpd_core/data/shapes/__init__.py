"""Procedural object categories named after ModelNet40 classes.

All 40 ModelNet40 classes. Each category is a parametric family built from parts
(``primitives``) with wide intra-class variation — proportions, optional parts, part counts,
sub-types — so that neighbouring classes are genuinely confusable and differ by parts and
proportions: chair / stool / bench / sofa; table / desk; cup / bowl / vase / bottle /
flower_pot / plant; cone / tent / lamp; dresser / night_stand / wardrobe / tv_stand /
bookshelf / mantel / xbox / radio / glass_box; toilet / sink / bathtub; laptop / keyboard /
monitor / piano; door / curtain. A shape is reproducible from (category, index, seed).

Caption attributes name parts, counts and proportions ('four legs', 'two doors'), never the
category itself or a synonym of it: the caption templates add the name.

Axis convention as ``modelnet40_normal_resampled``: y up, normalised to the unit sphere.

Layout: ``parts`` holds the shared part helpers; the 40 builders ``name(rng) -> (parts,
attributes)`` live by family in ``furniture``, ``household`` and ``objects``; this module keeps
the registry (``BUILDERS``, ``CATEGORIES``) and the sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmpd_core.data.primitives import Part
from mmpd_core.data.shapes.furniture import (
    bed,
    bench,
    bookshelf,
    chair,
    desk,
    dresser,
    mantel,
    night_stand,
    sofa,
    stool,
    table,
    tv_stand,
    wardrobe,
)
from mmpd_core.data.shapes.household import (
    bathtub,
    bottle,
    bowl,
    cup,
    curtain,
    door,
    flower_pot,
    plant,
    range_hood,
    sink,
    stairs,
    toilet,
    vase,
)
from mmpd_core.data.shapes.objects import (
    airplane,
    car,
    cone,
    glass_box,
    guitar,
    keyboard,
    lamp,
    laptop,
    monitor,
    person,
    piano,
    radio,
    tent,
    xbox,
)
from mmpd_core.data.transforms import normalize_unit_sphere


@dataclass
class Shape:
    """A sampled shape: points/normals (N, 3), part ids (N,), colours (N, 3) in [0, 1]."""

    category: str
    index: int
    points: np.ndarray
    normals: np.ndarray
    part_ids: np.ndarray
    colors: np.ndarray
    part_names: list[str]
    attributes: dict


BUILDERS = {
    fn.__name__: fn
    for fn in (
        airplane, bathtub, bed, bench, bookshelf, bottle, bowl, car, chair, cone,
        cup, curtain, desk, door, dresser, flower_pot, glass_box, guitar, keyboard, lamp,
        laptop, mantel, monitor, night_stand, person, piano, plant, radio, range_hood, sink,
        sofa, stairs, stool, table, tent, toilet, tv_stand, vase, wardrobe, xbox,
    )
}  # fmt: skip
CATEGORIES: tuple[str, ...] = tuple(sorted(BUILDERS))


def shape_rng(category: str, index: int, seed: int) -> np.random.Generator:
    """The random stream of one shape: a function of (seed, category, index) only."""
    return np.random.default_rng([seed, CATEGORIES.index(category), index])


def build_parts(
    category: str, index: int, seed: int
) -> tuple[list[Part], dict, np.random.Generator]:
    if category not in BUILDERS:
        raise KeyError(f"unknown category {category!r}; choose from {CATEGORIES}")
    rng = shape_rng(category, index, seed)
    parts, attributes = BUILDERS[category](rng)
    return parts, attributes, rng


PALETTE = np.array(
    [
        [0.55, 0.35, 0.20],  # wood
        [0.75, 0.60, 0.40],  # light wood
        [0.60, 0.62, 0.65],  # metal
        [0.20, 0.22, 0.25],  # dark
        [0.80, 0.20, 0.20],  # red
        [0.20, 0.45, 0.80],  # blue
        [0.25, 0.65, 0.35],  # green
        [0.90, 0.75, 0.25],  # yellow
        [0.90, 0.90, 0.88],  # white
        [0.55, 0.30, 0.60],  # purple
    ]
)
PALETTE_NAMES = (
    "brown", "beige", "grey", "black", "red", "blue", "green", "yellow", "white", "purple",
)  # fmt: skip


def unit_sphere(points: np.ndarray) -> np.ndarray:
    """``transforms.normalize_unit_sphere`` for a numpy cloud (the ModelNet40 convention)."""
    return normalize_unit_sphere(torch.from_numpy(points)).numpy()


def sample_shape(category: str, index: int, seed: int, num_points: int) -> Shape:
    """Build the shape (category, index, seed) and sample ``num_points`` surface points."""
    parts, attributes, rng = build_parts(category, index, seed)
    areas = np.array([p.area() for p in parts])
    counts = rng.multinomial(num_points, areas / areas.sum())  # area-weighted
    names = list(dict.fromkeys(p.name for p in parts))
    palette_idx = rng.choice(len(PALETTE), size=len(names))  # one colour per part name
    colours = PALETTE[palette_idx]
    colours = np.clip(colours + rng.normal(0, 0.04, colours.shape), 0, 1)
    pts, nrm, ids = [], [], []
    for part, count in zip(parts, counts, strict=True):
        p, n = part.sample(int(count), rng)
        pts.append(p)
        nrm.append(n)
        ids.append(np.full(int(count), names.index(part.name)))
    order = rng.permutation(num_points)  # parts are not contiguous in the output
    part_ids = np.concatenate(ids)[order]
    main_part = np.bincount(part_ids, minlength=len(names)).argmax()
    attributes = {**attributes, "colour": PALETTE_NAMES[palette_idx[main_part]]}
    return Shape(
        category=category,
        index=index,
        points=unit_sphere(np.concatenate(pts)[order]).astype(np.float32),
        normals=np.concatenate(nrm)[order].astype(np.float32),
        part_ids=part_ids.astype(np.int64),
        colors=colours[part_ids].astype(np.float32),
        part_names=names,
        attributes=attributes,
    )
