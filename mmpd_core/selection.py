"""Recipes chosen on a validation split carved from the training shapes, never on test.

``python -m mmpd_core.cli select`` (``make select``) trains every candidate of params.yaml's
``selection`` section and scores it on ``holdout``: a seeded ``val_fraction`` of each class's
*training* shapes (the rest trains the probe or the fine-tuning). Two kinds of candidates:

- ``pretraining``: overrides of a pretraining run's config (Stage-2 epochs, lr, decoder depth;
  the Point-MAE baseline's epochs), each trained ``seeds`` times (independent runs, seed k
  distilling Stage-1 run k) and scored by a linear probe on frozen features;
- ``transfer``: overrides of the fine-tuning recipe, each a full fine-tuning of ``encoder``.

The scores (one row per candidate, run and dataset) and the choice (best mean validation
accuracy) go to ``<out_dir>/<profile>/``; ``tests/test_selection.py`` checks that params.yaml
uses the recorded choices.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmpd_core import config, engine, stage2
from mmpd_core.checkpoint import git_sha
from mmpd_core.config import SelectionStage, resolve, seeded
from mmpd_core.data.datasets import dataset_family
from mmpd_core.tables import mean_std, write_table
from mmpd_core.tasks.classification import accuracy, fine_tune, predict, train_head
from mmpd_core.tasks.features import extract_features, load_pretrained, splits
from mmpd_core.tracking import machine, progress


def holdout(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions: per class, a seeded ``fraction`` of its shapes (at least one)
    is held out for validation; both sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 7919])
    val = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        val.extend(members[: max(1, round(fraction * len(members)))])
    val = np.sort(np.array(val, dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), val), val


def name(overrides: dict) -> str:
    """A candidate's name: its overrides (``lr=0.002,decoder_depth=1``)."""
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "as params.yaml"


def probe_accuracy(encoder, dataset, recipe, fraction: float, seed: int) -> float:
    """Validation accuracy (percent) of a linear probe on frozen features of the training
    split (``holdout``); the test split is never read."""
    encoder.to(engine.default_device())
    feats, labels = extract_features(encoder, dataset, amp=recipe.amp)
    train, val = holdout(labels.cpu().numpy(), fraction, seed)
    train, val = torch.from_numpy(train), torch.from_numpy(val)
    classes = int(labels.max()) + 1
    head = train_head("linear", feats[train], labels[train], classes, encoder, recipe, seed)
    with torch.no_grad():
        return 100 * accuracy(head(feats[val]), labels[val])


def pretraining_candidates(cfg: SelectionStage, profile: str, smoke: bool) -> pd.DataFrame:
    """Train every pretraining candidate (a Stage-2 run's overrides) ``cfg.seeds`` times; one
    row per (run, seed, dataset)."""
    rows, data_cache = [], {}
    jobs = [(run, name(o), o) for run, candidates in cfg.pretraining.items() for o in candidates]
    for run, label, overrides in progress(jobs, desc="pretraining candidates"):
        stage, _, variant = run.partition(":")
        for k in range(cfg.seeds):
            where = f"{cfg.runs_dir}/{run.replace(':', '-')}/{label}/seed{k}"
            base = config.load(config.RUNS[stage], variant=variant, profile=profile, smoke=smoke)
            fields = {"seed": base.seed + k, "out_dir": where, "live_dir": f"{where}/live"}
            if getattr(base, "teacher", ""):
                fields["teacher"] = seeded(base.teacher, k)
            run_cfg = config.load(
                config.RUNS[stage], variant=variant, profile=profile, smoke=smoke,
                **overrides, **fields,
            )  # fmt: skip
            stage2.train(run_cfg)
            for dataset in cfg.datasets:
                recipe = cfg.recipes[dataset_family(dataset)]
                train_set = splits(cfg.data_manifest, dataset, recipe.num_points, data_cache)[0]
                encoder = load_pretrained(where, cfg.model, grouping=recipe.grouping)
                acc = probe_accuracy(encoder, train_set, recipe, cfg.val_fraction, run_cfg.seed)
                rows.append({"run": run, "candidate": label, "overrides": json.dumps(overrides),
                             "seed": run_cfg.seed, "dataset": dataset, "val_acc": acc})  # fmt: skip
    return pd.DataFrame(rows)


