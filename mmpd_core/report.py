"""The paper's tables rebuilt from this run's result files, each beside the paper's numbers.

Inputs (written by the stages): ``reports/results/classification.csv`` (Table 3 grid),
``reports/results/ablations.csv`` (Tables 4, 7, 8, 11), ``reports/results/fewshot/fewshot.json``
(Table 1), ``reports/dvclive/**/cost.json`` (Table 5). Every ``table*`` function returns a
DataFrame; ``build_all`` writes them (markdown + CSV) with a caption naming the profile and
the machine. Accuracies are "mean ± std" over seeds (or folds), in percent.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import torch

from mmpd_core import claims
from mmpd_core.config import ReportStage, live_dir, read_params, resolve, run_dir
from mmpd_core.models import MODELS, create_model, point_model
from mmpd_core.peft.pointgst import point_gst
from mmpd_core.tables import write_table
from mmpd_core.tracking import context

# Encoders by run name (params.yaml and the result files name runs, config.run_dir).
LABELS = {
    "scratch": "scratch (no pretraining)",
    "stage2:point_mae": "Point-MAE baseline",
    "stage2:point_mae_long": "Point-MAE, both stages' steps (Table 5)",
    "stage1": "Stage-1 only",
    "stage2": "Ours (Stage-1 + Stage-2)",
    "stage2:point_m2ae": "Point-M2AE baseline",
    "stage2:m2ae": "Ours (Point-M2AE)",
    "stage1:m2ae": "Stage-1 only (Point-M2AE)",
    "stage2:m2ae_point_targets": "Point-M2AE + Stage-2 with point targets",
    "stage2:point_mamba": "PointMamba baseline",
    "stage2:mamba": "Ours (PointMamba)",
    "stage1:mamba": "Stage-1 only (PointMamba)",
}
DATASET_COLUMNS = {  # (dataset, variant) -> column
    ("modelnet40", ""): "MN40",
    ("scanobjectnn", "obj_bg"): "OBJ_BG",
    ("scanobjectnn", "obj_only"): "OBJ_ONLY",
    ("scanobjectnn", "pb_t50_rs"): "PB_T50_RS",
}
PAPER_TABLE1 = {  # ModelNet40 few-shot: 5w10s, 5w20s, 10w10s, 10w20s
    "Point-MAE": ("96.3±2.5", "97.8±1.8", "92.6±4.1", "95.0±3.0"),
    "ReCon": ("97.3±1.9", "98.9±1.2", "93.3±3.9", "95.8±3.0"),
    "Point-M2AE": ("96.8±1.8", "98.3±1.4", "92.3±4.5", "95.0±3.0"),
    "Ours (Point-M2AE)": ("97.6±1.7", "99.0±0.6", "94.1±3.0", "96.2±2.6"),
}
PAPER_TABLE3 = {  # protocol -> method -> OBJ_BG, OBJ_ONLY, PB_T50_RS, MN40, MN40 vote
    "full": {
        "Point-MAE": ("90.02", "88.29", "85.18", "93.2", "93.8"),
        "Ours (Point-MAE)": ("95.20", "93.73", "90.10", "94.0", "94.5"),
        "Point-M2AE": ("91.22", "88.81", "86.43", "93.4", "94.0"),
        "Ours (Point-M2AE)": ("96.10", "94.25", "91.20", "94.3", "94.6"),
        "PointMamba": ("94.32", "92.60", "89.31", "-", "-"),
        "Ours (PointMamba)": ("95.15", "93.19", "90.11", "-", "-"),
    },
    "linear": {
        "Point-MAE": ("82.77±0.30", "83.23±0.16", "74.13±0.21", "91.22±0.26", "-"),
        "Ours (Point-MAE)": ("90.57±0.19", "90.68±0.14", "82.41±0.16", "92.68±0.10", "-"),
    },
    "mlp3": {
        "Point-MAE": ("84.29±0.55", "85.24±0.67", "77.34±0.12", "92.33±0.09", "-"),
        "Ours (Point-MAE)": ("91.56±0.33", "91.38±0.40", "84.88±0.48", "93.35±0.17", "-"),
    },
    "pointgst": {  # no Point-MAE + PointGST row in the paper; ReCon's is its comparison
        "ReCon + PointGST": ("94.49", "92.94", "89.49", "-", "-"),
        "Ours (Point-MAE) + PointGST": ("95.36", "94.11", "90.18", "-", "-"),
    },
}
# Table 4: (global distillation, token shuffle, local distillation) -> paper MN40, OBJ_BG.
TABLE4_ROWS = {
    "stage2": ("✓", "✓", "✓", "94.3", "96.1"),
    "stage2:no_global": ("✗", "✓", "✓", "94.1", "95.8"),
    "stage2:no_shuffle": ("✓", "✗", "✓", "93.9", "95.7"),
    "stage2:local_only": ("✗", "✗", "✓", "93.6", "95.5"),
    "stage2:global_only": ("✓", "✗", "✗", "-", "-"),
    "stage1": ("✗", "✗", "✗", "93.7", "95.0"),
}
TABLE7_ROWS = {  # run -> (backbone, target, paper MN40): the paper's left and right halves
    "stage2:point_targets": ("Point-MAE", "Point clouds", "93.5"),
    "stage2": ("Point-MAE", "Features", "94.0"),
    "stage2:m2ae_point_targets": ("Point-M2AE", "Point clouds", "93.7"),
    "stage2:m2ae": ("Point-M2AE", "Features", "94.3"),
}
PAPER_PARAMS = {"Point-MAE": "22.1", "Ours (Point-MAE)": "22.1", "Point-M2AE": "15.3",
                "Ours (Point-M2AE)": "15.3", "ReCon + PointGST": "44.2",
                "Ours (Point-MAE) + PointGST": "22.7", "PointMamba": "12.3",
                "Ours (PointMamba)": "12.1"}  # fmt: skip
TABLE8_ROWS = {  # paper MN40, ScanObjectNN (PB_T50_RS, as Table 3's "Ours" 90.1 shows)
    "stage2:joint": ("Joint training (single stage)", "92.2", "82.78"),
    "stage1:after_point_mae": ("Stage-2 -> Stage-1 (reversed order)", "93.6", "87.1"),
    "stage2:random_init": ("Stage-2 (random init)", "93.7", "88.2"),
    "stage2": ("Ours (Point-MAE)", "94.0", "90.1"),
}
TABLE11_ROWS = {  # Stage-1 teachers -> (Stage-1 run, Stage-2 run)
    "text + image (CLIP-like pair)": ("stage1:clip_like", "stage2:clip_like"),
    "one image teacher (DINOv2-like)": ("stage1:dino_like", "stage2:dino_like"),
    "all teachers": ("stage1", "stage2"),
}


def shown(run: str) -> str:
    """How a run is named in a table's ``run`` column: its directory under ``runs/``."""
    return run_dir(run).removeprefix("runs/")


