"""Downstream classification of any pretrained encoder (paper Section 5.1, Tables 3-11).

Protocols (ReCon / ACT names):

- ``full``: every parameter is trained, with the backbone's classification head, through the
  engine (warmup + cosine AdamW, clipping, bf16, checkpoints, the dataset's augmentation per
  step);
- ``mlp3`` / ``linear``: the encoder is truly frozen (eval mode, so BatchNorm statistics do not
  move) and the global feature of every un-augmented training cloud is computed once; the
  backbone's head or one Linear layer is trained on those features. Upstream instead keeps the
  encoder in train mode and also trains ``cls_token`` / ``cls_pos``; the frozen variant is the
  cleaner protocol (REFERENCE, "ReCon and ACT");
- ``pointgst``: PointGST's parameter-efficient fine-tuning of a Point-MAE encoder
  (``peft.pointgst``): the encoder's weights frozen, a spectral adapter per block, only the
  adapters, cls token / position and head trained, with the dataset's full-protocol recipe
  (upstream's PointGST recipe is Point-MAE's). The model stays in ``train()`` mode as upstream,
  so the frozen tokenizer's BatchNorm statistics move; they are refreshed after training like
  the ``full`` protocol's. Each run prints and records its trainable-parameter count.

Inputs follow the upstream recipe (Point-MAE ``runner_finetune``) when ``recipe.fps_points``
is set: every training step takes each stored cloud in a random order, runs FPS for
``fps_points`` points (1,200 for 1,024-point inputs, 2,400 for 2,048) and keeps a random
``num_points`` of them (one choice for the batch), then augments (``resample``); the test
clouds are the FPS sample of ``num_points`` from index 0, and every vote draws a fresh random
subset of the test cloud's FPS sample before augmenting. With ``fps_points: 0`` every cloud is
its fixed ``num_points`` sample in every epoch and vote.

After full fine-tuning the BatchNorm statistics are recomputed over the training clouds
(``refresh_batchnorm``). Voting (``full`` only, on the dataset families whose recipe votes:
ModelNet40, as upstream): ``votes`` passes over the test set with the
dataset's training augmentation (seeded), logits averaged; reported next to the plain
accuracy, never a max over repeats. A head trained on features of un-augmented clouds has
never seen augmented ones, so the frozen protocols report no voted accuracy. Model selection
never sees the test set: the last epoch is reported. Accuracies are percentages everywhere in
a record.

``run_stage(cfg)`` runs a ``ClassificationStage``: every checkpoint x dataset x protocol of a
table (``classification``, ``ablations``) or the one cell of ``finetune.ipynb``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from mmpd_core import engine
from mmpd_core.config import ClassificationStage, PointGSTAdapters, Recipe, resolve, seed_refs
from mmpd_core.data import transforms
from mmpd_core.data.datasets import dataset_family
from mmpd_core.geometry import farthest_point_sample, gather_points
from mmpd_core.models import Backbone
from mmpd_core.peft.pointgst import PointGST, point_gst
from mmpd_core.tasks.features import checkpoint_name, frozen_features, load_pretrained, splits
from mmpd_core.tasks.metrics import accuracy, summarise
from mmpd_core.tracking import progress

AUGMENTS = {"scale_translate": transforms.scale_translate, "rotate_up": transforms.rotate_up}
FROZEN = ("mlp3", "linear")  # protocols that train a head on cached features; the others tune


def augment(points: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """The dataset's training augmentation of a batch (B, N, 3) (identity for 'none')."""
    if recipe.augment == "none":
        return points
    return AUGMENTS[recipe.augment](points, generator=generator)


