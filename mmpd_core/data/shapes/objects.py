"""Objects: cone / tent / lamp, flat devices (monitor / keyboard / laptop), boxes
(xbox / radio / glass_box), vehicles (car / airplane) and person / instruments
(guitar / piano)."""

from __future__ import annotations

import numpy as np

from mmpd_core.data.primitives import Lathe as _Lathe
from mmpd_core.data.primitives import Mesh, box, cylinder, frustum, rotation, sphere
from mmpd_core.data.shapes.parts import _NUM, _attrs, _count, _keys, _legs, _outline_slab, _rod


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
    return parts, _attrs(["wide" if w > 1.7 else ""], ["a stand", base])


def keyboard(rng):
    w, d, t = rng.uniform(1.4, 2.2), rng.uniform(0.35, 0.6), rng.uniform(0.04, 0.09)
    parts = [box("base", (w, t, d), (0, t / 2, 0))]
    rows, cols = int(rng.integers(4, 7)), int(rng.integers(10, 17))
    pad = bool(rng.random() < 0.5)
    main_w = w * (0.75 if pad else 0.95)
    keys = _keys(main_w, d * 0.85, rows, cols, t, key=1.0)
    shift = -(w - main_w) / 2 + w * 0.025 if pad else 0.0
    for k in keys:
        k.at = k.at + np.array([shift, 0, 0])
    parts += keys
    if pad:
        pad_keys = _keys(w * 0.18, d * 0.85, rows, 4, t)
        for k in pad_keys:
            k.at = k.at + np.array([w * 0.39, 0, 0])
        parts += pad_keys
    rest = bool(rng.random() < 0.3)
    if rest:
        parts.append(box("rest", (w * 0.9, t * 0.8, 0.2), (0, t * 0.4, d / 2 + 0.1)))
    features = [f"{_NUM.get(rows, rows)} rows of keys", "a number pad" if pad else ""]
    return parts, _attrs(["thin" if t < 0.06 else ""], [*features, "a wrist rest" if rest else ""])


def laptop(rng):
    w, t = rng.uniform(1.0, 1.6), rng.uniform(0.03, 0.07)
    d = w * rng.uniform(0.6, 0.75)
    parts = [box("base", (w, t, d), (0, t / 2, 0))]
    if rng.random() < 0.6:
        parts += _keys(w * 0.85, d * 0.45, int(rng.integers(4, 6)), int(rng.integers(10, 14)), t,
                       z0=-d * 0.12)  # fmt: skip
    else:
        parts.append(box("key", (w * 0.85, 0.01, d * 0.45), (0, t + 0.005, -d * 0.12)))
    pad = bool(rng.random() < 0.8)
    if pad:
        parts.append(box("touchpad", (w * 0.3, 0.008, d * 0.22), (0, t + 0.004, d * 0.3)))
    angle = np.radians(rng.uniform(95, 135))  # lid opening from the base plane
    lid_d = d * rng.uniform(0.95, 1.0)
    hinge = np.array([0, t, -d / 2])
    axis = np.array([0, np.sin(angle), np.cos(angle)])
    rot = rotation(x=np.pi / 2 - angle)
    parts.append(box("lid", (w, lid_d, 0.02), hinge + axis * lid_d / 2, rot))
    tilt = "a wide-open lid" if angle > np.radians(115) else "an upright lid"
    return parts, _attrs(["thin" if t < 0.05 else ""], [tilt, "a touchpad" if pad else ""])


def xbox(rng):
    length, height, depth = rng.uniform(1.0, 1.4), rng.uniform(0.22, 0.4), rng.uniform(0.8, 1.2)
    upright = bool(rng.random() < 0.4)
    w, h = (height, length) if upright else (length, height)
    lift = 0.03 if upright and rng.random() < 0.6 else 0.0
    parts = [box("body", (w, h, depth), (0, lift + h / 2, 0))]
    if lift:
        parts.append(box("stand", (w * 2.2, lift, depth * 0.6), (0, lift / 2, 0)))
    slats = int(rng.integers(0, 7))
    for k in range(slats):  # vent slats across the side (upright) or the top
        z = -depth / 2 + depth * (k + 1) / (slats + 1)
        if upright:
            parts.append(box("vent", (0.02, h * 0.6, 0.03), (w / 2 + 0.01, lift + h / 2, z)))
        else:
            parts.append(box("vent", (w * 0.6, 0.02, 0.03), (0, h + 0.01, z)))
    slot = bool(rng.random() < 0.6)
    if slot:
        sx, sy = (0.02, h * 0.4) if upright else (w * 0.4, 0.02)
        parts.append(box("slot", (sx, sy, 0.02), (0, lift + h * 0.6, depth / 2 + 0.01)))
    front_r = min(w, h) * rng.uniform(0.08, 0.15)
    at = np.array([w * 0.3 if not upright else 0, lift + h * 0.25, depth / 2])
    parts.append(cylinder("button", front_r, 0.0, 0.03, rot=rotation(x=np.pi / 2), at=at))
    features = [_count(slats, "vent slat"), "a front slot" if slot else "", "a round button"]
    return parts, _attrs(["upright" if upright else "flat"], [*features, "a base" if lift else ""])


