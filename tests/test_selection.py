"""Recipe selection on held-out training shapes: the split, the choice, and params.yaml
agreeing with what a `make select` run recorded."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmpd_core import config, selection


def test_holdout_takes_a_seeded_fraction_of_every_class():
    labels = np.repeat(np.arange(4), [10, 5, 3, 1])
    train, val = selection.holdout(labels, 0.2, seed=0)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 1, 1, 1]  # at least one each
    again = selection.holdout(labels, 0.2, seed=0)
    other = selection.holdout(labels, 0.2, seed=1)
    assert np.array_equal(again[1], val) and not np.array_equal(other[1], val)


def test_choose_takes_the_best_mean_over_seeds_and_datasets():
    rows = [
        ("stage2", "lr=0.001", {"lr": 0.001}, 0, "modelnet40", 70.0),
        ("stage2", "lr=0.001", {"lr": 0.001}, 1, "modelnet40", 60.0),
        ("stage2", "lr=0.002", {"lr": 0.002}, 0, "modelnet40", 66.0),
        ("stage2", "lr=0.002", {"lr": 0.002}, 1, "modelnet40", 66.0),
        ("other", "depth=1", {"decoder_depth": 1}, 0, "modelnet40", 1.0),
    ]
    scores = pd.DataFrame(
        [dict(zip(("run", "candidate", "overrides", "seed", "dataset", "val_acc"),
                  (r[0], r[1], json.dumps(r[2]), *r[3:]), strict=True)) for r in rows]
    )  # fmt: skip
    chosen = selection.choose(scores)
    assert chosen["stage2"] == {
        "candidate": "lr=0.002",
        "overrides": {"lr": 0.002},
        "val_acc": 66.0,
    }
    assert chosen["other"]["candidate"] == "depth=1"
    table = selection.summary(scores, chosen).set_index("candidate")
    assert table.loc["lr=0.002", "chosen"] == "✓" and table.loc["lr=0.001", "chosen"] == ""
    assert table.loc["lr=0.001", "val modelnet40"] == "65.0 ± 7.1"


def test_candidate_names_spell_their_overrides():
    assert selection.name({"lr": 0.002, "decoder_depth": 1}) == "lr=0.002,decoder_depth=1"
    assert selection.name({}) == "as params.yaml"


@pytest.mark.parametrize("profile", ["embedded", "cpu"])
def test_params_use_the_recipes_chosen_on_validation(profile):
    """What `make select` recorded for a profile is what params.yaml runs with: nobody can
    tune the committed numbers on the test split without this failing."""
    chosen = selection.recorded(profile)
    if chosen is None:
        pytest.skip(f"no selection recorded for the {profile} profile")
    for run, choice in chosen.items():
        if run.startswith("transfer of "):
            cfg = config.load("classification", smoke=False, profile=profile)
            for family, recipe in cfg.recipes.items():
                for key, value in choice["overrides"].items():
                    assert getattr(recipe, key) == value, (profile, family, key)
            continue
        stage, _, variant = run.partition(":")
        cfg = config.load(config.RUNS[stage], variant=variant, smoke=False, profile=profile)
        for key, value in choice["overrides"].items():
            assert getattr(cfg, key) == value, (profile, run, key)
