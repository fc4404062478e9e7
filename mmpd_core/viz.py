"""t-SNE figures of global features (openTSNE, fixed seed) with a silhouette score per panel."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from openTSNE import TSNE
from sklearn.metrics import silhouette_score

from mmpd_core.config import TsneStage, resolve
from mmpd_core.data.datasets import dataset_family
from mmpd_core.report import LABELS
from mmpd_core.tasks.classification import train_head
from mmpd_core.tasks.features import frozen_features, splits
from mmpd_core.tracking import progress


def embed(feats: np.ndarray, *, seed: int, perplexity: float) -> np.ndarray:
    """2-D t-SNE of (M, C) features; perplexity is capped at (M - 1) / 3 as t-SNE requires."""
    perplexity = min(perplexity, (len(feats) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, random_state=seed, n_jobs=1, verbose=False)
    return np.asarray(tsne.fit(feats))


def panel(cfg: TsneStage, checkpoint: str, cache: dict) -> dict:
    """One encoder: test-split features, their embedding and silhouette scores (2-D embedding
    and cosine in feature space). ``correct_only`` keeps the test clouds a linear head trained
    on the frozen training features classifies correctly."""
    recipe = cfg.recipes[dataset_family(cfg.dataset)]
    data = splits(cfg.data_manifest, cfg.dataset, recipe.num_points, cache)
    (train_x, train_y), (test_x, test_y), encoder = frozen_features(
        checkpoint, cfg.model, cfg.dataset, recipe, data, cache
    )
    keep = torch.ones(len(test_y), dtype=torch.bool, device=test_y.device)
    if cfg.correct_only:
        head = train_head("linear", train_x, train_y, data[2], encoder, recipe, cfg.seed)
        with torch.no_grad():
            keep = head(test_x).argmax(1) == test_y
    feats, labels = test_x[keep].cpu().numpy(), test_y[keep].cpu().numpy()
    points = embed(feats, seed=cfg.seed, perplexity=cfg.perplexity)
    return {
        "checkpoint": checkpoint,
        "embedding": points,
        "labels": labels,
        "silhouette_tsne": float(silhouette_score(points, labels)),
        "silhouette_features": float(silhouette_score(feats, labels, metric="cosine")),
        "samples": len(labels),
    }


def figure(panels: list[dict], titles: dict[str, str], caption: str):
    """One scatter per encoder, coloured by class, silhouette in the title."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, p in zip(axes[0], panels, strict=True):
        ax.scatter(*p["embedding"].T, c=cmap(p["labels"] % 20), s=6, linewidths=0)
        name = titles.get(p["checkpoint"], p["checkpoint"])
        ax.set_title(f"{name}\nsilhouette {p['silhouette_tsne']:.2f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, stem: Path) -> None:
    """``stem``.png and .pdf, the same bytes for the same figure (no creation date in the PDF),
    so a rerun that draws the same figure leaves the stage's outputs unchanged for DVC."""
    fig.savefig(stem.with_suffix(".png"), dpi=150)
    fig.savefig(stem.with_suffix(".pdf"), dpi=150, metadata={"CreationDate": None})


def run_stage(cfg: TsneStage):
    """The ``tsne`` stage: one panel per checkpoint; writes ``tsne_<dataset>.{png,pdf}`` and
    the silhouette scores (``cfg.results``). Returns (panels, figure)."""
    cache = {}  # datasets and frozen features, shared by the panels
    panels = [panel(cfg, c, cache) for c in progress(cfg.checkpoints, desc="t-SNE panels")]
    subset = "correctly classified test clouds only" if cfg.correct_only else "all test clouds"
    name = cfg.dataset.partition("/")[0]
    caption = f"t-SNE of global features, {name} test split ({subset}), seed {cfg.seed}"
    fig = figure(panels, LABELS, caption)
    out = resolve(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out / f"tsne_{name}")
    scores = {
        p["checkpoint"]: {
            k: v for k, v in p.items() if k not in ("checkpoint", "embedding", "labels")
        }
        for p in panels
    }
    resolve(cfg.results).parent.mkdir(parents=True, exist_ok=True)
    resolve(cfg.results).write_text(json.dumps(scores, indent=2))
    return panels, fig