def transfer_candidates(cfg: SelectionStage) -> pd.DataFrame:
    """Full fine-tuning of ``cfg.encoder`` (its first ``seeds`` runs) under every recipe
    candidate; one row per (candidate, seed, dataset), scored on the held-out shapes."""
    rows, data_cache = [], {}
    refs = config.seed_refs(cfg.encoder)
    jobs = [(name(o), o, d) for o in cfg.transfer for d in cfg.datasets]
    for label, overrides, dataset in progress(jobs, desc="transfer candidates"):
        family = dataset_family(dataset)
        recipe = dataclasses.replace(cfg.recipes[family], **overrides)
        train_set, _, classes = splits(cfg.data_manifest, dataset, recipe.num_points, data_cache)
        labels = np.asarray(train_set.labels)  # the datasets keep them: no cloud is read
        for k in range(cfg.seeds):
            ref, seed = refs[k % len(refs)], cfg.seed + k
            fit, val = holdout(labels, cfg.val_fraction, seed)
            model = load_pretrained(
                ref, cfg.model, seed=seed, grouping=recipe.grouping, num_classes=classes,
                drop_path_rate=recipe.drop_path_rate,
            )  # fmt: skip
            out = (
                resolve(cfg.runs_dir) / "transfer" / label / dataset.replace("/", "-") / f"seed{k}"
            )
            fit_set = torch.utils.data.Subset(train_set, fit.tolist())
            fine_tune(model, fit_set, recipe, seed=seed, out_dir=out)
            val_set = torch.utils.data.Subset(train_set, val.tolist())
            plain, _, truth = predict(model, val_set, recipe, votes=0, seed=seed)
            rows.append({"run": f"transfer of {cfg.encoder}", "candidate": label,
                         "overrides": json.dumps(overrides), "seed": seed, "dataset": dataset,
                         "val_acc": 100 * accuracy(plain, truth)})  # fmt: skip
    return pd.DataFrame(rows)


def choose(scores: pd.DataFrame) -> dict[str, dict]:
    """{run: the candidate with the best mean validation accuracy (over seeds and datasets),
    its overrides and that mean}."""
    chosen = {}
    for run, group in scores.groupby("run", sort=False):
        means = group.groupby("candidate", sort=False)["val_acc"].mean()
        best = means.idxmax()
        overrides = json.loads(group.loc[group["candidate"] == best, "overrides"].iloc[0])
        chosen[run] = {"candidate": best, "overrides": overrides, "val_acc": float(means[best])}
    return chosen


def summary(scores: pd.DataFrame, chosen: dict) -> pd.DataFrame:
    """One row per (run, candidate): validation accuracy per dataset (mean ± std over seeds),
    the overall mean, and which was chosen."""
    rows = []
    for (run, label), group in scores.groupby(["run", "candidate"], sort=False):
        row = {"run": run, "candidate": label, "overrides": group["overrides"].iloc[0]}
        for dataset, part in group.groupby("dataset", sort=False):
            row[f"val {dataset}"] = mean_std(part["val_acc"])
        row["val mean"] = round(float(group["val_acc"].mean()), 2)
        row["chosen"] = "✓" if chosen[run]["candidate"] == label else ""
        rows.append(row)
    return pd.DataFrame(rows)


def baselines(cfg: SelectionStage, profile: str, smoke: bool) -> dict[str, dict]:
    """What each candidate's overrides replace: {run: {key: params.yaml's value}}."""
    out = {}
    for run, candidates in cfg.pretraining.items():
        stage, _, variant = run.partition(":")
        base = config.load(config.RUNS[stage], variant=variant, profile=profile, smoke=smoke)
        out[run] = {k: getattr(base, k) for c in candidates for k in c}
    recipe = next(iter(cfg.recipes.values()))
    out[f"transfer of {cfg.encoder}"] = {k: getattr(recipe, k) for c in cfg.transfer for k in c}
    return out


def run_stage(cfg: SelectionStage, profile: str, smoke: bool = False) -> dict:
    """Score every candidate, write ``scores.csv``, ``selection.md`` and ``selection.json``
    under ``<out_dir>/<profile>/``; returns the choices."""
    out = resolve(cfg.out_dir) / profile
    out.mkdir(parents=True, exist_ok=True)
    bases = baselines(cfg, profile, smoke)  # before anything trains: params.yaml as it is
    frames = [pretraining_candidates(cfg, profile, smoke)]
    if cfg.transfer:
        frames.append(transfer_candidates(cfg))
    scores = pd.concat(frames, ignore_index=True)
    scores.to_csv(out / "scores.csv", index=False)
    chosen = choose(scores)
    caption = (
        f"**Recipes chosen on validation** ({profile} profile; git {git_sha()}; {machine()}). "
        f"Validation: {cfg.val_fraction:.0%} of each class's training shapes, held out "
        f"(the test split is never read); pretraining candidates scored by a linear probe on "
        f"frozen features, {cfg.seeds} independent runs each; recipe candidates by full "
        f"fine-tuning of `{cfg.encoder}`. Each candidate changes only its overrides; the rest "
        f"as params.yaml had it ({'; '.join(f'{r}: {b}' for r, b in bases.items())}). "
        "Accuracy in %: mean ± std over runs."
    )
    write_table(summary(scores, chosen), out / "selection", caption=caption, floatfmt=".2f")
    record = {"profile": profile, "git": git_sha(), "chosen": chosen, "base": bases}
    (out / "selection.json").write_text(json.dumps(record, indent=1) + "\n")
    return chosen


def recorded(profile: str, out_dir: str | Path = "reports/selection") -> dict | None:
    """The choices a ``select`` run recorded for ``profile`` (None when it was not run)."""
    path = resolve(out_dir) / profile / "selection.json"
    return json.loads(path.read_text())["chosen"] if path.is_file() else None
