"""Zero-shot 3D classification (paper Table 2) with a Stage-1 model and its text teacher.

Class embeddings: the text teacher's embedding of every prompt template filled with the class
name, averaged (after L2 normalisation) and normalised again. A cloud's embedding: the encoder's
global feature through the text projection head. Prediction: highest cosine similarity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmpd_core.config import ZeroShotStage, resolve, seed_refs
from mmpd_core.data import readers
from mmpd_core.data.captions import TEMPLATE_SETS, ZERO_SHOT_TEMPLATES, class_prompts
from mmpd_core.data.datasets import modelnet40_split
from mmpd_core.data.transforms import fps_sample, normalize_unit_sphere
from mmpd_core.engine import default_device
from mmpd_core.stage1 import load_stage1
from mmpd_core.tables import mean_std, write_table
from mmpd_core.teachers import build_teacher
from mmpd_core.tracking import context, log_summary


@torch.no_grad()
def class_embeddings(text_teacher, classes: Sequence[str], templates=ZERO_SHOT_TEMPLATES):
    """(K, D) unit vectors: per class, the mean of its normalised prompt embeddings."""
    rows = []
    for name in classes:
        prompts = F.normalize(text_teacher.encode_texts(class_prompts(name, templates)), dim=-1)
        rows.append(F.normalize(prompts.mean(dim=0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def logits(model, text_name: str, points: torch.Tensor, classes_emb: torch.Tensor):
    """Cosine similarities (B, K) between clouds (B, N, 3) and class embeddings (K, D)."""
    feats = F.normalize(model(points)[text_name], dim=-1)  # (B, D)
    return feats @ classes_emb.to(feats.device).T


@torch.no_grad()
def evaluate(model, text_name: str, loader, classes_emb: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 accuracy over a labelled loader, with chance levels for reference."""
    model.eval()
    k = classes_emb.shape[0]
    hits1 = hits5 = total = 0
    device = next(model.parameters()).device
    for batch in loader:
        scores = logits(model, text_name, batch["points"].to(device), classes_emb)  # (B, K)
        labels = batch["label"].to(scores.device)
        top = scores.topk(min(5, k), dim=1).indices  # (B, 5)
        hits1 += (top[:, 0] == labels).sum().item()
        hits5 += (top == labels[:, None]).any(dim=1).sum().item()
        total += len(labels)
    return {
        "top1": hits1 / total,
        "top5": hits5 / total,
        "chance_top1": 1 / k,
        "chance_top5": min(5, k) / k,
        "samples": total,
    }


