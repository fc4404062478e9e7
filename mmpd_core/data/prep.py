"""The data-prep stage: build (or locate) every dataset, render views, caption, write a manifest.

Everything is written in the official layouts (``readers``), so downstream stages read the
embedded benchmark and the real datasets through the same code. Under ``out_dir``:

    ShapeNet55-34/ShapeNet-55/{train,test}.txt, shapenet_pc/<category>-<index>.npy   (pretrain)
    ShapeNet55-34/renders/<name>/<name>_r_<deg>.png, <name>_r_<deg>_depth0001.png (ULIP layout)
    ShapeNet55-34/captions.json        {shape name: [captions]}
    ShapeNet55-34/captions_unnamed.json  the same, never naming the category (Table 2, ✗)
    modelnet40_normal_resampled/       shape names + modelnet40_{train,test}_<N>pts_fps.dat
    ModelNetFewshot/<w>way_<s>shot/<fold>.pkl
    ScanObjectNN/main_split{,_nobg}/*.h5 (+ shape_names.txt)
    manifest.json                      roots, counts per class and split, sizes, seed, hashes

With ``source: real`` the four dataset roots are the real ones under ``real_root`` (checked,
not copied) and only renders, captions and the manifest are written to ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from mmpd_core.config import PROJECT_ROOT, DataPrepStage, resolve
from mmpd_core.data import captioning, captions, readers, render, synthetic
from mmpd_core.data.shapes import CATEGORIES, Shape, sample_shape
from mmpd_core.data.transforms import normalize_unit_sphere
from mmpd_core.distributed import WorldInfo, barrier, setup_distributed, world_info
from mmpd_core.engine import default_device
from mmpd_core.geometry import estimate_normals, farthest_point_sample, gather_points
from mmpd_core.tracking import progress

SHAPENET, MODELNET, FEWSHOT, SCAN = (
    "ShapeNet55-34",
    "modelnet40_normal_resampled",
    "ModelNetFewshot",
    "ScanObjectNN",
)
SCAN_NAMES = "shape_names.txt"


def shape_name(category: str, index: int) -> str:
    """ShapeNet-55 style file name: the category stands where a synset id would."""
    return f"{category}-{index:07d}.npy"


# --- embedded datasets ------------------------------------------------------------------------


def write_pretrain(cfg: DataPrepStage, root: Path) -> dict[str, Shape]:
    """Pretraining shapes in the ShapeNet-55 layout; returns them by file name (for the
    renders and captions, which need their normals, colours and attributes)."""
    per_split = {"train": cfg.pretrain_train_per_class, "test": cfg.pretrain_test_per_class}
    items, shapes = {}, {}
    for split, count in per_split.items():
        items[split] = {}
        for category in CATEGORIES:
            for i in range(count):
                index = synthetic.shape_index("pretrain", split, i)
                name = shape_name(category, index)
                shapes[name] = sample_shape(category, index, cfg.seed, cfg.pretrain_points)
                items[split][name] = shapes[name].points
    readers.write_shapenet55(root / SHAPENET, items)
    return shapes


def _fps_with_normals(clouds: synthetic.CloudSet, n: int) -> np.ndarray:
    """FPS each clean cloud down to n points, keeping normals: (M, n, 6) like the .dat cache."""
    points = torch.from_numpy(np.concatenate([clouds.points, clouds.normals], axis=-1))
    idx = farthest_point_sample(points[..., :3], n, skip_origin=False)  # (M, n)
    return gather_points(points, idx).numpy()  # (M, n, 6)


def write_modelnet(cfg: DataPrepStage, root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ModelNet40 stand-in (``synthetic.modelnet_clouds``: 40 categories with CAD-cloud
    nuisances) as ``.dat`` caches; returns {split: (points (M, N, 6), labels)}."""
    folder = root / MODELNET
    folder.mkdir(parents=True, exist_ok=True)
    (folder / readers.MODELNET_SHAPE_NAMES).write_text("\n".join(CATEGORIES) + "\n")
    per_split = {"train": cfg.modelnet_train_per_class, "test": cfg.modelnet_test_per_class}
    out = {}
    for split, count in per_split.items():
        clouds = synthetic.modelnet_clouds(split, count, 4 * cfg.modelnet_points, cfg.seed)
        points = _fps_with_normals(clouds, cfg.modelnet_points)
        path = readers.modelnet40_dat_path(folder, split, cfg.modelnet_points)
        readers.write_modelnet40_dat(path, list(points), clouds.labels)
        out[split] = (points, clouds.labels)
    return out