def resample(points: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """Upstream's per-step input from stored clouds (B, N, 3): each cloud in a random order,
    FPS of ``fps_points`` (the kernel starts at index 0, a random point after the shuffle),
    then a random ``num_points`` of those, one choice for the whole batch: (B, num_points, 3).
    """
    batch, stored, _ = points.shape
    order = torch.rand(batch, stored, generator=generator).argsort(dim=1)  # (B, N)
    shuffled = gather_points(points, order.to(points.device))  # (B, N, 3)
    centres = farthest_point_sample(shuffled, min(recipe.fps_points, stored))  # (B, P)
    return _random_subset(shuffled, centres, recipe.num_points, generator)


def _random_subset(points, fps_idx, num_points: int, generator) -> torch.Tensor:
    """A random ``num_points`` of the FPS indices (B, P), the same for every cloud."""
    keep = torch.randperm(fps_idx.shape[1], generator=generator)[:num_points]  # (num_points,)
    return gather_points(points, fps_idx[:, keep.to(fps_idx.device)])  # (B, num_points, 3)


# ---------------------------------------------------------------------------- frozen protocols


def make_head(protocol: str, encoder: Backbone, num_classes: int) -> nn.Module:
    """``linear``: parameter-free BatchNorm then one Linear layer (MAE's linear probe: the
    normalisation only rescales features); ``mlp3``: the backbone's classification head."""
    if protocol == "linear":
        width = encoder.global_dim
        return nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Linear(width, num_classes))
    return encoder.make_head(num_classes)


class MaskDropout(nn.Module):
    """``nn.Dropout`` for CPU tensors, its masks drawn by NumPy's PCG64 generator ``rng``, not
    torch's ``bernoulli_``: the same distribution (each unit kept with probability 1 - p, kept units
    scaled by 1 / (1 - p)), drawn ~10x faster on CPU. In the MLP-3 head's full-batch step
    drawing torch's two masks took longer than the matmuls (``train_head``)."""

    def __init__(self, p: float, rng: np.random.Generator):
        super().__init__()
        self.p, self.rng = p, rng

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.from_numpy(self.rng.random(tuple(x.shape), dtype=np.float32) >= self.p)
        return x * keep * (1.0 / (1.0 - self.p))


def with_mask_dropout(module: nn.Module, rng: np.random.Generator) -> nn.Module:
    """``module`` with every ``nn.Dropout`` replaced by a ``MaskDropout`` of the same p."""
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout):
            setattr(module, name, MaskDropout(child.p, rng))
        else:
            with_mask_dropout(child, rng)
    return module


def train_head(
    protocol: str, feats, labels, num_classes: int, encoder: Backbone, recipe: Recipe, seed: int
) -> nn.Module:
    """``make_head`` initialised from ``seed``, then full-batch AdamW (fused: one kernel per
    step) with a cosine schedule on cached features (frozen protocols), under the recipe's
    autocast, dropout masks on CPU from a generator seeded by ``seed`` (``MaskDropout``); the
    head comes back in eval mode."""
    torch.manual_seed(seed)
    head = make_head(protocol, encoder, num_classes).to(feats.device)
    if feats.device.type == "cpu":  # on a GPU torch's masks are fast and stay on the device
        head = with_mask_dropout(head, np.random.default_rng(seed))
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=recipe.head_lr, weight_decay=recipe.weight_decay, fused=True
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.head_epochs)
    head.train()
    for _ in range(recipe.head_epochs):
        with engine.autocast_context(feats.device, engine.AMP_DTYPES[recipe.amp]):
            logits = head(feats)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return head.eval()


# ---------------------------------------------------------------------------- full protocol