PAPER_TABLE5 = {  # GPU hours on one A100: Stage-1, Stage-2, total, fine-tune; ScanObjectNN
    "Point-MAE": ("-", "15.2h", "15.2h", "9h", "85.2"),
    "Point-MAE + 3.5 x pre-training": ("-", "54h", "54h", "9h", "85.1"),
    "Ours (Point-MAE)": ("24h", "30h", "54h", "9h", "90.1"),
}


def cell(mean: float, std: float, n: int = 2) -> str:
    """'mean ± std' with one decimal (percent); a single seed has no spread: 'mean (n=1)'."""
    if pd.isna(mean):
        return "-"
    return f"{mean:.1f} (n=1)" if n == 1 else f"{mean:.1f} ± {std:.1f}"


def accuracies(frame: pd.DataFrame, protocol: str, key: str = "acc") -> dict:
    """{(checkpoint, column): 'mean ± std'} of one protocol of a results grid."""
    out = {}
    for _, row in frame[frame["protocol"] == protocol].iterrows():
        subset = row["subset"] if isinstance(row["subset"], str) else ""
        column = DATASET_COLUMNS[(_family(row["dataset"]), subset)]
        n = int(row.get("n_seeds", 2)) if pd.notna(row.get("n_seeds", 2)) else 2
        out[(row["checkpoint"], column)] = cell(row.get(f"{key}_mean"), row.get(f"{key}_std"), n)
    return out