def radio(rng):
    w, h, d = rng.uniform(0.8, 1.5), rng.uniform(0.35, 0.8), rng.uniform(0.2, 0.45)
    parts = [box("body", (w, h, d), (0, h / 2, 0))]
    speakers = int(rng.integers(1, 3))
    r = min(h * 0.38, w / (2 * speakers) * 0.8)
    for k in range(speakers):
        x = 0.0 if speakers == 1 else (k - 0.5) * w * 0.55
        at = np.array([x - (w * 0.15 if speakers == 1 else 0), h * 0.45, d / 2])
        parts.append(cylinder("speaker", r, 0.0, 0.02, rot=rotation(x=np.pi / 2), at=at))
    knobs = int(rng.integers(0, 5))
    for k in range(knobs):
        at = np.array([w * (0.3 + 0.06 * k) - w * 0.05, h * (0.7 - 0.1 * (k % 2)), d / 2])
        parts.append(cylinder("knob", 0.04, 0.0, 0.05, rot=rotation(x=np.pi / 2), at=at))
    antenna = bool(rng.random() < 0.5)
    if antenna:
        length = rng.uniform(0.4, 0.9)
        rot = rotation(z=rng.uniform(-0.6, 0.6))
        parts.append(cylinder("antenna", 0.012, 0.0, length, rot=rot, at=np.array([w * 0.4, h, 0])))
    handle = bool(rng.random() < 0.5)
    if handle:
        lift = rng.uniform(0.08, 0.2)
        parts.append(box("handle", (w * 0.7, 0.04, 0.05), (0, h + lift, 0)))
        parts += [
            box("handle", (0.04, lift, 0.05), (x, h + lift / 2, 0)) for x in (-w * 0.33, w * 0.33)
        ]
    features = [_count(speakers, "speaker"), _count(knobs, "knob"), "an antenna" if antenna else ""]
    return parts, _attrs(["wide" if w > 1.2 else ""], [*features, "a carry bar" if handle else ""])


def glass_box(rng):
    w, h, d, t = rng.uniform(0.6, 1.6), rng.uniform(0.4, 1.4), rng.uniform(0.5, 1.2), 0.015
    legs = bool(rng.random() < 0.3)
    lift = rng.uniform(0.3, 0.7) if legs else 0.0
    parts = [box("pane", (w, t, d), (0, lift + t / 2, 0))]
    parts += [box("pane", (t, h, d), (x, lift + h / 2, 0)) for x in (-w / 2, w / 2)]
    parts += [box("pane", (w, h, t), (0, lift + h / 2, z)) for z in (-d / 2, d / 2)]
    lid = bool(rng.random() < 0.4)
    if lid:
        parts.append(box("lid", (w + 0.02, t * 2, d + 0.02), (0, lift + h + t, 0)))
    if legs:
        parts += _legs(rng, "leg", 4, w * 0.9, d * 0.9, lift, 0.04, False, top=lift)
    shelf = bool(rng.random() < 0.3)
    if shelf:
        parts.append(box("shelf", (w - 0.04, t, d - 0.04), (0, lift + h / 2, 0)))
    features = ["thin walls", "a lid" if lid else "an open top", "an inner tier" if shelf else ""]
    return parts, _attrs(["raised" if legs else ""], [*features, "four legs" if legs else ""])


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