class ClassifierStep:
    """``step_fn`` of full fine-tuning: augment, cross-entropy; logs the batch accuracy."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def __call__(self, model, batch, generator):
        points = batch["points"]
        if self.recipe.fps_points:
            points = resample(points, self.recipe, generator)
        points = augment(points, self.recipe, generator)
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


def fine_tune(
    model, dataset, recipe: Recipe, *, seed: int, out_dir: Path, num_workers: int = 0,
    stored=None, param_groups: list[dict] | None = None,
):  # fmt: skip
    """The ``full`` protocol: train every parameter with the recipe through the engine
    (dvclive in ``out_dir/live``), then ``refresh_batchnorm`` over ``dataset``
    (``param_groups``: the AdamW groups of what is trained, for ``pointgst``). With
    ``recipe.fps_points`` the steps read ``stored`` (the same clouds as stored) and resample
    them. The per-epoch checkpoints in ``out_dir`` let a run killed part-way resume exactly;
    they are deleted when it finishes (a table's grid holds hundreds of runs, a point_mae
    checkpoint with its optimizer state is ~260 MB and only the accuracies are kept)."""
    if recipe.fps_points and stored is None:
        raise ValueError("recipe.fps_points needs the stored clouds (stored=)")
    cfg = engine.config_from(
        recipe, seed=seed, accumulation=1, num_workers=num_workers,
        out_dir=str(out_dir), live_dir=str(out_dir / "live"),
    )  # fmt: skip
    train_set = stored if recipe.fps_points else dataset
    result = engine.train(
        model, ClassifierStep(recipe), train_set, cfg, resume=True, param_groups=param_groups
    )
    engine.remove_checkpoints(out_dir)
    refresh_batchnorm(model, dataset, amp=recipe.amp)
    return result


@torch.no_grad()
def predict(model: nn.Module, dataset, recipe: Recipe, *, votes: int, seed: int, stored=None):
    """Test logits without augmentation, and averaged over ``votes`` augmented passes. With
    ``recipe.fps_points`` each pass draws its clouds afresh from ``stored`` (upstream's
    ``test_vote``: a random ``num_points`` of the stored cloud's FPS sample)."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    fresh = bool(recipe.fps_points and votes)
    if fresh and stored is None:
        raise ValueError("votes with recipe.fps_points need the stored clouds (stored=)")
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)
    whole = torch.utils.data.DataLoader(stored, batch_size=64) if fresh else [None] * len(loader)
    plain, voted, labels = [], [], []
    for batch, full in zip(loader, whole, strict=True):
        points = batch["points"].to(device)
        if fresh:
            full = full["points"].to(device)  # (B, N, 3)
            fps = farthest_point_sample(full, min(recipe.fps_points, full.shape[1]))
        with engine.autocast_context(device, engine.AMP_DTYPES[recipe.amp]):
            plain.append(model(points).float())
            passes = []
            for _ in range(votes):
                drawn = _random_subset(full, fps, recipe.num_points, generator) if fresh else points
                passes.append(model(augment(drawn, recipe, generator)).float())
        voted.append(torch.stack(passes).mean(0) if passes else plain[-1])
        labels.append(batch["label"].to(device))
    return torch.cat(plain), torch.cat(voted), torch.cat(labels)


# ---------------------------------------------------------------------------- one cell, a grid


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a grid: an encoder on a dataset under a protocol, over the grid's seeds."""

    checkpoint: str
    dataset: str  # modelnet40 | scanobjectnn/<subset>
    protocol: str

    @property
    def tag(self) -> str:
        """File-name tag: <dataset>[-<subset>]__<checkpoint>__<protocol>."""
        data = self.dataset.replace("/", "-")
        return f"{data}__{checkpoint_name(self.checkpoint).replace('/', '-')}__{self.protocol}"


def cells(cfg: ClassificationStage) -> list[Cell]:
    """Every (dataset, protocol, checkpoint) of a grid, in the order they run, less what
    ``cfg.only`` leaves out of a checkpoint's row and ``cfg.protocol_only`` out of a
    protocol's."""

    def runs(cell: Cell) -> bool:
        row = cfg.only.get(cell.checkpoint, {})
        block = cfg.protocol_only.get(cell.protocol, {})
        return (
            cell.protocol in row.get("protocols", (cell.protocol,))
            and cell.dataset in row.get("datasets", (cell.dataset,))
            and cell.checkpoint in block.get("checkpoints", (cell.checkpoint,))
            and cell.dataset in block.get("datasets", (cell.dataset,))
        )

    grid = [
        Cell(checkpoint, dataset, protocol)
        for dataset in cfg.datasets
        for protocol in cfg.protocols
        for checkpoint in cfg.checkpoints
    ]
    return [cell for cell in grid if runs(cell)]


