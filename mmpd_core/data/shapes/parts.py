"""Shared part helpers for the shape builders: caption attributes (``_count``, ``_attrs``) and
recurring assemblies (legs, drawer/door fronts, cabinet bases, cubbies, lathed profiles, key
grids, foliage, cloth sheets, canopies, rods, extruded outlines)."""

from __future__ import annotations

import numpy as np

from mmpd_core.data.primitives import Lathe as _Lathe
from mmpd_core.data.primitives import Mesh, box, cylinder, rotation, sphere

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


def _fronts(name, w, y0, y1, z, rows, cols, vertical=False):
    """rows x cols boards (drawers, doors) filling width ``w`` between heights y0 and y1 on the
    front plane z, each with a bar handle (vertical ones at the inner edge, for doors)."""
    parts, cw, rh = [], w / cols, (y1 - y0) / rows
    for r in range(rows):
        for c in range(cols):
            x, y = -w / 2 + cw * (c + 0.5), y0 + rh * (r + 0.5)
            parts.append(box(name, (cw * 0.94, rh * 0.9, 0.02), (x, y, z + 0.01)))
            if vertical:
                side = 1 if cols == 1 or c % 2 == 0 else -1
                size, at = (0.03, min(0.25, rh * 0.4), 0.03), (x + side * cw * 0.38, y, z + 0.035)
            else:
                size, at = (min(0.3, cw * 0.35), 0.03, 0.03), (x, y + rh * 0.15, z + 0.035)
            parts.append(box("handle", size, at))
    return parts


def _base(rng, w, d):
    """What a cabinet stands on: (parts, the carcass' lift, caption feature)."""
    kind = rng.choice(["plinth", "legs", "none"], p=[0.4, 0.4, 0.2])
    if kind == "none":
        return [], 0.0, ""
    lift = rng.uniform(0.04, 0.12) if kind == "plinth" else rng.uniform(0.08, 0.3)
    if kind == "plinth":
        return [box("plinth", (w * 0.95, lift, d * 0.9), (0, lift / 2, 0))], lift, "a plinth"
    round_legs = bool(rng.random() < 0.5)
    legs = _legs(rng, "leg", 4, w * 0.9, d * 0.85, lift, 0.05, round_legs, top=lift)
    return legs, lift, "short legs" if lift < 0.18 else "tall legs"


def _cubby(w, h, d, y0, name="shelf"):
    """An open compartment: bottom, top, two sides and a back (w x h x d, floor at y0)."""
    return [
        box(name, (w, 0.03, d), (0, y0 + 0.015, 0)),
        box(name, (w, 0.03, d), (0, y0 + h - 0.015, 0)),
        box("side", (0.03, h, d), (-w / 2 + 0.015, y0 + h / 2, 0)),
        box("side", (0.03, h, d), (w / 2 - 0.015, y0 + h / 2, 0)),
        box("back", (w, h, 0.02), (0, y0 + h / 2, -d / 2 + 0.01)),
    ]


def _profile_lathe(name, ys, rs, caps=(True, False)):
    return _Lathe(name, profile=np.stack([ys, rs], axis=1), caps=caps)


def _keys(w, d, rows, cols, y, z0=0.0, key=0.9):
    """A rows x cols grid of key caps on a w x d area centred at (0, y, z0)."""
    kw, kd = w / cols, d / rows
    return [
        box("key", (kw * key * 0.85, 0.02, kd * key * 0.85),
            (-w / 2 + kw * (c + 0.5), y + 0.01, z0 - d / 2 + kd * (r + 0.5)))
        for r in range(rows)
        for c in range(cols)
    ]  # fmt: skip


def _foliage(rng, count, centre, spread, size):
    """``count`` leafy blobs (spheres) scattered around ``centre``."""
    return [
        sphere("leaves", size * rng.uniform(0.6, 1.2), segments=8,
               at=centre + rng.normal(0, spread, 3) * np.array([1, 0.6, 1]))
        for _ in range(count)
    ]  # fmt: skip


def _leaf_stalks(rng, count, base_y, height):
    """``count`` thin stalks leaning out from the centre, each with a flat blade on top."""
    parts = []
    for _ in range(count):
        lean, turn = rng.uniform(0.05, 0.6), rng.uniform(0, 2 * np.pi)
        length = height * rng.uniform(0.6, 1.0)
        rot = rotation(x=lean, y=turn)
        parts.append(cylinder("stem", 0.015, 0.0, length, rot=rot, at=np.array([0, base_y, 0])))
        tip = np.array([0, base_y, 0]) + rot @ np.array([0, length, 0])
        parts.append(box("leaves", (0.12, 0.3, 0.01), tip, rot @ rotation(x=0.3)))
    return parts


def _sheet(name, width, height, folds, amplitude, pinch=0.0, nx=25, ny=7):
    """A hanging cloth: ``folds`` sine folds across ``width`` (x), hanging down ``height`` from
    y=0 (z: depth); ``pinch`` gathers the lower part towards x = -width/2 (a tie-back)."""
    u, v = np.meshgrid(np.linspace(0, 1, nx), np.linspace(0, 1, ny))  # (ny, nx) across, down
    gather = 1 - pinch * np.clip((v - 0.3) / 0.3, 0, 1) * np.clip((1 - v) / 0.3, 0.3, 1)
    x = -width / 2 + u * width * gather
    z = amplitude * (1 + v) * np.sin(2 * np.pi * folds * u)
    verts = np.stack([x, -v * height, z], axis=-1).reshape(-1, 3)
    i = np.arange((ny - 1) * nx).reshape(ny - 1, nx)[:, :-1].ravel()  # top-left corners
    faces = np.concatenate(
        [np.stack([i, i + 1, i + nx], 1), np.stack([i + 1, i + nx + 1, i + nx], 1)]
    )
    return Mesh(name, vertices=verts, faces=faces)


def _hood_canopy(name, bottom, top, y0, y1, back=0.0):
    """A truncated pyramid (open at both ends): bottom / top (width, depth) rectangles."""
    (bw, bd), (tw, td) = bottom, top
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) / 2
    low = np.stack([corners[:, 0] * bw, np.full(4, y0), corners[:, 1] * bd], 1)
    high = np.stack([corners[:, 0] * tw, np.full(4, y1), corners[:, 1] * td - back], 1)
    faces = [[k, (k + 1) % 4, 4 + k] for k in range(4)] + [
        [(k + 1) % 4, 4 + (k + 1) % 4, 4 + k] for k in range(4)
    ]
    return Mesh(name, vertices=np.concatenate([low, high]), faces=np.array(faces))


def _rod(name, radius, start, length, az=0.0, ax=0.0):
    """A cylinder from ``start`` along y turned by ``ax`` about x then ``az`` about z."""
    return cylinder(
        name, radius, 0.0, length, rot=rotation(x=ax, z=az), at=np.asarray(start, float)
    )


def _outline_slab(name, outline, y0, y1):
    """A prism over a star-shaped polygon ``outline`` (K, 2) in x-z, from y0 to y1."""
    k = len(outline)
    low = np.stack([outline[:, 0], np.full(k, y0), outline[:, 1]], 1)  # (K, 3)
    high = low + np.array([0, y1 - y0, 0])
    middle = low.mean(0)
    centres = np.stack([middle, middle + np.array([0, y1 - y0, 0])])  # (2, 3) fan centres
    faces = []
    for i in range(k):
        j = (i + 1) % k
        faces += [[i, j, k + i], [j, k + j, k + i], [2 * k, j, i], [2 * k + 1, k + i, k + j]]
    return Mesh(name, vertices=np.concatenate([low, high, centres]), faces=np.array(faces))