def _family(dataset: str) -> str:
    return "modelnet40" if "modelnet" in dataset else "scanobjectnn"


def table1(fewshot: dict) -> pd.DataFrame:
    rows = {}
    for r in fewshot["rows"]:
        rows.setdefault(r["checkpoint"], {})[f"{r['way']}-way {r['shot']}-shot"] = cell(
            r["acc_mean"], r["acc_std"]
        )
    frame = [{"method": LABELS.get(k, k), "source": "this run", **v} for k, v in rows.items()]
    settings = ["5-way 10-shot", "5-way 20-shot", "10-way 10-shot", "10-way 20-shot"]
    frame += [
        {"method": k, "source": "paper", **dict(zip(settings, v, strict=True))}
        for k, v in PAPER_TABLE1.items()
    ]
    return pd.DataFrame(frame).fillna("-")


@functools.cache  # one meta-device build per (architecture, protocol), not per table row
def paper_params(arch: str, protocol: str = "full") -> str:
    """Parameters (millions) of ``arch`` at paper size, counted as the paper's #P column
    counts them: the fine-tune model (40 classes), except for Point-M2AE, whose 15.3 M is the
    pretraining model, decoder included (its fine-tune model follows in brackets). Under
    ``pointgst`` the adapters (paper size: rank 36, local 32) are counted too."""
    name = next((n for n, e in MODELS.items() if e.arch == arch and e.size == "paper"), None)
    if name is None:
        return "-"
    with torch.device("meta"):
        model = create_model(name, num_classes=40)
        if protocol == "pointgst":
            model = point_gst(model)
        pretraining = point_model(create_model(name)) if arch == "point_m2ae" else None
    count = sum(p.numel() for p in model.parameters()) / 1e6
    if pretraining is None:
        return f"{count:.1f}"
    return f"{sum(p.numel() for p in pretraining.parameters()) / 1e6:.1f} ({count:.1f})"


def table3(grid: pd.DataFrame) -> pd.DataFrame:
    """Every encoder of the grid per protocol, then the paper's rows; ``#P``: the row's
    architecture at paper size (``paper_params``), not the size this run trained."""
    columns = ["OBJ_BG", "OBJ_ONLY", "PB_T50_RS", "MN40", "MN40 vote"]
    archs = dict(zip(grid["checkpoint"], grid["arch"], strict=True)) if "arch" in grid else {}
    rows = []
    for protocol in ("full", "mlp3", "linear", "pointgst"):
        acc = accuracies(grid, protocol)
        vote = accuracies(grid, protocol, "acc_vote")
        suffix = " + PointGST" if protocol == "pointgst" else ""
        for checkpoint in dict.fromkeys(grid.loc[grid["protocol"] == protocol, "checkpoint"]):
            arch = archs.get(checkpoint)
            row = {
                "protocol": protocol,
                "method": LABELS.get(checkpoint, checkpoint) + suffix,
                "source": "this run",
                "#P (M)": paper_params(arch, protocol) if arch else "-",
            }
            row.update({c: acc.get((checkpoint, c), "-") for c in columns[:4]})
            row["MN40 vote"] = vote.get((checkpoint, "MN40"), "-")
            rows.append(row)
        for method, values in PAPER_TABLE3[protocol].items():
            rows.append(
                {
                    "protocol": protocol,
                    "method": method,
                    "source": "paper",
                    "#P (M)": PAPER_PARAMS.get(method, "-"),
                    **dict(zip(columns, values, strict=True)),
                }
            )
    return pd.DataFrame(rows)


def table4(ablations: pd.DataFrame, protocol: str) -> pd.DataFrame:
    acc = accuracies(ablations, protocol)
    rows = []
    for checkpoint, (g, s, loc, p_mn, p_bg) in TABLE4_ROWS.items():
        rows.append(
            {
                "global distillation": g,
                "token shuffling": s,
                "local distillation": loc,
                "MN40": acc.get((checkpoint, "MN40"), "-"),
                "OBJ_BG": acc.get((checkpoint, "OBJ_BG"), "-"),
                "paper MN40": p_mn,
                "paper OBJ_BG": p_bg,
                "run": shown(checkpoint),
            }
        )
    return pd.DataFrame(rows)


