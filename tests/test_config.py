import pytest
import yaml

from mmpd_core import config


@pytest.fixture
def params_file(tmp_path):
    params = {
        "seed": 3,
        "smoke": False,
        "models": {
            "variants": ["point_mae_tiny", "point_mae"],
            "batch_size": 32,
            "num_points": 1024,
            "num_classes": 40,
            "repeats": 2,
            "out_dir": "reports",
            "smoke": {"variants": ["point_mae_tiny"], "batch_size": 2},
        },
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_load_builds_a_frozen_typed_dataclass(params_file):
    cfg = config.load("models", params_path=params_file)
    assert cfg.variants == ("point_mae_tiny", "point_mae") and cfg.seed == 3
    with pytest.raises(AttributeError):
        cfg.batch_size = 4  # frozen


def test_smoke_section_and_overrides(params_file):
    cfg = config.load("models", smoke=True, params_path=params_file, repeats=5, num_points=None)
    assert cfg.variants == ("point_mae_tiny",) and cfg.batch_size == 2
    assert cfg.repeats == 5 and cfg.num_points == 1024  # None overrides are ignored


def test_top_level_smoke_flag_is_the_default(params_file):
    params = yaml.safe_load(params_file.read_text())
    params["smoke"] = True
    params_file.write_text(yaml.safe_dump(params))
    assert config.load("models", params_path=params_file).batch_size == 2


def test_bad_values_name_the_file_and_field(params_file):
    with pytest.raises(TypeError, match="smoke must be True or False, got 'false'"):
        config.load("models", smoke="false", params_path=params_file)
    with pytest.raises(TypeError, match=r"params.yaml:models.batch_size: expected an integer"):
        config.load("models", params_path=params_file, batch_size="32")
    with pytest.raises(KeyError, match=r"unknown keys \['width'\]"):
        config.load("models", params_path=params_file, width=3)
    with pytest.raises(KeyError, match="unknown stage"):
        config.load("pretrain_stage9", params_path=params_file)
    with pytest.raises(FileNotFoundError, match="params file not found"):
        config.load("models", params_path=params_file.with_name("absent.yaml"))


def test_float_fields_reject_yaml_strings():
    assert config._coerce(1, float, "x") == 1.0
    with pytest.raises(TypeError, match="YAML floats need a dot"):
        config._coerce("1e-3", float, "x")


def test_repository_params_load():
    cfg = config.load("models")
    assert "point_mae" in cfg.variants
    for stage in config.STAGES:  # every section, every variant, full and smoke size
        for variant in ["", *config.variant_names(stage)]:
            for smoke in (False, True):
                config.load(stage, smoke=smoke, variant=variant)


def test_every_variant_in_params_is_a_dvc_stage_writing_where_config_says():
    """dvc.yaml's foreach lists and params.yaml's variants must name the same runs."""
    pipeline = yaml.safe_load((config.PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    groups = {
        "pretrain_stage1": ["stage1_variant"],
        "pretrain_stage2": ["stage2_ablation", "stage2_baseline", "stage2_teachers"],
    }
    for stage, names in groups.items():
        run = [v for n in names for v in pipeline[n]["foreach"]]  # list items or dict keys
        assert sorted(run) == sorted(config.variant_names(stage)), stage
        assert len(run) == len(set(run)), f"a {stage} variant runs twice"
        for variant in run:
            cfg = config.load(stage, smoke=False, variant=variant)
            name = next(n for n in names if variant in pipeline[n]["foreach"])
            outs = [next(iter(o)) for o in pipeline[name]["do"]["outs"]]
            key = "${key}" if isinstance(pipeline[name]["foreach"], dict) else "${item}"
            assert cfg.out_dir in [o.replace(key, variant) for o in outs]
            metrics = [next(iter(m)) for m in pipeline[name]["do"]["metrics"]]
            assert f"{cfg.live_dir}/metrics.json" in [m.replace(key, variant) for m in metrics]


def test_paper_profile_is_one_switch_that_keeps_every_path(tmp_path):
    """`profile: paper` changes values, never the paths dvc.yaml declares as deps and outs."""
    params = yaml.safe_load((config.PROJECT_ROOT / "params.yaml").read_text())
    params["profile"] = "paper"
    paper_file = tmp_path / "params.yaml"
    paper_file.write_text(yaml.safe_dump(params))
    path_fields = ("out_dir", "live_dir", "data_manifest", "cache_dir", "contact_sheet",
                   "results", "results_dir", "table", "checkpoint_dir")  # fmt: skip
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
