"""Household: containers (vase / bottle / bowl / cup), greenery (flower_pot / plant),
bathroom (bathtub / toilet / sink), flat verticals (door / curtain) and architecture
(stairs / range_hood)."""

from __future__ import annotations

import numpy as np

from mmpd_core.data.primitives import box, cylinder, frustum, rotation, sphere, torus
from mmpd_core.data.shapes.parts import (
    _attrs,
    _count,
    _foliage,
    _fronts,
    _hood_canopy,
    _leaf_stalks,
    _legs,
    _profile_lathe,
    _sheet,
)


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


def flower_pot(rng):
    r0, h = rng.uniform(0.25, 0.4), rng.uniform(0.4, 0.9)
    r1 = r0 * rng.uniform(1.1, 1.5)
    square = bool(rng.random() < 0.3)
    if square:
        parts = [box("pot", (2 * r0, 0.04, 2 * r0), (0, 0.02, 0))]
        parts += [box("pot", (0.04, h, 2 * r1), (x, h / 2, 0)) for x in (-r1, r1)]
        parts += [box("pot", (2 * r1, h, 0.04), (0, h / 2, z)) for z in (-r1, r1)]
    else:
        parts = [frustum("pot", r0, r1, 0.0, h, caps=(True, False))]
    rim = bool(not square and rng.random() < 0.5)
    if rim:
        parts.append(torus("rim", r1, 0.04, at=np.array([0, h, 0])))
    saucer = bool(rng.random() < 0.4)
    if saucer:
        parts.append(cylinder("saucer", r0 * 1.4, -0.04, 0.0))
    if rng.random() < 0.7:
        parts.append(cylinder("soil", r1 * 0.92, h * 0.85, h * 0.86, caps=(False, True)))
    sprigs = int(rng.integers(0, 5))  # a little greenery: the pot dominates
    parts += _leaf_stalks(rng, sprigs, h * 0.85, h * 0.6)
    shape = "a square body" if square else "a tapered body"
    features = [
        shape,
        "a rim" if rim else "",
        "a saucer" if saucer else "",
        _count(sprigs, "sprig"),
    ]
    return parts, _attrs(["tall" if h > 0.7 else "squat"], features)


def plant(rng):
    kind = rng.choice(["bush", "stalks", "tree"], p=[0.35, 0.35, 0.3])
    potted = bool(rng.random() < 0.75)
    ph = rng.uniform(0.2, 0.4) if potted else 0.0
    parts = [frustum("pot", 0.2, 0.26, 0.0, ph, caps=(True, False))] if potted else []
    height = rng.uniform(0.8, 1.8)
    if kind == "bush":
        n = int(rng.integers(4, 10))
        parts += _foliage(rng, n, np.array([0, ph + height * 0.5, 0]), height * 0.2, height * 0.2)
        look = "a bushy crown"
    elif kind == "stalks":
        parts += _leaf_stalks(rng, int(rng.integers(4, 10)), ph, height)
        look = "long thin stalks"
    else:
        trunk = height * rng.uniform(0.5, 0.7)
        parts.append(cylinder("trunk", 0.04, ph, ph + trunk))
        n = int(rng.integers(3, 8))
        parts += _foliage(rng, n, np.array([0, ph + trunk + 0.15, 0]), 0.2, height * 0.18)
        look = "a single trunk"
    features = [look, "a small container" if potted else "bare roots"]
    return parts, _attrs(["tall" if height > 1.4 else ""], features)


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


def toilet(rng):
    r, height = rng.uniform(0.28, 0.4), rng.uniform(0.35, 0.5)
    wall_hung = bool(rng.random() < 0.2)
    lift = rng.uniform(0.15, 0.3) if wall_hung else 0.0
    parts = []
    if not wall_hung:
        parts.append(frustum("pedestal", r * 0.6, r * 0.5, 0.0, height * 0.55, caps=(True, False)))
    ys = lift + height * np.array([0.45, 0.75, 1.0])
    parts.append(_profile_lathe("bowl", ys, r * np.array([0.55, 0.9, 1.0]), caps=(True, False)))
    top = lift + height
    parts.append(torus("seat", r * 0.85, 0.04, at=np.array([0, top + 0.03, 0])))
    lid = rng.choice(["raised", "closed", "none"], p=[0.4, 0.3, 0.3])
    if lid == "raised":
        at = np.array([0, top + r, -r * 0.95])
        parts.append(cylinder("lid", r * 0.95, -0.015, 0.015, rot=rotation(x=np.pi / 2), at=at))
    elif lid == "closed":
        parts.append(cylinder("lid", r * 0.95, top + 0.06, top + 0.09))
    tank = bool(rng.random() < 0.8)
    back = "a wall plate"
    if tank:
        th, td = rng.uniform(0.3, 0.55), rng.uniform(0.15, 0.25)
        parts.append(box("tank", (2 * r * 1.05, th, td), (0, top + th / 2 - 0.05, -r - td / 2)))
        back = "a tank"
    else:
        parts.append(box("plate", (2 * r, top + 0.3, 0.05), (0, (top + 0.3) / 2, -r - 0.05)))
    lid_text = {"raised": "a raised lid", "closed": "a closed lid", "none": "an open ring seat"}
    return parts, _attrs(["raised" if wall_hung else ""], [back, lid_text[lid], "a round seat"])