def table7(ablations: pd.DataFrame, protocol: str) -> pd.DataFrame:
    acc = accuracies(ablations, protocol)
    return pd.DataFrame(
        [
            {
                "backbone": backbone,
                "target": target,
                "MN40": acc.get((ckpt, "MN40"), "-"),
                "paper MN40": paper,
                "run": shown(ckpt),
            }
            for ckpt, (backbone, target, paper) in TABLE7_ROWS.items()
        ]
    )


def table8(ablations: pd.DataFrame, protocol: str) -> pd.DataFrame:
    acc = accuracies(ablations, protocol)
    return pd.DataFrame(
        [
            {
                "method": name,
                "MN40": acc.get((ckpt, "MN40"), "-"),
                "PB_T50_RS": acc.get((ckpt, "PB_T50_RS"), "-"),
                "paper MN40": p_mn,
                "paper ScanObjectNN": p_scan,
                "run": shown(ckpt),
            }
            for ckpt, (name, p_mn, p_scan) in TABLE8_ROWS.items()
        ]
    )


def table11(ablations: pd.DataFrame, protocol: str) -> pd.DataFrame:
    acc = accuracies(ablations, protocol)
    rows = []
    for teachers, (stage1, stage2) in TABLE11_ROWS.items():
        rows.append(
            {
                "Stage-1 teachers": teachers,
                "Stage-1 MN40": acc.get((stage1, "MN40"), "-"),
                "Stage-1 OBJ_BG": acc.get((stage1, "OBJ_BG"), "-"),
                "Stage-2 MN40": acc.get((stage2, "MN40"), "-"),
                "Stage-2 OBJ_BG": acc.get((stage2, "OBJ_BG"), "-"),
                "runs": f"{shown(stage1)}, {shown(stage2)}",
            }
        )
    return pd.DataFrame(rows)


def read_costs(root: str | Path = "reports/dvclive") -> dict[str, dict]:
    """{run: cost.json} of every training run that wrote one (pretraining stages)."""
    root = resolve(root)
    return {
        str(p.parent.relative_to(root)): json.loads(p.read_text())
        for p in sorted(root.rglob("cost.json"))
    }


def table5(costs: dict, grid: pd.DataFrame, params_m: float) -> pd.DataFrame:
    """Measured wall time, steps/s and peak memory per pretraining stage, next to the paper's
    A100 GPU hours; fine-tuning time is the full-protocol MN40 run of each encoder."""

    def cost_key(run):  # a run's dvclive directory under reports/dvclive
        return live_dir(run).removeprefix("reports/dvclive/")

    def minutes(run):
        key = cost_key(run)
        return costs[key]["wall_time_s"] / 60 if key in costs else float("nan")

    def finetune_min(checkpoint):
        rows = grid[
            (grid["checkpoint"] == checkpoint)
            & (grid["protocol"] == "full")
            & (grid["dataset"].str.contains("modelnet"))
        ]
        return (
            rows["wall_time_s_mean"].iloc[0] / 60
            if len(rows) and "wall_time_s_mean" in rows
            else float("nan")
        )

    scan = accuracies(grid, "full")
    rows = []
    for method, stage1, stage2 in (
        ("Point-MAE baseline", None, "stage2:point_mae"),
        ("Point-MAE, both stages' steps", None, "stage2:point_mae_long"),
        ("Ours (Stage-1 + Stage-2)", "stage1", "stage2"),
    ):
        checkpoint = stage2
        s1 = minutes(stage1) if stage1 else 0.0
        s2 = minutes(stage2)
        rows.append(
            {
                "method": method,
                "#params (M)": round(params_m, 2),
                "Stage-1 (min)": round(s1, 2) if stage1 else "-",
                "Stage-2 (min)": round(s2, 2),
                "total pretrain (min)": round(s1 + s2, 2),
                "fine-tune MN40 (min)": round(finetune_min(checkpoint), 2),
                "Stage-2 steps/s": costs.get(cost_key(stage2), {}).get("steps_per_s", "-"),
                "peak memory (MB)": costs.get(cost_key(stage2), {}).get("peak_memory_mb", "-"),
                "PB_T50_RS (full)": scan.get((checkpoint, "PB_T50_RS"), "-"),
                "paper GPU h (S1 / S2 / total / FT)": " / ".join(
                    PAPER_TABLE5[_paper_name(method)][:4]
                ),
                "paper ScanObjectNN": PAPER_TABLE5[_paper_name(method)][4],
            }
        )
    return pd.DataFrame(rows)


