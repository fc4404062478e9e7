"""Downstream classification of any pretrained encoder (paper Section 5.1, Tables 1 and 3).

Protocols (ReCon / ACT names):

- ``full``: every parameter is trained, with the upstream 3-layer head, through the engine
  (warmup + cosine AdamW, clipping, bf16, checkpoints, the dataset's augmentation per step);
- ``mlp3`` / ``linear``: the encoder is truly frozen (eval mode, so BatchNorm statistics do not
  move) and the global feature [cls, max] of every un-augmented training cloud is computed
  once; the 3-layer head or one Linear layer is trained on those features. Upstream instead
  keeps the encoder in train mode and also trains ``cls_token`` / ``cls_pos``; the frozen
  variant is the cleaner protocol (REFERENCE, "ReCon and ACT").

After full fine-tuning the BatchNorm statistics are recomputed over the training clouds
(``refresh_batchnorm``). Voting (``full`` only): ``votes`` passes over the test set with the
dataset's training augmentation (seeded), logits averaged; reported next to the plain
accuracy, never a max over repeats. A head trained on features of un-augmented clouds has
never seen augmented ones, so the frozen protocols report no voted accuracy. Model selection
never sees the test set: the last epoch is reported.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn
from tqdm.auto import tqdm

from mmpd_core import engine
from mmpd_core.config import FinetuneStage, GridStage, Schedule, build, resolve
from mmpd_core.data import readers, transforms
from mmpd_core.data.datasets import (
    CloudDataset,
    ModelNet40Dataset,
    modelnet40_dat_dataset,
    scanobjectnn_dataset,
)
from mmpd_core.models import PointTransformer, classification_head, create_model, load_encoder
from mmpd_core.upstream import load_upstream_checkpoint

PROTOCOLS = ("full", "mlp3", "linear")
FAMILIES = {
    "modelnet40": "modelnet40",
    "synthetic_modelnet": "modelnet40",
    "scanobjectnn": "scanobjectnn",
    "synthetic_scanobjectnn": "scanobjectnn",
}
AUGMENTS = {"scale_translate": transforms.scale_translate, "rotate_up": transforms.rotate_up}


@dataclass(frozen=True)
class Recipe(Schedule):
    """How one dataset family is fine-tuned (``params.yaml: finetune.recipes.<family>``); the
    ``Schedule`` fields drive full fine-tuning."""

    num_points: int
    num_groups: int  # groups at this many points (upstream: 64 at 1k, 128 at 2k points)
    augment: str  # scale_translate | rotate_up | none
    drop_path_rate: float
    head_epochs: int  # frozen protocols: full-batch epochs of the head on cached features
    head_lr: float


def recipe_of(cfg: FinetuneStage) -> Recipe:
    family = dataset_family(cfg.dataset)
    return build(Recipe, dict(cfg.recipes[family]), f"finetune.recipes.{family}")


def dataset_family(dataset: str) -> str:
    if dataset not in FAMILIES:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[dataset]


# ---------------------------------------------------------------------------- data


def load_splits(cfg: FinetuneStage, recipe: Recipe) -> tuple[CloudDataset, CloudDataset, int]:
    """(train, test, number of classes) of ``cfg.dataset`` in the data manifest's layout."""
    manifest = json.loads(resolve(cfg.data_manifest).read_text())
    family = dataset_family(cfg.dataset)
    if cfg.dataset.startswith("synthetic") and manifest["config"]["source"] != "embedded":
        raise ValueError(f"{cfg.data_manifest}: {cfg.dataset} needs data_prep.source embedded")
    root = resolve(manifest["roots"][family])
    if family == "modelnet40":
        classes = len(manifest["counts"]["modelnet40"]["train"])
        splits = [modelnet40_split(root, s, recipe.num_points, manifest) for s in readers.SPLITS]
    else:
        classes = len(manifest["counts"]["scanobjectnn"][f"{cfg.variant}/train"])
        splits = [
            scanobjectnn_dataset(root, cfg.variant, s, recipe.num_points, num_classes=classes)
            for s in readers.SPLITS
        ]
    return splits[0], splits[1], classes


