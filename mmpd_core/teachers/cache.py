"""Frozen-teacher features, computed once: every view (RGB and depth) and every caption.

Stage-1 teachers never change, so their embeddings of the rendered views and captions are
computed once per (teacher, dataset) and stored as one safetensors file per teacher:

- image teacher: ``features`` (S, V, 2, D) — shape s, view v, 0 = RGB / 1 = depth;
- text teacher: ``features`` (S, C, D) — up to C captions per shape, ``counts`` (S,) used.

``manifest.json`` records, per teacher, its fingerprint (id, weights hash, preprocessing), the
dtype, the shapes and the data manifest's content hash. A teacher is recomputed only when that
record changes. ``TargetSource`` serves a batch's targets from the cache or, in ``online``
mode, by running the teachers on the images and captions directly (for small runs).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from mmpd_core.checkpoint import atomic_write_bytes
from mmpd_core.config import resolve
from mmpd_core.data import render
from mmpd_core.tracking import progress

RGB, DEPTH = 0, 1


def shape_names(data_manifest: dict) -> list[str]:
    """Every pretraining shape with renders and captions, in the caption file's order."""
    return list(json.loads(resolve(data_manifest["captions"]).read_text()))


def load_view(data_manifest: dict, name: str, degrees: int, modality: int) -> torch.Tensor:
    """One rendered view as a (3, H, W) image in [0, 1]; depth maps become grey images."""
    rgb_path, depth_path = render.render_paths(resolve(data_manifest["renders"]), name, degrees)
    if modality == RGB:
        return render.load_png(rgb_path)
    return render.depth_to_rgb(render.load_depth_png(depth_path))


def view_subset(data_manifest: dict, stride: int = 1) -> list[int]:
    """Azimuths (degrees) of every ``stride``-th rendered view: the views the cache holds."""
    return data_manifest["views_degrees"][::stride]


def _record(teacher, data_manifest: dict, degrees, dtype: torch.dtype) -> dict:
    return {
        "fingerprint": teacher.fingerprint(),
        "dataset_sha256": data_manifest["content_sha256"],
        "views_degrees": list(degrees),
        "dtype": str(dtype),
    }


@torch.no_grad()
def image_features(teacher, data_manifest, names, degrees, batch_size: int) -> torch.Tensor:
    """(S, V, 2, D) embeddings of the views at ``degrees`` of every shape, RGB and depth."""
    jobs = [(s, v, m) for s in range(len(names)) for v in range(len(degrees)) for m in (RGB, DEPTH)]
    out = None
    for start in progress(range(0, len(jobs), batch_size), desc=f"cache {teacher.name}"):
        chunk = jobs[start : start + batch_size]
        images = torch.stack(
            [load_view(data_manifest, names[s], degrees[v], m) for s, v, m in chunk]
        )
        feats = teacher.encode_images(images).float().cpu()  # (b, D)
        if out is None:
            out = torch.zeros(len(names), len(degrees), 2, feats.shape[-1])
        for (s, v, m), f in zip(chunk, feats, strict=True):
            out[s, v, m] = f
    return out


@torch.no_grad()
def text_features(teacher, captions: dict[str, list[str]], names, batch_size: int):
    """(S, C, D) caption embeddings (rows past a shape's count repeat its last caption) and
    the per-shape caption counts (S,)."""
    most = max(len(captions[n]) for n in names)
    padded = [captions[n] + [captions[n][-1]] * (most - len(captions[n])) for n in names]
    flat = [text for texts in padded for text in texts]
    chunks = [
        teacher.encode_texts(flat[i : i + batch_size]).float().cpu()
        for i in progress(range(0, len(flat), batch_size), desc=f"cache {teacher.name}")
    ]
    feats = torch.cat(chunks).view(len(names), most, -1)  # (S, C, D)
    return feats, torch.tensor([len(captions[n]) for n in names])


def build_cache(
    teachers, data_manifest: dict, out_dir, *, view_stride=1, batch_size=64, dtype=torch.float16
):
    """Compute (or reuse) every teacher's features; returns the cache manifest."""
    degrees = view_subset(data_manifest, view_stride)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    names = shape_names(data_manifest)
    captions = json.loads(resolve(data_manifest["captions"]).read_text())
    manifest["shapes"], manifest["views_degrees"] = names, degrees
    manifest.setdefault("teachers", {})
    for teacher in teachers:
        record = _record(teacher, data_manifest, degrees, dtype)
        path = out_dir / f"{teacher.name}.safetensors"
        entry = manifest["teachers"].get(teacher.name, {})
        if entry.get("record") == record and path.is_file():
            entry["spec"] = getattr(teacher, "spec", None)
            continue  # same teacher, same data: reuse
        tensors = {}
        if teacher.modality == "image":
            tensors["features"] = image_features(teacher, data_manifest, names, degrees, batch_size)
        else:
            tensors["features"], tensors["counts"] = text_features(
                teacher, captions, names, batch_size
            )
        tensors["features"] = tensors["features"].to(dtype).contiguous()
        data = save(tensors)
        atomic_write_bytes(path, data)
        manifest["teachers"][teacher.name] = {
            "record": record,
            "modality": teacher.modality,
            "file": path.name,
            "file_sha256": hashlib.sha256(data).hexdigest(),
            "shape": list(tensors["features"].shape),
            "spec": getattr(teacher, "spec", None),  # how to rebuild it (build_teacher)
        }
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    return manifest