def load_cloud(path: str | Path, *, up: str = "y", num_points: int = 1024) -> torch.Tensor:
    """A user's cloud from .npy, .txt/.xyz/.csv (>= 3 columns) or .ply, as (num_points, 3)
    in the training convention: y up, centred, max norm 1 (FPS down to num_points)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point cloud not found: {path}")
    points = _read_xyz(path)
    if points.ndim != 2 or points.shape[1] < 3 or len(points) < 3:
        raise ValueError(f"{path}: expected (N, >=3) points, got shape {points.shape}")
    xyz = torch.from_numpy(np.ascontiguousarray(points[:, :3], dtype=np.float32))
    if not torch.isfinite(xyz).all():
        raise ValueError(f"{path}: holds NaN or Inf coordinates")
    if up == "z":  # z-up (ShapeNet-style scans): rotate so that z becomes y
        xyz = xyz[:, [0, 2, 1]] * torch.tensor([1.0, 1.0, -1.0])
    elif up != "y":
        raise ValueError(f"up must be 'y' or 'z', got {up!r}")
    xyz = normalize_unit_sphere(xyz)
    return fps_sample(xyz, num_points) if len(xyz) > num_points else xyz


def _read_xyz(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".ply":
        from plyfile import PlyData

        vertex = PlyData.read(str(path))["vertex"]
        return np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)
    if suffix in (".txt", ".xyz", ".csv", ".pts"):
        text = path.read_text().replace(",", " ")
        return np.loadtxt(text.splitlines(), dtype=np.float32, ndmin=2)
    raise ValueError(f"{path}: unsupported point-cloud format {suffix!r} (.npy, .ply, .txt)")


def rank_classes(model, text_teacher, text_name, cloud: torch.Tensor, classes, top: int = 5):
    """[(class, cosine similarity)] best first, for one cloud (N, 3)."""
    emb = class_embeddings(text_teacher, classes)
    model.eval()
    scores = logits(model, text_name, cloud[None].to(next(model.parameters()).device), emb)[0]
    order = scores.argsort(descending=True)[:top]
    return [(classes[i], float(scores[i])) for i in order]


PAPER_TABLE2 = {  # paper Table 2, ModelNet40, pretrained on ShapeNet: (top-1, top-5)
    ("paper: Ours (Point-BERT backbone), category prompts", "✓"): (65.8, 93.5),
    ("paper: Ours (Point-BERT backbone), BLIP-2 captions", "✗"): (71.2, 93.0),
    ("paper: Ours (Point-M2AE backbone), BLIP-2 captions", "✗"): (73.4, 94.5),
}


def is_text_spec(spec: dict) -> bool:
    return spec["type"] == "hf_text" or (
        spec["type"] == "open_clip" and spec.get("modality") == "text"
    )


def text_teacher_name(specs: dict[str, dict]) -> str:
    """The Stage-1 teacher whose space the zero-shot classifier uses (the text teacher)."""
    names = [n for n, spec in specs.items() if is_text_spec(spec)]
    if len(names) != 1:
        raise ValueError(
            f"zero-shot needs exactly one text teacher, got {names} of {sorted(specs)}"
        )
    return names[0]


def run_stage(cfg: ZeroShotStage) -> tuple[dict, pd.DataFrame]:
    """Zero-shot on the clean classification test split for every Stage-1 run of
    ``checkpoints`` and each of its independent runs (``config.seed_refs``): writes Table 2
    (``out_dir``: mean ± std over pretraining seeds), the per-seed results (``results``, read by
    the claims table) and the metrics (dvclive ``zeroshot``); returns (metrics, table)."""
    device = default_device()  # the GPU when there is one
    data = json.loads(resolve(cfg.data_manifest).read_text())
    root = resolve(data["roots"]["modelnet40"])
    classes = readers.read_modelnet40_shape_names(root)
    dataset = modelnet40_split(root, "test", cfg.num_points)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size)
    templates = TEMPLATE_SETS[cfg.templates]
    records, embeddings = [], {}
    for checkpoint in cfg.checkpoints:
        for ref in seed_refs(checkpoint):
            model, ckpt = load_stage1(ref)
            model.to(device)
            name = text_teacher_name(ckpt["teachers"])
            key = json.dumps(ckpt["teachers"][name], sort_keys=True)
            if key not in embeddings:  # one text teacher embeds the prompts once
                teacher = build_teacher(ckpt["teachers"][name], device=device)
                embeddings[key] = class_embeddings(teacher, classes, templates)
            metrics = evaluate(model, name, loader, embeddings[key])
            records.append({
                "checkpoint": checkpoint, "run": ref, "captions": ckpt.get("captions", "named"),
                "teachers": len(ckpt["teachers"]), "dim": model.encoder.dim,
                "arch": model.encoder.arch,
                **{k: 100 * metrics[k] for k in ("top1", "top5", "chance_top1", "chance_top5")},
            })  # fmt: skip
    out = resolve(cfg.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    table = zeroshot_table(pd.DataFrame(records), cfg.templates, len(templates), len(classes))
    caption = f"Table 2 (zero-shot classification). {context()}."
    write_table(table, f"{cfg.out_dir}/table2_zeroshot", caption=caption, floatfmt=".1f")
    first = [r for r in records if r["checkpoint"] == cfg.checkpoints[0]]
    keys = ("top1", "top5", "chance_top1", "chance_top5")  # fractions, as dvclive logs them
    metrics = {k: float(np.mean([r[k] for r in first])) / 100 for k in keys}
    log_summary("zeroshot", metrics)
    return metrics, table


CAPTION_MARKS = {"named": "✓", "unnamed": "✗"}  # the paper's "manual captions?" column


def zeroshot_table(records: pd.DataFrame, templates: str, count: int, classes: int):
    """Table 2 rows: each Stage-1 run (mean ± std over its pretraining seeds), chance, and
    the paper's rows."""
    rows = []
    for checkpoint, group in records.groupby("checkpoint", sort=False):
        first = group.iloc[0]
        model = f"mmpd Stage-1 {checkpoint} ({first['arch']}, {first['dim']}-d, "
        model += f"{first['teachers']} teachers)"
        if templates != "mmpd20":
            model += f", {count} {templates[:-2].upper()} templates"
        rows.append({
            "model": model, "captions name the category": CAPTION_MARKS[first["captions"]],
            "data": f"embedded test split, {classes} classes",
            "top1": mean_std(group["top1"]), "top5": mean_std(group["top5"]),
        })  # fmt: skip
    chance = records.iloc[0]
    rows.append(
        {
            "model": "chance",
            "captions name the category": "-",
            "data": "same",
            "top1": f"{chance['chance_top1']:.1f}",
            "top5": f"{chance['chance_top5']:.1f}",
        }
    )
    for (model, mark), (top1, top5) in PAPER_TABLE2.items():
        rows.append({"model": model, "captions name the category": mark,
                     "data": "ModelNet40 (40 classes)", "top1": f"{top1:.1f}",
                     "top5": f"{top5:.1f}"})  # fmt: skip
    return pd.DataFrame(rows)