def write_fewshot(cfg: DataPrepStage, root: Path, modelnet) -> list[str]:
    """ModelNetFewshot-style folds from the ModelNet stand-in (support: train, query: test)."""
    (train_pts, train_lab), (test_pts, test_lab) = modelnet["train"], modelnet["test"]
    written = []
    for way in cfg.fewshot_ways:
        for shot in cfg.fewshot_shots:
            rng = np.random.default_rng([cfg.seed, way, shot])
            for fold in range(cfg.fewshot_folds):
                ep = synthetic.fewshot_episode(
                    train_lab, test_lab, way, shot, cfg.fewshot_query, rng
                )
                episode = {
                    "train": [
                        (train_pts[i], lab, train_lab[i])
                        for i, lab in zip(ep["support"], ep["support_label"], strict=True)
                    ],
                    "test": [
                        (test_pts[i], lab, test_lab[i])
                        for i, lab in zip(ep["query"], ep["query_label"], strict=True)
                    ],
                }
                path = readers.write_fewshot_fold(root / FEWSHOT, way, shot, fold, episode)
                written.append(str(path.relative_to(root)))
    return written


def write_scanobjectnn(cfg: DataPrepStage, root: Path) -> None:
    """The three ScanObjectNN subsets as h5 files in their official names, over the 15
    ``synthetic.SCAN_CATEGORIES`` (the release's class count)."""
    folder = root / SCAN
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SCAN_NAMES).write_text("\n".join(synthetic.SCAN_CATEGORIES) + "\n")
    per_split = {"train": cfg.scan_train_per_class, "test": cfg.scan_test_per_class}
    for split, count in per_split.items():
        objects = synthetic.scan_objects(split, count, cfg.seed)  # once for the three subsets
        for subset in synthetic.SCAN_SUBSETS:
            scans = synthetic.scan_clouds(
                split, subset, count, cfg.seed, cfg.scan_points, clean=objects
            )
            readers.write_scanobjectnn(
                folder, subset, split, scans.points, scans.labels,
                num_classes=len(synthetic.SCAN_CATEGORIES),
            )  # fmt: skip


# --- renders and captions (both sources) ------------------------------------------------------


def view_path(renders: Path, name: str, degrees: int, depth: bool = False) -> Path:
    """The RGB (or depth) image of one rendered view."""
    return render.render_paths(renders, name, degrees)[int(depth)]


def _surfaces(root_shapenet: Path, names, shapes: dict[str, Shape], device):
    """Points, normals and colours to render, (B, N, 3) each. Procedural shapes have exact
    normals and part colours. A real ShapeNet cloud is rendered whole (all its stored points,
    8,192 in the release), normalised to the unit sphere like the pretraining input, grey, with
    normals estimated by PCA over 16 neighbours (``geometry.estimate_normals``)."""
    if all(n in shapes for n in names):
        return [
            torch.from_numpy(np.stack([getattr(shapes[n], k) for n in names])).to(device)
            for k in ("points", "normals", "colors")
        ]
    clouds = np.stack([readers.read_shapenet55_points(root_shapenet, n) for n in names])
    points = normalize_unit_sphere(torch.from_numpy(clouds).to(device))  # (B, N, 3)
    return [points, estimate_normals(points), None]


def render_degrees(cfg: DataPrepStage) -> list[int]:
    """The azimuths of the rendered views (ULIP: 30 views, every 12 degrees)."""
    return [round(360 * v / cfg.render_views) for v in range(cfg.render_views)]


def check_renders(renders: Path, names, degrees) -> None:
    """Every view of every shape, RGB and depth, exists in the ULIP layout under ``renders``
    (the released renders are used as they are); the error names what is missing."""
    missing = [
        path
        for name in names
        for deg in degrees
        for path in render.render_paths(renders, name, deg)
        if not path.is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"{renders}: {len(missing)} rendered views missing, e.g. {missing[0]} "
            f"(ULIP layout: <synset>-<model>/<synset>-<model>_r_<deg>.png and ..._depth0001.png)"
        )