class TeacherCache:
    """The cached features of one dataset, indexed by shape position (the manifest's order)."""

    def __init__(self, cache_dir, teacher_names=None):
        cache_dir = Path(cache_dir)
        manifest_path = cache_dir / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path}: no teacher cache (run the teacher_cache stage)"
            )
        self.manifest = json.loads(manifest_path.read_text())
        self.names = self.manifest["shapes"]
        wanted = teacher_names or list(self.manifest["teachers"])
        missing = sorted(set(wanted) - set(self.manifest["teachers"]))
        if missing:
            raise KeyError(f"{manifest_path}: no cached features for teachers {missing}")
        self.tensors = {
            n: load_file(cache_dir / self.manifest["teachers"][n]["file"]) for n in wanted
        }
        self.modality = {n: self.manifest["teachers"][n]["modality"] for n in wanted}

    def dim(self, name: str) -> int:
        return self.tensors[name]["features"].shape[-1]


class TargetSource:
    """Teacher targets for a batch of shape positions: cached, or computed ``online``.

    ``draw`` picks, per sample, one view and one of RGB/depth (shared by every image teacher:
    the paper samples one image I per point cloud) and one of the shape's captions.
    """

    def __init__(self, names, modality: dict[str, str], degrees: list[int], dims: dict[str, int]):
        self.names, self.modality, self.degrees, self.dims = names, modality, degrees, dims
        self.cache: TeacherCache | None = None
        self.teachers, self.data_manifest, self.captions = None, None, None

    @classmethod
    def from_cache(cls, cache: TeacherCache) -> TargetSource:
        dims = {n: cache.dim(n) for n in cache.tensors}
        source = cls(cache.names, cache.modality, cache.manifest["views_degrees"], dims)
        source.cache = cache
        return source

    @classmethod
    def online(cls, teachers, data_manifest: dict, degrees=None) -> TargetSource:
        """Teachers in the loop on the views at ``degrees`` (default: every rendered view)."""
        modality = {t.name: t.modality for t in teachers}
        dims = {t.name: t.dim for t in teachers}
        source = cls(
            shape_names(data_manifest), modality, degrees or data_manifest["views_degrees"], dims
        )
        source.teachers, source.data_manifest = teachers, data_manifest
        source.captions = json.loads(resolve(data_manifest["captions"]).read_text())
        return source

    def draw(self, indices: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        b = len(indices)
        pick = {
            "view": torch.randint(len(self.degrees), (b,), generator=generator),
            "modality": torch.randint(2, (b,), generator=generator),
            "caption": torch.rand(b, generator=generator),  # a fraction of the shape's captions
        }
        return self.targets(indices, pick)

    def fixed(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation targets: view 0 in RGB and the first caption of every shape."""
        zeros = torch.zeros(len(indices), dtype=torch.long)
        return self.targets(indices, {"view": zeros, "modality": zeros, "caption": zeros.float()})

    def targets(self, indices, pick) -> dict[str, torch.Tensor]:
        if self.cache is None:
            return self._online_targets(indices, pick)
        return self._cached_targets(indices, pick)

    def _cached_targets(self, indices, pick) -> dict[str, torch.Tensor]:
        out = {}
        for name, tensors in self.cache.tensors.items():
            feats = tensors["features"]
            if self.modality[name] == "image":
                out[name] = feats[indices, pick["view"], pick["modality"]].float()  # (B, D)
            else:
                caption = (pick["caption"] * tensors["counts"][indices]).long()  # (B,)
                out[name] = feats[indices, caption].float()  # (B, D)
        return out

    @torch.no_grad()
    def _online_targets(self, indices, pick) -> dict[str, torch.Tensor]:
        names = [self.names[i] for i in indices.tolist()]
        degrees = self.degrees
        views, modalities = pick["view"].tolist(), pick["modality"].tolist()
        out = {}
        for teacher in self.teachers:
            if teacher.modality == "image":
                images = [
                    load_view(self.data_manifest, n, degrees[v], m)
                    for n, v, m in zip(names, views, modalities, strict=True)
                ]
                out[teacher.name] = teacher.encode_images(torch.stack(images)).float()
            else:
                texts = [
                    self.captions[n][int(u * len(self.captions[n]))]
                    for n, u in zip(names, pick["caption"].tolist(), strict=True)
                ]
                out[teacher.name] = teacher.encode_texts(texts).float()
        return out


def run_stage(cfg) -> dict:
    """The ``teacher_cache`` stage: build the teachers of ``cfg.teachers`` and cache them."""
    from mmpd_core.teachers import build_teacher

    data_manifest = json.loads(resolve(cfg.data_manifest).read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out_dir, timings = resolve(cfg.out_dir), {}
    manifest = {}
    for spec in cfg.teachers:
        start = time.perf_counter()
        teacher = build_teacher(spec, device=device)
        teacher.spec = dict(spec)
        manifest = build_cache(
            [teacher],
            data_manifest,
            out_dir,
            view_stride=cfg.view_stride,
            batch_size=cfg.batch_size,
            dtype=getattr(torch, cfg.dtype),
        )
        timings[spec["name"]] = time.perf_counter() - start
    manifest["timings_s"] = timings
    atomic_write_bytes(out_dir / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifest
