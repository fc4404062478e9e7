"""The protocols of the dense tasks (issue #14): what is trained on, how it is tested.

Semantic segmentation, the protocol behind the paper's Table 6 (ACT's, from PointNet++'s S3DIS
loaders; REFERENCE "Dense tasks"):

- train on every area but the test one: each item is a random ``block_size`` × ``block_size``
  xy column around a random point of a room (rooms drawn in proportion to their points) holding
  more than ``min_block_points`` points (up to 10 tries), ``num_points`` of them drawn (with
  replacement when fewer); x and y relative to the block centre, z as stored (room floor at 0);
  xyz only. ``sample_rate`` × (training points / ``num_points``) blocks make an epoch. Loss:
  cross-entropy weighted per class by (max_freq / freq)^(1/3) of the training points;
- test on the whole held-out area: windows of ``block_size`` at ``stride`` over each room, each
  window's points shuffled and cut into chunks of ``num_points`` (the last one padded with
  random repeats), ``votes`` passes with fresh shuffles; each point takes the label most of
  its predictions gave it; OA / mAcc / mIoU over every point of the area.

Part segmentation (Point-MAE's ``segmentation/``): ``num_points`` of each shape drawn with
replacement (fixed per test shape), normalised to the unit sphere; random scale (0.8-1.25) and
shift (± 0.1) in training; 50-way cross-entropy; at test time the prediction of a point is
restricted to its category's parts; instance and class mIoU (``segmentation.part_scores``).

Both select nothing: the last epoch's model is tested (the test split never chooses).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mmpd_core import engine
from mmpd_core.config import DenseRecipe
from mmpd_core.data import dense_readers as dr
from mmpd_core.data.transforms import normalize_unit_sphere
from mmpd_core.tasks.segmentation import SegmentationHead, tap_layers

SEMANTIC_CLASSES = len(dr.S3DIS_CLASSES)
PART_CLASSES = 1 + max(max(parts) for _, parts in dr.SHAPENETPART_CATEGORIES.values())
CATEGORIES = tuple(dr.SHAPENETPART_CATEGORIES)


class Segmenter(nn.Module):
    """An encoder of the backbone contract and a ``SegmentationHead`` reading its tapped
    blocks (``tap_layers`` of its depth), or every scale of a multi-scale encoder (its
    ``Features['scales']``): ``forward(points (B, N, 3), category (B,) | None) -> logits
    (B, classes, N)``."""

    def __init__(self, encoder: nn.Module, num_classes: int, num_categories: int = 0, **head):
        super().__init__()
        self.encoder = encoder
        scale_dims = getattr(encoder.config, "encoder_dims", None)
        self.taps = () if scale_dims else tap_layers(encoder.config.depth)
        width = sum(scale_dims) if scale_dims else encoder.dim * len(self.taps)
        self.head = SegmentationHead(width, num_classes, num_categories, **head)

    def forward(self, points: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        features = self.encoder.forward_features(points, self.taps)
        return self.head(points, features, category)


# ---------------------------------------------------------------------------- semantic


def class_weights(rooms, num_classes: int = SEMANTIC_CLASSES) -> torch.Tensor:
    """(max_freq / freq)^(1/3) of the rooms' labels (PointNet++'s S3DIS weights); an absent
    class gets the largest weight of the present ones."""
    counts = sum(np.bincount(room.labels, minlength=num_classes) for room in rooms)
    freq = counts / counts.sum()
    weights = np.power(freq.max() / np.where(freq > 0, freq, np.inf), 1 / 3)
    weights[freq == 0] = weights[freq > 0].max()
    return torch.tensor(weights, dtype=torch.float32)


class BlockDataset(Dataset):
    """Random training blocks of ``rooms`` (see the module docstring); item i of epoch e is a
    function of (seed, e, i) only."""

    def __init__(self, rooms, recipe: DenseRecipe, seed: int):
        self.rooms, self.recipe, self.seed, self.epoch = rooms, recipe, seed, 0
        sizes = np.array([len(room.labels) for room in rooms], dtype=np.float64)
        self.room_p = sizes / sizes.sum()
        self.length = max(1, int(recipe.sample_rate * sizes.sum() / recipe.num_points))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        room = self.rooms[rng.choice(len(self.rooms), p=self.room_p)]
        half = self.recipe.block_size / 2
        for _ in range(10):
            centre = room.points[rng.integers(len(room.points))]
            inside = np.abs(room.points[:, :2] - centre[:2]).max(1) <= half
            picked = np.flatnonzero(inside)
            if len(picked) > self.recipe.min_block_points:
                break
        n = self.recipe.num_points
        picked = rng.choice(picked, n, replace=len(picked) < n)
        points = room.points[picked] - np.array([centre[0], centre[1], 0.0], dtype=np.float32)
        return {
            "points": torch.from_numpy(points.astype(np.float32)),
            "labels": torch.from_numpy(room.labels[picked]),
        }


def room_windows(points: np.ndarray, recipe: DenseRecipe, rng: np.random.Generator):
    """The whole-room test chunks of one pass: a list of (point indices (num_points,),
    window centre xy (2,)) covering every point at least once."""
    size, stride, n = recipe.block_size, recipe.stride, recipe.num_points
    low, high = points[:, :2].min(0), points[:, :2].max(0)
    steps = np.maximum(np.ceil((high - low - size) / stride), 0).astype(int) + 1  # (2,)
    chunks = []
    for ix in range(steps[0]):
        for iy in range(steps[1]):
            start = low + np.array([ix, iy]) * stride
            end = np.minimum(start + size, high)
            start = end - size  # the last window ends at the room's edge
            inside = np.all((points[:, :2] >= start - 1e-3) & (points[:, :2] <= end + 1e-3), 1)
            idx = np.flatnonzero(inside)
            if not len(idx):
                continue
            total = int(np.ceil(len(idx) / n)) * n
            pad = rng.choice(idx, total - len(idx), replace=total - len(idx) > len(idx))
            idx = rng.permutation(np.concatenate([idx, pad]))
            chunks += [(c, (start + end) / 2) for c in idx.reshape(-1, n)]
    return chunks


@torch.no_grad()
def predict_room(model, room, recipe: DenseRecipe, seed: int, batch_size: int = 64):
    """Per-point labels of a whole room by voting over ``recipe.votes`` window passes."""
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    votes = np.zeros((len(room.labels), SEMANTIC_CLASSES), dtype=np.int64)
    chunks = [
        c for _ in range(max(1, recipe.votes)) for c in room_windows(room.points, recipe, rng)
    ]
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        idx = np.stack([c for c, _ in batch])  # (b, n)
        shift = np.stack([np.array([*xy, 0.0]) for _, xy in batch])[:, None]  # (b, 1, 3)
        points = torch.from_numpy((room.points[idx] - shift).astype(np.float32)).to(device)
        with engine.autocast_context(device, engine.AMP_DTYPES[recipe.amp]):
            pred = model(points).argmax(1).cpu().numpy()  # (b, n)
        np.add.at(votes, (idx.ravel(), pred.ravel()), 1)
    return votes.argmax(1)


class SemanticStep:
    """Weighted cross-entropy over the block's points; xyz turned about z (ACT's augmentation)."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights

    def __call__(self, model, batch, generator):
        points = rotate_z(batch["points"], generator)
        logits = model(points).float()  # (B, C, N)
        loss = nn.functional.cross_entropy(logits, batch["labels"], self.weights.to(logits.device))
        acc = (logits.argmax(1) == batch["labels"]).float().mean()
        return loss, {"loss": loss.item(), "acc": acc.item()}


