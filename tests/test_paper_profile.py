"""The paper profile's code path, end to end at smoke size: `profile: paper` in a copy of the
repository, fixture files in the official dataset layouts under data/real, and small randomly
initialised CLIP (open_clip ``local-dir:``), DINOv2 and BLIP-2 saved to local directories in
place of the hub weights. Everything else (point_mae backbone, recipes, stages) is the paper's.

The DAG runs every stage and every pretraining run that Tables 1, 2, 3 and 5 read; the
ablation-only variants (``ABLATION_ONLY``) run the same notebooks with other values, their
paper-profile configs are loaded and checked by ``test_config``, and the embedded smoke test
runs them end to end, so they are left out here (a paper-size run costs ~17 s of the suite)."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import BIN, copy_repo, run, variant_groups
from test_teachers import save_tiny_clip_dir, save_tiny_dinov2

from mmpd_core.data import dense_prep, prep, readers, scannet
from mmpd_core.data import dense_readers as dr
from mmpd_core.data.rooms import make_scene
from mmpd_core.data.shapes import CATEGORIES, sample_shape

SYNSETS = ("02691156", "02747177", "02808440")  # three ShapeNet synset ids
ABLATION_ONLY = {  # pretraining section -> variants only the ablation grid reads
    "pretrain_stage1": ("clip_like", "dino_like", "after_point_mae"),
    "pretrain_stage2": ("no_global", "no_shuffle", "local_only", "global_only", "point_targets",
                        "random_init", "joint", "clip_like", "dino_like", "m2ae_point_targets"),
}  # fmt: skip


def drop_ablation_variants(repo):
    """Remove ``ABLATION_ONLY`` from the variant groups of the copy's dvc.yaml: their
    ``-p variant`` names, params, deps, outs, metrics and plots (a group left empty goes)."""
    path = repo / "dvc.yaml"
    pipeline = yaml.safe_load(path.read_text())
    dropped = set()
    for section, names in ABLATION_ONLY.items():
        kind = section.removeprefix("pretrain_")
        dropped |= {f"{kind}_variants/{v}" for v in names} | {
            f"variants.{section}.{v}" for v in names
        }
    for name, (section, variants) in variant_groups(pipeline["stages"]).items():
        stage = pipeline["stages"][name]
        keep = [v for v in variants if v not in ABLATION_ONLY[section]]
        if not keep:
            del pipeline["stages"][name]
            continue
        stage["cmd"] = stage["cmd"].replace(
            f"variant {','.join(variants)}", f"variant {','.join(keep)}"
        )
        for field in ("params", "deps", "outs", "metrics", "plots"):
            stage[field] = [e for e in stage.get(field, []) if kept(e, dropped)]
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))


def kept(entry, dropped: set[str]) -> bool:
    """Whether a dvc.yaml params / outs / metrics / plots entry belongs to no dropped run."""
    path = entry if isinstance(entry, str) else next(iter(entry))
    return not any(path == d or path.endswith(f"/{d}") or f"{d}/" in path for d in dropped)


def surface(category: str, index: int, points: int, normals: bool = False) -> np.ndarray:
    cloud = sample_shape(category, index, 0, points).points.astype(np.float32)
    return np.concatenate([cloud, np.zeros_like(cloud)], 1) if normals else cloud


def write_modelnet40_download(root, classes):
    """ModelNet40 as most users have it (Point-BERT / Point-MAE DATASET.md): the class names,
    the two split lists and ``modelnet40_{train,test}_8192pts_fps.dat``; no per-shape text."""
    root.mkdir(parents=True)
    (root / readers.MODELNET_SHAPE_NAMES).write_text("\n".join(classes) + "\n")
    for part, indices in (("train", range(4)), ("test", range(4, 6))):
        ids = [f"{name}_{i + 1:04d}" for name in classes for i in indices]
        (root / f"modelnet40_{part}.txt").write_text("\n".join(ids) + "\n")
        clouds = [surface(name, 50 + i, 8192, normals=True) for name in classes for i in indices]
        labels = [c for c, _ in enumerate(classes) for _ in indices]
        readers.write_modelnet40_dat(readers.modelnet40_dat_path(root, part, 8192), clouds, labels)


def write_real_datasets(root):
    """A few shapes of every dataset, in the layouts the upstream loaders read."""
    clouds = {  # released files hold 8192 points; Point-M2AE pretrains on 2048 of them
        f"{synset}-m{i}.npy": surface(CATEGORIES[s], i, 2100)
        for s, synset in enumerate(SYNSETS)
        for i in range(5)
    }
    split = {"train": {}, "test": {}}
    for name, cloud in clouds.items():
        split["test" if name.endswith("4.npy") else "train"][name] = cloud
    readers.write_shapenet55(root / prep.SHAPENET, split)
    classes = list(CATEGORIES[:5])
    write_modelnet40_download(root / prep.MODELNET, classes)
    for fold in range(2):
        episode = {
            part: [
                (surface(name, 100 + 10 * fold + i + 5 * (part == "test"), 1100, True), c, c)
                for c, name in enumerate(classes)
                for i in range(2)
            ]
            for part in ("train", "test")
        }
        readers.write_fewshot_fold(root / prep.FEWSHOT, 5, 2, fold, episode)
    rng = np.random.default_rng(0)
    for variant in ("obj_only", "obj_bg", "pb_t50_rs"):
        for part, count in (("train", 16), ("test", 8)):
            scans = rng.normal(size=(count, 2048, 3)).astype(np.float32)
            readers.write_scanobjectnn(
                root / prep.SCAN, variant, part, scans, np.arange(count) % 15
            )
    scenes = {"train": [], "val": []}
    for area in range(1, 7):  # S3DIS as released: Area_<k>/<room>/Annotations/<class>_<n>.txt
        room, instances, categories = make_scene(0, area, 0, density=25.0)
        dr.write_s3dis_room(root, area, room.name, room.points, room.colors, room.labels)
        name = dense_prep.scene_name(area, 0)  # and as a ScanNet detection scene
        scene = dense_prep.scannet_scene(name, room, instances, categories)
        scannet.write_scene(root / dense_prep.SCANNET_DIR, scene)
        scenes["val" if area == 5 else "train"].append(name)
    for split, names in scenes.items():
        scannet.write_split(root / dense_prep.SCANNET_DIR, split, names)
    dr.write_shapenetpart(root, {
        split: [dense_prep.part_shape(c, split, i, 0, 300) for c in ("Chair", "Table")
                for i in range(count)]
        for split, count in (("train", 3), ("val", 1), ("test", 2))
    })  # fmt: skip


@pytest.fixture(scope="module")
def paper_repo(tmp_path_factory):
    from test_blip2 import STOP_IDS, tiny_config, tiny_processor
    from transformers import Blip2ForConditionalGeneration

    assets = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    processor = tiny_processor()
    blip2 = Blip2ForConditionalGeneration(
        tiny_config(len(processor.tokenizer), processor.tokenizer.convert_tokens_to_ids("<image>"))
    )
    blip2.generation_config.eos_token_id = STOP_IDS
    blip2.save_pretrained(assets / "blip2")
    processor.save_pretrained(assets / "blip2")
    clip = save_tiny_clip_dir(assets / "clip")
    teachers = [
        {"name": "clip_image", "type": "open_clip", "modality": "image", "model": clip},
        {"name": "clip_text", "type": "open_clip", "modality": "text", "model": clip},
        {"name": "dinov2", "type": "hf_vision", "model": str(save_tiny_dinov2(assets / "dinov2"))},
    ]
    repo = copy_repo(
        tmp_path_factory.mktemp("paper"),
        profile="paper",
        smoke=True,
        **{
            "data_prep.paper.blip2_model": str(assets / "blip2"),
            "data_prep.paper.caption_clip": {"model": clip, "pretrained": None},
            "teacher_cache.paper.teachers": teachers,
            # smoke clouds have 256 points: paper-size Point-M2AE groups fewer centres there
            **{
                f"transfer.smoke.datasets.{family}.grouping.point_m2ae.num_groups": [128, 64, 16]
                for family in ("modelnet40", "scanobjectnn")
            },
            "ablations.checkpoints": ["stage1", "stage2", "stage2:m2ae"],
        },
    )
    drop_ablation_variants(repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "dag"], repo)
    write_real_datasets(repo / "data" / "real")
    yield repo
    shutil.rmtree(repo)  # point_mae checkpoints of every pretraining variant: gigabytes


@pytest.mark.slow
def test_paper_profile_runs_the_whole_dag(paper_repo):
    # --no-commit: DVC copies directory outputs into its cache rather than linking them, which
    # would double ~20 paper-size encoders (87 MB each; 4.1 GB at the peak, more than CI's
    # disk holds). The cache itself is exercised by the embedded smoke pipeline test.
    run([str(BIN / "dvc"), "repro", "--no-commit"], paper_repo)
    manifest = json.loads((paper_repo / "data/prepared/manifest.json").read_text())
    assert manifest["config"]["source"] == "real" and manifest["config"]["captioner"] == "blip2"
    assert manifest["roots"]["modelnet40"].endswith("data/real/modelnet40_normal_resampled")
    modelnet = paper_repo / "data/real/modelnet40_normal_resampled"
    assert not list(modelnet.glob("*/*.txt"))  # the .dat download alone is enough
    assert manifest["counts"]["modelnet40"]["test"] == {c: 2 for c in CATEGORIES[:5]}
    assert list((paper_repo / "data/caption_cache").glob("*/part-0of1.jsonl"))
    cache = json.loads((paper_repo / "data/teacher_cache/manifest.json").read_text())
    assert set(cache["teachers"]) == {"clip_image", "clip_text", "dinov2"}
    encoder = json.loads((paper_repo / "reports/results/classification.json").read_text())
    assert any(key.startswith("modelnet40__stage2__full") for key in encoder)
    gst = encoder["scanobjectnn-pb_t50_rs__stage2__pointgst"]  # PointGST at paper size, 15 classes
    assert (gst["trainable_params"], gst["total_params"]) == (622_831, 22_447_855)
    from mmpd_core.checkpoint import load_checkpoint

    _, meta = load_checkpoint(paper_repo / "runs/stage2/encoder.safetensors")
    assert meta["config"]["trans_dim"] == 384 and meta["config"]["depth"] == 12  # point_mae
    index = (paper_repo / "reports/README.md").read_text()
    assert "paper profile at smoke size" in index
    dense = json.loads((paper_repo / "data/dense/manifest.json").read_text())
    assert dense["roots"]["s3dis"].endswith("data/real") and dense["config"]["source"] == "real"
    assert dense["counts"]["shapenetpart"]["test"] == {"Chair": 2, "Table": 2}
    assert dense["counts"]["scannet"]["scenes"] == {"train": 5, "val": 1}
    segmentation = paper_repo / "reports/results/segmentation"
    semantic = json.loads((segmentation / "semantic/stage2.json").read_text())
    assert semantic["recipe"]["lr"] == 2.0e-4 and semantic["recipe"]["epochs"] == 1  # smoke
    assert set(json.loads(segmentation.with_suffix(".json").read_text())) == {
        f"{task}/{run}" for task in ("semantic", "part") for run in ("scratch", "stage2")
    }
    detection = json.loads((paper_repo / "reports/results/detection/stage2.json").read_text())
    assert detection["recipe"]["lr"] == 5.0e-4 and detection["recipe"]["epochs"] == 1  # smoke
    assert detection["detector"]["depth"] == 1  # smoke; the paper's 8 otherwise
    summary = json.loads((paper_repo / "reports/results/detection.json").read_text())
    assert set(summary) == {"3detr", "stage2"}
    fewshot = json.loads((paper_repo / "reports/results/fewshot/fewshot.json").read_text())
    assert fewshot["protocol"] == "full" and fewshot["rows"][0]["folds"] == 2