def modelnet40_split(root: Path, split: str, num_points: int, manifest: dict):
    """The cached ``.dat`` when data_prep wrote one, else the official text files."""
    dat_points = manifest["config"].get("modelnet_points", 8192)
    if readers.modelnet40_dat_path(root, split, dat_points).is_file():
        return modelnet40_dat_dataset(root, split, num_points, dat_points=dat_points)
    return ModelNet40Dataset(root, split, num_points)


def augment(points: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """The dataset's training augmentation of a batch (B, N, 3) (identity for 'none')."""
    if recipe.augment == "none":
        return points
    return AUGMENTS[recipe.augment](points, generator=generator)


# ---------------------------------------------------------------------------- encoders


def load_pretrained(checkpoint: str, model: str, *, seed: int = 0, **overrides) -> PointTransformer:
    """``scratch`` (a fresh ``model``), a pretraining run dir / ``encoder.safetensors``, or a
    released upstream Point-MAE ``.pth`` (explicit key map, ``weights_only``). ``seed`` fixes
    what the checkpoint does not hold (all of a scratch encoder, a new classification head);
    the global RNG is left as it was."""
    path = None if checkpoint == "scratch" else resolve(checkpoint)
    if path is not None and not path.exists():
        raise FileNotFoundError(f"{path}: no pretrained encoder (run its pretraining stage)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if path is None or path.suffix in (".pth", ".pt", ".ckpt"):
            encoder = create_model(model, **overrides)
            if path is not None:
                load_upstream_checkpoint(encoder, path)
            return encoder
        return load_encoder(path, **overrides)


def checkpoint_name(checkpoint: str) -> str:
    """A short name of a checkpoint for tables: runs/stage2_variants/x -> stage2_variants/x."""
    return checkpoint.removeprefix("runs/").removesuffix("/encoder.safetensors").strip("/")


# ---------------------------------------------------------------------------- protocols


@torch.no_grad()
def extract_features(
    encoder: PointTransformer, dataset, *, batch_size: int = 64, amp: str = "bf16"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global features [cls, max] (M, 2D) and labels (M,) of a frozen encoder (eval mode)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    feats, labels = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        points = batch["points"].to(device)
        with engine.autocast_context(device, engine.AMP_DTYPES[amp]):
            feats.append(encoder.forward_features(points)["global"].float())
        labels.append(batch["label"].to(device))
    return torch.cat(feats), torch.cat(labels)


def make_head(protocol: str, in_dim: int, num_classes: int, config) -> nn.Module:
    """``linear``: parameter-free BatchNorm then one Linear layer (MAE's linear probe: the
    normalisation only rescales features); ``mlp3``/``full``: the upstream 3-layer head."""
    if protocol == "linear":
        return nn.Sequential(nn.BatchNorm1d(in_dim, affine=False), nn.Linear(in_dim, num_classes))
    return classification_head(in_dim, config.head_hidden, num_classes, config.head_dropout)


def train_head(
    protocol: str, feats, labels, num_classes: int, config, recipe: Recipe, seed: int
) -> nn.Module:
    """``make_head`` initialised from ``seed``, then full-batch AdamW with a cosine schedule on
    cached features (frozen protocols); the head comes back in eval mode."""
    torch.manual_seed(seed)
    head = make_head(protocol, feats.shape[1], num_classes, config)
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=recipe.head_lr, weight_decay=recipe.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.head_epochs)
    head.train()
    for _ in range(recipe.head_epochs):
        loss = F.cross_entropy(head(feats), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return head.eval()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


class ClassifierStep:
    """``step_fn`` of full fine-tuning: augment, cross-entropy; logs the batch accuracy."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def __call__(self, model, batch, generator):
        points = augment(batch["points"], self.recipe, generator)
        logits = model(points)
        loss = F.cross_entropy(logits, batch["label"])
        return loss, {"acc": accuracy(logits.detach(), batch["label"])}


def refresh_batchnorm(model: nn.Module, dataset, batch_size: int = 32, amp: str = "none") -> None:
    """Recompute every BatchNorm's running statistics over the (un-augmented) training clouds
    with the final weights (``torch.optim.swa_utils.update_bn``). A short schedule leaves the
    running averages behind weights that moved fast; a freshly initialised encoder then
    predicts one class in eval mode although it fits its training batches. ``amp`` as in
    training (the statistics of the activations the model was trained on)."""
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with engine.autocast_context(device, engine.AMP_DTYPES[amp]):
        update_bn((batch["points"].to(device) for batch in loader), model)


def fine_tune(model, dataset, recipe: Recipe, *, seed: int, out_dir: Path, num_workers: int = 0):
    """The ``full`` protocol: train every parameter with the recipe through the engine
    (dvclive in ``out_dir/live``), then ``refresh_batchnorm``. The per-epoch checkpoints in
    ``out_dir`` let a run killed part-way resume exactly; they are deleted when it finishes
    (a table's grid holds hundreds of runs, a point_mae checkpoint with its optimizer state
    is ~260 MB and only the accuracies are kept)."""
    cfg = engine.config_from(
        recipe, seed=seed, accumulation=1, num_workers=num_workers,
        out_dir=str(out_dir), live_dir=str(out_dir / "live"),
    )  # fmt: skip
    result = engine.train(model, ClassifierStep(recipe), dataset, cfg, resume=True)
    engine.remove_checkpoints(out_dir)
    refresh_batchnorm(model, dataset, amp=recipe.amp)
    return result


@torch.no_grad()
def predict(model: nn.Module, dataset, recipe: Recipe, *, votes: int, seed: int):
    """Test logits without augmentation, and averaged over ``votes`` augmented passes."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    plain, voted, labels = [], [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=64):
        points = batch["points"].to(device)
        with engine.autocast_context(device, engine.AMP_DTYPES[recipe.amp]):
            plain.append(model(points).float())
            passes = [model(augment(points, recipe, generator)).float() for _ in range(votes)]
        voted.append(torch.stack(passes).mean(0) if passes else plain[-1])
        labels.append(batch["label"].to(device))
    return torch.cat(plain), torch.cat(voted), torch.cat(labels)


def cached_splits(cfg: FinetuneStage, recipe: Recipe, cache: dict):
    """``load_splits`` once per (manifest, dataset, variant, points) within ``cache`` (a grid
    reads each dataset once, not once per checkpoint and protocol)."""
    key = ("splits", cfg.data_manifest, cfg.dataset, cfg.variant, recipe.num_points)
    if key not in cache:
        cache[key] = load_splits(cfg, recipe)
    return cache[key]


def frozen_features(cfg: FinetuneStage, recipe: Recipe, data, features: dict):
    """Train and test features of the frozen encoder, computed once per (checkpoint, dataset)
    and kept in ``features`` (the encoder in eval mode is deterministic)."""
    key = (cfg.checkpoint, cfg.dataset, cfg.variant, recipe.num_points, recipe.num_groups)
    if key not in features:
        overrides = {"num_groups": recipe.num_groups}
        encoder = load_pretrained(cfg.checkpoint, cfg.model, **overrides).eval()
        features[key] = (
            extract_features(encoder, data[0], amp=recipe.amp),
            extract_features(encoder, data[1], amp=recipe.amp),
            encoder.config,
        )
    return features[key]


def run_seed(
    cfg: FinetuneStage, recipe: Recipe, seed: int, data, out_dir: Path, features: dict
) -> dict:
    """One seed of one protocol: train, then the test accuracy (and the voted one, full)."""
    train_set, test_set, classes = data
    overrides = {"num_groups": recipe.num_groups, "drop_path_rate": recipe.drop_path_rate}
    if cfg.protocol != "full":
        (feats, labels), (test_feats, test_labels), config = frozen_features(
            cfg, recipe, data, features
        )
        head = train_head(cfg.protocol, feats, labels, classes, config, recipe, seed)
        with torch.no_grad():
            train_acc, acc = accuracy(head(feats), labels), accuracy(head(test_feats), test_labels)
        return {"seed": seed, "acc": acc, "acc_vote": math.nan, "train_acc": train_acc}
    model = load_pretrained(cfg.checkpoint, cfg.model, seed=seed, num_classes=classes, **overrides)
    result = fine_tune(
        model, train_set, recipe, seed=seed, out_dir=out_dir / f"seed{seed}",
        num_workers=cfg.num_workers,
    )  # fmt: skip
    plain, voted, labels = predict(model, test_set, recipe, votes=cfg.votes, seed=seed)
    return {
        "seed": seed,
        "acc": accuracy(plain, labels),
        "acc_vote": accuracy(voted, labels),
        "train_acc": result.final["train/acc"],
        "wall_time_s": result.wall_time_s,
    }


def summarise(rows: list[dict]) -> dict:
    """Mean and sample std (ddof 1; 0 for one seed) over seeds: accuracies in percent, the
    fine-tuning wall time in seconds."""
    out = {}
    for key in ("acc", "acc_vote", "train_acc", "wall_time_s"):
        if key not in rows[0]:
            continue
        scale = 1 if key == "wall_time_s" else 100
        values = scale * np.array([r[key] for r in rows], dtype=float)
        if np.isnan(values).any():  # no voted accuracy for frozen protocols
            continue
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def run_tag(cfg: FinetuneStage) -> str:
    """File-name tag of a run: <dataset>[-<variant>]__<checkpoint>__<protocol>."""
    data = cfg.dataset + (
        f"-{cfg.variant}" if dataset_family(cfg.dataset) == "scanobjectnn" else ""
    )
    return f"{data}__{checkpoint_name(cfg.checkpoint).replace('/', '-')}__{cfg.protocol}"


def run(cfg: FinetuneStage, *, cache: dict | None = None) -> dict:
    """Every seed of ``cfg``; writes and returns ``<results_dir>/<tag>.json``. ``cache``
    shares loaded datasets and frozen-encoder features between runs (``run_grid``)."""
    recipe = recipe_of(cfg)
    cache = {} if cache is None else cache
    data = cached_splits(cfg, recipe, cache)
    tag = run_tag(cfg)
    out_dir = resolve(cfg.out_dir) / tag
    rows = [run_seed(cfg, recipe, seed, data, out_dir, cache) for seed in cfg.seeds]
    result = {
        "dataset": cfg.dataset,
        "variant": cfg.variant if dataset_family(cfg.dataset) == "scanobjectnn" else "",
        "checkpoint": checkpoint_name(cfg.checkpoint),
        "protocol": cfg.protocol,
        "votes": cfg.votes,
        "selection": "last epoch",
        "recipe": dataclasses.asdict(recipe),
        "seeds": rows,
        "n_seeds": len(rows),
        **summarise(rows),
    }
    path = resolve(cfg.results_dir) / f"{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def grid_configs(grid: GridStage, base: FinetuneStage) -> list[FinetuneStage]:
    """One FinetuneStage per (dataset, protocol, checkpoint) of a table's grid."""
    configs = []
    for dataset in grid.datasets:
        name, _, variant = dataset.partition("/")
        for protocol in grid.protocols:
            for checkpoint in grid.checkpoints:
                configs.append(
                    dataclasses.replace(
                        base,
                        dataset=name,
                        variant=variant or base.variant,
                        checkpoint=checkpoint,
                        protocol=protocol,
                        seeds=grid.seeds,
                        votes=grid.votes,
                        results_dir=grid.results_dir,
                        out_dir=grid.out_dir,
                    )
                )
    return configs


def run_grid(grid: GridStage, base: FinetuneStage) -> pd.DataFrame:
    """Every run of a grid (progress bar); one row per run, also written to ``grid.table``
    (.csv, and .json keyed by run tag for ``dvc metrics show``)."""
    rows, cache, configs = [], {}, grid_configs(grid, base)
    resolve(grid.out_dir).mkdir(parents=True, exist_ok=True)  # a DVC output, even if unused
    for cfg in tqdm(configs, desc="runs"):
        result = run(cfg, cache=cache)
        rows.append({k: v for k, v in result.items() if k not in ("recipe", "seeds")})
    frame = pd.DataFrame(rows)
    stem = resolve(grid.table)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    keyed = {run_tag(cfg): row for cfg, row in zip(configs, rows, strict=True)}
    stem.with_suffix(".json").write_text(json.dumps(keyed, indent=2) + "\n")
    return frame