def adapted(model: Backbone, adapters: PointGSTAdapters) -> tuple[PointGST, dict]:
    """``model`` (a Point-MAE encoder with its head) under fresh PointGST adapters, everything
    but the adapters, cls token / position and head frozen; and its parameter counts."""
    if model.arch != "point_mae":
        raise ValueError(f"the pointgst protocol adapts point_mae encoders, not {model.arch!r}")
    gst = point_gst(model, **dataclasses.asdict(adapters))
    gst.mark_trainable()
    counts = {
        "trainable_params": sum(p.numel() for p in gst.trainable_parameters()),
        "total_params": sum(p.numel() for p in gst.parameters()),
    }
    return gst, counts


def run_seed(cfg: ClassificationStage, cell: Cell, seed: int, cache: dict, run: str = "") -> dict:
    """One seed of one cell: train, then the test accuracy (and the voted one, full). ``run``:
    which independent pretraining run of the cell's checkpoint (default: the checkpoint)."""
    run = run or cell.checkpoint
    recipe = cfg.recipes[dataset_family(cell.dataset)]
    data = splits(cfg.data_manifest, cell.dataset, recipe.num_points, cache)
    train_set, test_set, classes = data
    if cell.protocol in FROZEN:
        (feats, labels), (test_feats, test_labels), encoder = frozen_features(
            run, cfg.model, cell.dataset, recipe, data, cache
        )
        head = train_head(cell.protocol, feats, labels, classes, encoder, recipe, seed)
        with torch.no_grad():
            train_acc, acc = accuracy(head(feats), labels), accuracy(head(test_feats), test_labels)
        return {"seed": seed, "run": run, "arch": encoder.arch, "acc": 100 * acc,
                "acc_vote": math.nan, "train_acc": 100 * train_acc}  # fmt: skip
    model = load_pretrained(
        run, cfg.model, seed=seed, grouping=recipe.grouping,
        num_classes=classes, drop_path_rate=recipe.drop_path_rate,
    )  # fmt: skip
    arch, groups, counts = model.arch, None, {}
    if cell.protocol == "pointgst":
        model, counts = adapted(model, cfg.pointgst)
        groups = model.optimizer_groups(recipe.weight_decay)
        print(f"{cell.tag} seed {seed}: PointGST trains {counts['trainable_params']:,} of "
              f"{counts['total_params']:,} parameters")  # fmt: skip
    out_dir = resolve(cfg.out_dir) / cell.tag / f"seed{seed}"
    stored = (None, None)
    if recipe.fps_points:  # the clouds as stored: resampled every step and every vote
        stored = splits(cfg.data_manifest, cell.dataset, None, cache)[:2]
    result = fine_tune(model, train_set, recipe, seed=seed, out_dir=out_dir,
                       num_workers=cfg.num_workers, stored=stored[0],
                       param_groups=groups)  # fmt: skip
    votes = cfg.votes if recipe.vote else 0
    test = {"votes": votes, "seed": seed, "stored": stored[1]}
    plain, voted, labels = predict(model, test_set, recipe, **test)
    return {
        "seed": seed,
        "run": run,
        "arch": arch,
        **counts,
        "acc": 100 * accuracy(plain, labels),
        "acc_vote": 100 * accuracy(voted, labels) if votes else math.nan,
        "train_acc": 100 * result.final["train/acc"],
        "wall_time_s": result.wall_time_s,
    }


