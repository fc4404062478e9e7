"""Frozen-teacher features, computed once: every view (RGB and depth) and every caption.

Stage-1 teachers never change, so their embeddings of the rendered views and captions are
computed once per (teacher, dataset) and stored as one safetensors file per teacher:

- image teacher: ``features`` (S, V, 2, D) — shape s, view v, 0 = RGB / 1 = depth;
- text teacher: ``features`` (S, C, D) — up to C captions per shape, ``counts`` (S,) used —
  and the same of the captions that never name the category (``features_unnamed``,
  ``counts_unnamed``; ``CAPTION_SETS``), when the data manifest has them.

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
from safetensors.torch import save

from mmpd_core.checkpoint import atomic_write_bytes
from mmpd_core.config import resolve
from mmpd_core.data import render
from mmpd_core.engine import AMP_DTYPES, autocast_context
from mmpd_core.tracking import progress

RGB, DEPTH = 0, 1
# caption set -> (data manifest key of its captions file, cached tensor suffix)
CAPTION_SETS = {"named": ("captions", ""), "unnamed": ("captions_unnamed", "_unnamed")}


def caption_sets(data_manifest: dict) -> dict[str, dict[str, list[str]]]:
    """Every caption set the data manifest has: {set: {shape name: captions}}."""
    return {
        name: json.loads(resolve(data_manifest[key]).read_text())
        for name, (key, _) in CAPTION_SETS.items()
        if key in data_manifest
    }


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


def _record(teacher, data_manifest: dict, degrees, dtype: torch.dtype, amp: str) -> dict:
    record = {
        "fingerprint": teacher.fingerprint(),
        "dataset_sha256": data_manifest["content_sha256"],
        "views_degrees": list(degrees),
        "dtype": str(dtype),
    }
    return record if amp == "none" else {**record, "amp": amp}


class ViewImages(torch.utils.data.Dataset):
    """Every (shape, view, RGB | depth) image, decoded on demand (in DataLoader workers)."""

    def __init__(self, data_manifest: dict, names, degrees):
        self.data_manifest, self.names, self.degrees = data_manifest, names, degrees
        self.jobs = [
            (s, v, m) for s in range(len(names)) for v in range(len(degrees)) for m in (RGB, DEPTH)
        ]

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int):
        s, v, m = self.jobs[index]
        image = load_view(self.data_manifest, self.names[s], self.degrees[v], m)
        return image, torch.tensor([s, v, m])


def _device(teacher) -> torch.device:
    return getattr(teacher, "device", torch.device("cpu"))


@torch.no_grad()
def image_features(
    teachers, data_manifest, names, degrees, batch_size: int, *, num_workers=0, amp="none"
) -> dict[str, torch.Tensor]:
    """(S, V, 2, D) embeddings of the views at ``degrees`` of every shape, RGB and depth, for
    every image teacher at once: each image is decoded once (in ``num_workers`` DataLoader
    workers) and every teacher embeds it, under ``amp`` autocast on the teachers' device."""
    views = ViewImages(data_manifest, names, degrees)
    loader = torch.utils.data.DataLoader(views, batch_size=batch_size, num_workers=num_workers)
    out, seconds = {}, {t.name: 0.0 for t in teachers}
    for images, where in progress(loader, desc="cache image teachers"):
        s, v, m = where.unbind(1)  # (b,) each
        for teacher in teachers:
            tick = time.perf_counter()
            with autocast_context(_device(teacher), AMP_DTYPES[amp]):
                feats = teacher.encode_images(images).float().cpu()  # (b, D)
            seconds[teacher.name] += time.perf_counter() - tick
            if teacher.name not in out:
                out[teacher.name] = torch.zeros(len(names), len(degrees), 2, feats.shape[-1])
            out[teacher.name][s, v, m] = feats
    return out, seconds


@torch.no_grad()
def text_features(teacher, captions: dict[str, list[str]], names, batch_size: int, amp="none"):
    """(S, C, D) caption embeddings (rows past a shape's count repeat its last caption) and
    the per-shape caption counts (S,)."""
    most = max(len(captions[n]) for n in names)
    padded = [captions[n] + [captions[n][-1]] * (most - len(captions[n])) for n in names]
    flat = [text for texts in padded for text in texts]
    chunks = []
    for i in progress(range(0, len(flat), batch_size), desc=f"cache {teacher.name}"):
        with autocast_context(_device(teacher), AMP_DTYPES[amp]):
            chunks.append(teacher.encode_texts(flat[i : i + batch_size]).float().cpu())
    feats = torch.cat(chunks).view(len(names), most, -1)  # (S, C, D)
    return feats, torch.tensor([len(captions[n]) for n in names])


