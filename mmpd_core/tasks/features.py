"""What the downstream tasks share: pretrained encoders by reference, and frozen features.

A checkpoint reference is ``scratch`` (a fresh encoder of the ``model`` architecture), a run
name (``stage2``, ``stage2:no_shuffle``: ``config.run_dir``), a run directory or
``encoder.safetensors`` (any registered backbone, rebuilt from the file), or a released
upstream ``.pth`` (explicit key map, ``weights_only``). A recipe's ``grouping`` gives each
architecture its grouping at the recipe's cloud size.
"""

from __future__ import annotations

import hashlib
import json

import torch

from mmpd_core import engine
from mmpd_core.config import Recipe, resolve, resolve_run, run_dir
from mmpd_core.data.datasets import classification_splits
from mmpd_core.models import Backbone, arch_of, checkpoint_arch, create_model, load_encoder
from mmpd_core.models.upstream import load_upstream_checkpoint

UPSTREAM_SUFFIXES = (".pth", ".pt", ".ckpt")


def load_pretrained(
    checkpoint: str, model: str, *, seed: int = 0, grouping: dict | None = None, **overrides
) -> Backbone:
    """The encoder of ``checkpoint`` (see the module docstring). ``overrides`` and then
    ``grouping[arch]`` (an architecture's own settings in a recipe, e.g. PointMamba's drop path
    on ScanObjectNN) replace config fields that hold no weights (``num_classes`` adds a fresh
    head). ``seed`` fixes what the checkpoint does not hold (all of a scratch encoder, a new
    head); the global RNG is left as it was."""
    path = None if checkpoint == "scratch" else resolve_run(checkpoint)
    if path is not None and not path.exists():
        raise FileNotFoundError(f"{path}: no pretrained encoder (run its pretraining stage)")
    upstream = path is not None and path.suffix in UPSTREAM_SUFFIXES
    arch = arch_of(model) if path is None or upstream else checkpoint_arch(path)
    overrides = {**overrides, **(grouping or {}).get(arch, {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if path is not None and not upstream:
            return load_encoder(path, **overrides)
        encoder = create_model(model, **overrides)
        if upstream:
            load_upstream_checkpoint(encoder, path)
        return encoder


def checkpoint_name(checkpoint: str) -> str:
    """A short name for tables and file names: ``stage2:point_mae`` ->
    ``stage2_variants/point_mae``, ``runs/stage1/encoder.safetensors`` -> ``stage1``."""
    return run_dir(checkpoint).removeprefix("runs/").removesuffix("/encoder.safetensors").strip("/")


@torch.no_grad()
def extract_features(
    encoder: Backbone, dataset, *, batch_size: int = 64, amp: str = "bf16"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global features (M, global_dim) and labels (M,) of a frozen encoder (eval mode)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    feats, labels = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        points = batch["points"].to(device)
        with engine.autocast_context(device, engine.AMP_DTYPES[amp]):
            feats.append(encoder.forward_features(points)["global"].float())
        labels.append(batch["label"].to(device))
    return torch.cat(feats), torch.cat(labels)


class FeatureMemo:
    """Global features of one frozen encoder, computed once per distinct cloud.

    Few-shot episodes draw their support and query clouds from the same ModelNet40 shapes
    (80 episodes, ~5,000 clouds per encoder, ~1,000 distinct ones in the embedded default):
    ``memo(dataset)`` returns ``extract_features(encoder, dataset)`` but runs the encoder only
    on clouds it has not seen (keyed by their bytes); labels always come from ``dataset``.
    """

    def __init__(self, encoder: Backbone, amp: str = "bf16"):
        self.encoder, self.amp = encoder, amp
        self.rows: dict[bytes, torch.Tensor] = {}

    def __call__(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        items = [dataset[i] for i in range(len(dataset))]
        keys = [hashlib.blake2b(item["points"].numpy().tobytes()).digest() for item in items]
        new = {key: item for key, item in zip(keys, items, strict=True) if key not in self.rows}
        if new:
            feats, _ = extract_features(self.encoder, list(new.values()), amp=self.amp)
            self.rows.update(zip(new, feats, strict=True))
        device = next(self.encoder.parameters()).device
        labels = torch.tensor([int(item["label"]) for item in items], device=device)
        return torch.stack([self.rows[key] for key in keys]), labels


def splits(data_manifest: str, dataset: str, num_points: int | None, cache: dict):
    """(train, test, classes) of ``dataset`` with clouds of ``num_points`` (None: as stored),
    read once per ``cache`` (a grid reads each dataset once, not once per run)."""
    key = ("splits", data_manifest, dataset, num_points)
    if key not in cache:
        manifest = json.loads(resolve(data_manifest).read_text())
        cache[key] = classification_splits(manifest, dataset, num_points)
    return cache[key]


def frozen_features(checkpoint: str, model: str, dataset: str, recipe: Recipe, data, cache: dict):
    """Train and test features of the frozen encoder, computed once per (checkpoint, dataset)
    and kept in ``cache`` (an encoder in eval mode is deterministic), computed on the GPU when
    there is one; the encoder is then moved to the meta device: its architecture still builds
    heads (``make_head``), its weights are freed."""
    key = ("features", checkpoint, dataset, recipe.num_points, json.dumps(recipe.grouping))
    if key not in cache:
        encoder = load_pretrained(checkpoint, model, grouping=recipe.grouping).eval()
        encoder.to(engine.default_device())
        train = extract_features(encoder, data[0], amp=recipe.amp)
        test = extract_features(encoder, data[1], amp=recipe.amp)
        cache[key] = (train, test, encoder.to("meta"))
    return cache[key]
