"""The ``segmentation`` stage: every encoder fine-tuned on both dense tasks over seeds, Table 6,
the part-segmentation table and a predicted room beside its ground truth (issue #14).

Seed i of an encoder transfers its i-th independent pretraining run (``config.seed_refs``)
with fine-tuning seed i, as the classification grid does. Each (task, encoder) writes
``<results_dir>/<task>/<encoder>.json`` with every seed's scores and costs, and
``<results_dir>.json`` the means and stds (``dvc metrics show``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from mmpd_core import engine
from mmpd_core.config import DenseRecipe, SegmentationStage, resolve, seed_refs
from mmpd_core.data import dense_readers as dr
from mmpd_core.data.dense_prep import legend, top_view
from mmpd_core.tables import mean_std, write_table
from mmpd_core.tasks import dense
from mmpd_core.tasks.features import checkpoint_name, load_pretrained
from mmpd_core.tasks.segmentation import confusion, part_scores, semantic_scores
from mmpd_core.tracking import context, progress

LABELS = {"scratch": "From scratch", "stage2:point_mae": "Point-MAE baseline",
          "stage1": "Ours, Stage-1", "stage2": "Ours (Point-MAE)"}  # fmt: skip
PAPER_TABLE6 = {  # Table 6, S3DIS Area 5: (mAcc, mIoU)
    "Point-MAE baseline": (69.9, 60.8),
    "ACT": (71.1, 61.2),
    "Ours (Point-MAE)": (72.3, 62.9),
}


def _paper(label: str) -> dict[str, str]:
    macc, miou = PAPER_TABLE6.get(label, (None, None))
    return {
        "paper mAcc": f"{macc:.1f}" if macc else "-",
        "paper mIoU": f"{miou:.1f}" if miou else "-",
    }


def load_data(cfg: SegmentationStage) -> dict:
    """Rooms (train / test areas) and part shapes (train / test) from the manifest's roots."""
    manifest = json.loads(resolve(cfg.data_manifest).read_text())
    roots = {k: resolve(v) for k, v in manifest["roots"].items()}
    areas = range(1, manifest["config"]["areas"] + 1)
    data = {}
    if "semantic" in cfg.tasks:
        rooms = dr.read_s3dis(roots["s3dis"], areas)
        data["train_rooms"] = [r for r in rooms if r.area != cfg.test_area]
        data["test_rooms"] = [r for r in rooms if r.area == cfg.test_area]
    if "part" in cfg.tasks:
        for split in ("train", "test"):
            data[f"{split}_shapes"] = dr.read_shapenetpart(roots["shapenetpart"], split)
    return data


def build(cfg: SegmentationStage, run: str, task: str, seed: int) -> dense.Segmenter:
    recipe: DenseRecipe = getattr(cfg, task)
    grouping = {k: v for k in ("num_groups", "group_size") if (v := getattr(recipe, k))}
    encoder = load_pretrained(run, cfg.model, seed=seed, drop_path_rate=recipe.drop_path_rate,
                              **grouping)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if task == "semantic":
            return dense.Segmenter(encoder, dense.SEMANTIC_CLASSES, **cfg.head)
        return dense.Segmenter(encoder, dense.PART_CLASSES, len(dense.CATEGORIES), **cfg.head)


def fine_tune(cfg: SegmentationStage, model, task: str, seed: int, data: dict, out_dir: Path):
    """Train through the engine (resumable, dvclive under ``out_dir/live``), then refresh the
    BatchNorm statistics over the training data; the checkpoints are deleted afterwards."""
    recipe: DenseRecipe = getattr(cfg, task)
    train_cfg = engine.config_from(
        recipe, seed=seed, accumulation=1, num_workers=cfg.num_workers,
        out_dir=str(out_dir), live_dir=str(out_dir / "live"),
    )  # fmt: skip
    if task == "semantic":
        dataset = dense.BlockDataset(data["train_rooms"], recipe, seed)
        step = dense.SemanticStep(dense.class_weights(data["train_rooms"]))
    else:
        dataset = dense.PartDataset(data["train_shapes"], recipe.num_points, seed, train=True)
        step = dense.PartStep()
    result = engine.train(model, step, dataset, train_cfg, resume=True)
    engine.remove_checkpoints(out_dir)
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=recipe.batch_size)
    with engine.autocast_context(device, engine.AMP_DTYPES[recipe.amp]):
        dense.refresh_batchnorm(model, (
            (b["points"].to(device), b["category"].to(device) if "category" in b else None)
            for b in loader
        ))  # fmt: skip
    return result


def evaluate(cfg: SegmentationStage, model, task: str, seed: int, data: dict) -> tuple[dict, dict]:
    """Scores on the test split, and the first test room's prediction (semantic)."""
    recipe: DenseRecipe = getattr(cfg, task)
    if task == "semantic":
        matrix, first = np.zeros((dense.SEMANTIC_CLASSES,) * 2, dtype=np.int64), {}
        for i, room in enumerate(data["test_rooms"]):
            pred = dense.predict_room(model, room, recipe, seed=seed)
            matrix += confusion(pred, room.labels, dense.SEMANTIC_CLASSES)
            if i == 0:
                first = {"room": room, "pred": pred}
        scores = semantic_scores(matrix)
        iou = np.round(scores.pop("iou"), 2).tolist()
        per_class = dict(zip(dr.S3DIS_CLASSES, iou, strict=True))
        scores.pop("acc")
        return {**scores, "iou_per_class": per_class}, first
    test = dense.PartDataset(data["test_shapes"], recipe.num_points, seed, train=False)
    preds, targets, categories = dense.predict_parts(model, test, recipe.amp)
    parts_of = {c: parts for c, (_, parts) in dr.SHAPENETPART_CATEGORIES.items()}
    return part_scores(preds, targets, categories, parts_of), {}


