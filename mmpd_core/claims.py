"""Which of the paper's claims this run reproduces, by how much, and beyond what noise.

Each claim compares two encoders (``a`` beats ``b``) on the cells of one result grid (Table 3:
``classification``; Tables 4, 7, 8, 11: ``ablations``; Table 1: few-shot; Table 2: zero-shot
against chance; Table 6 and part segmentation: ``segmentation``; ScanNet detection:
``detection``; these two with scores (mIoU, AP) in place of accuracies). Seeds are paired: the
i-th seed of a cell transfers the i-th independent
pretraining run of its encoder (``config.seed_refs``) with head / fine-tuning seed i, so the
i-th paired difference ``d_i`` (averaged over the claim's datasets) carries pretraining noise as
well as transfer noise.

Rule (``VERDICT_RULE``): the difference is the mean of ``d_i`` with a 95 % Student-t interval
over the n seeds. A claim about pretraining needs at least two independent pretraining runs of
each pretrained side; the verdict is "reproduced" when the interval lies on the paper's side of
zero, "reversed" when it lies on the other side, and "not resolved at this scale" otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

VERDICT_RULE = (
    "Δ = a - b in accuracy points, averaged over the claim's datasets, paired per seed (seed i: "
    "pretraining run i of each encoder, transfer seed i); ± is the half-width of a 95 % "
    "Student-t interval over the n seeds. **reproduced**: the interval excludes 0 on the "
    "paper's side; **reversed**: it excludes 0 on the other side; **not resolved at this "
    "scale**: it contains 0, n < 2, or a pretrained side has fewer than 2 independent "
    "pretraining runs (a claim about a pretraining method is only resolved across "
    "independently pretrained encoders)."
)
REPRODUCED, REVERSED, UNRESOLVED = "reproduced", "reversed", "not resolved at this scale"
VERDICTS = (REPRODUCED, REVERSED, UNRESOLVED)
COLUMNS = {  # (dataset, subset) of a grid row -> the tables' column name
    ("modelnet40", ""): "MN40",
    ("scanobjectnn", "obj_bg"): "OBJ_BG",
    ("scanobjectnn", "obj_only"): "OBJ_ONLY",
    ("scanobjectnn", "pb_t50_rs"): "PB_T50_RS",
}
ALL = ("OBJ_BG", "OBJ_ONLY", "PB_T50_RS", "MN40")


@dataclass(frozen=True)
class Claim:
    """``a`` beats ``b`` (``b`` = "chance": zero-shot above chance) on ``datasets`` of
    ``grid`` under ``protocol`` (the ablation grid's protocol when ""; ``b`` under
    ``protocol_b`` when set: one encoder transferred two ways); ``paper``: the paper's
    difference in points on the same columns (None: the paper states the direction only)."""

    table: str
    claim: str
    a: str
    b: str
    grid: str  # classification | ablations | fewshot | zeroshot
    protocol: str = ""
    datasets: tuple[str, ...] = ALL
    paper: float | None = None
    protocol_b: str = ""


def _paper_mean(pairs) -> float:
    """Mean paper difference over (a, b) pairs of numbers."""
    return float(np.mean([a - b for a, b in pairs]))


CLAIMS = (
    Claim("Table 3", "pretraining beats training from scratch", "stage2", "scratch",
          "classification", "full"),
    *(
        Claim("Table 3", f"Ours beats the Point-MAE baseline ({protocol})", "stage2",
              "stage2:point_mae", "classification", protocol, ALL, paper)
        for protocol, paper in (
            ("full", _paper_mean([(95.20, 90.02), (93.73, 88.29), (90.10, 85.18), (94.0, 93.2)])),
            ("mlp3", _paper_mean([(91.56, 84.29), (91.38, 85.24), (84.88, 77.34), (93.35, 92.33)])),
            ("linear", _paper_mean([(90.57, 82.77), (90.68, 83.23), (82.41, 74.13),
                                    (92.68, 91.22)])),
        )
    ),
    Claim("Table 3", "PointGST on Ours adds to its full fine-tuning", "stage2", "stage2",
          "classification", "pointgst", ALL[:3],
          _paper_mean([(95.36, 95.20), (94.11, 93.73), (90.18, 90.10)]), protocol_b="full"),
    Claim("Table 3", "under PointGST, Ours beats the Point-MAE baseline", "stage2",
          "stage2:point_mae", "classification", "pointgst", ALL[:3]),
    Claim("Table 3", "Ours (Point-M2AE) beats the Point-M2AE baseline (full)", "stage2:m2ae",
          "stage2:point_m2ae", "classification", "full", ALL,
          _paper_mean([(96.10, 91.22), (94.25, 88.81), (91.20, 86.43), (94.3, 93.4)])),
    Claim("Table 3", "Ours (PointMamba) beats the PointMamba baseline (full)", "stage2:mamba",
          "stage2:point_mamba", "classification", "full", ALL[:3],
          _paper_mean([(95.15, 94.32), (93.19, 92.60), (90.11, 89.31)])),
    Claim("Table 5", "the gain is not just compute: Ours beats Point-MAE given both stages' "
          "pretraining steps", "stage2", "stage2:point_mae_long", "classification", "full",
          ("PB_T50_RS",), 90.1 - 85.1),
    Claim("Table 4", "Stage-2 improves on Stage-1", "stage2", "stage1", "ablations",
          datasets=("MN40", "OBJ_BG"), paper=_paper_mean([(94.3, 93.7), (96.1, 95.0)])),
    Claim("Table 4", "global distillation helps", "stage2", "stage2:no_global", "ablations",
          datasets=("MN40", "OBJ_BG"), paper=_paper_mean([(94.3, 94.1), (96.1, 95.8)])),
    Claim("Table 4", "the token shuffle helps", "stage2", "stage2:no_shuffle", "ablations",
          datasets=("MN40", "OBJ_BG"), paper=_paper_mean([(94.3, 93.9), (96.1, 95.7)])),
    Claim("Table 7", "feature targets beat point targets", "stage2", "stage2:point_targets",
          "ablations", datasets=("MN40",), paper=94.0 - 93.5),
    Claim("Table 7", "feature targets beat point targets (Point-M2AE)", "stage2:m2ae",
          "stage2:m2ae_point_targets", "ablations", datasets=("MN40",), paper=94.3 - 93.7),
    Claim("Table 8", "two stages beat joint single-stage training", "stage2", "stage2:joint",
          "ablations", datasets=("MN40", "PB_T50_RS"),
          paper=_paper_mean([(94.0, 92.2), (90.1, 82.78)])),
    Claim("Table 8", "alignment first beats the reversed order", "stage2",
          "stage1:after_point_mae", "ablations", datasets=("MN40", "PB_T50_RS"),
          paper=_paper_mean([(94.0, 93.6), (90.1, 87.1)])),
    Claim("Table 8", "Stage-2 from Stage-1 weights beats a random init", "stage2",
          "stage2:random_init", "ablations", datasets=("MN40", "PB_T50_RS"),
          paper=_paper_mean([(94.0, 93.7), (90.1, 88.2)])),
    Claim("Table 11", "all teachers beat a text + image pair (CLIP-like)", "stage2",
          "stage2:clip_like", "ablations", datasets=("MN40", "OBJ_BG")),
    Claim("Table 11", "all teachers beat one image teacher (DINOv2-like)", "stage2",
          "stage2:dino_like", "ablations", datasets=("MN40", "OBJ_BG")),
    Claim("Table 2", "zero-shot works with captions naming the category", "stage1", "chance",
          "zeroshot", paper=65.8 - 2.5),
    Claim("Table 2", "zero-shot works with captions that never name it", "stage1:unnamed_captions",
          "chance", "zeroshot", paper=71.2 - 2.5),
    Claim("Table 2", "zero-shot works on the Point-M2AE encoder (captions naming the category)",
          "stage1:m2ae", "chance", "zeroshot"),
    Claim("Table 1", "pretraining helps few-shot classification", "stage2", "scratch", "fewshot"),
    Claim("Table 1", "Ours beats Point-MAE at few-shot", "stage2", "stage2:point_mae", "fewshot",
          paper=_paper_mean([(97.6, 96.3), (99.0, 97.8), (94.1, 92.6), (96.2, 95.0)])),
    Claim("Table 1", "Ours (Point-M2AE) beats Point-M2AE at few-shot", "stage2:m2ae",
          "stage2:point_m2ae", "fewshot", paper=_paper_mean([(97.6, 96.8), (99.0, 98.3),
                                                             (94.1, 92.3), (96.2, 95.0)])),
    Claim("Table 6", "Ours beats the Point-MAE baseline on S3DIS Area 5 (mIoU)", "stage2",
          "stage2:point_mae", "segmentation", datasets=("S3DIS mIoU",), paper=62.9 - 60.8),
    Claim("Table 6", "Ours beats the Point-MAE baseline on S3DIS Area 5 (mAcc)", "stage2",
          "stage2:point_mae", "segmentation", datasets=("S3DIS mAcc",), paper=72.3 - 69.9),
    Claim("Table 6", "pretraining beats training from scratch on S3DIS (mIoU)", "stage2",
          "scratch", "segmentation", datasets=("S3DIS mIoU",)),
    Claim("App. B", "Ours beats the Point-MAE baseline at part segmentation (instance mIoU)",
          "stage2", "stage2:point_mae", "segmentation", datasets=("parts inst. mIoU",)),
    Claim("App. B", "Ours beats the Point-MAE baseline at ScanNet detection (AP25)", "stage2",
          "stage2:point_mae", "detection", datasets=("ScanNet AP25",)),
    Claim("App. B", "pretraining beats training from scratch at ScanNet detection (AP25)",
          "stage2", "scratch", "detection", datasets=("ScanNet AP25",)),
)  # fmt: skip


# ---------------------------------------------------------------------------- paired seeds


def grid_seeds(results_dir: str | Path, protocol: str) -> dict[tuple[str, str], list[dict]]:
    """{(checkpoint, column): per-seed rows ({seed, run, acc})} of one protocol of a grid,
    from its per-cell result files (``<results_dir>/<tag>.json``)."""
    out = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        cell = json.loads(path.read_text())
        if cell.get("protocol") != protocol:
            continue
        column = COLUMNS[("modelnet40" if "modelnet" in cell["dataset"] else "scanobjectnn",
                          cell.get("subset") or "")]  # fmt: skip
        out[(cell["checkpoint"], column)] = cell["seeds"]
    return out


def fewshot_seeds(fewshot: dict) -> dict[tuple[str, str], list[dict]]:
    """{(checkpoint, setting): per-fold rows} of the few-shot results (fold f used
    pretraining run f mod n, ``tasks.fewshot``)."""
    out = {}
    for row in fewshot["rows"]:
        runs = row.get("pretrain_runs", 1)
        out[(row["checkpoint"], f"{row['way']}w{row['shot']}s")] = [
            {"seed": fold, "run": f"{row['checkpoint']}#{fold % runs}", "acc": acc}
            for fold, acc in enumerate(row["accs"])
        ]
    return out


def zeroshot_seeds(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """{(checkpoint, 'MN40'): per-run rows}, and chance as its own 'checkpoint'."""
    out = {}
    for r in records:
        out.setdefault((r["checkpoint"], "MN40"), []).append({"run": r["run"], "acc": r["top1"]})
        out.setdefault(("chance", "MN40"), []).append({"run": "chance", "acc": r["chance_top1"]})
    return out


DENSE_COLUMNS = {  # (task, score) -> the claims' column name
    ("semantic", "miou"): "S3DIS mIoU",
    ("semantic", "macc"): "S3DIS mAcc",
    ("part", "instance_miou"): "parts inst. mIoU",
    ("part", "class_miou"): "parts class mIoU",
    ("detection", "ap25"): "ScanNet AP25",
    ("detection", "ap50"): "ScanNet AP50",
}


def dense_seeds(results_dir: str | Path) -> dict[tuple[str, str], list[dict]]:
    """{(checkpoint, column): per-seed rows ({seed, run, acc: the score})} of the segmentation
    or detection stage's per-encoder files (``<results_dir>/[<task>/]<encoder>.json``, a
    variant's under its stage's folder: ``semantic/stage2_variants/point_mae.json``)."""
    out = {}
    for path in sorted(Path(results_dir).rglob("*.json")):
        cell = json.loads(path.read_text())
        for (task, key), column in DENSE_COLUMNS.items():
            if cell.get("task") == task:
                out[(cell["checkpoint"], column)] = [
                    {"seed": r["seed"], "run": r["run"], "acc": r[key]} for r in cell["seeds"]
                ]
    return out


def paired_differences(
    seeds: dict, claim: Claim, columns, seeds_b: dict | None = None
) -> tuple[np.ndarray, dict]:
    """The per-seed differences a − b averaged over ``columns`` and the number of distinct
    pretraining runs of each side; empty when a cell is missing. ``seeds_b``: where ``b``'s
    cells are, when not in ``seeds`` (another protocol of the grid)."""
    diffs, runs = [], {"a": set(), "b": set()}
    if not columns:
        return np.array([]), {"a": 0, "b": 0}
    seeds_b = seeds if seeds_b is None else seeds_b
    for column in columns:
        a, b = seeds.get((claim.a, column)), seeds_b.get((claim.b, column))
        if not a or not b:
            return np.array([]), {"a": 0, "b": 0}
        n = min(len(a), len(b))
        diffs.append([a[i]["acc"] - b[i]["acc"] for i in range(n)])
        runs["a"].update(r["run"] for r in a[:n])
        runs["b"].update(r["run"] for r in b[:n])
    n = min(len(d) for d in diffs)
    return np.mean([d[:n] for d in diffs], axis=0), {k: len(v) for k, v in runs.items()}


def interval(diffs: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t interval (NaN for fewer than 2)."""
    if len(diffs) < 2:
        return (float(diffs.mean()) if len(diffs) else math.nan), math.nan
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return float(diffs.mean()), float(half)


