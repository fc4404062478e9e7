"""Procedural indoor rooms: the embedded stand-in of S3DIS (issue #14).

A room is an axis-aligned box (z up, metres, min corner at the origin as the S3DIS
preprocessing leaves it) scanned as points with one of S3DIS's 13 labels each:

- the shell: floor, ceiling and four walls; doors (a closed leaf set 4 cm into the wall, the wall
  cut away behind it), windows (a frame, a sill and sparse glass 5 cm beyond the wall plane,
  the wall cut away) and a board (a panel 2 cm proud of a wall); optionally a beam across the
  ceiling and a column against a wall;
- furniture from the procedural object families (``shapes``), stood upright at S3DIS sizes:
  chairs and stools (chair), tables and desks (table), sofas, bookshelves (bookcase);
- clutter: lamps, plants, bottles, monitors, keyboards, cups... on the floor and on tables.

Room types (offices, conference rooms, lounges, storage rooms) take turns over (area, index)
and mix the furniture as such rooms do. Every draw comes
from ``room_rng(seed, area, index)``, so a room is reproducible from (seed, area, index). Points
carry Gaussian scan noise and colours (rgb 0..255) by class; the protocol reads xyz only.
"""

from __future__ import annotations

import numpy as np

from mmpd_core.data.dense_readers import S3DIS_CLASSES, Room
from mmpd_core.data.shapes import sample_shape

LABEL = {name: i for i, name in enumerate(S3DIS_CLASSES)}
# procedural category -> (S3DIS class, height range in metres)
FURNITURE = {
    "chair": ("chair", (0.8, 1.05)),
    "stool": ("chair", (0.5, 0.75)),
    "table": ("table", (0.7, 0.8)),
    "desk": ("table", (0.72, 0.8)),
    "sofa": ("sofa", (0.75, 0.95)),
    "bookshelf": ("bookcase", (1.5, 2.2)),
}
FLOOR_CLUTTER = {"lamp": (1.2, 1.7), "plant": (0.6, 1.4), "flower_pot": (0.3, 0.6)}
TABLE_CLUTTER = {
    "bottle": (0.2, 0.32), "cup": (0.08, 0.12), "monitor": (0.35, 0.5), "keyboard": (0.03, 0.05),
    "radio": (0.15, 0.25), "vase": (0.2, 0.35), "laptop": (0.2, 0.25),
}  # fmt: skip
# room type -> furniture counts (low, high) drawn per room
ROOM_TYPES = {
    "office": {"table": (1, 3), "desk": (0, 2), "chair": (2, 5), "bookshelf": (0, 2)},
    "conference": {"table": (1, 1), "chair": (4, 8), "bookshelf": (0, 1)},
    "lounge": {"sofa": (1, 3), "table": (0, 2), "stool": (0, 2), "chair": (0, 2)},
    "storage": {"bookshelf": (2, 4), "table": (0, 1), "stool": (0, 1)},
}
COLOURS = np.array([
    [200, 200, 195], [120, 100, 80], [180, 175, 165], [150, 150, 150], [160, 160, 160],
    [170, 200, 230], [140, 90, 50], [110, 80, 60], [60, 60, 70], [90, 40, 40],
    [130, 100, 70], [235, 235, 235], [100, 130, 90],
], dtype=np.float64)  # fmt: skip
NOISE = 0.005  # metres, the scan noise on every point


def room_rng(seed: int, area: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7, area, index])


def _plane(rng, n, origin, u, v):
    """n points uniform on the parallelogram origin + s·u + t·v, s, t in [0, 1]."""
    st = rng.random((n, 2))
    return origin + st[:, :1] * u + st[:, 1:] * v  # (n, 3)


