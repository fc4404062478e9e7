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

import torch

from mmpd_core import engine
from mmpd_core.config import FewshotStage, Recipe, resolve, seed_refs
from mmpd_core.data.datasets import fewshot_dataset
from mmpd_core.tasks.classification import fine_tune, predict, train_head
from mmpd_core.tasks.features import FeatureMemo, checkpoint_name, load_pretrained
from mmpd_core.tasks.metrics import accuracy, mean_std
from mmpd_core.tracking import progress


def episode_accuracy(
    cfg: FewshotStage, checkpoint: str, episode, seed: int, out_dir: Path, memo=None
) -> float:
    """Query accuracy (percent) after training on the support set of ``episode`` (support,
    query, way, stored support clouds or None). Full fine-tuning writes its checkpoints and
    dvclive in ``out_dir``, one per episode (a killed episode resumes from there); frozen
    protocols read features from ``memo`` (a ``FeatureMemo`` of the checkpoint's encoder,
    made once per checkpoint by ``run_stage``)."""
    support, query, way, stored = episode
    recipe: Recipe = cfg.recipe
    if cfg.protocol != "full":
        feats, labels = memo(support)
        head = train_head(cfg.protocol, feats, labels, way, memo.encoder, recipe, seed)
        query_feats, query_labels = memo(query)
        with torch.no_grad():
            return 100 * accuracy(head(query_feats), query_labels)
    model = load_pretrained(
        checkpoint, cfg.model, seed=seed, grouping=recipe.grouping, num_classes=way,
        drop_path_rate=recipe.drop_path_rate,
    )  # fmt: skip
    fine_tune(model, support, recipe, seed=seed, out_dir=out_dir, stored=stored)
    plain, _, labels = predict(model, query, recipe, votes=0, seed=seed)
    return 100 * accuracy(plain, labels)


def episodes(cfg: FewshotStage, root: Path, way: int, shot: int) -> list:
    """(support, query, way, stored support or None) of every fold of one setting."""
    points, resampled = cfg.recipe.num_points, cfg.protocol == "full" and cfg.recipe.fps_points
    return [
        (
            fewshot_dataset(root, way, shot, fold, "train", points),
            fewshot_dataset(root, way, shot, fold, "test", points),
            way,
            fewshot_dataset(root, way, shot, fold, "train", None) if resampled else None,
        )
        for fold in range(cfg.folds)
    ]


def run_stage(cfg: FewshotStage) -> list[dict]:
    """Every checkpoint x (way, shot): per-fold accuracies and mean ± std (percent).

    Writes ``<results_dir>/fewshot.json`` and returns its rows."""
    resolve(cfg.out_dir).mkdir(parents=True, exist_ok=True)  # a DVC output, even if unused
    manifest = json.loads(resolve(cfg.data_manifest).read_text())
    root = resolve(manifest["roots"]["fewshot"])
    settings = [(way, shot) for way in cfg.ways for shot in cfg.shots]
    rows, memos = [], {}
    for way, shot in progress(settings, desc="few-shot settings"):
        folds = episodes(cfg, root, way, shot)
        for checkpoint in cfg.checkpoints:
            pretrained = seed_refs(checkpoint)  # fold f: the (f mod n)-th pretraining run
            for ref in pretrained:
                if cfg.protocol != "full" and ref not in memos:  # frozen: one encoder per run
                    encoder = load_pretrained(
                        ref, cfg.model, seed=cfg.seed, grouping=cfg.recipe.grouping
                    ).eval()
                    memos[ref] = FeatureMemo(encoder.to(engine.default_device()), cfg.recipe.amp)
            runs = resolve(cfg.out_dir) / checkpoint_name(checkpoint).replace("/", "-")
            accs = []
            for fold, episode in enumerate(folds):
                ref = pretrained[fold % len(pretrained)]
                out_dir = runs / f"{way}way{shot}shot-fold{fold}"
                accs.append(
                    episode_accuracy(cfg, ref, episode, cfg.seed + fold, out_dir, memos.get(ref))
                )
            mean, std = mean_std(accs)
            rows.append(
                {
                    "checkpoint": checkpoint,
                    "way": way,
                    "shot": shot,
                    "folds": len(accs),
                    "pretrain_runs": len(pretrained),
                    "acc_mean": mean,
                    "acc_std": std,
                    "accs": accs,
                }
            )
    path = Path(resolve(cfg.results_dir)) / "fewshot.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"protocol": cfg.protocol, "recipe": dataclasses.asdict(cfg.recipe), "rows": rows}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return rows