def person(rng):
    height = rng.uniform(1.5, 1.9)
    sitting = bool(rng.random() < 0.25)
    leg, hip_w = height * 0.47, height * rng.uniform(0.07, 0.1)
    hip_y = height * 0.5 if not sitting else height * 0.28
    parts = []
    stance = rng.uniform(0.0, 0.3)
    for s in (-1, 1):
        if sitting:
            parts.append(_rod("leg", 0.06, (s * hip_w, hip_y, 0), leg * 0.5, ax=np.pi / 2))
            parts.append(_rod("leg", 0.05, (s * hip_w, 0, leg * 0.5), hip_y))
        else:
            parts.append(_rod("leg", 0.06, (s * hip_w, hip_y, 0), leg, az=np.pi - s * stance))
    torso = height * rng.uniform(0.28, 0.33)
    shoulders = height * rng.uniform(0.1, 0.14)
    parts.append(frustum("torso", hip_w * 1.3, shoulders, hip_y, hip_y + torso))
    neck = hip_y + torso
    parts.append(sphere("head", height * rng.uniform(0.06, 0.075), segments=8,
                        at=np.array([0, neck + height * 0.09, 0])))  # fmt: skip
    raise_l, raise_r = rng.uniform(0.1, 2.8, 2)
    for s, lift in ((-1, raise_l), (1, raise_r)):
        parts.append(_rod("arm", 0.04, (s * shoulders, neck - 0.03, 0), height * 0.38,
                          az=np.pi - s * lift, ax=rng.uniform(-0.4, 0.4)))  # fmt: skip
    arms = "raised arms" if max(raise_l, raise_r) > 1.6 else "lowered arms"
    pose = "a seated pose" if sitting else ("a wide stance" if stance > 0.15 else "a narrow stance")
    return parts, _attrs(["tall" if height > 1.75 else ""], ["a round head", arms, pose])


def piano(rng):
    w = rng.uniform(1.4, 1.7)
    grand = bool(rng.random() < 0.4)
    key_y, key_d = rng.uniform(0.65, 0.75), rng.uniform(0.2, 0.3)
    if grand:
        length = rng.uniform(1.5, 2.6)
        t = np.linspace(0, np.pi, 7)
        curve = np.stack(
            [w / 2 * np.cos(t) * np.linspace(1, 0.3, 7), -0.2 - length * np.sin(t / 2)], 1
        )
        outline = np.concatenate([[[w / 2, 0.0]], curve, [[-w / 2, 0.0]]])
        top = key_y + rng.uniform(0.25, 0.35)
        parts = [_outline_slab("body", outline, key_y - 0.05, top)]
        legs = np.array([[-w * 0.4, -0.1], [w * 0.4, -0.1], [0, -length * 0.8]])
        parts += [cylinder("leg", 0.05, 0.0, key_y - 0.05, at=np.array([x, 0, z])) for x, z in legs]
        lid = bool(rng.random() < 0.5)
        if lid:
            parts.append(
                box(
                    "lid",
                    (w * 0.9, 0.02, length * 0.8),
                    (w * 0.1, top + 0.3, -length * 0.45),
                    rotation(z=0.45),
                )
            )
        body = "three legs"
    else:
        h, d = rng.uniform(1.0, 1.4), rng.uniform(0.45, 0.65)
        parts = [box("body", (w, h, d), (0, h / 2, -d / 2))]
        parts += [
            box("leg", (0.08, key_y, 0.08), (x, key_y / 2, key_d)) for x in (-w * 0.45, w * 0.45)
        ]
        lid = False
        body = "a tall back"
    parts.append(box("keybed", (w, 0.08, key_d), (0, key_y, key_d / 2)))
    blacks = int(rng.integers(0, 25))
    parts += [box("key", (w * 0.6 / max(blacks, 1) * 0.5, 0.03, key_d * 0.5),
                  (-w * 0.45 + w * 0.9 * (k + 0.5) / blacks, key_y + 0.055, key_d * 0.3))
              for k in range(blacks)]  # fmt: skip
    bench_ = bool(rng.random() < 0.3)
    if bench_:
        parts.append(box("seat", (w * 0.5, 0.08, 0.35), (0, 0.5, key_d + 0.5)))
        parts += _legs(rng, "seat leg", 4, w * 0.45, 0.3, 0.46, 0.04, False, top=0.46)
        for p in parts[-4:]:
            p.at = p.at + np.array([0, 0, key_d + 0.5])
    features = [
        body,
        "a row of keys",
        "a raised lid" if lid else "",
        "a padded seat" if bench_ else "",
    ]
    return parts, _attrs(["large" if grand else "upright"], features)