def reusable(cfg: ClassificationStage, cell: Cell) -> dict | None:
    """The same cell in the grid ``cfg.reuse`` (another stage's results directory) if it ran
    exactly what this grid would: same checkpoint, dataset, protocol, seeds, pretraining runs
    and recipe (and votes, for the full protocol). The ablation grid reads the classification
    grid's linear probes of the encoders both hold instead of training them twice."""
    path = resolve(cfg.reuse) / f"{cell.tag}.json" if cfg.reuse else None
    if path is None or not path.is_file():
        return None
    done = json.loads(path.read_text())
    runs = seed_refs(cell.checkpoint)
    expected = {
        "checkpoint": cell.checkpoint,
        "protocol": cell.protocol,
        "recipe": json.loads(
            json.dumps(dataclasses.asdict(cfg.recipes[dataset_family(cell.dataset)]))
        ),
        "seeds": [(seed, runs[i % len(runs)]) for i, seed in enumerate(cfg.seeds)],
    }
    found = {
        **{k: done.get(k) for k in expected},
        "seeds": [(r["seed"], r["run"]) for r in done["seeds"]],
    }
    if found != expected or (cell.protocol not in FROZEN and done["votes"] != cfg.votes):
        return None
    return {**done, "votes": cfg.votes, "reused_from": f"{cfg.reuse}/{cell.tag}.json"}


def run_cell(cfg: ClassificationStage, cell: Cell, cache: dict) -> dict:
    """Every seed of one cell (or the same cell of ``cfg.reuse``, ``reusable``); writes and
    returns ``<results_dir>/<tag>.json``. The i-th seed transfers the i-th independent
    pretraining run of the checkpoint (cycling when it has fewer, ``config.seed_refs``), so
    the spread covers pretraining as well as transfer."""
    result = reusable(cfg, cell) or _run_cell(cfg, cell, cache)
    path = resolve(cfg.results_dir) / f"{cell.tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _run_cell(cfg: ClassificationStage, cell: Cell, cache: dict) -> dict:
    runs = seed_refs(cell.checkpoint)
    rows = [
        run_seed(cfg, cell, seed, cache, runs[i % len(runs)]) for i, seed in enumerate(cfg.seeds)
    ]
    name, _, subset = cell.dataset.partition("/")
    result = {
        "dataset": name,
        "subset": subset,
        "checkpoint": cell.checkpoint,  # as named in params (tables show checkpoint_name)
        "arch": rows[0]["arch"],  # the backbone (Table 3's #P column)
        "protocol": cell.protocol,
        "votes": cfg.votes,
        "selection": "last epoch",
        "recipe": dataclasses.asdict(cfg.recipes[dataset_family(cell.dataset)]),
        "seeds": rows,
        "n_seeds": len(rows),
        "pretrain_runs": len({row["run"] for row in rows}),
        **{k: rows[0][k] for k in ("trainable_params", "total_params") if k in rows[0]},
        **summarise(rows),
    }
    return result


def run_stage(cfg: ClassificationStage) -> pd.DataFrame:
    """Every cell of the grid (a progress bar over cells); one row per cell, also written to
    ``cfg.table`` (.csv, and .json keyed by tag for ``dvc metrics show``) unless it is ""."""
    resolve(cfg.out_dir).mkdir(parents=True, exist_ok=True)  # a DVC output, even if unused
    rows, cache, grid = [], {}, cells(cfg)
    bar = progress(grid, desc="classification runs")
    for cell in bar:
        bar.set_postfix_str(cell.tag, refresh=False)
        result = run_cell(cfg, cell, cache)
        rows.append({k: v for k, v in result.items() if k not in ("recipe", "seeds")})
    frame = pd.DataFrame(rows)
    if cfg.table:
        stem = resolve(cfg.table)
        stem.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(stem.with_suffix(".csv"), index=False)
        keyed = {cell.tag: row for cell, row in zip(grid, rows, strict=True)}
        stem.with_suffix(".json").write_text(json.dumps(keyed, indent=2) + "\n")
    return frame
