"""Few-shot classification (paper Table 1): n-way m-shot episodes of ModelNetFewshot.

Every (way, shot, fold) episode is read from its official ``.pkl`` (restricted unpickler), a
classifier is trained on the support set and scored on the query set; the table reports the
mean ± std over folds, without voting. ``protocol: full`` fine-tunes the whole encoder per
episode as the paper does (150 epochs there); ``linear`` / ``mlp3`` train a head on frozen
features (the embedded default: 80 episodes x 4 encoders fit the CPU budget that way).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from mmpd_core.config import FewshotStage, build, resolve
from mmpd_core.data.datasets import fewshot_dataset
from mmpd_core.finetune import (
    Recipe,
    accuracy,
    checkpoint_name,
    extract_features,
    fine_tune,
    load_pretrained,
    predict,
    train_head,
)


def episode_accuracy(
    cfg: FewshotStage, recipe: Recipe, checkpoint: str, episode, seed: int, out_dir: Path,
    encoder=None,
):  # fmt: skip
    """Train on the support set of ``episode`` (support, query, way), score the query set.
    Full fine-tuning writes its checkpoints and dvclive in ``out_dir``, one per episode (a
    killed episode resumes from there); frozen protocols use ``encoder`` (loaded once per
    checkpoint by ``run``)."""
    support, query, way = episode
    overrides = {"num_groups": recipe.num_groups, "drop_path_rate": recipe.drop_path_rate}
    if cfg.protocol != "full":
        feats, labels = extract_features(encoder, support)
        head = train_head(cfg.protocol, feats, labels, way, encoder.config, recipe, seed)
        query_feats, query_labels = extract_features(encoder, query)
        with torch.no_grad():
            return accuracy(head(query_feats), query_labels)
    model = load_pretrained(checkpoint, cfg.model, seed=seed, num_classes=way, **overrides)
    fine_tune(model, support, recipe, seed=seed, out_dir=out_dir)
    plain, _, labels = predict(model, query, recipe, votes=0, seed=seed)
    return accuracy(plain, labels)


def run(cfg: FewshotStage) -> list[dict]:
    """Every checkpoint x (way, shot): per-fold accuracies and mean ± std (percent).

    Writes ``<results_dir>/fewshot.json`` and returns its rows."""
    recipe = build(Recipe, dict(cfg.recipe), "fewshot.recipe")
    resolve(cfg.out_dir).mkdir(parents=True, exist_ok=True)  # a DVC output, even if unused
    manifest = json.loads(resolve(cfg.data_manifest).read_text())
    root = resolve(manifest["roots"]["fewshot"])
    rows = []
    for way in cfg.ways:
        for shot in cfg.shots:
            episodes = [
                (
                    fewshot_dataset(root, way, shot, fold, "train", recipe.num_points),
                    fewshot_dataset(root, way, shot, fold, "test", recipe.num_points),
                    way,
                )
                for fold in range(cfg.folds)
            ]
            for checkpoint in cfg.checkpoints:
                encoder = None
                if cfg.protocol != "full":  # frozen: one encoder for every episode
                    encoder = load_pretrained(
                        checkpoint, cfg.model, seed=cfg.seed, num_groups=recipe.num_groups
                    ).eval()
                runs = resolve(cfg.out_dir) / checkpoint_name(checkpoint).replace("/", "-")
                accs = []
                for fold, ep in enumerate(episodes):
                    out_dir = runs / f"{way}way{shot}shot-fold{fold}"
                    acc = episode_accuracy(
                        cfg, recipe, checkpoint, ep, cfg.seed + fold, out_dir, encoder
                    )
                    accs.append(100 * acc)
                rows.append(
                    {
                        "checkpoint": checkpoint_name(checkpoint),
                        "way": way,
                        "shot": shot,
                        "folds": len(accs),
                        "acc_mean": float(np.mean(accs)),
                        "acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                        "accs": accs,
                    }
                )
    path = Path(resolve(cfg.results_dir)) / "fewshot.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"protocol": cfg.protocol, "recipe": dataclasses.asdict(recipe), "rows": rows}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return rows