def _paper_name(method: str) -> str:
    if method.startswith("Point-MAE"):
        return "Point-MAE + 3.5 x pre-training" if "steps" in method else "Point-MAE"
    return "Ours (Point-MAE)"


def costs_frame(costs: dict) -> pd.DataFrame:
    """Every training run's measured cost (one row per run with a cost.json)."""
    return pd.DataFrame(
        [
            {"run": run, "wall time (s)": c["wall_time_s"], "steps/s": c["steps_per_s"],
             "peak memory (MB)": c["peak_memory_mb"], "epochs": c["epochs"], "device": c["device"]}
            for run, c in costs.items()
        ]
    )  # fmt: skip


TABLES = {  # stem -> (paper table, what it shows)
    "claims": ("all", "which of the paper's claims this run reproduces"),
    "table1_fewshot": ("Table 1", "few-shot classification, mean ± std over folds"),
    "table2_zeroshot": ("Table 2", "zero-shot classification (zeroshot stage)"),
    "table3_classification": (
        "Table 3",
        "classification: full / MLP-3 / MLP-Linear protocols, + PointGST",
    ),
    "table4_stage2_components": ("Table 4", "Stage-2 components (global, shuffle, local)"),
    "table5_training_cost": ("Table 5", "training cost, measured on this machine"),
    "table5_all_runs": ("Table 5", "cost of every pretraining run"),
    "table7_targets": ("Table 7", "feature targets vs point reconstruction"),
    "table8_baselines": ("Table 8", "joint, reversed-order and random-init baselines"),
    "table11_teachers": ("Table 11", "single vs all Stage-1 teachers, each + Stage-2"),
    "models": ("-", "backbone size, FLOPs and step time"),
}


def build_all(
    out_dir: str | Path,
    *,
    grid: pd.DataFrame,
    ablations: pd.DataFrame,
    fewshot: dict,
    costs: dict,
    params_m: float,
    ablation_protocol: str,
    context: str,
    sources: dict | None = None,
    profile: str = "embedded",
) -> dict[str, pd.DataFrame]:
    """Write every table (markdown + CSV) and ``README.md`` indexing them; ``context`` names
    the profile and the machine and heads every caption."""
    out_dir = resolve(out_dir)
    protocol = {"linear": "MLP-Linear", "mlp3": "MLP-3", "full": "full fine-tuning"}[
        ablation_protocol
    ]
    frames = {
        "claims": claims.claims_table(sources or {}, profile),
        "table1_fewshot": table1(fewshot),
        "table3_classification": table3(grid),
        "table4_stage2_components": table4(ablations, ablation_protocol),
        "table5_training_cost": table5(costs, grid, params_m),
        "table5_all_runs": costs_frame(costs),
        "table7_targets": table7(ablations, ablation_protocol),
        "table8_baselines": table8(ablations, ablation_protocol),
        "table11_teachers": table11(ablations, ablation_protocol),
    }
    for stem, frame in frames.items():
        paper, what = TABLES[stem]
        if stem == "claims":
            caption = (
                f"**Claims: {what}.** {context}. Ablation claims (Tables 4, 7, 8, 11): "
                f"{protocol} protocol."
            )
            write_table(frame, out_dir / stem, caption=caption, footer=claims.VERDICT_RULE)
            continue
        note = f" This run: {protocol} protocol." if stem in _ABLATION_TABLES else ""
        if stem == "table3_classification":
            note += (
                " #P: the row's architecture at paper size, counted as the paper counts it "
                "(Point-MAE: the fine-tune model; Point-M2AE: the pretraining model, decoder "
                "included, its fine-tune model in brackets); this run trains the small variants."
            )
        caption = (
            f"**{paper}: {what}.** {context}.{note} Accuracy in %: mean ± std over seeds "
            "(few-shot: over folds); 'n=1' marks a single seed, which has no spread."
        )
        write_table(frame, out_dir / stem, caption=caption, floatfmt=".2f")
    write_index(out_dir.parent / "README.md", out_dir.name, context)
    return frames


