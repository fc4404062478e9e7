"""Downstream evaluation: protocols, voting, few-shot episodes, grids, tables, t-SNE."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmpd_core import config, report, viz
from mmpd_core.data import readers
from mmpd_core.data.datasets import CloudDataset, dataset_family
from mmpd_core.data.shapes import CATEGORIES, sample_shape
from mmpd_core.models import save_encoder
from mmpd_core.models.point_mae import PointMAE, PointMAEConfig
from mmpd_core.tasks import classification, features, fewshot, metrics

SMALL = PointMAEConfig(trans_dim=32, depth=1, num_heads=2, num_groups=16, group_size=16)
SMALL_HEAD = lambda: PointMAE(dataclasses.replace(SMALL, num_classes=3)).head  # noqa: E731
RECIPE = config.Recipe(
    num_points=256, fps_points=0, vote=True, augment="scale_translate", epochs=3, batch_size=8,
    lr=1e-3,
    weight_decay=0.05, warmup_epochs=0, min_lr=1e-6, grad_clip=10.0, drop_path_rate=0.0,
    amp="none", head_epochs=150, head_lr=1e-2, grouping={"point_mae": {"num_groups": 16}},
)  # fmt: skip


def clouds(per_class: int, classes: int = 3, offset: int = 0, channels: int = 3):
    points = [
        sample_shape(CATEGORIES[c], offset + i, 0, 256).points
        for c in range(classes)
        for i in range(per_class)
    ]
    points = np.stack(points).astype(np.float32)
    if channels == 6:
        points = np.concatenate([points, np.zeros_like(points)], axis=-1)
    return points, np.repeat(np.arange(classes), per_class)


def test_frozen_encoder_features_are_deterministic_and_a_head_separates_classes():
    encoder = PointMAE(SMALL)
    data = CloudDataset(*clouds(6), 256)
    feats, labels = features.extract_features(encoder, data, amp="none")
    again, _ = features.extract_features(encoder, data, amp="none")
    assert feats.shape == (18, 64) and torch.equal(feats, again)
    assert not any(p.grad is not None for p in encoder.parameters())
    head = classification.train_head("mlp3", feats, labels, 3, encoder, RECIPE, seed=0)
    torch.rand(5)  # draws in between (a DataLoader, another run) change nothing
    again = classification.train_head("mlp3", feats, labels, 3, encoder, RECIPE, seed=0)
    pairs = zip(head.parameters(), again.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    head = classification.train_head("linear", feats, labels, 3, encoder, RECIPE, seed=0)
    assert metrics.accuracy(head(feats), labels) == 1.0
    mlp3 = classification.make_head("mlp3", encoder.to("meta"), 3)  # needs no weights
    assert [type(m).__name__ for m in mlp3][:2] == ["Linear", "BatchNorm1d"]
    assert not any(p.requires_grad for p in head[0].parameters())  # the probe's BN has none


def test_feature_memo_runs_the_encoder_once_per_distinct_cloud(monkeypatch):
    encoder = PointMAE(SMALL)
    points, labels = clouds(4)  # 12 clouds
    episode_a = CloudDataset(points[:8], labels[:8], 256)
    episode_b = CloudDataset(points[4:], labels[4:] + 1, 256)  # 4 shared clouds, new labels
    memo, seen = features.FeatureMemo(encoder, amp="none"), []
    extract = features.extract_features
    monkeypatch.setattr(
        features,
        "extract_features",
        lambda enc, data, **kw: seen.append(len(data)) or extract(enc, data, **kw),
    )
    feats_a, labels_a = memo(episode_a)
    feats_b, labels_b = memo(episode_b)
    assert seen == [8, 4]  # the second episode computes only its 4 new clouds
    direct_b, _ = extract(encoder, episode_b, amp="none")
    torch.testing.assert_close(feats_b, direct_b)
    torch.testing.assert_close(feats_a[4:], feats_b[:4])
    assert (
        labels_a.tolist() == labels[:8].tolist() and labels_b.tolist() == (labels[4:] + 1).tolist()
    )


def test_a_pointgst_cell_tunes_adapters_and_never_trains_a_frozen_head(monkeypatch, tmp_path):
    data = CloudDataset(*clouds(4), 256)
    monkeypatch.setattr(classification, "splits", lambda *args: (data, data, 3))
    monkeypatch.setattr(
        classification, "load_pretrained",
        lambda *args, **kwargs: PointMAE(dataclasses.replace(SMALL, num_classes=3)),
    )  # fmt: skip

    def frozen(*args):
        raise AssertionError("a pointgst cell took the frozen-head path")

    monkeypatch.setattr(classification, "frozen_features", frozen)
    grid = dataclasses.replace(
        config.load("classification", smoke=True), out_dir=str(tmp_path), votes=0,
        recipes={"modelnet40": dataclasses.replace(RECIPE, epochs=1)},
        pointgst=config.PointGSTAdapters(rank=4, local=8),
    )  # fmt: skip
    row = classification.run_seed(
        grid, classification.Cell("stage2", "modelnet40", "pointgst"), 0, {}
    )
    assert 0 < row["trainable_params"] < row["total_params"] and row["wall_time_s"] > 0
    assert row["arch"] == "point_mae"


def test_mask_dropout_keeps_one_minus_p_scaled_and_is_the_identity_in_eval():
    x = torch.ones(200, 500, requires_grad=True)
    drop = classification.MaskDropout(0.25, np.random.default_rng(0))
    y = drop(x)
    assert torch.equal(y.unique(), torch.tensor([0.0, 4 / 3]))
    assert abs((y > 0).float().mean().item() - 0.75) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, (y > 0).float() * (4 / 3))  # gradient through the kept units
    again = classification.MaskDropout(0.25, np.random.default_rng(0))(torch.ones(200, 500))
    assert torch.equal(again, y.detach())  # the seed fixes the masks
    assert drop.eval()(x) is x
    head = classification.with_mask_dropout(SMALL_HEAD(), np.random.default_rng(0))
    kinds = [type(m).__name__ for m in head]
    assert kinds.count("MaskDropout") == 2 and "Dropout" not in kinds


def test_head_training_is_seeded():
    feats, labels = torch.randn(40, 64), torch.arange(40) % 3
    encoder = PointMAE(dataclasses.replace(SMALL, num_classes=0))
    recipe = dataclasses.replace(RECIPE, head_epochs=20, amp="bf16")
    heads = [classification.train_head("mlp3", feats, labels, 3, encoder, recipe, 7) for _ in "ab"]
    first, second = (h.state_dict() for h in heads)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = classification.train_head("mlp3", feats, labels, 3, encoder, recipe, 8)
    assert not torch.equal(heads[0][0].weight, other[0].weight)


def test_votes_average_augmented_passes_and_never_take_a_max():
    model = PointMAE(dataclasses.replace(SMALL, num_classes=3)).eval()
    data = CloudDataset(*clouds(2), 256)
    plain, voted, labels = classification.predict(model, data, RECIPE, votes=3, seed=7)
    generator = torch.Generator().manual_seed(7)
    points = torch.stack([data[i]["points"] for i in range(len(data))])
    with torch.no_grad():
        passes = [model(classification.augment(points, RECIPE, generator)) for _ in range(3)]
        torch.testing.assert_close(plain, model(points))
    torch.testing.assert_close(voted, torch.stack(passes).mean(0))
    assert torch.equal(labels, torch.as_tensor(data.labels))
    _, no_votes, _ = classification.predict(model, data, RECIPE, votes=0, seed=7)
    torch.testing.assert_close(no_votes, plain)


def test_full_finetuning_learns_a_small_training_set(tmp_path):
    model = PointMAE(dataclasses.replace(SMALL, num_classes=3))
    data = CloudDataset(*clouds(8), 256)
    recipe = dataclasses.replace(RECIPE, epochs=6, augment="none")
    result = classification.fine_tune(model, data, recipe, seed=0, out_dir=tmp_path / "run")
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert (tmp_path / "run/live/metrics.json").is_file()  # dvclive per run
    assert not list((tmp_path / "run").glob("epoch-*"))  # checkpoints go when the run is done


def test_full_finetuning_resumes_a_killed_run_exactly(tmp_path, monkeypatch):
    data = CloudDataset(*clouds(8), 256)
    recipe = dataclasses.replace(RECIPE, epochs=3, augment="none")

    def tuned(out_dir):
        torch.manual_seed(0)
        model = PointMAE(dataclasses.replace(SMALL, num_classes=3))
        classification.fine_tune(model, data, recipe, seed=0, out_dir=out_dir)
        return model.state_dict()

    whole = tuned(tmp_path / "whole")
    steps_per_epoch = len(data) // recipe.batch_size
    step, calls, kill = classification.ClassifierStep.__call__, [], {"at": 2 * steps_per_epoch + 1}

    def counted(self, model, batch, generator):  # killed at the first step of epoch 2
        calls.append(1)
        if len(calls) == kill["at"]:
            raise KeyboardInterrupt
        return step(self, model, batch, generator)

    monkeypatch.setattr(classification.ClassifierStep, "__call__", counted)
    with pytest.raises(KeyboardInterrupt):
        tuned(tmp_path / "run")
    assert [p.name for p in sorted((tmp_path / "run").glob("epoch-*"))] == [
        "epoch-0001.safetensors", "epoch-0001.state.pt"
    ]  # fmt: skip
    calls.clear()
    kill["at"] = None
    resumed = tuned(tmp_path / "run")  # only epoch 2 runs again, then the files go
    assert len(calls) == steps_per_epoch
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not list((tmp_path / "run").glob("epoch-*"))


def test_summary_is_mean_and_sample_std_over_seeds_in_percent():
    rows = [
        {"acc": 50.0, "acc_vote": 60.0, "train_acc": 100.0},
        {"acc": 70.0, "acc_vote": 60.0, "train_acc": 100.0},
    ]
    out = metrics.summarise(rows)
    assert out["acc_mean"] == pytest.approx(60.0) and out["acc_std"] == pytest.approx(14.1421356)
    assert out["acc_vote_std"] == 0.0
    frozen = metrics.summarise([{"acc": 50.0, "acc_vote": float("nan"), "train_acc": 100.0}])
    assert "acc_vote_mean" not in frozen and frozen["acc_std"] == 0.0


def test_grid_covers_every_cell_and_names_runs():
    grid = config.load("classification", smoke=False)
    grid = dataclasses.replace(grid, only={}, protocol_only={})
    cells = classification.cells(grid)
    assert len(cells) == len(grid.checkpoints) * len(grid.datasets) * len(grid.protocols)
    only = {"stage1": {"protocols": ("linear",)}, "scratch": {"datasets": ("modelnet40",)}}
    some = classification.cells(dataclasses.replace(grid, only=only))
    assert {c.protocol for c in some if c.checkpoint == "stage1"} == {"linear"}
    assert {c.dataset for c in some if c.checkpoint == "scratch"} == {"modelnet40"}
    protocols, datasets = len(grid.protocols), len(grid.datasets)
    assert len(some) == len(cells) - (protocols - 1) * datasets - protocols * (datasets - 1)
    with pytest.raises(ValueError, match="only"):
        dataclasses.replace(grid, only={"stage1": {"seeds": (0,)}})
    scan = [c for c in cells if c.dataset == "scanobjectnn/pb_t50_rs"]
    assert scan and scan[0].tag.startswith("scanobjectnn-pb_t50_rs__") and "/" not in scan[0].tag
    assert classification.Cell("stage2:joint", "modelnet40", "full").tag == (
        "modelnet40__stage2_variants-joint__full"
    )
    assert features.checkpoint_name("stage2:joint") == "stage2_variants/joint"
    assert features.checkpoint_name("runs/stage1/encoder.safetensors") == "stage1"
    one = config.load("finetune", smoke=False, dataset="scanobjectnn", subset="obj_only")
    assert one.datasets == ("scanobjectnn/obj_only",) and len(classification.cells(one)) == 1


def test_a_protocol_runs_only_the_rows_and_datasets_it_names():
    grid = config.load("classification", smoke=False)
    grid = dataclasses.replace(grid, only={}, protocols=("linear", "pointgst"))
    block = {"checkpoints": ("stage2",), "datasets": ("modelnet40", "scanobjectnn/obj_bg")}
    some = classification.cells(dataclasses.replace(grid, protocol_only={"pointgst": block}))
    assert {(c.checkpoint, c.dataset) for c in some if c.protocol == "pointgst"} == {
        ("stage2", "modelnet40"), ("stage2", "scanobjectnn/obj_bg")
    }  # fmt: skip
    assert sum(c.protocol == "linear" for c in some) == len(grid.checkpoints) * len(grid.datasets)
    with pytest.raises(ValueError, match="protocol_only"):
        dataclasses.replace(grid, protocol_only={"pointgst": {"protocols": ("full",)}})
    shipped = config.load("classification", smoke=False).protocol_only["pointgst"]
    assert set(shipped["checkpoints"]) == {"stage2", "stage2:point_mae"}  # Table 3's rows


def test_pointgst_protocol_trains_adapters_cls_and_head_only(tmp_path):
    """Fine-tuning under ``pointgst`` leaves every frozen encoder weight bit-identical, moves
    the adapters, cls token and head, and counts exactly those parameters as trainable."""
    model = PointMAE(dataclasses.replace(SMALL, num_classes=3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gst, counts = classification.adapted(model, config.PointGSTAdapters(rank=4, local=8))
    by_hand = sum(p.numel() for p in gst.adapters.parameters()) + sum(
        p.numel() for p in (model.cls_token, model.cls_pos, *model.head.parameters())
    )
    assert counts == {"trainable_params": by_hand,
                      "total_params": sum(p.numel() for p in gst.parameters())}  # fmt: skip
    data = CloudDataset(*clouds(8), 256)
    recipe = dataclasses.replace(RECIPE, epochs=2, augment="none")
    groups = gst.optimizer_groups(recipe.weight_decay)
    classification.fine_tune(gst, data, recipe, seed=0, out_dir=tmp_path, param_groups=groups)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_weights = {k for k, _ in model.named_parameters()} - {
        k for k in before if k.startswith(("cls_", "head."))
    }
    assert not moved & frozen_weights  # no frozen weight changed
    assert {"cls_token", "head.0.weight"} <= moved
    assert any("running_mean" in k for k in moved)  # train mode: BatchNorm statistics refresh
    assert all(p.abs().sum() > 0 for p in (a.up.weight for a in gst.adapters))  # left zero init
    logits = gst(torch.from_numpy(clouds(1)[0]))
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    m2ae = features.load_pretrained("scratch", "point_m2ae_small", num_classes=3)
    with pytest.raises(ValueError, match="adapts point_mae encoders, not 'point_m2ae'"):
        classification.adapted(m2ae, config.PointGSTAdapters(rank=4, local=8))


def test_a_cell_another_grid_ran_exactly_is_copied_not_rerun(tmp_path, monkeypatch):
    """The ablation grid reuses the classification grid's cell when checkpoint, protocol,
    seeds, pretraining runs and recipe all match; any difference reruns it."""
    calls = []

    def fake_seed(cfg, cell, seed, cache, run=""):
        calls.append((cell.tag, seed))
        return {"seed": seed, "run": run, "arch": "point_mae", "acc": 50.0 + seed,
                "acc_vote": float("nan"), "train_acc": 60.0}  # fmt: skip

    monkeypatch.setattr(classification, "run_seed", fake_seed)
    grid = config.load("ablations", smoke=False)
    first = dataclasses.replace(grid, results_dir=str(tmp_path / "a"), reuse="", seeds=(0, 1))
    cell = classification.Cell("scratch", "modelnet40", "linear")
    ran = classification.run_cell(first, cell, {})
    assert len(calls) == 2 and "reused_from" not in ran
    second = dataclasses.replace(first, results_dir=str(tmp_path / "b"), reuse=str(tmp_path / "a"))
    copied = classification.run_cell(second, cell, {})
    assert len(calls) == 2 and copied["reused_from"] == f"{tmp_path / 'a'}/{cell.tag}.json"
    assert copied["acc_mean"] == ran["acc_mean"] == 50.5
    assert json.loads((tmp_path / "b" / f"{cell.tag}.json").read_text()) == copied
    for changed in ({"seeds": (0, 2)}, {"recipes": {**grid.recipes, "modelnet40": RECIPE}}):
        classification.run_cell(dataclasses.replace(second, **changed), cell, {})
    assert len(calls) == 6  # both differences ran their seeds


def test_checkpoints_load_by_kind_and_fail_clearly(tmp_path):
    assert features.load_pretrained("scratch", "point_mae_tiny").config.trans_dim == 128
    encoder = PointMAE(SMALL)
    save_encoder(tmp_path, encoder)
    loaded = features.load_pretrained(str(tmp_path), "point_mae_tiny", num_classes=4)
    assert loaded.config.trans_dim == 32 and loaded.head is not None
    grouped = features.load_pretrained(str(tmp_path), "point_mae_tiny", grouping=RECIPE.grouping)
    assert grouped.config.num_groups == 16
    # an architecture's own recipe setting beats the family's (PointMamba's drop path)
    own = {"point_mae": {"drop_path_rate": 0.5}, "point_mamba": {"drop_path_rate": 0.3}}
    for model, rate in (("point_mae_tiny", 0.5), ("point_mamba_tiny", 0.3)):
        checkpoint = str(tmp_path) if model == "point_mae_tiny" else "scratch"
        loaded = features.load_pretrained(checkpoint, model, grouping=own, drop_path_rate=0.1)
        assert loaded.config.drop_path_rate == rate
    with pytest.raises(FileNotFoundError, match="no pretrained encoder"):
        features.load_pretrained(str(tmp_path / "missing"), "point_mae_tiny")
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_family("shapenet")


def test_random_parts_of_a_loaded_encoder_follow_the_seed_not_the_global_rng(tmp_path):
    save_encoder(tmp_path, PointMAE(SMALL))

    def weights(checkpoint, seed, **overrides):
        torch.manual_seed(torch.randint(1000, ()).item())  # whatever ran before
        state = torch.get_rng_state()
        model = features.load_pretrained(checkpoint, "point_mae_tiny", seed=seed, **overrides)
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
        return model.state_dict()

    a, b, c = (weights("scratch", seed) for seed in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(
        a["cls_token"], c["cls_token"]
    )
    heads = [weights(str(tmp_path), seed, num_classes=4) for seed in (3, 3, 4)]
    head = [k for k in heads[0] if k.startswith("head.")]
    assert head and all(torch.equal(heads[0][k], heads[1][k]) for k in head)
    assert not all(torch.equal(heads[0][k], heads[2][k]) for k in head)


def test_fewshot_episodes_from_official_pickles(tmp_path):
    root = tmp_path / "ModelNetFewshot"
    for fold in range(2):
        support, support_y = clouds(2, 2, offset=10 * fold, channels=6)
        query, query_y = clouds(3, 2, offset=100 + 10 * fold, channels=6)
        episode = {
            "train": [(p, int(y), int(y)) for p, y in zip(support, support_y, strict=True)],
            "test": [(p, int(y), int(y)) for p, y in zip(query, query_y, strict=True)],
        }
        readers.write_fewshot_fold(root, 2, 2, fold, episode)
    save_encoder(tmp_path / "enc", PointMAE(SMALL))
    (tmp_path / "manifest.json").write_text(json.dumps({"roots": {"fewshot": str(root)}}))
    cfg = config.FewshotStage(
        checkpoints=(str(tmp_path / "enc"),), ways=(2,), shots=(2,), folds=2, protocol="linear",
        model="point_mae_tiny", seed=0, data_manifest=str(tmp_path / "manifest.json"),
        recipe=RECIPE, out_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
    )  # fmt: skip
    rows = fewshot.run_stage(cfg)
    assert len(rows) == 1 and rows[0]["folds"] == 2 and len(rows[0]["accs"]) == 2
    assert rows[0]["acc_mean"] == pytest.approx(np.mean(rows[0]["accs"]))
    for acc in rows[0]["accs"]:  # 6 queries: a multiple of 100/6
        assert acc * 6 / 100 == pytest.approx(round(acc * 6 / 100), abs=1e-4)
    saved = json.loads((tmp_path / "results/fewshot.json").read_text())
    assert saved["rows"][0]["accs"] == rows[0]["accs"]
    # full fine-tuning: one run directory per (checkpoint, episode), so an episode never
    # resumes another's checkpoint; dvclive stays, the checkpoints go
    recipe = dataclasses.replace(RECIPE, epochs=1, batch_size=2)
    full = dataclasses.replace(
        cfg, protocol="full", recipe=recipe, checkpoints=("scratch", str(tmp_path / "enc"))
    )
    fewshot.run_stage(full)
    runs = sorted((tmp_path / "runs").glob("*/*"))
    named = sorted((r.parent.name.split("-")[-1], r.name) for r in runs)  # .../enc -> ...-enc
    assert named == [
        ("enc", "2way2shot-fold0"), ("enc", "2way2shot-fold1"),
        ("scratch", "2way2shot-fold0"), ("scratch", "2way2shot-fold1"),
    ]  # fmt: skip
    assert all((r / "live/metrics.json").is_file() for r in runs)
    assert not list((tmp_path / "runs").rglob("epoch-*"))


def test_report_tables_put_this_run_beside_the_paper():
    grid = pd.DataFrame(
        [
            {"dataset": "modelnet40", "subset": np.nan, "checkpoint": "stage2", "protocol": "full",
             "acc_mean": 91.25, "acc_std": 0.5, "acc_vote_mean": 92.0, "acc_vote_std": 0.0},
            {"dataset": "scanobjectnn", "subset": "obj_bg", "checkpoint": "stage2",
             "protocol": "full", "acc_mean": 80.0, "acc_std": 1.0},
            {"dataset": "scanobjectnn", "subset": "obj_bg", "checkpoint": "stage2",
             "protocol": "pointgst", "acc_mean": 82.0, "acc_std": 2.0},
        ]
    )  # fmt: skip
    table = report.table3(grid.assign(arch="point_mae"))
    gst = table[(table["source"] == "this run") & (table["protocol"] == "pointgst")].iloc[0]
    assert gst["method"] == "Ours (Stage-1 + Stage-2) + PointGST" and gst["OBJ_BG"] == "82.0 ± 2.0"
    assert gst["#P (M)"] == "22.5"  # 22.1 M + the paper-size adapters (0.35 M)
    ours = table[(table["source"] == "this run") & (table["protocol"] == "full")].iloc[0]
    assert ours["MN40"] == "91.2 ± 0.5" and ours["MN40 vote"] == "92.0 ± 0.0"
    assert ours["OBJ_BG"] == "80.0 ± 1.0" and ours["PB_T50_RS"] == "-"
    paper = table[(table["source"] == "paper") & (table["method"] == "Ours (Point-MAE)")]
    assert paper.iloc[0]["PB_T50_RS"] == "90.10"
    table4 = report.table4(grid.assign(protocol="linear"), "linear")
    assert table4.iloc[0]["MN40"] == "91.2 ± 0.5" and table4.iloc[0]["paper MN40"] == "94.3"


def test_tsne_is_seeded_and_silhouette_tracks_separation():
    rng = np.random.default_rng(0)
    centres = np.repeat(np.eye(3) * 10, 20, axis=0)
    feats = (centres + rng.normal(size=centres.shape)).astype(np.float32)
    a = viz.embed(feats, seed=1, perplexity=30.0)
    b = viz.embed(feats, seed=1, perplexity=30.0)
    assert a.shape == (60, 2) and np.array_equal(a, b)
    labels = np.repeat(np.arange(3), 20)
    from sklearn.metrics import silhouette_score

    assert silhouette_score(a, labels) > 0.5
    assert silhouette_score(a, rng.permutation(labels)) < 0.1


def test_a_redrawn_figure_is_saved_as_the_same_bytes(tmp_path):
    import time

    panel = {"checkpoint": "scratch", "embedding": np.eye(3)[:, :2], "labels": np.arange(3),
             "silhouette_tsne": 0.5, "silhouette_features": 0.4, "samples": 3}  # fmt: skip
    for name in ("a", "b"):
        viz.save_figure(viz.figure([panel], {"scratch": "scratch"}, "caption"), tmp_path / name)
        time.sleep(1.1)  # a PDF creation date would now differ
    for suffix in (".png", ".pdf"):
        first, second = (tmp_path / f"{n}{suffix}" for n in "ab")
        assert first.read_bytes() == second.read_bytes()


def test_released_point_mae_checkpoint_is_a_finetune_starting_point(tmp_path):
    from test_upstream import to_upstream, write

    from mmpd_core.models import create_model

    source = create_model("point_mae_tiny")
    path = write(tmp_path / "pretrain.pth", to_upstream(source, "pretrain"))
    model = features.load_pretrained(str(path), "point_mae_tiny", num_classes=3)
    assert model.head is not None
    for name, value in source.state_dict().items():
        if name.startswith(("tokenizer", "transformer", "pos_embed")):
            assert torch.equal(model.state_dict()[name], value), name


def test_batchnorm_statistics_are_recomputed_over_the_training_clouds():
    model = PointMAE(dataclasses.replace(SMALL, num_classes=3))
    data = CloudDataset(*clouds(4), 256)
    classification.refresh_batchnorm(model, data, batch_size=5)
    points = torch.stack([data[i]["points"] for i in range(len(data))])
    neighborhood = model.group(points).neighborhood
    with torch.no_grad():
        first = model.tokenizer.first_conv[0](neighborhood.reshape(-1, 3))  # (B*G*K, 128)
    bn = model.tokenizer.first_conv[1]
    # update_bn averages the statistics of the loader's batches (5, 5 and 2 clouds) equally
    batches = [b.reshape(-1, 128) for b in first.reshape(len(data), -1, 128).split(5)]
    expected_mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    expected_var = torch.stack([b.var(0) for b in batches]).mean(0)  # unbiased, as BatchNorm
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-3, atol=1e-9)
    assert model.training  # the mode it had (update_bn restores it)


def test_upstream_resampling_takes_a_random_subset_of_an_fps_of_the_shuffled_cloud():
    """Point-MAE's runner: shuffle each cloud, FPS of 1200 (here 40) from the first shuffled
    point, then one random choice of 1024 (here 16) of those for the whole batch."""
    from mmpd_core.geometry import farthest_point_sample, gather_points

    recipe = dataclasses.replace(RECIPE, num_points=16, fps_points=40)
    points = torch.from_numpy(clouds(1, 2, channels=3)[0])  # (2, 256, 3)
    out = classification.resample(points, recipe, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)  # the same draws, by hand
    order = torch.rand(2, 256, generator=generator).argsort(dim=1)
    shuffled = gather_points(points, order)
    fps = farthest_point_sample(shuffled, 40)
    keep = torch.randperm(40, generator=generator)[:16]
    assert torch.equal(out, gather_points(shuffled, fps[:, keep]))
    again = classification.resample(points, recipe, torch.Generator().manual_seed(5))
    other = classification.resample(points, recipe, torch.Generator().manual_seed(6))
    assert torch.equal(out, again) and not torch.equal(out, other)
    stored = {tuple(p) for p in points[0].tolist()}
    assert out.shape == (2, 16, 3) and all(tuple(p) in stored for p in out[0].tolist())


def test_votes_draw_fresh_subsets_of_the_test_clouds_fps_sample():
    from mmpd_core.geometry import farthest_point_sample, gather_points

    recipe = dataclasses.replace(RECIPE, fps_points=100, num_points=64)
    model = PointMAE(dataclasses.replace(SMALL, num_classes=3, num_groups=8)).eval()
    raw, labels = clouds(1)
    sampled = CloudDataset(raw, labels, 64, sampling="fps", normalize=False)
    stored = CloudDataset(raw, labels, 256, normalize=False)
    plain, voted, _ = classification.predict(model, sampled, recipe, votes=2, seed=3, stored=stored)
    full = stored.points[:, :256]
    fps = farthest_point_sample(full, 100)
    generator, passes = torch.Generator().manual_seed(3), []
    with torch.no_grad():
        for _ in range(2):
            keep = torch.randperm(100, generator=generator)[:64]
            drawn = gather_points(full, fps[:, keep])
            passes.append(model(classification.augment(drawn, recipe, generator)))
        torch.testing.assert_close(
            plain, model(torch.stack([sampled[i]["points"] for i in range(3)]))
        )
    torch.testing.assert_close(voted, torch.stack(passes).mean(0))
    with pytest.raises(ValueError, match="stored clouds"):
        classification.predict(model, sampled, recipe, votes=2, seed=3)