def build_cache(
    teachers, data_manifest: dict, out_dir, *, view_stride=1, batch_size=64, dtype=torch.float16,
    num_workers=0, amp="none",
):  # fmt: skip
    """Compute (or reuse) every teacher's features; returns the cache manifest with the
    seconds each computed teacher took under ``timings_s`` (only in the returned copy: the
    manifest file stays the same bytes when the same features are computed again)."""
    degrees = view_subset(data_manifest, view_stride)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    names = shape_names(data_manifest)
    captions = caption_sets(data_manifest)
    manifest["shapes"], manifest["views_degrees"] = names, degrees
    manifest.setdefault("teachers", {})
    manifest.pop("timings_s", None)  # written by earlier versions
    timings = {}
    stale = []
    for teacher in teachers:
        record = _record(teacher, data_manifest, degrees, dtype, amp)
        entry = manifest["teachers"].get(teacher.name, {})
        if entry.get("record") == record and (out_dir / f"{teacher.name}.safetensors").is_file():
            entry["spec"] = getattr(teacher, "spec", None)
            timings[teacher.name] = 0.0  # same teacher, same data: reused
        else:
            stale.append((teacher, record))
    images = [t for t, _ in stale if t.modality == "image"]
    computed, seconds = {}, {}
    if images:
        feats, seconds = image_features(
            images, data_manifest, names, degrees, batch_size, num_workers=num_workers, amp=amp
        )
        computed = {name: {"features": f} for name, f in feats.items()}
    for teacher, _ in stale:
        if teacher.modality == "text":
            tick = time.perf_counter()
            computed[teacher.name] = {}
            for caption_set, texts in captions.items():
                feats, counts = text_features(teacher, texts, names, batch_size, amp)
                suffix = CAPTION_SETS[caption_set][1]
                computed[teacher.name].update(
                    {f"features{suffix}": feats.to(dtype).contiguous(), f"counts{suffix}": counts}
                )
            seconds[teacher.name] = time.perf_counter() - tick
    for teacher, record in stale:
        tensors = computed[teacher.name]
        tensors["features"] = tensors["features"].to(dtype).contiguous()
        path = out_dir / f"{teacher.name}.safetensors"
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
        timings[teacher.name] = seconds[teacher.name]
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    return {**manifest, "timings_s": timings}


def mmap_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of a private memory map: pages are read on
    demand and shared, through the page cache, by every process that maps the file (each DDP
    rank), instead of one private copy per process; a write stays private (copy on write)."""
    path = Path(path)
    with open(path, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_len))
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=path.stat().st_size)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = (8 + header_len + offset for offset in info["data_offsets"])
        flat = torch.empty(0, dtype=dtype)
        count = (end - begin) // flat.element_size()
        flat.set_(storage, begin // flat.element_size(), (count,))
        tensors[name] = flat.view(info["shape"]) if info["shape"] else flat.view(())
    return tensors


_SAFETENSORS_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


class TeacherCache:
    """The cached features of one dataset, indexed by shape position (the manifest's order)."""

    def __init__(self, cache_dir, teacher_names=None):
        cache_dir = self.path = Path(cache_dir)
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
        self.tensors = {  # memory-mapped: one copy in the page cache for every rank
            n: mmap_safetensors(cache_dir / self.manifest["teachers"][n]["file"]) for n in wanted
        }
        self.modality = {n: self.manifest["teachers"][n]["modality"] for n in wanted}

    def dim(self, name: str) -> int:
        return self.tensors[name]["features"].shape[-1]


class TargetSource:
    """Teacher targets for a batch of shape positions: cached, or computed ``online``.

    ``draw`` picks, per sample, one view and one of RGB/depth (shared by every image teacher:
    the paper samples one image I per point cloud) and one of the shape's captions, among its
    first ``caption_top_k`` (0: all; the captions are ranked, so 1 is the paper's "top-1 BLIP-2
    caption" setting).
    """

    def __init__(self, names, modality: dict[str, str], degrees: list[int], dims: dict[str, int]):
        self.names, self.modality, self.degrees, self.dims = names, modality, degrees, dims
        self.cache: TeacherCache | None = None
        self.teachers, self.data_manifest, self.captions = None, None, None
        self.caption_top_k = 0
        self.caption_set = "named"  # CAPTION_SETS: unnamed ones never name the category

    def use_captions(self, caption_set: str) -> None:
        """Draw caption targets from ``caption_set`` (a ``CAPTION_SETS`` name)."""
        suffix = CAPTION_SETS[caption_set][1]
        if self.cache is not None:
            texts = [n for n, m in self.modality.items() if m == "text"]
            lacking = [n for n in texts if f"features{suffix}" not in self.cache.tensors[n]]
            if lacking:
                raise KeyError(
                    f"teacher cache {self.cache.path}: no {caption_set} caption features for "
                    f"{lacking} (rerun data_prep and teacher_cache)"
                )
        else:
            self.captions = caption_sets(self.data_manifest)[caption_set]
        self.caption_set = caption_set

    def _usable(self, counts: torch.Tensor) -> torch.Tensor:
        return counts.clamp(max=self.caption_top_k) if self.caption_top_k else counts

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
                suffix = CAPTION_SETS[self.caption_set][1]
                feats, counts = tensors[f"features{suffix}"], tensors[f"counts{suffix}"]
                caption = (pick["caption"] * self._usable(counts[indices])).long()
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
                counts = self._usable(torch.tensor([len(self.captions[n]) for n in names]))
                texts = [
                    self.captions[n][int(u * c)]
                    for n, u, c in zip(
                        names, pick["caption"].tolist(), counts.tolist(), strict=True
                    )
                ]
                out[teacher.name] = teacher.encode_texts(texts).float()
        return out


def run_stage(cfg) -> dict:
    """The ``teacher_cache`` stage: build the teachers of ``cfg.teachers`` (on the GPU when
    there is one) and cache their features, every image teacher in one pass over the views."""
    from mmpd_core.teachers import build_teacher

    data_manifest = json.loads(resolve(cfg.data_manifest).read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teachers = []
    for spec in cfg.teachers:
        teacher = build_teacher(spec, device=device)
        teacher.spec = dict(spec)
        teachers.append(teacher)
    return build_cache(
        teachers,
        data_manifest,
        resolve(cfg.out_dir),
        view_stride=cfg.view_stride,
        batch_size=cfg.batch_size,
        dtype=getattr(torch, cfg.dtype),
        num_workers=cfg.num_workers,
        amp=cfg.amp,
    )
