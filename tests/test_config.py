import json

import pytest
import yaml
from conftest import variant_groups

from mmpd_core import config


@pytest.fixture
def params_file(tmp_path):
    params = {
        "seed": 3,
        "smoke": False,
        "models": {
            "models": ["point_mae_tiny", "point_mae"],
            "batch_size": 32,
            "num_points": 1024,
            "num_classes": 40,
            "repeats": 2,
            "out_dir": "reports",
            "smoke": {"models": ["point_mae_tiny"], "batch_size": 2},
        },
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_load_builds_a_frozen_typed_dataclass(params_file):
    cfg = config.load("models", params_path=params_file)
    assert cfg.models == ("point_mae_tiny", "point_mae") and cfg.seed == 3
    with pytest.raises(AttributeError):
        cfg.batch_size = 4  # frozen


def test_smoke_section_and_overrides(params_file):
    cfg = config.load("models", smoke=True, params_path=params_file, repeats=5, num_points=None)
    assert cfg.models == ("point_mae_tiny",) and cfg.batch_size == 2
    assert cfg.repeats == 5 and cfg.num_points == 1024  # None overrides are ignored


def test_top_level_smoke_flag_is_the_default(params_file):
    params = yaml.safe_load(params_file.read_text())
    params["smoke"] = True
    params_file.write_text(yaml.safe_dump(params))
    assert config.load("models", params_path=params_file).batch_size == 2


def test_bad_values_name_the_file_and_field(params_file):
    with pytest.raises(TypeError, match="smoke must be True or False, got 'false'"):
        config.load("models", smoke="false", params_path=params_file)
    with pytest.raises(
        ValueError, match=r"params.yaml:models: batch_size: Input should be a valid"
    ):
        config.load("models", params_path=params_file, batch_size="thirty")
    with pytest.raises(ValueError, match=r"params.yaml:models: width: Unexpected keyword"):
        config.load("models", params_path=params_file, width=3)
    with pytest.raises(ValueError, match=r"models: repeats: Input should be a valid integer"):
        config.load("models", params_path=params_file, repeats=2.5)
    with pytest.raises(ValueError, match=r"protocols.0: Input should be 'full', .* or 'pointgst'"):
        config.load("finetune", protocol="fine")
    with pytest.raises(KeyError, match="unknown stage"):
        config.load("pretrain_stage9", params_path=params_file)
    with pytest.raises(FileNotFoundError, match="params file not found"):
        config.load("models", params_path=params_file.with_name("absent.yaml"))


def test_sections_merge_deeply_in_order(tmp_path):
    """base < paper < variant < variant's paper < smoke < overrides, nested dicts merged key by
    key (a recipe is written once), lists replaced."""
    params = yaml.safe_load((config.PROJECT_ROOT / "params.yaml").read_text())
    base = config.load("finetune", smoke=False).recipes["scanobjectnn"]
    assert (base.num_points, base.augment, base.lr) == (512, "rotate_up", 1e-3)
    params["profile"] = "paper"
    paper_file = tmp_path / "params.yaml"
    paper_file.write_text(yaml.safe_dump(params))
    paper = config.load("finetune", smoke=False, params_path=paper_file).recipes["scanobjectnn"]
    assert (paper.num_points, paper.augment, paper.lr, paper.epochs) == (
        2048,
        "rotate_up",
        5e-4,
        300,
    )
    assert paper.grouping == {
        "point_mae": {"num_groups": 128},
        "point_m2ae": {"pooling": "scanobjectnn", "group_sizes": (32, 16, 16)},
        "point_mamba": {"num_groups": 128, "drop_path_rate": 0.5},
    }
    assert paper.grad_clip == 10.0
    few = config.load("fewshot", smoke=False, params_path=paper_file).recipe  # over modelnet40
    assert (few.epochs, few.num_points, few.batch_size, few.augment) == (
        150,
        1024,
        32,
        "scale_translate",
    )
    assert config.merge({"a": {"b": 1, "c": [1, 2]}}, {"a": {"c": [3]}}) == {
        "a": {"b": 1, "c": [3]}
    }


def test_repository_params_load():
    cfg = config.load("models")
    assert "point_mae" in cfg.models
    for stage in config.STAGES:  # every section, every variant, full and smoke size
        for variant in ["", *config.variant_names(stage)]:
            for smoke in (False, True):
                config.load(stage, smoke=smoke, variant=variant)


def test_every_variant_in_params_is_a_dvc_stage_writing_where_config_says():
    """dvc.yaml's variant groups and params.yaml's variants must name the same runs, each
    with its params section, output and metrics declared by the stage that runs it."""
    pipeline = yaml.safe_load((config.PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    groups = variant_groups(pipeline)
    for section in ("pretrain_stage1", "pretrain_stage2"):
        stages = {name: names for name, (where, names) in groups.items() if where == section}
        run = [v for names in stages.values() for v in names]
        assert sorted(run) == sorted(config.variant_names(section)), section
        assert len(run) == len(set(run)), f"a {section} variant runs twice"
        for name, variants in stages.items():
            stage = pipeline[name]
            outs = [o if isinstance(o, str) else next(iter(o)) for o in stage["outs"]]
            metrics = [next(iter(m)) for m in stage["metrics"]]
            for variant in variants:
                cfg = config.load(section, smoke=False, variant=variant)
                assert cfg.out_dir in outs, (name, variant)
                assert f"{cfg.live_dir}/metrics.json" in metrics, (name, variant)
                assert f"variants.{section}.{variant}" in stage["params"], (name, variant)


def test_paper_profile_is_one_switch_that_keeps_every_path(tmp_path):
    """`profile: paper` changes values, never the paths dvc.yaml declares as deps and outs."""
    params = yaml.safe_load((config.PROJECT_ROOT / "params.yaml").read_text())
    params["profile"] = "paper"
    paper_file = tmp_path / "params.yaml"
    paper_file.write_text(yaml.safe_dump(params))
    path_fields = ("out_dir", "live_dir", "data_manifest", "cache_dir", "contact_sheet",
                   "results", "results_dir", "table", "checkpoint", "teacher", "init")  # fmt: skip
    for stage in config.STAGES:
        for variant in ["", *config.variant_names(stage)]:
            base = config.load(stage, smoke=False, variant=variant)
            paper = config.load(stage, smoke=False, variant=variant, params_path=paper_file)
            for name in path_fields:
                assert getattr(base, name, None) == getattr(paper, name, None), (stage, name)
    assert config.load("pretrain_stage2", smoke=False, params_path=paper_file).model == "point_mae"
    assert config.load("data_prep", smoke=False, params_path=paper_file).source == "real"
    params["profile"] = "other"
    paper_file.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="profile must be one of"):
        config.load("models", params_path=paper_file)


def test_run_names_map_to_one_directory_each():
    assert config.run_dir("stage2") == "runs/stage2"
    assert config.run_dir("stage2:no_shuffle") == "runs/stage2_variants/no_shuffle"
    assert config.run_dir("stage1:clip_like") == "runs/stage1_variants/clip_like"
    assert config.run_dir("scratch") == "scratch" and config.run_dir("a/b.pth") == "a/b.pth"
    assert config.live_dir("stage1") == "reports/dvclive/pretrain_stage1"
    assert config.live_dir("stage2:joint") == "reports/dvclive/stage2_variants/joint"
    cfg = config.load("pretrain_stage2", variant="clip_like")
    assert (cfg.teacher, cfg.out_dir) == ("stage1:clip_like", "runs/stage2_variants/clip_like")
    assert config.dataset_key("scanobjectnn", "pb_t50_rs") == "scanobjectnn/pb_t50_rs"
    assert config.dataset_key("modelnet40", "pb_t50_rs") == "modelnet40"


# ---------------------------------------------------------------- independent pretraining runs


def test_seeded_run_names_map_to_their_own_directories():
    assert config.run_dir("stage2@1") == "runs/stage2/seed1"
    assert config.run_dir("stage2:no_shuffle@2") == "runs/stage2_variants/no_shuffle/seed2"
    assert config.run_dir("stage2@0") == config.run_dir("stage2") == "runs/stage2"
    assert config.live_dir("stage1@1") == "reports/dvclive/pretrain_stage1/seeds/seed1"
    assert config.seeded("stage2:joint", 2) == "stage2:joint@2"
    assert config.seeded("stage2@1", 0) == "stage2"
    assert config.seeded("scratch", 3) == "scratch" and config.seeded("runs/x", 1) == "runs/x"
    assert config.split_seed("runs/a@b/encoder.safetensors") == ("runs/a@b/encoder.safetensors", 0)
    with pytest.raises(ValueError, match="must be a number"):
        config.split_seed("stage2@x")


def test_each_independent_run_has_its_seed_and_its_teacher_at_the_same_index():
    cfg = config.load("pretrain_stage2", smoke=False, variant="clip_like", profile="cpu")
    runs = config.seed_runs(cfg)
    assert [r.seed for r in runs] == [cfg.seed, cfg.seed + 1, cfg.seed + 2]
    assert [r.teacher for r in runs] == [
        "stage1:clip_like",
        "stage1:clip_like@1",
        "stage1:clip_like@2",
    ]
    assert runs[1].out_dir == "runs/stage2_variants/clip_like/seed1"
    assert runs[2].live_dir == "reports/dvclive/stage2_variants/clip_like/seeds/seed2"
    baseline = config.seed_runs(config.load("pretrain_stage2", smoke=False, variant="point_mae"))
    assert [r.teacher for r in baseline] == ["", ""] and baseline[1].init == "random"
    reversed_order = config.load(
        "pretrain_stage1", smoke=False, variant="after_point_mae", profile="cpu"
    )
    assert config.seed_runs(reversed_order)[1].init == "stage2:point_mae@1"


def test_seed_refs_reads_what_the_stage_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path)
    assert config.seed_refs("stage2") == ["stage2"]  # not trained yet: itself
    run = tmp_path / "runs" / "stage2"
    run.mkdir(parents=True)
    (run / config.SEEDS_FILE).write_text(json.dumps({"seeds": [0, 1, 2]}))
    assert config.seed_refs("stage2") == ["stage2", "stage2@1", "stage2@2"]
    assert config.seed_refs("stage2@1") == ["stage2@1"] and config.seed_refs("scratch") == [
        "scratch"
    ]


def test_the_long_point_mae_baseline_gets_both_stages_steps_in_every_profile():
    for profile in config.PROFILES:
        s1 = config.load("pretrain_stage1", smoke=False, profile=profile)
        s2 = config.load("pretrain_stage2", smoke=False, profile=profile)
        long = config.load(
            "pretrain_stage2", smoke=False, variant="point_mae_long", profile=profile
        )
        base = config.load("pretrain_stage2", smoke=False, variant="point_mae", profile=profile)
        assert long.epochs == s1.epochs + s2.epochs, profile
        assert (long.batch_size, long.lr, long.local_target) == (base.batch_size, base.lr, "points")


def test_the_cpu_profile_resolves_pretraining_claims():
    """Every pretraining run of the cpu profile has at least two independent runs, and the
    transfer grids have as many seeds as runs: each claim can be read across encoders."""
    for stage in ("pretrain_stage1", "pretrain_stage2"):
        for variant in ["", *config.variant_names(stage)]:
            cfg = config.load(stage, smoke=False, variant=variant, profile="cpu")
            assert cfg.pretrain_seeds >= 2, cfg.run
    for stage in ("classification", "ablations"):
        assert len(config.load(stage, smoke=False, profile="cpu").seeds) >= 3
    embedded = config.load("pretrain_stage2", smoke=False, variant="no_shuffle")
    assert embedded.pretrain_seeds == 1  # the 20-minute demo: one run per ablation


def test_a_notebook_loads_a_group_of_variants_in_order():
    assert config.variant_group("no_global, joint") == ["no_global", "joint"]
    assert config.variant_group("") == [""]
    group = config.load_group("pretrain_stage2", "joint,no_global", smoke=True)
    assert list(group) == ["joint", "no_global"]
    assert group["no_global"] == config.load("pretrain_stage2", smoke=True, variant="no_global")
    assert group["joint"].out_dir == "runs/stage2_variants/joint"