def sink(rng):
    w, d, top = rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.55), rng.uniform(0.75, 0.95)
    depth = rng.uniform(0.12, 0.25)
    kind = rng.choice(["pedestal", "vanity", "wall"], p=[0.35, 0.4, 0.25])
    round_basin = bool(rng.random() < 0.5)
    if round_basin:
        ys = top - depth * np.array([1.0, 0.6, 0.0])
        parts = [_profile_lathe("basin", ys, w / 2 * np.array([0.45, 0.85, 1.0]))]
        parts.append(torus("rim", w / 2, 0.025, at=np.array([0, top, 0])))
    else:
        parts = [box("basin", (w, 0.03, d), (0, top - depth, 0))]
        parts += [box("basin", (0.04, depth, d), (x, top - depth / 2, 0)) for x in (-w / 2, w / 2)]
        parts += [box("basin", (w, depth, 0.04), (0, top - depth / 2, z)) for z in (-d / 2, d / 2)]
    if kind == "pedestal":
        parts.append(frustum("pedestal", w * 0.12, w * 0.2, 0.0, top - depth, caps=(True, False)))
    elif kind == "vanity":
        cw = w * rng.uniform(1.2, 2.0)
        parts.append(box("counter", (cw, 0.04, d + 0.1), (0, top, 0)))
        parts.append(box("cabinet", (cw * 0.97, top - depth - 0.02, d), (0, (top - depth) / 2, 0)))
        doors = int(rng.integers(1, 3))
        parts += _fronts("door", cw * 0.95, 0.05, top - depth - 0.04, d / 2, 1, doors, True)
    else:
        parts.append(box("splash", (w * 1.1, rng.uniform(0.15, 0.4), 0.04), (0, top + 0.1, -d / 2)))
    parts.append(cylinder("faucet", 0.025, top, top + rng.uniform(0.12, 0.3),
                          at=np.array([0, 0, -d / 2 + 0.05])))  # fmt: skip
    below = {"pedestal": "a column base", "vanity": "a cabinet below", "wall": "a back splash"}
    shape = "a round recess" if round_basin else "a square recess"
    return parts, _attrs(["deep" if depth > 0.2 else "shallow"], [shape, below[kind], "a faucet"])


def door(rng):
    w, h, t = rng.uniform(0.7, 1.1), rng.uniform(1.9, 2.3), rng.uniform(0.04, 0.07)
    leaves = 2 if rng.random() < 0.2 else 1
    parts = []
    rows = int(rng.integers(0, 4))
    window = bool(rng.random() < 0.3)
    for k in range(leaves):
        x = 0.0 if leaves == 1 else (k - 0.5) * w
        parts.append(box("slab", (w, h, t), (x, h / 2, 0)))
        for r in range(rows):
            for c in (-1, 1):
                py = h * (0.15 + 0.7 * (r + 0.5) / rows)
                at = (x + c * w * 0.22, py, t / 2 + 0.01)
                parts.append(box("panel", (w * 0.35, h * 0.7 / rows * 0.8, 0.02), at))
        if window:
            parts.append(box("pane", (w * 0.6, h * 0.25, t * 0.4), (x, h * 0.8, 0)))
        hx = x + (w * 0.4 if k == 0 else -w * 0.4) * (1 if leaves == 1 else -1)
        for s in (-1, 1):
            at = np.array([hx, h * 0.47, s * (t / 2 + 0.03)])
            parts.append(box("handle", (0.12, 0.025, 0.025), at))
    frame = bool(rng.random() < 0.6)
    if frame:
        total = w * leaves
        parts.append(box("frame", (total + 0.16, 0.08, t * 1.6), (0, h + 0.04, 0)))
        for x in (-total / 2 - 0.04, total / 2 + 0.04):
            parts.append(box("frame", (0.08, h + 0.08, t * 1.6), (x, (h + 0.08) / 2, 0)))
    features = [
        _count(rows * 2, "raised panel"),
        "a window pane" if window else "",
        "a lever handle",
    ]
    return parts, _attrs(["double" if leaves == 2 else ""], [*features, "a frame" if frame else ""])