def verdict(mean: float, half: float, pretrain_runs: dict, pretrained: dict) -> str:
    """``VERDICT_RULE`` for one claim (``pretrained``: which sides are pretrained encoders)."""
    if math.isnan(half) or any(pretrained[s] and pretrain_runs[s] < 2 for s in ("a", "b")):
        return UNRESOLVED
    if mean - half > 0:
        return REPRODUCED
    if mean + half < 0:
        return REVERSED
    return UNRESOLVED


def _pretrained(checkpoint: str) -> bool:
    return checkpoint not in ("scratch", "chance")


def claims_table(sources: dict, scale: str) -> pd.DataFrame:
    """One row per claim. ``sources``: {grid name (``classification:<protocol>`` for Table 3's
    grid): {(checkpoint, column): per-seed rows}}."""
    rows = []
    for claim in CLAIMS:
        seeds = sources.get(f"{claim.grid}:{claim.protocol}" if claim.protocol else claim.grid)
        seeds = seeds or {}
        seeds_b = None  # b in the same cells as a
        if claim.protocol_b:
            seeds_b = sources.get(f"{claim.grid}:{claim.protocol_b}") or {}
        columns = claim.datasets
        if claim.grid == "fewshot":
            columns = tuple(sorted({c for _, c in seeds}))
        if claim.grid == "zeroshot":
            columns = ("MN40",)
        diffs, runs = paired_differences(seeds, claim, columns, seeds_b)
        mean, half = interval(diffs)
        pretrained = {"a": _pretrained(claim.a), "b": _pretrained(claim.b)}
        rows.append({
            "table": claim.table,
            "claim": claim.claim,
            "a vs b": f"{claim.a} vs {claim.b}",
            "measured on": _where(claim, columns),
            "paper Δ": "> 0" if claim.paper is None else f"{claim.paper:+.1f}",
            "this run Δ": "-" if not len(diffs) else (
                f"{mean:+.1f} (n=1)" if math.isnan(half) else f"{mean:+.1f} ± {half:.1f}"
            ),
            "n": len(diffs),
            "pretraining runs (a / b)": " / ".join(
                str(runs[s]) if pretrained[s] else "-" for s in ("a", "b")
            ),
            "verdict": verdict(mean, half, runs, pretrained) if len(diffs) else "not run",
            "scale": scale,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _where(claim: Claim, columns) -> str:
    if claim.grid == "zeroshot":
        return "zero-shot top-1, MN40 test split"
    if claim.grid == "fewshot":
        return f"few-shot, {len(columns)} settings"
    if claim.grid in ("segmentation", "detection"):
        return f"{claim.grid}: {', '.join(columns)}"
    protocol = claim.protocol or "ablation protocol"
    if claim.protocol_b:
        protocol = f"{claim.protocol} vs {claim.protocol_b}"
    return f"{protocol}: {', '.join(columns)}"


def read_sources(
    classification: str | Path,
    ablations: str | Path,
    ablation_protocol: str,
    fewshot: str | Path,
    zeroshot: str | Path,
    segmentation: str | Path = "",
    detection: str | Path = "",
) -> dict:
    """Every grid's per-seed results from the files the stages write: the per-cell JSON
    folders beside the classification / ablation CSVs, ``fewshot.json``, ``zeroshot.json``
    and the segmentation and detection stages' results folders."""
    classification, ablations = Path(classification), Path(ablations)
    sources = {
        f"classification:{p}": grid_seeds(classification.with_suffix(""), p)
        for p in ("full", "mlp3", "linear", "pointgst")
    }
    sources["ablations"] = grid_seeds(ablations.with_suffix(""), ablation_protocol)
    if Path(fewshot).is_file():
        sources["fewshot"] = fewshot_seeds(json.loads(Path(fewshot).read_text()))
    if Path(zeroshot).is_file():
        sources["zeroshot"] = zeroshot_seeds(json.loads(Path(zeroshot).read_text()))
    if segmentation and Path(segmentation).is_dir():
        sources["segmentation"] = dense_seeds(segmentation)
    if detection and Path(detection).is_dir():
        sources["detection"] = dense_seeds(detection)
    return sources
