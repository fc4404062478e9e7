"""How hard the embedded benchmark is: a randomly initialised encoder under the linear probe.

A frozen random ``point_mae_tiny`` (512 points, 32 groups: ``params.yaml: transfer``) turns
every cloud into its global feature (``features.extract_features``); the linear head of the
``linear`` protocol (``classification.train_head``) is trained on them. Far above chance means
the data is easy; near 100 % means no pretraining can show up in the tables. Writes the
ModelNet40 stand-in and the three ScanObjectNN subsets at the ``data_prep`` sizes (and times
the pretraining shapes too: the cost of the data-prep stage's generation) into a temporary
folder with ``prep``, reads them back as the pipeline does, and prints per dataset and seed
the probe's test accuracy next to a non-learned baseline (1-nearest neighbour on voxel
occupancy). About 5 minutes on 2 CPU cores.

    python benchmarks/bench_benchmark_difficulty.py [--seeds 0 1] [--skip-pretrain]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmpd_core import config
from mmpd_core.data import datasets, prep, readers, synthetic
from mmpd_core.tasks import classification, features
from mmpd_core.tasks.metrics import accuracy


def generate(cfg, root: Path, pretrain: bool) -> dict[str, float]:
    """Write the embedded datasets under ``root``; seconds per role."""
    seconds = {}
    roles = [("modelnet", prep.write_modelnet), ("scanobjectnn", prep.write_scanobjectnn)]
    if pretrain:
        roles.insert(0, ("pretrain", prep.write_pretrain))
    for role, write in roles:
        tick = time.perf_counter()
        write(cfg, root)
        seconds[role] = time.perf_counter() - tick
    return seconds


def load_splits(root: Path, dataset: str, num_points: int, classes: int):
    """(train, test) datasets read back through the pipeline's readers."""
    if dataset == "modelnet40":
        return [datasets.modelnet40_split(root / prep.MODELNET, s, num_points) for s in SPLITS]
    subset = dataset.partition("/")[2]
    return [
        datasets.scanobjectnn_dataset(root / prep.SCAN, subset, s, num_points, num_classes=classes)
        for s in SPLITS
    ]


SPLITS = ("train", "test")


def occupancy(dataset, bins: int = 6) -> np.ndarray:
    """Voxel occupancy histograms (M, bins**3) of the clouds as the encoder sees them."""
    clouds = torch.stack([dataset.cloud(i) for i in range(len(dataset))]).numpy()  # (M, N, 3)
    cells = np.clip(((clouds + 1) / 2 * bins).astype(int), 0, bins - 1)  # (M, N, 3)
    flat = (cells[..., 0] * bins + cells[..., 1]) * bins + cells[..., 2]  # (M, N)
    hist = np.stack([np.bincount(f, minlength=bins**3) for f in flat]).astype(np.float64)
    return hist / clouds.shape[1]


def nearest_neighbour(train, test) -> float:
    """Test accuracy (%) of 1-NN on voxel occupancy: no learning at all."""
    a, b = occupancy(train), occupancy(test)
    dist = (b**2).sum(1)[:, None] - 2 * b @ a.T + (a**2).sum(1)[None]  # (M_test, M_train)
    predicted = np.asarray(train.labels)[dist.argmin(1)]
    return 100 * float((predicted == np.asarray(test.labels)).mean())


def probe(train, test, classes: int, recipe, model: str, seed: int) -> float:
    """Test accuracy (%) of the linear protocol on a random encoder seeded by ``seed``."""
    encoder = features.load_pretrained("scratch", model, grouping=recipe.grouping, seed=seed)
    feats, labels = features.extract_features(encoder, train, amp=recipe.amp)
    test_feats, test_labels = features.extract_features(encoder, test, amp=recipe.amp)
    head = classification.train_head("linear", feats, labels, classes, encoder, recipe, seed)
    with torch.no_grad():
        return 100 * accuracy(head(test_feats), test_labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--skip-pretrain", action="store_true", help="don't time pretraining")
    args = parser.parse_args()

    prep_cfg = config.load("data_prep", smoke=False)
    cls_cfg = config.load("classification", smoke=False)
    print(
        f"data_prep sizes: modelnet {prep_cfg.modelnet_train_per_class}/"
        f"{prep_cfg.modelnet_test_per_class}, scan {prep_cfg.scan_train_per_class}/"
        f"{prep_cfg.scan_test_per_class}, pretrain {prep_cfg.pretrain_train_per_class}/"
        f"{prep_cfg.pretrain_test_per_class} per class; seed {prep_cfg.seed}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seconds = generate(prep_cfg, root, pretrain=not args.skip_pretrain)
        print("generation: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
        print(f"             total {sum(seconds.values()):.1f} s")
        scan_classes = len((root / prep.SCAN / prep.SCAN_NAMES).read_text().split())
        mn_names = root / prep.MODELNET / readers.MODELNET_SHAPE_NAMES
        mn_classes = len(mn_names.read_text().split())
        rows = [("modelnet40", mn_classes)]
        rows += [(f"scanobjectnn/{s}", scan_classes) for s in synthetic.SCAN_SUBSETS]
        probes = "".join(f"{'probe s' + str(s):>10}" for s in args.seeds)
        print(f"\n{'dataset':<24}{'classes':>8}{'chance':>8}{'1-NN vox':>10}{probes}{'mean':>8}")
        for dataset, classes in rows:
            recipe = cls_cfg.recipes[datasets.dataset_family(dataset)]
            train, test = load_splits(root, dataset, recipe.num_points, classes)
            accs = [probe(train, test, classes, recipe, cls_cfg.model, s) for s in args.seeds]
            print(
                f"{dataset:<24}{classes:>8}{100 / classes:>8.1f}"
                f"{nearest_neighbour(train, test):>10.1f}"
                + "".join(f"{a:>10.1f}" for a in accs)
                + f"{np.mean(accs):>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