class _Scan:
    """Points, labels and object instances of a room as they are added: ``object(category)``
    opens an instance (1, 2, ...) that the following ``add`` calls belong to."""

    def __init__(self, rng: np.random.Generator, density: float):
        self.rng, self.density, self.points, self.labels = rng, density, [], []
        self.instances, self.categories = [], {}

    def object(self, category: str) -> None:
        self.categories[len(self.categories) + 1] = category

    def add(self, points: np.ndarray, label: str) -> None:
        self.points.append(points)
        self.labels.append(np.full(len(points), LABEL[label]))
        self.instances.append(np.full(len(points), len(self.categories)))

    def rect(self, origin, u, v, label: str, density: float | None = None) -> None:
        area = np.linalg.norm(np.cross(u, v))
        n = self.rng.poisson((density or self.density) * area)
        self.add(
            _plane(self.rng, n, np.asarray(origin, float), np.asarray(u), np.asarray(v)), label
        )

    def box(self, lo, hi, label: str) -> None:
        """The five faces of an axis-aligned box but its bottom."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        dx, dy, dz = np.diag(hi - lo)
        self.rect(lo + dz, dx, dy, label)  # top
        self.rect(lo, dx, dz, label)
        self.rect(lo + dy, dx, dz, label)
        self.rect(lo, dy, dz, label)
        self.rect(lo + dx, dy, dz, label)


def _wall(scan: _Scan, size, height, wall: int, openings) -> None:
    """Wall ``wall`` (0: y = 0, 1: x = W, 2: y = D, 3: x = 0) with rectangular holes
    ``openings`` [(s0, s1, z0, z1)] in its own coordinates (s along the wall, z up)."""
    width, depth = size
    length = width if wall % 2 == 0 else depth
    n = scan.rng.poisson(scan.density * length * height)
    scan.object("wall")
    s, z = scan.rng.random(n) * length, scan.rng.random(n) * height
    keep = np.ones(n, bool)
    for s0, s1, z0, z1 in openings:
        keep &= ~((s >= s0) & (s <= s1) & (z >= z0) & (z <= z1))
    scan.add(_on_wall(size, wall, s[keep], z[keep], 0.0), "wall")


def _on_wall(size, wall: int, s, z, inset: float) -> np.ndarray:
    """Wall coordinates (s along, z up) to room xyz, ``inset`` metres into the room."""
    width, depth = size
    s, z = np.asarray(s, float), np.asarray(z, float)
    if wall == 0:
        xy = np.stack([s, np.full_like(s, inset)], 1)
    elif wall == 1:
        xy = np.stack([np.full_like(s, width - inset), s], 1)
    elif wall == 2:
        xy = np.stack([width - s, np.full_like(s, depth - inset)], 1)
    else:
        xy = np.stack([np.full_like(s, inset), depth - s], 1)
    return np.concatenate([xy, z[:, None]], 1)  # (n, 3)


def _patch(scan: _Scan, size, wall, s0, s1, z0, z1, inset, label, density=None):
    n = scan.rng.poisson((density or scan.density) * (s1 - s0) * (z1 - z0))
    s = scan.rng.uniform(s0, s1, n)
    z = scan.rng.uniform(z0, z1, n)
    scan.add(_on_wall(size, wall, s, z, inset), label)


def _shell(scan: _Scan, size, height) -> None:
    """Floor, ceiling, walls with their doors, windows and board; a beam and a column."""
    rng, (width, depth) = scan.rng, size
    scan.object("floor")
    scan.rect((0, 0, 0), (width, 0, 0), (0, depth, 0), "floor")
    scan.object("ceiling")
    scan.rect((0, 0, height), (width, 0, 0), (0, depth, 0), "ceiling")
    openings: dict[int, list] = {w: [] for w in range(4)}
    board_wall = int(rng.integers(4)) if rng.random() < 0.7 else -1
    for wall in range(4):
        length = width if wall % 2 == 0 else depth
        free = [(0.3, length - 0.3)]
        wanted = []
        if wall in (0, 3) and rng.random() < 0.8:
            wanted.append(("door", rng.uniform(0.85, 1.0)))
        if wall in (1, 2):
            wanted += [("window", rng.uniform(0.8, 1.6)) for _ in range(rng.integers(0, 3))]
        if wall == board_wall:
            wanted.append(("board", rng.uniform(1.2, min(2.4, length - 0.8))))
        for kind, span in wanted:
            s0 = _place_span(rng, free, span)
            if s0 is None:
                continue
            s1 = s0 + span
            scan.object(kind)
            if kind == "door":
                z1 = rng.uniform(2.0, 2.2)
                openings[wall].append((s0, s1, 0.0, z1))
                _patch(scan, size, wall, s0, s1, 0.0, z1, 0.04, "door")
            elif kind == "window":
                z0, z1 = rng.uniform(0.8, 1.0), rng.uniform(1.9, min(2.3, height - 0.2))
                openings[wall].append((s0, s1, z0, z1))
                for a, b, c, d in ((s0, s1, z0, z0 + 0.06), (s0, s1, z1 - 0.06, z1),
                                   (s0, s0 + 0.06, z0, z1), (s1 - 0.06, s1, z0, z1)):  # fmt: skip
                    _patch(scan, size, wall, a, b, c, d, 0.0, "window", scan.density * 3)
                _patch(scan, size, wall, s0, s1, z0 - 0.02, z0, 0.12, "window", scan.density * 8)
                _patch(scan, size, wall, s0, s1, z0, z1, -0.05, "window", scan.density * 0.3)
            else:
                z0 = rng.uniform(0.85, 1.0)
                _patch(scan, size, wall, s0, s1, z0, z0 + rng.uniform(0.9, 1.2), 0.02, "board")
    for wall in range(4):
        _wall(scan, size, height, wall, openings[wall])
    if rng.random() < 0.4:  # a beam across the ceiling, 0.25-0.4 deep
        drop, w = rng.uniform(0.25, 0.4), rng.uniform(0.25, 0.4)
        if rng.random() < 0.5:
            x = rng.uniform(0.3 * width, 0.7 * width)
            scan.object("beam")
            scan.box((x, 0, height - drop), (x + w, depth, height), "beam")
        else:
            y = rng.uniform(0.3 * depth, 0.7 * depth)
            scan.object("beam")
            scan.box((0, y, height - drop), (width, y + w, height), "beam")
    if rng.random() < 0.4:  # a column against a wall
        side = rng.uniform(0.3, 0.5)
        x = rng.choice([0.0, width - side])
        y = rng.uniform(0.5, depth - 0.5 - side)
        scan.object("column")
        scan.box((x, y, 0), (x + side, y + side, height), "column")


def _place_span(rng, free: list, span: float):
    """Take a random interval of length ``span`` out of the free intervals (None if none fits)."""
    fits = [i for i, (a, b) in enumerate(free) if b - a >= span + 0.2]
    if not fits:
        return None
    a, b = free.pop(int(rng.choice(fits)))
    s0 = rng.uniform(a + 0.1, b - span - 0.1)
    free += [(a, s0 - 0.1), (s0 + span + 0.1, b)]
    return s0


def _object(rng, category: str, height: float, index: int, seed: int, density: float):
    """A procedural shape stood upright (z up) at ``height`` metres, base at z = 0, centred on
    the origin in xy, turned by a random yaw; returns its points (N, 3)."""
    probe = sample_shape(category, index, seed, 256).points  # its proportions, y up
    extent = probe.max(0) - probe.min(0)
    scale = height / max(extent[1], 1e-6)
    w, h, d = extent * scale
    n = int(np.clip(density * 0.7 * (2 * (w * d + w * h + d * h)), 48, 6000))
    points = sample_shape(category, index, seed, n).points * scale  # (n, 3), y up
    points = points[:, [0, 2, 1]] * np.array([1.0, -1.0, 1.0])  # z up (x, -z, y)
    points -= np.array([*(points.min(0)[:2] + points.max(0)[:2]) / 2, points.min(0)[2]])
    yaw = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(yaw), np.sin(yaw)
    points[:, :2] = points[:, :2] @ np.array([[c, -s], [s, c]]).T
    return points


def _place(rng, size, radius: float, taken: list, tries: int = 40):
    """A free floor position for a footprint of ``radius`` (None when the room is full)."""
    width, depth = size
    for _ in range(tries):
        x = rng.uniform(radius + 0.1, width - radius - 0.1)
        y = rng.uniform(radius + 0.1, depth - radius - 0.1)
        if all(np.hypot(x - a, y - b) > radius + r for a, b, r in taken):
            taken.append((x, y, radius))
            return x, y
    return None


def _furnish(scan: _Scan, size, kind: str, seed: int, counter) -> None:
    rng, taken, tops = scan.rng, [], []
    plan = [(c, int(rng.integers(lo, hi + 1))) for c, (lo, hi) in ROOM_TYPES[kind].items()]
    order = [c for c, n in plan for _ in range(n)]
    order += [c for c in FLOOR_CLUTTER if rng.random() < 0.4]
    for category in order:
        label, heights = FURNITURE.get(category, ("clutter", FLOOR_CLUTTER.get(category)))
        points = _object(rng, category, rng.uniform(*heights), next(counter), seed, scan.density)
        radius = float(np.linalg.norm(points[:, :2], axis=1).max())
        at = _place(rng, size, radius, taken)
        if at is None:
            continue
        points[:, :2] += at
        scan.object(category)
        scan.add(points, label)
        if label == "table":
            tops.append((at, radius * 0.5, float(points[:, 2].max())))
    for (x, y), reach, top in tops:  # clutter on the tables
        for _ in range(rng.integers(0, 3)):
            category = str(rng.choice(list(TABLE_CLUTTER)))
            points = _object(rng, category, rng.uniform(*TABLE_CLUTTER[category]),
                             next(counter), seed, scan.density * 2)  # fmt: skip
            offset = rng.uniform(-reach, reach, 2)
            points += np.array([x + offset[0], y + offset[1], top])
            scan.object(category)
            scan.add(points, "clutter")


def make_room(seed: int, area: int, index: int, density: float = 300.0) -> Room:
    """Room ``index`` of ``area``: about ``density`` points per square metre of surface."""
    return make_scene(seed, area, index, density)[0]


def make_scene(seed: int, area: int, index: int, density: float = 300.0):
    """``make_room`` with its object instances: (room, instance id per point (N,) int64 from
    1, {instance id: category}); a category is a procedural family ('chair', 'desk', 'lamp')
    or a part of the shell ('wall', 'floor', 'ceiling', 'door', 'window', 'board', 'beam',
    'column')."""
    rng = room_rng(seed, area, index)
    kind = list(ROOM_TYPES)[(area + index) % len(ROOM_TYPES)]  # every type in a few areas
    size = (float(rng.uniform(3.5, 6.5)), float(rng.uniform(3.5, 6.0)))
    height = float(rng.uniform(2.7, 3.2))
    scan = _Scan(rng, density)
    _shell(scan, size, height)
    counter = iter(range(area * 100_000 + index * 1_000, area * 100_000 + (index + 1) * 1_000))
    _furnish(scan, size, kind, seed, counter)
    points = np.concatenate(scan.points) + rng.normal(0, NOISE, (sum(map(len, scan.points)), 3))
    labels = np.concatenate(scan.labels).astype(np.int64)
    colors = np.clip(COLOURS[labels] + rng.normal(0, 12, (len(labels), 3)), 0, 255)
    points -= points.min(0)
    room = Room(area=area, name=f"{kind}_{index + 1}", points=points.astype(np.float32),
                colors=colors.round().astype(np.float32), labels=labels)  # fmt: skip
    return room, np.concatenate(scan.instances).astype(np.int64), scan.categories