def rotate_z(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    angle = torch.rand(points.shape[0], generator=generator) * 2 * torch.pi
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rot = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], 1).view(-1, 3, 3)  # (B, 3, 3)
    return points @ rot.to(points).transpose(1, 2)


# ---------------------------------------------------------------------------- part


class PartDataset(Dataset):
    """``num_points`` of each shape (with replacement, as upstream) after the whole shape is
    normalised to the unit sphere (upstream's order: ``pc_normalize``, then the draw; done once
    here); training draws afresh every epoch, testing draws once (seeded)."""

    def __init__(self, shapes, num_points: int, seed: int, train: bool):
        self.shapes, self.n, self.seed, self.train, self.epoch = shapes, num_points, seed, train, 0
        self.points = [normalize_unit_sphere(torch.from_numpy(s.points)).float() for s in shapes]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict:
        shape = self.shapes[index]
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 1 << 20, index])
        picked = torch.from_numpy(rng.choice(len(shape.labels), self.n, replace=True))
        return {
            "points": self.points[index][picked],
            "labels": torch.from_numpy(shape.labels)[picked],
            "category": torch.tensor(CATEGORIES.index(shape.category)),
        }


class PartStep:
    """50-way cross-entropy; random anisotropic scale and shift (Point-MAE's part training)."""

    def __call__(self, model, batch, generator):
        b = batch["points"].shape[0]
        scale = torch.empty(b, 1, 3).uniform_(0.8, 1.25, generator=generator)
        shift = torch.empty(b, 1, 3).uniform_(-0.1, 0.1, generator=generator)
        points = batch["points"] * scale.to(batch["points"]) + shift.to(batch["points"])
        logits = model(points, batch["category"]).float()  # (B, 50, N)
        loss = nn.functional.cross_entropy(logits, batch["labels"])
        acc = (logits.argmax(1) == batch["labels"]).float().mean()
        return loss, {"loss": loss.item(), "acc": acc.item()}


@torch.no_grad()
def predict_parts(model, dataset: PartDataset, amp: str, batch_size: int = 64):
    """Per-shape predictions restricted to the shape's category parts, with the targets."""
    model.eval()
    device = next(model.parameters()).device
    allowed = torch.zeros(len(CATEGORIES), PART_CLASSES, dtype=torch.bool)
    for c, (_, parts) in enumerate(dr.SHAPENETPART_CATEGORIES.values()):
        allowed[c, list(parts)] = True
    preds, targets, categories = [], [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        points, category = batch["points"].to(device), batch["category"].to(device)
        with engine.autocast_context(device, engine.AMP_DTYPES[amp]):
            logits = model(points, category).float()  # (B, 50, N)
        mask = allowed.to(device)[category].unsqueeze(-1)  # (B, 50, 1)
        pred = logits.masked_fill(~mask, float("-inf")).argmax(1).cpu().numpy()
        preds += list(pred)
        targets += list(batch["labels"].numpy())
        categories += [CATEGORIES[c] for c in batch["category"].tolist()]
    return preds, targets, categories


def refresh_batchnorm(model: nn.Module, batches) -> None:
    """Running BatchNorm statistics recomputed over ``batches`` of (points, category | None)
    with the final weights (a cumulative average, as ``torch.optim.swa_utils.update_bn``)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for points, category in batches:
            model(points, category)
    for m, momentum in momenta.items():
        m.momentum = momentum