def write_renders(cfg, root_shapenet: Path, renders: Path, names, shapes, batch=32):
    """Render every shape from ``render_views`` azimuths into RGB and 16-bit depth PNGs."""
    degrees = render_degrees(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for start in progress(range(0, len(names), batch), desc="render"):
        chunk = names[start : start + batch]
        surfaces = _surfaces(root_shapenet, chunk, shapes, device)
        rgb, depth = render.render_views(
            *surfaces,
            num_views=cfg.render_views,
            elevation_deg=cfg.render_elevation,
            resolution=cfg.render_resolution,
        )
        for b, name in enumerate(chunk):
            for v, deg in enumerate(degrees):
                rgb_path, depth_path = render.render_paths(renders, name, deg)
                rgb_path.parent.mkdir(parents=True, exist_ok=True)
                render.save_png(rgb[b, v], rgb_path)  # both savers move to the CPU
                render.save_depth_png(depth[b, v], depth_path)
    return degrees


def make_captions(
    cfg, renders: Path, names, attributes, degrees, world: WorldInfo
) -> dict[str, list[str]] | None:
    """``captions_per_shape`` captions per shape: templates, or BLIP-2 on the rendered views
    (``captioning``: this rank's shard, logged as it goes; rank 0 merges every rank's log once
    all are done). Ranks other than 0 return None."""
    if cfg.captioner == "blip2":
        folder = resolve(cfg.caption_cache) / captioning.cache_key(cfg, names, degrees, renders)
        device = default_device()
        captioning.caption_shard(
            cfg, renders, names, degrees, folder,
            rank=world.rank, world_size=world.world_size, device=device,
        )  # fmt: skip
        barrier()
        if not world.is_main:
            return None
        captioning.caption_shard(cfg, renders, names, degrees, folder, device=device)  # leftovers
        ranked = captioning.merge(folder, names)
        # a shape whose views all came back empty falls back to its template caption
        return {n: ranked[n] or _template_captions(cfg, n, {}) for n in names}
    if not world.is_main:
        return None
    return {name: _template_captions(cfg, name, attributes.get(name) or {}) for name in names}


def _template_captions(cfg, name: str, attributes: dict) -> list[str]:
    category, model_id = readers.parse_shapenet_name(name)
    seed = int(hashlib.sha1(model_id.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([cfg.seed, seed])
    return captions.shape_captions(category, attributes, cfg.captions_per_shape, rng)


def unnamed_captions(cfg, texts: dict[str, list[str]]) -> dict[str, list[str]]:
    """The captions with the category's name taken out (``captions.unnamed``). Real shapes
    are named by synset ids, and BLIP-2 was never told the category (the paper's "manual
    captions ✗"): their captions are kept as they are."""
    if cfg.source == "real":
        return texts
    return {
        name: [captions.unnamed(t, readers.parse_shapenet_name(name)[0]) for t in items]
        for name, items in texts.items()
    }


# --- manifest ---------------------------------------------------------------------------------


def dataset_roots(cfg: DataPrepStage) -> dict[str, Path]:
    """Where each dataset lives: inside out_dir (embedded) or under real_root (real)."""
    base = resolve(cfg.out_dir if cfg.source == "embedded" else cfg.real_root)
    return {
        "shapenet55": base / SHAPENET,
        "modelnet40": base / MODELNET,
        "fewshot": base / FEWSHOT,
        "scanobjectnn": base / SCAN,
    }


def project_relative(path: Path) -> str:
    """Paths inside the project are recorded relative to it (manifests travel with clones)."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def _class_names(path: Path, fallback) -> list[str]:
    return path.read_text().split() if path.is_file() else list(fallback)


def count_datasets(cfg: DataPrepStage, roots: dict[str, Path]) -> dict:
    """Read every dataset back through the readers (which validates it) and count per class."""
    counts: dict = {"shapenet55": {}, "modelnet40": {}, "scanobjectnn": {}}
    for split in readers.SPLITS:
        names = readers.read_shapenet55_split(roots["shapenet55"], split)
        counts["shapenet55"][split] = dict(
            sorted(Counter(readers.parse_shapenet_name(n)[0] for n in names).items())
        )
    mn_names = readers.read_modelnet40_shape_names(roots["modelnet40"])
    for split in readers.SPLITS:
        dat = readers.find_modelnet40_dat(roots["modelnet40"], split)  # else the text files
        if dat is not None:
            labels = readers.read_modelnet40_dat(dat)[1]
        else:
            labels = readers.read_modelnet40_split(roots["modelnet40"], split)[1]
        counts["modelnet40"][split] = _per_class(labels, mn_names)
    scan_names = _class_names(roots["scanobjectnn"] / SCAN_NAMES, readers.SCANOBJECTNN_CLASSES)
    for subset in synthetic.SCAN_SUBSETS:
        for split in readers.SPLITS:
            labels = readers.read_scanobjectnn(
                roots["scanobjectnn"], subset, split, len(scan_names)
            )[1]
            counts["scanobjectnn"][f"{subset}/{split}"] = _per_class(labels, scan_names)
    counts["fewshot_folds"] = len(list(roots["fewshot"].glob("*way_*shot/*.pkl")))
    return counts


def _per_class(labels: np.ndarray, names) -> dict[str, int]:
    hist = np.bincount(labels, minlength=len(names))
    return {name: int(n) for name, n in zip(names, hist, strict=True) if n}


def tree_digest(folder: Path) -> tuple[str, int, int]:
    """(sha256 over relative paths and contents, file count, bytes) of a folder."""
    digest, files, size = hashlib.sha256(), 0, 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"):
        data = path.read_bytes()
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + data)
        files, size = files + 1, size + len(data)
    return digest.hexdigest(), files, size


# --- the stage --------------------------------------------------------------------------------


def run_stage(cfg: DataPrepStage) -> dict | None:
    """The ``data_prep`` stage: datasets, renders, captions, the manifest and the contact
    sheet; returns the manifest.

    Under ``torchrun`` (``python -m mmpd_core.cli prepare``) the ranks share the rendering and
    the BLIP-2 captioning of real shapes (disjoint shards); rank 0 writes everything else and
    returns the manifest, the other ranks None."""
    world = world_info()
    setup_distributed(world)
    out, roots, timings = resolve(cfg.out_dir), dataset_roots(cfg), {}
    start = time.perf_counter()
    shapes: dict[str, Shape] = {}  # procedural pretraining shapes (none for real data)
    if world.is_main:
        if (out / "manifest.json").is_file():
            shutil.rmtree(out)  # a previous run of this stage: start clean, nothing stale survives
        out.mkdir(parents=True, exist_ok=True)
        if cfg.source == "embedded":
            shapes = write_pretrain(cfg, out)
            modelnet = write_modelnet(cfg, out)
            write_fewshot(cfg, out, modelnet)
            write_scanobjectnn(cfg, out)
    barrier()
    timings["datasets_s"] = time.perf_counter() - start
    names = [
        n for s in readers.SPLITS for n in readers.read_shapenet55_split(roots["shapenet55"], s)
    ]
    renders = resolve(cfg.renders_dir) if cfg.renders_dir else out / SHAPENET / "renders"
    degrees = render_degrees(cfg)
    start = time.perf_counter()
    if cfg.renders_dir:  # ULIP's released renders, what the paper's teachers saw
        if world.is_main:
            check_renders(renders, names, degrees)
    elif world.is_main or cfg.source == "real":  # procedural shapes live on rank 0 only
        shard = names[world.rank :: world.world_size] if cfg.source == "real" else names
        write_renders(cfg, roots["shapenet55"], renders, shard, shapes)
    barrier()
    timings["render_s"] = time.perf_counter() - start
    start = time.perf_counter()
    attributes = {name: shape.attributes for name, shape in shapes.items()}
    texts = make_captions(cfg, renders, names, attributes, degrees, world)
    if not world.is_main:
        return None
    (out / SHAPENET / "captions.json").write_text(json.dumps(texts, indent=1))
    (out / SHAPENET / "captions_unnamed.json").write_text(
        json.dumps(unnamed_captions(cfg, texts), indent=1)
    )
    timings["captions_s"] = time.perf_counter() - start
    manifest = {
        "config": dataclasses.asdict(cfg),
        "roots": {k: project_relative(v) for k, v in roots.items()},
        "renders": project_relative(renders),
        "captions": project_relative(out / SHAPENET / "captions.json"),
        "captions_unnamed": project_relative(out / SHAPENET / "captions_unnamed.json"),
        "views_degrees": degrees,
        "counts": count_datasets(cfg, roots),
    }
    digest, files, size = tree_digest(out)
    manifest.update(content_sha256=digest, files=files, bytes=size)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=list))
    contact_sheet(cfg, manifest)
    # Timings go to the caller (the notebook prints them), not into the output: a rerun that
    # writes the same data leaves the same bytes, so DVC reruns nothing downstream.
    return {**manifest, "timings_s": timings}


# --- what a person looks at -------------------------------------------------------------------


def _first_per_category(manifest: dict, split: str = "train") -> list[str]:
    names = json.loads(resolve(manifest["captions"]).read_text())
    seen, first = set(), []
    for name in names:
        category = readers.parse_shapenet_name(name)[0]
        if category not in seen:
            seen.add(category)
            first.append(name)
    return first


def contact_sheet(cfg: DataPrepStage, manifest: dict, views: int = 3) -> Path:
    """One row per category: ``views`` RGB renders and the depth map of the first view."""
    renders, degrees = resolve(manifest["renders"]), manifest["views_degrees"]
    picks = degrees[:: max(1, len(degrees) // views)][:views]
    tiles, labels = [], []
    for name in _first_per_category(manifest):
        for deg in picks:
            tiles.append(render.load_png(render.render_paths(renders, name, deg)[0]))
            labels.append(f"{readers.parse_shapenet_name(name)[0]} {deg}")
        tiles.append(
            render.depth_to_rgb(
                render.load_depth_png(view_path(renders, name, picks[0], depth=True))
            )
        )
        labels.append("depth")
    return render.contact_sheet(
        torch.stack(tiles), resolve(cfg.contact_sheet), 2 * (views + 1), labels
    )


def caption_gallery(manifest: dict) -> list[dict[str, str]]:
    """Rows of (shape, captions) for the first shapes of each category."""
    texts = json.loads(resolve(manifest["captions"]).read_text())
    return [{"shape": n, "captions": " | ".join(texts[n])} for n in _first_per_category(manifest)]
