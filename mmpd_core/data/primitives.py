"""Surface primitives for the procedural shapes: boxes, surfaces of revolution and meshes.

Every part knows its surface area and samples points uniformly on its surface with outward
normals, so a shape samples area-weighted across parts. Coordinates: y is up. A part is
placed by a rotation matrix ``rot`` (3, 3) and a translation ``at`` (3,).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def rotation(x: float = 0.0, y: float = 0.0, z: float = 0.0) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx for angles in radians."""
    cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class Part:
    """Base: ``name`` is the semantic part (seat, leg...), shared parts share a colour."""

    name: str
    at: np.ndarray = field(default_factory=lambda: np.zeros(3))
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def area(self) -> float:
        return float(self._local_area())

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n points (n, 3) and unit normals (n, 3) in world coordinates."""
        pts, nrm = self._local_sample(n, rng)
        return pts @ self.rot.T + self.at, nrm @ self.rot.T


@dataclass
class Box(Part):
    """Axis-aligned (in local coordinates) box with full sizes ``size`` (3,)."""

    size: np.ndarray = field(default_factory=lambda: np.ones(3))

    def _face_areas(self) -> np.ndarray:
        sx, sy, sz = self.size
        return np.array([sy * sz, sy * sz, sx * sz, sx * sz, sx * sy, sx * sy])

    def _local_area(self) -> float:
        return self._face_areas().sum()

    def _local_sample(self, n, rng):
        areas = self._face_areas()
        face = rng.choice(6, size=n, p=areas / areas.sum())  # (n,) faces -x,+x,-y,+y,-z,+z
        axis, sign = face // 2, np.where(face % 2, 1.0, -1.0)
        pts = (rng.random((n, 3)) - 0.5) * self.size  # (n, 3) inside the box
        pts[np.arange(n), axis] = sign * self.size[axis] / 2  # pushed onto the face
        nrm = np.zeros((n, 3))
        nrm[np.arange(n), axis] = sign
        return pts, nrm


@dataclass
class Lathe(Part):
    """Surface of revolution about the local y axis of a profile [(y_k, r_k)].

    Covers cylinders, cones, frusta, spheres, vases, bowls and (with a closed profile) tori.
    ``caps`` closes the first / last profile point with a disk.
    """

    profile: np.ndarray = field(default_factory=lambda: np.array([[0.0, 1.0], [1.0, 1.0]]))
    caps: tuple[bool, bool] = (True, True)

    def _pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y, r = self.profile[:, 0], self.profile[:, 1]
        slant = np.hypot(np.diff(y), np.diff(r))  # (K-1,)
        side = np.pi * (r[:-1] + r[1:]) * slant  # (K-1,) frustum areas
        caps = np.array([np.pi * r[0] ** 2 * self.caps[0], np.pi * r[-1] ** 2 * self.caps[1]])
        return side, caps, np.concatenate([side, caps])

    def _local_area(self) -> float:
        return self._pieces()[2].sum()

    def _local_sample(self, n, rng):
        side, _caps, areas = self._pieces()
        piece = rng.choice(len(areas), size=n, p=areas / areas.sum())  # (n,)
        theta = rng.uniform(0, 2 * np.pi, n)
        y, r = self.profile[:, 0], self.profile[:, 1]
        rad, height, n_rad, n_y = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        seg = piece < len(side)
        k = piece[seg]
        dr, dy = r[k + 1] - r[k], y[k + 1] - y[k]
        t = _linear_density_t(r[k], dr, rng.random(seg.sum()))
        rad[seg], height[seg] = r[k] + t * dr, y[k] + t * dy
        norm = np.hypot(dy, dr) + 1e-12
        n_rad[seg], n_y[seg] = dy / norm, -dr / norm
        for cap, end in ((len(side), 0), (len(side) + 1, -1)):
            on = piece == cap
            rad[on] = r[end] * np.sqrt(rng.random(on.sum()))
            height[on] = y[end]
            n_y[on] = -1.0 if end == 0 else 1.0
        pts = np.stack([rad * np.cos(theta), height, rad * np.sin(theta)], axis=1)  # (n, 3)
        nrm = np.stack([n_rad * np.cos(theta), n_y, n_rad * np.sin(theta)], axis=1)  # (n, 3)
        return pts, nrm


def _linear_density_t(r0: np.ndarray, dr: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse CDF on [0, 1] of a density proportional to r0 + t * dr (a frustum's width)."""
    a, b = dr / 2, r0
    total = b + a
    safe_a = np.where(np.abs(a) < 1e-9, 1.0, a)
    root = (-b + np.sqrt(np.maximum(b * b + 4 * safe_a * u * total, 0.0))) / (2 * safe_a)
    return np.clip(np.where(np.abs(a) < 1e-9, u, root), 0.0, 1.0)


@dataclass
class Mesh(Part):
    """Triangle mesh; normals point away from the mesh centroid (convex parts: tents, roofs)."""

    vertices: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    faces: np.ndarray = field(default_factory=lambda: np.array([[0, 1, 2]]))

    def _triangles(self) -> tuple[np.ndarray, np.ndarray]:
        tri = self.vertices[self.faces]  # (F, 3 corners, 3)
        cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3)
        return tri, cross

    def _local_area(self) -> float:
        return np.linalg.norm(self._triangles()[1], axis=1).sum() / 2

    def _local_sample(self, n, rng):
        tri, cross = self._triangles()
        areas = np.linalg.norm(cross, axis=1)
        f = rng.choice(len(tri), size=n, p=areas / areas.sum())  # (n,)
        u, v = rng.random(n), rng.random(n)
        flip = u + v > 1
        u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
        t = tri[f]  # (n, 3, 3)
        pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
        nrm = cross[f] / areas[f, None]
        outward = np.sign(((pts - self.vertices.mean(0)) * nrm).sum(1, keepdims=True))
        return pts, nrm * np.where(outward == 0, 1.0, outward)


def cylinder(name, radius, y0, y1, caps=(True, True), **place) -> Lathe:
    return Lathe(name, profile=np.array([[y0, radius], [y1, radius]]), caps=caps, **place)


def frustum(name, r0, r1, y0, y1, caps=(True, True), **place) -> Lathe:
    return Lathe(name, profile=np.array([[y0, r0], [y1, r1]]), caps=caps, **place)


def sphere(name, radius, segments: int = 16, **place) -> Lathe:
    phi = np.linspace(-np.pi / 2, np.pi / 2, segments + 1)
    profile = np.stack([radius * np.sin(phi), radius * np.cos(phi)], axis=1)  # (S+1, 2)
    return Lathe(name, profile=profile, caps=(False, False), **place)


def torus(name, major, minor, segments: int = 16, **place) -> Lathe:
    phi = np.linspace(0, 2 * np.pi, segments + 1)
    profile = np.stack([minor * np.sin(phi), major + minor * np.cos(phi)], axis=1)
    return Lathe(name, profile=profile, caps=(False, False), **place)


def box(name, size, center, rot=None) -> Box:
    return Box(
        name,
        at=np.asarray(center, float),
        rot=np.eye(3) if rot is None else rot,
        size=np.asarray(size, float),
    )
