"""Furniture: seating (chair / stool / bench / sofa), bed, table / desk, and the storage
family (bookshelf / dresser / night_stand / wardrobe / tv_stand / mantel)."""

from __future__ import annotations

import numpy as np

from mmpd_core.data.primitives import box, cylinder, torus
from mmpd_core.data.shapes.parts import _NUM, _attrs, _base, _count, _cubby, _fronts, _legs


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
    return parts, _attrs([size], [_count(seats, "seat cushion"), "armrests" if arms else ""])


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
    w, h, d = rng.uniform(0.8, 2.0), rng.uniform(0.8, 2.6), rng.uniform(0.3, 0.5)
    shelves = int(rng.integers(2, 7))
    parts = [box("side", (0.05, h, d), (x, h / 2, 0)) for x in (-w / 2, w / 2)]
    for y in np.linspace(0.03, h - 0.03, shelves + 1):
        parts.append(box("shelf", (w, 0.04, d), (0, y, 0)))
    back = bool(rng.random() < 0.7)
    if back:
        parts.append(box("back", (w, h, 0.02), (0, h / 2, -d / 2)))
    doors = int(rng.integers(1, 3)) if rng.random() < 0.3 else 0  # a cabinet below the shelves
    if doors:
        low = h / (shelves + 1) * rng.uniform(1.0, 1.6)
        parts += _fronts("door", w - 0.04, 0.03, low, d / 2, 1, doors, vertical=True)
    size = "tall" if h > 2.0 else "short"
    features = [_count(shelves, "tier"), "a back panel" if back else "an open back"]
    return parts, _attrs([size], [*features, _count(doors, "lower door")])


def dresser(rng):
    w, h, d = rng.uniform(1.0, 2.0), rng.uniform(0.7, 1.3), rng.uniform(0.4, 0.6)
    parts, lift, base = _base(rng, w, d)
    parts.append(box("body", (w, h, d), (0, lift + h / 2, 0)))
    rows, cols = int(rng.integers(3, 7)), 1 if w < 1.2 else int(rng.integers(1, 4))
    parts += _fronts("drawer", w - 0.04, lift + 0.02, lift + h - 0.02, d / 2, rows, cols)
    if rng.random() < 0.5:
        parts.append(box("top", (w + 0.05, 0.03, d + 0.04), (0, lift + h + 0.015, 0)))
    mirror = bool(rng.random() < 0.3)
    if mirror:
        mh = rng.uniform(0.5, 1.0)
        parts.append(box("mirror", (w * 0.7, mh, 0.03), (0, lift + h + mh / 2, -d / 2 + 0.03)))
    features = [_count(rows * cols, "drawer"), base, "a mirror on top" if mirror else ""]
    return parts, _attrs(["wide" if w > 1.6 else "", "low" if h < 0.9 else ""], features)


def night_stand(rng):
    w, h, d = rng.uniform(0.4, 0.75), rng.uniform(0.45, 0.8), rng.uniform(0.35, 0.5)
    parts, lift, base = _base(rng, w, d)
    niche = rng.uniform(0.3, 0.55) * h if rng.random() < 0.45 else 0.0  # open shelf below
    if niche:
        parts += _cubby(w, niche, d, lift)
    parts.append(box("body", (w, h - niche, d), (0, lift + niche + (h - niche) / 2, 0)))
    door = bool(rng.random() < 0.25)
    rows = 1 if door else int(rng.integers(1, 4))
    y0, y1 = lift + niche + 0.02, lift + h - 0.02
    parts += _fronts("door" if door else "drawer", w - 0.04, y0, y1, d / 2, rows, 1, door)
    front = "a single door" if door else _count(rows, "drawer")
    return parts, _attrs(["small"], [front, "an open shelf" if niche else "", base])


def wardrobe(rng):
    w, h, d = rng.uniform(0.8, 2.0), rng.uniform(1.7, 2.4), rng.uniform(0.5, 0.7)
    parts, lift, base = _base(rng, w, d)
    parts.append(box("body", (w, h, d), (0, lift + h / 2, 0)))
    drawers = int(rng.integers(0, 3))
    split = lift + 0.02 + 0.25 * drawers
    if drawers:
        parts += _fronts("drawer", w - 0.04, lift + 0.02, split, d / 2, drawers, 1)
    doors = 1 if w < 1.0 else int(rng.integers(2, 4))
    parts += _fronts("door", w - 0.04, split, lift + h - 0.02, d / 2, 1, doors, vertical=True)
    cornice = bool(rng.random() < 0.5)
    if cornice:
        parts.append(box("cornice", (w + 0.08, 0.08, d + 0.06), (0, lift + h + 0.04, 0)))
    features = [_count(doors, "door"), _count(drawers, "drawer"), "a cornice" if cornice else ""]
    return parts, _attrs(["tall"], [*features, base])


def tv_stand(rng):
    w, h, d = rng.uniform(1.2, 2.4), rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.55)
    parts, lift, base = _base(rng, w, d)
    bays = int(rng.integers(1, 4))
    closed = int(rng.integers(0, bays + 1)) if bays > 1 else 0
    bw = w / bays
    for b in range(bays):
        cubby = _cubby(bw, h, d, lift)
        x = -w / 2 + bw * (b + 0.5)
        for part in cubby:
            part.at = part.at + np.array([x, 0, 0])
        parts += cubby
        if b < closed:
            front = _fronts("door", bw - 0.04, lift + 0.02, lift + h - 0.02, d / 2, 1, 1, True)
            for part in front:
                part.at = part.at + np.array([x, 0, 0])
            parts += front
    if rng.random() < 0.5:  # a middle shelf in the open bays
        parts.append(box("shelf", (w - 0.06, 0.025, d * 0.9), (0, lift + h / 2, 0)))
    features = [_count(bays, "compartment"), _count(closed, "door"), base]
    return parts, _attrs(["low", "long" if w > 1.8 else ""], features)


def mantel(rng):
    w, h, d = rng.uniform(1.2, 2.0), rng.uniform(0.9, 1.4), rng.uniform(0.2, 0.4)
    pw, header = w * rng.uniform(0.12, 0.22), rng.uniform(0.15, 0.3)
    parts = [box("pillar", (pw, h, d), (x, h / 2, 0)) for x in (-w / 2 + pw / 2, w / 2 - pw / 2)]
    parts.append(box("header", (w, header, d), (0, h - header / 2, 0)))
    over = rng.uniform(0.05, 0.2)
    parts.append(box("ledge", (w + 2 * over, 0.05, d + over), (0, h + 0.025, over / 2)))
    hearth = bool(rng.random() < 0.5)
    if hearth:
        parts.append(box("hearth", (w + 0.2, 0.06, d + rng.uniform(0.2, 0.5)), (0, 0.03, 0.15)))
    back = bool(rng.random() < 0.6)
    if back:
        parts.append(box("firebox", (w - 2 * pw, h - header, 0.03), (0, (h - header) / 2, -d / 2)))
    board = bool(rng.random() < 0.25)
    if board:
        bh = rng.uniform(0.4, 0.8)
        parts.append(box("overboard", (w * 0.8, bh, 0.04), (0, h + 0.05 + bh / 2, -d / 2 + 0.02)))
    features = [
        "two pillars",
        "a top ledge",
        "a hearth slab" if hearth else "",
        "a raised board" if board else "",
    ]
    return parts, _attrs(["wide" if w > 1.7 else ""], features)