def write_index(path: Path, tables: str, context: str) -> None:
    """``reports/README.md``: every table and figure with the paper item it reproduces."""
    lines = ["# Reports", "", context + ".", "", "| file | paper | content |", "|---|---|---|"]
    lines += [f"| [{s}.md]({tables}/{s}.md) | {p} | {w} |" for s, (p, w) in TABLES.items()]
    lines += [
        "| [table6_segmentation.md](tables/table6_segmentation.md) | Table 6 | semantic "
        "segmentation, S3DIS protocol (segmentation stage) |",
        "| [table_partseg.md](tables/table_partseg.md) | App. B | part segmentation, "
        "ShapeNetPart protocol (segmentation stage) |",
        "| [segmentation_room.png](figures/segmentation_room.png) | - | a test room: truth "
        "beside each encoder's prediction |",
        "| [table_detection.md](tables/table_detection.md) | App. B | 3D detection, ScanNet "
        "layout, 3DETR-style decoder (detection stage) |",
        "| [detection_scene.png](figures/detection_scene.png) | - | a val scene: true boxes "
        "and each encoder's detections |",
        "| [dense_data.png](figures/dense_data.png) | - | the dense tasks' data: rooms by "
        "label, objects by part |",
        "| [tsne_modelnet40.png](figures/tsne_modelnet40.png) (.pdf) | t-SNE figures | "
        "global features per encoder; silhouettes in results/tsne_silhouette.json |",
        "| [renders_contact_sheet.png](figures/renders_contact_sheet.png) | - | rendered views |",
        "| [selection/embedded/selection.md](selection/embedded/selection.md) | - | recipes "
        "chosen on held-out training shapes (`make select`) |",
        "| [profiles/cpu/tables/claims.md](profiles/cpu/tables/claims.md) | all | the cpu "
        "profile's claims (`make repro-cpu`; its git commit in `profiles/cpu/profile_run.json`) |",
        "| [notebooks/](notebooks/) | - | executed copy of every stage's notebook |",
        "| [dvclive/](dvclive/) | - | per-stage metrics, curves and cost.json |",
        "| [results/](results/) | - | one JSON per classification run, grids as CSV/JSON |",
    ]
    path.write_text("\n".join(lines) + "\n")


_ABLATION_TABLES = (
    "table4_stage2_components",
    "table7_targets",
    "table8_baselines",
    "table11_teachers",
)


def run_stage(cfg: ReportStage, smoke: bool | None = None) -> dict[str, pd.DataFrame]:
    """The ``report`` stage: every table from the result files of the evaluation stages and
    the cost of every training run (``build_all``)."""
    profile = read_params().get("profile", "embedded")
    sources = claims.read_sources(
        resolve(cfg.classification), resolve(cfg.ablations), cfg.ablation_protocol,
        resolve(cfg.fewshot), resolve(cfg.zeroshot), resolve(cfg.segmentation),
        resolve(cfg.detection),
    )  # fmt: skip
    return build_all(
        cfg.out_dir,
        grid=pd.read_csv(resolve(cfg.classification)),
        ablations=pd.read_csv(resolve(cfg.ablations)),
        fewshot=json.loads(resolve(cfg.fewshot).read_text()),
        costs=read_costs(),
        params_m=sum(p.numel() for p in create_model(cfg.model).parameters()) / 1e6,
        ablation_protocol=cfg.ablation_protocol,
        context=context(smoke),
        sources=sources,
        profile=profile,
    )


def summary(root: str | Path = "reports") -> str:
    """Where a pipeline run left its results (printed at the end of ``make repro``)."""
    root = resolve(root)
    lines = ["", "Results (this run, beside the paper's numbers):", f"  index    {root}/README.md"]
    for stem, (paper, what) in TABLES.items():
        path = root / "tables" / f"{stem}.md"
        if path.is_file():
            lines.append(f"  {paper:<8} {path.relative_to(root.parent)}  ({what})")
    for figure in sorted((root / "figures").glob("*.png")):
        lines.append(f"  figure   {figure.relative_to(root.parent)}")
    lines.append("  metrics  `dvc metrics show`; training curves `dvc plots show`")
    return "\n".join(lines)