def curtain(rng):
    drapes, width = int(rng.integers(1, 3)), rng.uniform(1.0, 2.2)
    height = rng.uniform(1.4, 2.6)
    folds, amp = int(rng.integers(3, 12)), rng.uniform(0.02, 0.08)
    tied = bool(rng.random() < 0.3)
    rod_len = width * drapes + 0.2
    parts = [cylinder("rod", 0.025, -rod_len / 2, rod_len / 2, rot=rotation(z=np.pi / 2),
                      at=np.array([0, height + 0.05, 0.1]))]  # fmt: skip
    for k in range(drapes):
        sheet = _sheet("drape", width, height, folds, amp, pinch=0.5 if tied else 0.0)
        side = -1 if k == 0 else 1
        sheet.vertices = sheet.vertices * np.array([side if drapes == 2 else 1, 1, 1])
        x = 0.0 if drapes == 1 else side * width / 2
        sheet.at = np.array([x, height, 0.0])
        parts.append(sheet)
    valance = bool(rng.random() < 0.3)
    if valance:
        parts.append(box("valance", (rod_len, 0.25, 0.05), (0, height - 0.05, 0.15)))
    if rng.random() < 0.5:
        parts += [
            sphere("finial", 0.05, segments=8, at=np.array([s * rod_len / 2, height + 0.05, 0.1]))
            for s in (-1, 1)
        ]
    features = [_count(drapes, "hanging panel"), _count(folds, "fold"), "tie-backs" if tied else ""]
    return parts, _attrs(
        ["long" if height > 2.1 else ""], [*features, "a top valance" if valance else "a rod"]
    )


def stairs(rng):
    n, rise, run = int(rng.integers(3, 11)), rng.uniform(0.15, 0.22), rng.uniform(0.22, 0.32)
    width = rng.uniform(0.8, 1.6)
    solid = bool(rng.random() < 0.6)
    parts = []
    for k in range(n):
        z, top = -k * run, (k + 1) * rise
        if solid:
            parts.append(box("step", (width, top, run), (0, top / 2, z)))
        else:
            parts.append(box("step", (width, 0.04, run), (0, top - 0.02, z)))
    slope = np.arctan2(rise, run)
    length = np.hypot(n * rise, n * run)
    centre_z, centre_y = -(n - 1) * run / 2, n * rise / 2
    if not solid:
        for x in (-width / 2 - 0.03, width / 2 + 0.03):
            parts.append(
                box(
                    "stringer",
                    (0.05, 0.2, length),
                    (x, centre_y - 0.05, centre_z),
                    rotation(x=slope),
                )
            )
    rail = bool(rng.random() < 0.5)
    if rail:
        x = width / 2 + 0.06
        parts.append(
            box("rail", (0.04, 0.04, length), (x, centre_y + 0.9, centre_z), rotation(x=slope))
        )
        for k in range(0, n, max(1, n // 3)):
            parts.append(box("post", (0.04, 0.9, 0.04), (x, (k + 1) * rise + 0.45, -k * run)))
    features = [
        _count(n, "tread"),
        "a handrail" if rail else "",
        "side stringers" if not solid else "",
    ]
    return parts, _attrs(
        ["wide" if width > 1.3 else "narrow", "open" if not solid else ""], features
    )


def range_hood(rng):
    w, d = rng.uniform(0.6, 1.2), rng.uniform(0.4, 0.6)
    kind = rng.choice(["chimney", "slab", "glass"], p=[0.5, 0.3, 0.2])
    rim = rng.uniform(0.04, 0.1)
    parts = [box("rim", (w, rim, d), (0, rim / 2, 0))]
    duct_h = rng.uniform(0.4, 1.2)
    if kind == "chimney":
        ch = rng.uniform(0.2, 0.4)
        parts.append(
            _hood_canopy("canopy", (w, d), (w * 0.35, d * 0.5), rim, rim + ch, back=d * 0.2)
        )
        parts.append(box("duct", (w * 0.3, duct_h, d * 0.45), (0, rim + ch + duct_h / 2, -d * 0.2)))
    elif kind == "slab":
        parts.append(box("body", (w, rng.uniform(0.1, 0.25), d), (0, rim + 0.08, 0)))
        parts.append(box("lip", (w, 0.05, 0.05), (0, 0.0, d / 2)))
        duct_h = 0.0
    else:
        parts.append(box("panel", (w, 0.02, d * 1.1), (0, rim + 0.2, 0.05), rotation(x=0.5)))
        parts.append(box("duct", (w * 0.3, duct_h, d * 0.4), (0, rim + duct_h / 2, -d * 0.25)))
    look = {
        "chimney": "a sloped canopy",
        "slab": "a flat slab body",
        "glass": "a tilted front panel",
    }
    return parts, _attrs(
        ["wide" if w > 1.0 else ""], [look[kind], "a tall duct" if duct_h > 0.8 else ""]
    )