def run_cell(cfg: SegmentationStage, task: str, checkpoint: str, data: dict, shown: dict) -> dict:
    runs = seed_refs(checkpoint)
    rows = []
    for i, seed in enumerate(cfg.seeds):
        run = runs[i % len(runs)]
        out_dir = resolve(cfg.out_dir) / task / checkpoint_name(checkpoint) / f"seed{seed}"
        model = build(cfg, run, task, seed)
        result = fine_tune(cfg, model, task, seed, data, out_dir)
        tick = time.perf_counter()
        scores, first = evaluate(cfg, model, task, seed, data)
        if first and i == 0:
            shown[checkpoint] = first
        test_s = time.perf_counter() - tick
        rows.append({"seed": seed, "run": run, **scores,
                     "train_acc": 100 * result.final["train/acc"],
                     "train_s": result.wall_time_s, "test_s": test_s})  # fmt: skip
    keys = ("oa", "macc", "miou") if task == "semantic" else ("instance_miou", "class_miou")
    summary = {f"{k}_mean": float(np.mean([r[k] for r in rows])) for k in keys}
    summary |= {f"{k}_std": float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1
                else float("nan") for k in keys}  # fmt: skip
    return {"task": task, "checkpoint": checkpoint, "selection": "last epoch",
            "recipe": getattr(cfg, task).__dict__, "seeds": rows, **summary}  # fmt: skip


def tables(cfg: SegmentationStage, results: list[dict]) -> dict[str, pd.DataFrame]:
    """Table 6 (mAcc / mIoU / OA beside the paper's) and the part-segmentation table."""
    frames, n = {}, len(cfg.seeds)
    semantic = [r for r in results if r["task"] == "semantic"]
    if semantic:
        rows = []
        for r in semantic:
            label = LABELS.get(r["checkpoint"], checkpoint_name(r["checkpoint"]))
            scores = {k: mean_std([s[k] for s in r["seeds"]]) for k in ("macc", "miou", "oa")}
            rows.append({"method": label, **scores, **_paper(label)})
        rows.append({"method": "ACT", "macc": "-", "miou": "-", "oa": "-", **_paper("ACT")})
        frames["table6_segmentation"] = pd.DataFrame(rows).rename(
            columns={"macc": "mAcc", "miou": "mIoU", "oa": "OA"}
        )
    part = [r for r in results if r["task"] == "part"]
    if part:
        rows = [{"method": LABELS.get(r["checkpoint"], checkpoint_name(r["checkpoint"])),
                 "instance mIoU": mean_std([s["instance_miou"] for s in r["seeds"]]),
                 "class mIoU": mean_std([s["class_miou"] for s in r["seeds"]])}
                for r in part]  # fmt: skip
        frames["table_partseg"] = pd.DataFrame(rows)
    captions = {
        "table6_segmentation": f"**Table 6: semantic segmentation**, S3DIS protocol, test area "
        f"{cfg.test_area} (mean ± std over {n} seeds, percent; last epoch). The paper columns are "
        "its reported numbers at full scale.",
        "table_partseg": f"**Part segmentation**, ShapeNetPart protocol (mean ± std over {n} "
        "seeds, percent; last epoch). Class mIoU is over the categories present; with as many "
        "test shapes in every category (the embedded data) it equals instance mIoU. The "
        "paper's part-segmentation numbers are in its appendix, not in the text we have.",
    }
    for stem, frame in frames.items():
        caption = f"{captions[stem]} {context()}."
        write_table(frame, Path(cfg.tables_dir) / stem, caption=caption, floatfmt=".1f")
    return frames


def figure(shown: dict, path: Path) -> Path | None:
    """The first test room: ground truth beside each encoder's prediction (seed 0)."""
    if not shown:
        return None
    room = next(iter(shown.values()))["room"]
    fig = plt.figure(figsize=(3.2 * (len(shown) + 1), 3.8))
    top_view(fig.add_subplot(1, len(shown) + 1, 1), room, room.labels, f"{room.name}: truth")
    for i, (checkpoint, first) in enumerate(shown.items()):
        label = LABELS.get(checkpoint, checkpoint_name(checkpoint))
        top_view(fig.add_subplot(1, len(shown) + 1, i + 2), room, first["pred"], label)
    legend(fig)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_stage(cfg: SegmentationStage) -> dict[str, pd.DataFrame]:
    data, results, shown = load_data(cfg), [], {}
    cells = [(task, checkpoint) for task in cfg.tasks for checkpoint in cfg.checkpoints]
    bar = progress(cells, desc="segmentation runs")
    for task, checkpoint in bar:
        bar.set_postfix_str(f"{task} {checkpoint}", refresh=False)
        result = run_cell(cfg, task, checkpoint, data, shown)
        path = resolve(cfg.results_dir) / task / f"{checkpoint_name(checkpoint)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
    summary = {
        f"{r['task']}/{checkpoint_name(r['checkpoint'])}": {
            k: v for k, v in r.items() if k.endswith(("_mean", "_std"))
        }
        for r in results
    }
    resolve(cfg.results_dir).with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    figure(shown, Path(cfg.figure))
    return tables(cfg, results)
