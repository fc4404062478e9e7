"""The claims table: paired differences, the t interval, the verdict rule, and the rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mmpd_core import claims


def seeds(accs, runs=None, name="x"):
    runs = runs or [f"{name}@{i}" for i in range(len(accs))]
    return [
        {"seed": i, "run": r, "acc": a} for i, (a, r) in enumerate(zip(accs, runs, strict=True))
    ]


def test_interval_is_the_student_t_half_width():
    mean, half = claims.interval(np.array([1.0, 3.0]))
    assert mean == 2.0
    # t(0.975, 1) = 12.7062; sd = sqrt(2); sqrt(n) = sqrt(2)
    assert half == pytest.approx(12.7062, abs=1e-3)
    mean, half = claims.interval(np.array([2.0, 4.0, 6.0]))
    assert half == pytest.approx(4.3027 * 2.0 / math.sqrt(3), abs=1e-3)
    assert math.isnan(claims.interval(np.array([5.0]))[1])


@pytest.mark.parametrize(
    ("mean", "half", "runs", "expected"),
    [
        (2.0, 1.0, {"a": 2, "b": 2}, claims.REPRODUCED),
        (-2.0, 1.0, {"a": 2, "b": 2}, claims.REVERSED),
        (0.5, 1.0, {"a": 3, "b": 3}, claims.UNRESOLVED),
        (9.0, 1.0, {"a": 1, "b": 2}, claims.UNRESOLVED),  # one pretraining run of a
        (9.0, math.nan, {"a": 2, "b": 2}, claims.UNRESOLVED),  # n = 1
    ],
)
def test_verdict_rule(mean, half, runs, expected):
    assert claims.verdict(mean, half, runs, {"a": True, "b": True}) == expected


def test_scratch_needs_no_pretraining_runs():
    assert claims.verdict(3.0, 1.0, {"a": 2, "b": 1}, {"a": True, "b": False}) == claims.REPRODUCED


def test_differences_are_paired_per_seed_and_averaged_over_columns():
    source = {
        ("stage2", "MN40"): seeds([90, 80], name="stage2"),
        ("stage1", "MN40"): seeds([85, 81], name="stage1"),
        ("stage2", "OBJ_BG"): seeds([70, 60], name="stage2"),
        ("stage1", "OBJ_BG"): seeds([66, 60], name="stage1"),
    }
    claim = claims.Claim("Table 4", "c", "stage2", "stage1", "ablations")
    diffs, runs = claims.paired_differences(source, claim, ("MN40", "OBJ_BG"))
    np.testing.assert_allclose(diffs, [(5 + 4) / 2, (-1 + 0) / 2])
    assert runs == {"a": 2, "b": 2}
    missing, _ = claims.paired_differences(source, claim, ("PB_T50_RS",))
    assert missing.size == 0


def test_one_encoder_under_two_protocols_pairs_its_own_seeds():
    gst = {("stage2", "OBJ_BG"): seeds([72, 61], name="stage2")}
    full = {("stage2", "OBJ_BG"): seeds([70, 60], name="stage2")}
    claim = claims.Claim("Table 3", "c", "stage2", "stage2", "classification", "pointgst",
                         ("OBJ_BG",), protocol_b="full")  # fmt: skip
    diffs, runs = claims.paired_differences(gst, claim, ("OBJ_BG",), full)
    np.testing.assert_allclose(diffs, [2, 1])
    assert runs == {"a": 2, "b": 2}
    for column in ("OBJ_ONLY", "PB_T50_RS"):
        gst[("stage2", column)], full[("stage2", column)] = (
            gst[("stage2", "OBJ_BG")],
            seeds([72, 61], name="stage2"),
        )
    table = claims.claims_table({"classification:pointgst": gst, "classification:full": full}, "x")
    row = table[table["claim"] == "PointGST on Ours adds to its full fine-tuning"].iloc[0]
    assert row["measured on"] == "pointgst vs full: OBJ_BG, OBJ_ONLY, PB_T50_RS"
    assert row["n"] == 2 and row["this run Δ"] == "+0.5 ± 2.1"  # seeds: 2/3, 1/3


def grid_files(folder, protocol, cells):
    folder.mkdir(parents=True, exist_ok=True)
    for (checkpoint, dataset, subset), rows in cells.items():
        tag = f"{dataset}-{subset}__{checkpoint.replace(':', '_')}__{protocol}"
        record = {"dataset": dataset, "subset": subset, "checkpoint": checkpoint,
                  "protocol": protocol, "seeds": rows}  # fmt: skip
        (folder / f"{tag}.json").write_text(json.dumps(record))


def test_the_table_reads_the_stage_files_and_gives_each_claim_its_verdict(tmp_path):
    results = tmp_path / "classification"
    full = {}
    scans = [(s, "scanobjectnn") for s in ("obj_bg", "obj_only", "pb_t50_rs")]
    for subset, dataset in [("", "modelnet40"), *scans]:
        full[("stage2", dataset, subset)] = seeds([80.0, 81.0, 80.5], name="stage2")
        full[("stage2:point_mae", dataset, subset)] = seeds([70.0, 70.4, 70.1], name="pm")
        full[("scratch", dataset, subset)] = seeds([85.0, 86.0, 85.5], ["scratch"] * 3)
        full[("stage2:point_mae_long", dataset, subset)] = seeds([80.0, 81.0, 80.5], ["l"] * 3)
    grid_files(results, "full", full)
    zeroshot = tmp_path / "zeroshot.json"
    zeroshot.write_text(json.dumps([
        {"checkpoint": "stage1", "run": f"stage1@{i}", "top1": t, "chance_top1": 5.0}
        for i, t in enumerate([60.0, 62.0])
    ]))  # fmt: skip
    sources = claims.read_sources(
        tmp_path / "classification.csv", tmp_path / "ablations.csv", "linear",
        tmp_path / "none.json", zeroshot,
    )  # fmt: skip
    table = claims.claims_table(sources, "embedded").set_index("claim")
    assert table.loc["Ours beats the Point-MAE baseline (full)", "verdict"] == claims.REPRODUCED
    assert table.loc["Ours beats the Point-MAE baseline (full)", "this run Δ"].startswith("+10.3")
    assert table.loc["pretraining beats training from scratch", "verdict"] == claims.REVERSED
    # identical numbers, but the long baseline has one pretraining run: not resolved
    gain = table.loc[
        "the gain is not just compute: Ours beats Point-MAE given both stages' pretraining steps"
    ]
    assert gain["verdict"] == claims.UNRESOLVED and gain["pretraining runs (a / b)"] == "3 / 1"
    assert table.loc["zero-shot works with captions naming the category", "verdict"] == (
        claims.REPRODUCED
    )
    assert table.loc["Stage-2 improves on Stage-1", "verdict"] == "not run"
    assert set(table["verdict"]) <= {*claims.VERDICTS, "not run"}


def test_segmentation_claims_read_every_encoder_file_including_variants(tmp_path):
    """The segmentation stage writes ``<task>/<encoder>.json``, a variant's one folder deeper
    (``semantic/stage2_variants/point_mae.json``); each claim pairs seeds on its score."""
    root = tmp_path / "segmentation"
    scores = {"stage2": ([30.0, 31.0], "stage2"), "stage2:point_mae": ([25.0, 27.0], "pm"),
              "scratch": ([20.0, 21.0], "scratch")}  # fmt: skip
    for checkpoint, (mious, name) in scores.items():
        path = root / "semantic" / f"{checkpoint.replace('stage2:', 'stage2_variants/')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"seed": i, "run": f"{name}@{i}", "miou": m, "macc": m + 10}
                for i, m in enumerate(mious)]  # fmt: skip
        path.write_text(json.dumps({"task": "semantic", "checkpoint": checkpoint, "seeds": rows}))
    sources = claims.read_sources(
        tmp_path / "c.csv", tmp_path / "a.csv", "linear", tmp_path / "f.json",
        tmp_path / "z.json", root,
    )  # fmt: skip
    assert sources["segmentation"][("stage2:point_mae", "S3DIS mIoU")][1]["acc"] == 27.0
    table = claims.claims_table(sources, "embedded").set_index("claim")
    miou = table.loc["Ours beats the Point-MAE baseline on S3DIS Area 5 (mIoU)"]
    assert miou["this run Δ"].startswith("+4.5") and miou["n"] == 2  # (5 + 4) / 2
    assert miou["pretraining runs (a / b)"] == "2 / 2"
    parts = table.loc["Ours beats the Point-MAE baseline at part segmentation (instance mIoU)"]
    assert parts["verdict"] == "not run"  # no part results written


def test_detection_claims_pair_seeds_on_ap25(tmp_path):
    """The detection stage writes ``<encoder>.json`` (a variant's one folder deeper); its
    claims pair the seeds' AP25."""
    root = tmp_path / "detection"
    scores = {"stage2": [12.0, 16.0], "stage2:point_mae": [10.0, 11.0], "scratch": [9.0, 9.0]}
    for checkpoint, aps in scores.items():
        path = root / f"{checkpoint.replace('stage2:', 'stage2_variants/')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"seed": i, "run": f"{checkpoint}@{i}", "ap25": ap, "ap50": ap / 2}
                for i, ap in enumerate(aps)]  # fmt: skip
        path.write_text(json.dumps({"task": "detection", "checkpoint": checkpoint, "seeds": rows}))
    sources = claims.read_sources(
        tmp_path / "c.csv", tmp_path / "a.csv", "linear", tmp_path / "f.json",
        tmp_path / "z.json", tmp_path / "no-segmentation", root,
    )  # fmt: skip
    assert sources["detection"][("stage2", "ScanNet AP50")][1]["acc"] == 8.0
    table = claims.claims_table(sources, "embedded").set_index("claim")
    ours = table.loc["Ours beats the Point-MAE baseline at ScanNet detection (AP25)"]
    assert ours["this run Δ"].startswith("+3.5") and ours["n"] == 2  # (2 + 5) / 2
    assert ours["measured on"] == "detection: ScanNet AP25"
    scratch = table.loc["pretraining beats training from scratch at ScanNet detection (AP25)"]
    assert scratch["this run Δ"].startswith("+5.0")
    assert scratch["pretraining runs (a / b)"] == "2 / -"
