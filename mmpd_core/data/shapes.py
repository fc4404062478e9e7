"""Procedural object categories named after ModelNet40 classes.

Each category is a parametric family built from parts (``primitives``) with wide intra-class
variation — proportions, optional parts, part counts — so that neighbouring classes
(chair / stool / bench / sofa, table / desk, cup / bowl / vase / bottle, cone / tent / lamp)
are genuinely confusable. A shape is reproducible from (category, index, seed).

Axis convention as ``modelnet40_normal_resampled``: y up, normalised to the unit sphere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmpd_core.data.primitives import Lathe as _Lathe
from mmpd_core.data.primitives import (
    Mesh,
    Part,
    box,
    cylinder,
    frustum,
    rotation,
    sphere,
    torus,
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


_NUM = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def _count(n: int, noun: str) -> str:
    """'three shelves', 'one drawer'; '' for zero."""
    if n == 0:
        return ""
    plural = noun[:-1] + "ves" if noun.endswith("f") else noun + "s"
    return f"{_NUM.get(n, str(n))} {noun if n == 1 else plural}"


def _attrs(adjectives, features) -> dict:
    """Caption material: adjectives ('tall') and features ('four legs'); blanks dropped."""
    return {
        "adjectives": [a for a in adjectives if a],
        "features": [f for f in features if f],
    }


def _legs(rng, name, count, spread_x, spread_z, height, thick, round_legs, top=0.0):
    """Legs under a top at y=top, at the corners of a spread_x x spread_z rectangle."""
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    if count == 3:
        angles = np.linspace(0, 2 * np.pi, 4)[:3] + rng.uniform(0, 1)
        corners = [(np.cos(a), np.sin(a)) for a in angles]
    parts = []
    for cx, cz in corners[:count]:
        at = np.array([cx * spread_x / 2, top - height / 2, cz * spread_z / 2])
        if round_legs:
            parts.append(cylinder(name, thick / 2, -height / 2, height / 2, at=at))
        else:
            parts.append(box(name, (thick, height, thick), at))
    return parts


def chair(rng):
    w, d, seat_h = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.3)
    back_h = rng.uniform(0.7, 1.4)
    slats = int(rng.integers(0, 5))  # 0: solid back
    arms = bool(rng.random() < 0.35)
    round_legs = bool(rng.random() < 0.4)
    parts = [box("seat", (w, 0.1, d), (0, seat_h, 0))]
    parts += _legs(rng, "leg", 4, w - 0.1, d - 0.1, seat_h, 0.08, round_legs, top=seat_h)
    if slats:
        for x in np.linspace(-w / 2 + 0.08, w / 2 - 0.08, slats + 1):
            parts.append(box("back", (0.06, back_h, 0.06), (x, seat_h + back_h / 2, -d / 2 + 0.03)))
        parts.append(box("back", (w, 0.12, 0.07), (0, seat_h + back_h, -d / 2 + 0.03)))
    else:
        parts.append(box("back", (w, back_h, 0.08), (0, seat_h + back_h / 2, -d / 2 + 0.04)))
    if arms:
        for x in (-w / 2, w / 2):
            parts.append(box("arm", (0.07, 0.07, d * 0.9), (x, seat_h + 0.35, 0)))
            parts.append(box("arm", (0.06, 0.35, 0.06), (x, seat_h + 0.17, d * 0.4)))
    height = "tall" if back_h > 1.1 else "low" if back_h < 0.9 else ""
    back = f"a back with {_NUM[slats + 1]} slats" if slats else "a solid back"
    legs = "four round legs" if round_legs else "four legs"
    return parts, _attrs([height], [legs, back, "armrests" if arms else ""])


def stool(rng):
    round_seat = bool(rng.random() < 0.6)
    h, r = rng.uniform(1.0, 2.2), rng.uniform(0.35, 0.6)
    legs = int(rng.choice([3, 4]))
    if round_seat:
        parts = [cylinder("seat", r, h - 0.08, h)]
    else:
        parts = [box("seat", (2 * r, 0.08, 2 * r), (0, h - 0.04, 0))]
    spread = 2 * r * rng.uniform(0.75, 1.1)
    parts += _legs(rng, "leg", legs, spread, spread, h - 0.08, 0.07, True, top=h - 0.08)
    if rng.random() < 0.6:
        parts.append(torus("rung", spread / 2.2, 0.025, at=np.array([0, h * 0.35, 0])))
    size = "tall" if h > 1.6 else "short"
    seat = "a round seat" if round_seat else "a square seat"
    return parts, _attrs([size], [f"{_NUM[legs]} legs", seat])


def bench(rng):
    w, d, h = rng.uniform(2.0, 3.5), rng.uniform(0.6, 0.9), rng.uniform(0.7, 1.0)
    parts = [box("seat", (w, 0.1, d), (0, h, 0))]
    if rng.random() < 0.5:
        for x in (-w / 2 + 0.1, w / 2 - 0.1):
            parts.append(box("leg", (0.1, h, d), (x, h / 2, 0)))
        legs = "two panel legs"
    else:
        parts += _legs(rng, "leg", 4, w - 0.2, d - 0.1, h, 0.09, False, top=h)
        legs = "four legs"
    backed = bool(rng.random() < 0.5)
    if backed:
        bh = rng.uniform(0.4, 0.8)
        parts.append(box("back", (w, bh, 0.08), (0, h + bh / 2 + 0.1, -d / 2)))
    return parts, _attrs(["long" if w > 2.8 else ""], [legs, "a backrest" if backed else ""])


def sofa(rng):
    w, d = rng.uniform(2.0, 3.2), rng.uniform(0.9, 1.3)
    seat_h, back_h, arm_h = rng.uniform(0.4, 0.6), rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.5)
    seats = int(rng.integers(1, 4))
    parts = [box("base", (w, seat_h, d), (0, seat_h / 2, 0))]
    for i in range(seats):
        cw = w / seats
        parts.append(
            box(
                "cushion",
                (cw * 0.95, 0.15, d * 0.8),
                (-w / 2 + cw * (i + 0.5), seat_h + 0.07, 0.05),
            )
        )
    parts.append(box("back", (w, back_h, 0.3), (0, seat_h + back_h / 2, -d / 2 + 0.15)))
    arms = bool(rng.random() < 0.8)
    if arms:
        for x in (-w / 2 - 0.1, w / 2 + 0.1):
            parts.append(box("arm", (0.2, seat_h + arm_h, d), (x, (seat_h + arm_h) / 2, 0)))
    size = "large" if w > 2.7 else "small"
    return parts, _attrs([size], [f"{_NUM[seats]} seat cushions", "armrests" if arms else ""])


def bed(rng):
    w, length = rng.uniform(1.2, 2.0), rng.uniform(2.0, 2.4)
    h = rng.uniform(0.3, 0.6)
    parts = [box("frame", (w, h, length), (0, h / 2, 0))]
    parts.append(box("mattress", (w * 0.95, 0.25, length * 0.97), (0, h + 0.12, 0)))
    hb = rng.uniform(0.5, 1.2)
    parts.append(box("headboard", (w, h + hb, 0.1), (0, (h + hb) / 2, -length / 2)))
    footboard = bool(rng.random() < 0.5)
    if footboard:
        parts.append(box("footboard", (w, h + 0.3, 0.1), (0, (h + 0.3) / 2, length / 2)))
    pillows = int(rng.integers(0, 3))
    for i in range(pillows):
        x = 0 if pillows == 1 else (i - 0.5) * w / 2
        parts.append(box("pillow", (w / 2.5, 0.12, 0.35), (x, h + 0.31, -length / 2 + 0.35)))
    features = ["a headboard", "a footboard" if footboard else "", _count(pillows, "pillow")]
    return parts, _attrs(["wide" if w > 1.6 else ""], features)


def table(rng):
    w, d, h = rng.uniform(1.2, 2.4), rng.uniform(0.8, 1.4), rng.uniform(0.9, 1.2)
    round_top = bool(rng.random() < 0.35)
    if round_top:
        parts = [cylinder("top", w / 2.4, h - 0.08, h)]
    else:
        parts = [box("top", (w, 0.08, d), (0, h - 0.04, 0))]
    pedestal = bool(round_top and rng.random() < 0.6)
    if pedestal:
        parts.append(cylinder("leg", 0.08, 0.05, h - 0.08))
        parts.append(cylinder("foot", w / 5, 0.0, 0.05))
    else:
        sx, sz = (w / 1.9, w / 1.9) if round_top else (w - 0.15, d - 0.15)
        parts += _legs(rng, "leg", 4, sx, sz, h - 0.08, 0.08, bool(rng.random() < 0.5), h - 0.08)
    shape = "round" if round_top else "rectangular"
    return parts, _attrs([shape], ["a single pedestal" if pedestal else "four legs"])


def desk(rng):
    w, d, h = rng.uniform(1.4, 2.2), rng.uniform(0.7, 1.0), rng.uniform(0.9, 1.1)
    parts = [box("top", (w, 0.07, d), (0, h - 0.035, 0))]
    drawers = int(rng.integers(0, 4))
    side = rng.choice([-1, 1])
    if drawers:
        cw = w * rng.uniform(0.3, 0.4)
        x = side * (w - cw) / 2
        parts.append(box("cabinet", (cw, h - 0.07, d * 0.95), (x, (h - 0.07) / 2, 0)))
        for i in range(drawers):
            y = (h - 0.07) * (i + 0.5) / drawers
            parts.append(box("handle", (cw * 0.3, 0.03, 0.04), (x, y, d * 0.48)))
        parts.append(
            box(
                "panel",
                (0.06, h - 0.07, d * 0.95),
                (-x + side * (cw / 2 - 0.03), (h - 0.07) / 2, 0),
            )
        )
    else:
        for x in (-w / 2 + 0.03, w / 2 - 0.03):
            parts.append(box("panel", (0.06, h - 0.07, d * 0.95), (x, (h - 0.07) / 2, 0)))
    modesty = bool(rng.random() < 0.6)
    if modesty:
        parts.append(box("panel", (w * 0.9, (h - 0.07) * 0.5, 0.04), (0, h * 0.6, -d / 2 + 0.05)))
    features = [_count(drawers, "drawer") or "two side panels", "a back panel" if modesty else ""]
    return parts, _attrs([], features)


def bookshelf(rng):
    w, h, d = rng.uniform(0.8, 2.0), rng.uniform(1.2, 2.6), rng.uniform(0.3, 0.5)
    shelves = int(rng.integers(2, 7))
    parts = [box("side", (0.05, h, d), (x, h / 2, 0)) for x in (-w / 2, w / 2)]
    for y in np.linspace(0.03, h - 0.03, shelves + 1):
        parts.append(box("shelf", (w, 0.04, d), (0, y, 0)))
    back = bool(rng.random() < 0.7)
    if back:
        parts.append(box("back", (w, h, 0.02), (0, h / 2, -d / 2)))
    size = "tall" if h > 2.0 else "short"
    return parts, _attrs(
        [size], [_count(shelves, "shelf"), "a back panel" if back else "an open back"]
    )


def monitor(rng):
    w = rng.uniform(1.2, 2.0)
    h = w * rng.uniform(0.5, 0.75)
    lift = rng.uniform(0.25, 0.6)
    parts = [box("screen", (w, h, 0.06), (0, lift + h / 2, 0))]
    parts.append(box("bezel", (w * 0.3, h * 0.35, 0.1), (0, lift + h / 2, -0.08)))
    if rng.random() < 0.5:
        parts.append(cylinder("stand", 0.05, 0.03, lift, at=np.array([0, 0, -0.05])))
    else:
        parts.append(box("stand", (0.12, lift, 0.05), (0, lift / 2, -0.08)))
    round_base = bool(rng.random() < 0.5)
    if round_base:
        parts.append(cylinder("base", w / 5, 0.0, 0.03))
    else:
        parts.append(box("base", (w / 2.5, 0.03, 0.35), (0, 0.015, 0)))
    base = "a round base" if round_base else "a flat base"
    return parts, _attrs(["widescreen" if w > 1.7 else ""], ["a stand", base])


def lamp(rng):
    h = rng.uniform(1.2, 2.4)
    parts = [frustum("base", rng.uniform(0.2, 0.4), 0.08, 0.0, 0.08)]
    parts.append(cylinder("pole", 0.025, 0.08, h))
    kind = rng.choice(["cone", "drum", "globe"])
    r = rng.uniform(0.25, 0.45)
    if kind == "cone":
        parts.append(frustum("shade", r, r * 0.45, h - 0.2, h + 0.25, caps=(False, False)))
    elif kind == "drum":
        parts.append(cylinder("shade", r, h - 0.2, h + 0.2, caps=(False, False)))
    else:
        parts.append(sphere("shade", r * 0.8, at=np.array([0, h + 0.1, 0])))
    shade = {"cone": "a conical shade", "drum": "a drum shade", "globe": "a globe shade"}[kind]
    return parts, _attrs(["tall" if h > 1.8 else ""], [shade, "a thin pole"])


def _profile_lathe(name, ys, rs, caps=(True, False)):
    return _Lathe(name, profile=np.stack([ys, rs], axis=1), caps=caps)


def vase(rng):
    h = rng.uniform(1.2, 2.2)
    ys = np.linspace(0, h, 9)
    belly, neck = rng.uniform(0.3, 0.6), rng.uniform(0.12, 0.3)
    t = ys / h
    bulge = np.sin(np.pi * np.clip(t * rng.uniform(0.9, 1.4), 0, 1))
    rs = neck + (belly - neck) * bulge + rng.uniform(0.0, 0.15) * t**3
    parts = [_profile_lathe("body", ys, np.maximum(rs, 0.08))]
    handles = bool(rng.random() < 0.25)
    if handles:
        for s in (-1, 1):
            parts.append(
                torus(
                    "handle",
                    0.15,
                    0.025,
                    rot=rotation(x=np.pi / 2),
                    at=np.array([s * (belly + 0.05), h * 0.6, 0]),
                )
            )
    return parts, _attrs(
        ["tall" if h > 1.8 else ""], ["two handles" if handles else "a narrow neck"]
    )


def bottle(rng):
    h, r = rng.uniform(1.6, 2.6), rng.uniform(0.25, 0.4)
    body_h = h * rng.uniform(0.55, 0.7)
    neck_r = r * rng.uniform(0.25, 0.4)
    ys = np.array([0, body_h, body_h + h * 0.12, h])
    rs = np.array([r, r, neck_r, neck_r])
    parts = [_profile_lathe("body", ys, rs)]
    cap = bool(rng.random() < 0.7)
    if cap:
        parts.append(cylinder("cap", neck_r * 1.15, h, h + 0.12))
    return parts, _attrs(["slim" if r < 0.3 else ""], ["a long neck", "a cap" if cap else ""])


def bowl(rng):
    r, h = rng.uniform(0.8, 1.2), rng.uniform(0.3, 0.6)
    t = np.linspace(0, 1, 8)
    rs = r * (0.35 + 0.65 * np.sin(t * np.pi / 2))
    parts = [_profile_lathe("body", t * h, rs)]
    foot = bool(rng.random() < 0.5)
    if foot:
        parts.append(cylinder("foot", r * 0.3, -0.06, 0.0, caps=(True, False)))
    return parts, _attrs(["shallow" if h < 0.45 else "deep"], ["a foot ring" if foot else ""])


def cup(rng):
    r, h = rng.uniform(0.35, 0.5), rng.uniform(0.7, 1.1)
    taper = rng.uniform(0.75, 1.0)
    parts = [frustum("body", r * taper, r, 0, h, caps=(True, False))]
    handle = bool(rng.random() < 0.85)
    if handle:
        parts.append(
            torus(
                "handle",
                h * 0.25,
                0.04,
                rot=rotation(x=np.pi / 2),
                at=np.array([r + h * 0.12, h * 0.5, 0]),
            )
        )
    return parts, _attrs(["tall" if h > 0.95 else ""], ["a handle" if handle else "no handle"])


def cone(rng):
    r, h = rng.uniform(0.4, 0.9), rng.uniform(1.0, 2.0)
    parts = [frustum("cone", r, rng.uniform(0.0, 0.05), 0.0, h)]
    base = bool(rng.random() < 0.5)
    if base:
        parts.append(box("base", (2.2 * r, 0.08, 2.2 * r), (0, -0.04, 0)))
    return parts, _attrs(["tall" if h / r > 2.5 else "wide"], ["a square base" if base else ""])


def tent(rng):
    w, length, h = rng.uniform(1.2, 2.0), rng.uniform(1.5, 2.6), rng.uniform(0.8, 1.4)
    dome = bool(rng.random() < 0.35)
    if dome:
        t = np.linspace(0, np.pi / 2, 8)
        parts = [
            _Lathe(
                "canvas", profile=np.stack([h * np.sin(t), w * np.cos(t)], 1), caps=(False, False)
            )
        ]
        return parts, _attrs(["dome"], ["a rounded roof"])
    hw, hl = w / 2, length / 2
    verts = np.array(
        [[-hw, 0, -hl], [hw, 0, -hl], [0, h, -hl], [-hw, 0, hl], [hw, 0, hl], [0, h, hl]]
    )
    faces = np.array([[0, 1, 2], [3, 4, 5], [0, 2, 5], [0, 5, 3], [1, 2, 5], [1, 5, 4]])
    parts = [Mesh("canvas", vertices=verts, faces=faces)]
    parts.append(box("floor", (w, 0.02, length), (0, 0.01, 0)))
    return parts, _attrs(["long" if length > 2.2 else ""], ["a ridge roof", "a floor"])


def bathtub(rng):
    w, length, h = rng.uniform(0.8, 1.1), rng.uniform(1.6, 2.2), rng.uniform(0.5, 0.7)
    t = 0.08
    parts = [box("bottom", (w, t, length), (0, t / 2, 0))]
    parts += [box("wall", (t, h, length), (x, h / 2, 0)) for x in (-w / 2, w / 2)]
    parts += [box("wall", (w, h, t), (0, h / 2, z)) for z in (-length / 2, length / 2)]
    feet = bool(rng.random() < 0.4)
    if feet:
        parts += _legs(rng, "foot", 4, w * 0.8, length * 0.8, 0.15, 0.08, True, top=0.0)
    if rng.random() < 0.5:
        parts.append(cylinder("faucet", 0.03, h, h + 0.2, at=np.array([0, 0, -length / 2])))
    return parts, _attrs(
        ["long" if length > 1.9 else ""], ["four feet" if feet else "a flat bottom"]
    )


def car(rng):
    length, w = rng.uniform(3.5, 4.8), rng.uniform(1.6, 1.9)
    body_h, cabin_h = rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.6)
    clearance = rng.uniform(0.15, 0.35)
    parts = [box("body", (length, body_h, w), (0, clearance + body_h / 2, 0))]
    cabin_l = length * rng.uniform(0.4, 0.6)
    parts.append(
        box(
            "cabin",
            (cabin_l, cabin_h, w * 0.9),
            (rng.uniform(-0.3, 0.1), clearance + body_h + cabin_h / 2, 0),
        )
    )
    r = rng.uniform(0.3, 0.4)
    for x in (-length * 0.33, length * 0.33):
        for z in (-w / 2, w / 2):
            parts.append(
                cylinder("wheel", r, -0.12, 0.12, rot=rotation(x=np.pi / 2), at=np.array([x, r, z]))
            )
    kind = "tall" if cabin_h + body_h > 1.2 else "low"
    return parts, _attrs([kind], ["four wheels", "a cabin"])


def airplane(rng):
    length, r = rng.uniform(4.0, 6.0), rng.uniform(0.25, 0.4)
    ys = np.array([0, 0.12, 0.75, 0.95, 1.0]) * length
    rs = np.array([0.02, 0.8, 1.0, 0.5, 0.1]) * r
    fuselage = _Lathe(
        "fuselage",
        profile=np.stack([ys, rs], 1),
        caps=(False, False),
        rot=rotation(z=-np.pi / 2),
        at=np.array([-length / 2, 0, 0]),
    )
    span, chord = rng.uniform(3.5, 6.0), rng.uniform(0.5, 0.9)
    sweep = rng.uniform(0.0, 0.5)
    parts = [fuselage]
    for s in (-1, 1):
        parts.append(
            box(
                "wing",
                (chord, 0.06, span / 2),
                (-0.2 + sweep * 0.5, -r * 0.3, s * span / 4),
                rotation(y=s * sweep),
            )
        )
        parts.append(box("tail", (chord * 0.5, 0.04, span / 7), (length * 0.42, 0, s * span / 14)))
    parts.append(box("fin", (chord * 0.6, span / 7, 0.04), (length * 0.42, span / 14, 0)))
    engines = int(rng.choice([0, 2, 4]))
    for k in range(engines):
        z = (k // 2 + 1) * span / 6 * (1 if k % 2 else -1)
        parts.append(
            cylinder(
                "engine",
                r * 0.35,
                -0.3,
                0.3,
                rot=rotation(z=np.pi / 2),
                at=np.array([-0.3, -r * 0.9, z]),
            )
        )
    wings = "swept wings" if sweep > 0.25 else "straight wings"
    return parts, _attrs([], [wings, _count(engines, "engine") or "no engines", "a tail fin"])


def guitar(rng):
    lower, upper = rng.uniform(0.45, 0.6), rng.uniform(0.3, 0.45)
    depth = rng.uniform(0.08, 0.2)
    flat = rotation(x=np.pi / 2)
    parts = [cylinder("body", lower, -depth / 2, depth / 2, rot=flat, at=np.array([0, 0, 0]))]
    parts.append(
        cylinder(
            "body", upper, -depth / 2, depth / 2, rot=flat, at=np.array([0, lower + upper * 0.6, 0])
        )
    )
    neck = rng.uniform(1.2, 1.8)
    top = lower + upper * 1.2
    parts.append(box("neck", (0.1, neck, 0.06), (0, top + neck / 2, 0)))
    parts.append(box("head", (0.18, 0.3, 0.05), (0, top + neck + 0.15, 0)))
    acoustic = bool(rng.random() < 0.6)
    if acoustic:
        parts.append(
            cylinder(
                "hole",
                upper * 0.3,
                depth / 2,
                depth / 2 + 0.01,
                rot=flat,
                at=np.array([0, lower * 0.7, 0]),
            )
        )
    return parts, _attrs(["acoustic" if acoustic else "electric"], ["a long neck", "a headstock"])


BUILDERS = {
    fn.__name__: fn
    for fn in (
        airplane, bathtub, bed, bench, bookshelf, bottle, bowl, car, chair, cone,
        cup, desk, guitar, lamp, monitor, sofa, stool, table, tent, vase,
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
