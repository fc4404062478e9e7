"""params.yaml -> one frozen, typed dataclass per stage.

Config flows one way: a ``params.yaml`` section per stage, optionally shrunk by its ``smoke``
sub-section, overridden by notebook parameters, validated field by field (a papermill string
"false" is rejected for a bool), then passed around as explicit arguments.
"""

from __future__ import annotations

import dataclasses
import platform
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from mmpd_core.checkpoint import git_sha

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = PROJECT_ROOT / "params.yaml"


@dataclass(frozen=True)
class ModelsStage:
    """The ``models`` stage: size, FLOPs and step time of every backbone variant."""

    variants: tuple[str, ...]
    batch_size: int
    num_points: int
    num_classes: int
    repeats: int
    seed: int
    out_dir: str


@dataclass(frozen=True)
class DataPrepStage:
    """The ``data_prep`` stage: the embedded procedural benchmark, or the real datasets."""

    source: str  # "embedded": generate the procedural benchmark; "real": use real_root
    out_dir: str  # where data, renders, captions and manifest.json go
    real_root: str  # source "real": holds ShapeNet55-34/, modelnet40_normal_resampled/, ...
    seed: int
    pretrain_train_per_class: int
    pretrain_test_per_class: int
    pretrain_points: int
    modelnet_train_per_class: int
    modelnet_test_per_class: int
    modelnet_points: int
    scan_train_per_class: int
    scan_test_per_class: int
    scan_points: int
    fewshot_ways: tuple[int, ...]
    fewshot_shots: tuple[int, ...]
    fewshot_folds: int
    fewshot_query: int
    render_views: int
    render_elevation: float
    render_resolution: int
    captioner: str  # "templates" (from shape attributes / category names) or "blip2"
    blip2_model: str  # hub id or local directory, for captioner "blip2"
    captions_per_shape: int
    contact_sheet: str  # PNG of renders for a person to look at

    def __post_init__(self):
        if self.source not in ("embedded", "real"):
            raise ValueError(f"data_prep.source must be 'embedded' or 'real', got {self.source!r}")
        if self.captioner not in ("templates", "blip2"):
            raise ValueError(
                f"data_prep.captioner must be 'templates' or 'blip2', got {self.captioner!r}"
            )


@dataclass(frozen=True)
class TeacherCacheStage:
    """The ``teacher_cache`` stage: frozen-teacher features of every view and caption."""

    teachers: tuple[dict, ...]  # specs for mmpd_core.teachers.build_teacher
    data_manifest: str
    out_dir: str
    view_stride: int  # cache every view_stride-th rendered view (1: all)
    batch_size: int
    dtype: str  # float16 | float32 (storage)


@dataclass(frozen=True)
class Schedule:
    """The optimisation fields every training config shares (Stage-1, Stage-2, fine-tuning
    recipes); ``engine.config_from`` turns any of them into an ``engine.TrainConfig``."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    min_lr: float
    grad_clip: float
    amp: str  # none | bf16


@dataclass(frozen=True)
class Stage1Stage(Schedule):
    """The ``pretrain_stage1`` stage: multi-teacher alignment (Eq. 3)."""

    model: str  # a models.VARIANTS name (ignored when ``init`` names a run)
    init: str  # "": random initialisation; else a pretraining run dir whose encoder starts here
    teachers: tuple[str, ...]  # names of cached teachers taking part (Table 11: one or all)
    data_manifest: str
    cache_dir: str
    online: bool  # run the teachers in the loop instead of reading the cache
    num_points: int
    accumulation: int
    num_workers: int
    seed: int
    out_dir: str
    live_dir: str  # dvclive directory


LOCAL_TARGETS = ("features", "points", "none")


@dataclass(frozen=True)
class Stage2Stage(Schedule):
    """``pretrain_stage2`` and its variants: masked point distillation (Eq. 4-6), the Table 4/7/8/11
    ablations, the Point-MAE baseline and joint single-stage training (all one code path)."""

    model: str  # a models.VARIANTS name, used when there is no teacher to copy the shape from
    teacher_dir: str  # a Stage-1 run dir: its encoder is the frozen teacher; "": no teacher
    init: str  # "teacher": the student starts as a copy of the teacher; "random"
    local_target: str  # "features": Eq. (4); "points": Chamfer-L2 of masked patches; "none"
    shuffle: bool  # shuffle token contents before the local decoder (positions stay)
    global_distill: bool  # Eq. (5)
    joint: bool  # add Stage-1 alignment (Eq. 3) on the same encoder, targets = its own features
    teachers: tuple[str, ...]  # joint only: cached teachers of the alignment term
    cache_dir: str
    data_manifest: str
    mask_ratio: float
    decoder_depth: int  # local decoder blocks
    decoder_heads: int
    global_decoder: str  # "transformer" | "mlp"
    global_decoder_depth: int
    num_points: int
    accumulation: int
    num_workers: int
    seed: int
    out_dir: str
    live_dir: str

    def __post_init__(self):
        if self.local_target not in LOCAL_TARGETS:
            raise ValueError(
                f"local_target must be one of {LOCAL_TARGETS}, got {self.local_target!r}"
            )
        if self.init not in ("teacher", "random"):
            raise ValueError(f"init must be 'teacher' or 'random', got {self.init!r}")
        if self.global_decoder not in ("transformer", "mlp"):
            raise ValueError(
                f"global_decoder must be 'transformer' or 'mlp', got {self.global_decoder!r}"
            )
        if self.local_target == "none" and not self.global_distill:
            raise ValueError("nothing to train: local_target 'none' and global_distill false")
        if not self.teacher_dir and not self.joint:
            if self.local_target != "points" or self.global_distill or self.init == "teacher":
                raise ValueError(
                    "without a teacher (teacher_dir '') only point reconstruction from a random "
                    "init can run (the Point-MAE baseline), unless joint is true"
                )
        if self.joint and self.teacher_dir:
            raise ValueError("joint training distils the model's own features: set teacher_dir ''")


@dataclass(frozen=True)
class FinetuneStage:
    """``finetune.ipynb``: one encoder, one dataset, one protocol, several seeds (Table 3)."""

    dataset: str  # modelnet40 | scanobjectnn | synthetic_modelnet | synthetic_scanobjectnn
    variant: str  # ScanObjectNN: obj_bg | obj_only | pb_t50_rs
    checkpoint: str  # scratch | a pretraining run dir | an encoder.safetensors | upstream .pth
    protocol: str  # full | mlp3 | linear (the last two freeze the encoder)
    model: str  # architecture for ``scratch`` and upstream checkpoints
    seeds: tuple[int, ...]
    votes: int  # augmented test passes averaged (0: none); reported beside the plain accuracy
    data_manifest: str
    num_workers: int
    recipes: dict  # per dataset family: points, groups, augmentation, optimiser, epochs
    out_dir: str  # checkpoints of full fine-tuning, runs/finetune/<tag>/seed<k>
    results_dir: str  # <tag>.json: per-seed and mean/std accuracies

    def __post_init__(self):
        if self.protocol not in ("full", "mlp3", "linear"):
            raise ValueError(f"protocol must be full, mlp3 or linear, got {self.protocol!r}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")


@dataclass(frozen=True)
class GridStage:
    """A table's classification runs (``classification``: Table 3; ``ablations``: Tables 4, 7,
    8, 11): every checkpoint x dataset x protocol, each over ``seeds``, with the ``finetune``
    section's recipes."""

    checkpoints: tuple[str, ...]  # scratch | pretraining run dirs
    datasets: tuple[str, ...]  # modelnet40 | scanobjectnn/<variant>
    protocols: tuple[str, ...]
    seeds: tuple[int, ...]
    votes: int
    results_dir: str  # one JSON per run
    out_dir: str  # checkpoints of full fine-tuning runs
    table: str  # <table>.csv: one row per run; <table>.json: the same keyed by run (a metric)


@dataclass(frozen=True)
class TsneStage:
    """The ``tsne`` stage: t-SNE of test-split global features per encoder, with silhouettes."""

    checkpoints: tuple[str, ...]
    dataset: str
    variant: str
    seed: int
    perplexity: float
    correct_only: bool  # keep only test clouds a linear probe classifies correctly
    out_dir: str  # figures: tsne_<dataset>.png / .pdf
    results: str  # silhouette scores (JSON, a DVC metric)


@dataclass(frozen=True)
class ReportStage:
    """The ``report`` stage: every paper table from the result files."""

    classification: str  # results CSV of the classification grid (Table 3)
    ablations: str  # results CSV of the ablation grid (Tables 4, 7, 8, 11)
    ablation_protocol: str
    fewshot: str
    data_manifest: str
    model: str  # backbone whose parameter count Table 5 lists
    out_dir: str


@dataclass(frozen=True)
class FewshotStage:
    """The ``fewshot`` stage (Table 1): n-way m-shot episodes for several encoders."""

    checkpoints: tuple[str, ...]  # scratch | pretraining run dirs
    ways: tuple[int, ...]
    shots: tuple[int, ...]
    folds: int  # episodes per (way, shot); the official release has 10
    protocol: str  # full (the paper) | mlp3 | linear (frozen encoder)
    model: str
    seed: int
    data_manifest: str
    recipe: dict  # a finetune.Recipe
    out_dir: str
    results_dir: str

    def __post_init__(self):
        if self.protocol not in ("full", "mlp3", "linear"):
            raise ValueError(f"protocol must be full, mlp3 or linear, got {self.protocol!r}")


@dataclass(frozen=True)
class ZeroShotStage:
    """The ``zeroshot`` stage: Table 2 on the clean classification test split."""

    checkpoint_dir: str  # a Stage-1 run's out_dir (its checkpoint names the text teacher)
    data_manifest: str
    num_points: int
    batch_size: int
    out_dir: str


# Named variants of a stage (params.yaml ``variants.<stage>.<name>``: overrides of its section)
# write to runs/<dir>/<name> and log to reports/dvclive/<dir>/<name>.
VARIANT_DIRS = {"pretrain_stage1": "stage1_variants", "pretrain_stage2": "stage2_variants"}
# ``profile: paper`` in params.yaml applies every section's (and variant's) ``paper`` part.
PROFILES = ("embedded", "paper")

STAGES: dict[str, type] = {
    "models": ModelsStage,
    "data_prep": DataPrepStage,
    "teacher_cache": TeacherCacheStage,
    "pretrain_stage1": Stage1Stage,
    "pretrain_stage2": Stage2Stage,
    "finetune": FinetuneStage,
    "fewshot": FewshotStage,
    "classification": GridStage,
    "ablations": GridStage,
    "tsne": TsneStage,
    "report": ReportStage,
    "zeroshot": ZeroShotStage,
}


def read_params(path: str | Path | None = None) -> dict:
    path = Path(path) if path else PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with open(path) as handle:
        params = yaml.safe_load(handle)
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of stage sections at the top level")
    return params


def _coerce(value, kind, where: str):
    """Check ``value`` against the annotation ``kind``; lists become tuples."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        (item_kind, _ellipsis) = typing.get_args(kind)
        return tuple(_coerce(v, item_kind, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(kind):
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
        return _coerce(value, kind, where)
    if kind is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected True/False, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{where}: expected a number (YAML floats need a dot), got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {kind}")


def build(cls: type, section: dict, where: str):
    """Instantiate the frozen dataclass ``cls`` from a plain dict, checking every field."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = set(section) - names, names - set(section)
    if unknown or missing:
        raise KeyError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    return cls(**{k: _coerce(section[k], hints[k], f"{where}.{k}") for k in names})


def load(
    stage: str, *, smoke: bool | None = None, variant: str = "", params_path=None, **overrides
):
    """The config of ``stage``: its params.yaml section, + its ``paper`` part when the
    top-level ``profile`` is ``paper``, + a named variant, + its ``smoke`` part, + overrides.

    ``variant`` names an entry of ``variants.<stage>`` (overrides of the section, with its own
    ``out_dir`` / ``live_dir``, see ``VARIANT_DIRS``). ``smoke=None`` takes the top-level
    ``smoke`` flag of params.yaml (how the DVC pipeline is shrunk for tests); overrides that
    are None are ignored (unset notebook parameters).
    """
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGES)}")
    params = read_params(params_path)
    smoke = params.get("smoke", False) if smoke is None else smoke
    if not isinstance(smoke, bool):
        raise TypeError(f"smoke must be True or False, got {smoke!r}")
    where = f"{params_path or PARAMS_FILE}:{stage}"
    profile = params.get("profile", "embedded")
    if profile not in PROFILES:
        raise ValueError(f"{where}: profile must be one of {PROFILES}, got {profile!r}")
    section = dict(params.get(stage) or {})
    smoke_part = section.pop("smoke", None) or {}
    paper_part = section.pop("paper", None) or {}
    if "seed" in {f.name for f in dataclasses.fields(STAGES[stage])}:
        section = {"seed": params.get("seed", 0), **section}  # the project-wide seed
    if profile == "paper":
        section.update(paper_part)
    if variant:
        section.update(_variant(params, stage, variant, where, profile))
    if smoke:
        section.update(smoke_part)
    section.update({k: v for k, v in overrides.items() if v is not None})
    return build(STAGES[stage], section, where)


def variant_names(stage: str, params_path=None) -> list[str]:
    """Names of the variants of ``stage`` in params.yaml (``variants.<stage>``)."""
    return list((read_params(params_path).get("variants") or {}).get(stage) or {})


def _variant(params: dict, stage: str, name: str, where: str, profile: str) -> dict:
    """The overrides of variant ``name`` (its ``paper`` part under the paper profile), with
    its own output and metrics directories."""
    known = (params.get("variants") or {}).get(stage) or {}
    if stage not in VARIANT_DIRS or name not in known:
        raise KeyError(f"{where}: unknown variant {name!r}; variants.{stage} has {sorted(known)}")
    folder = VARIANT_DIRS[stage]
    overrides = dict(known[name] or {})
    paper_part = overrides.pop("paper", None) or {}
    if profile == "paper":
        overrides.update(paper_part)
    return {
        **overrides,
        "out_dir": f"runs/{folder}/{name}",
        "live_dir": f"reports/dvclive/{folder}/{name}",
    }


def describe(cfg) -> str:
    """One block of text naming the config, code version and machine; printed by notebooks."""
    lines = [f"{type(cfg).__name__} (git {git_sha()})"]
    lines += [f"  {f.name} = {getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    lines.append(
        f"  torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'cuda: ' + device if torch.cuda.is_available() else 'cpu'}"
    )
    text = "\n".join(lines)
    print(text)
    return text


def resolve(path: str | Path) -> Path:
    """Paths in params are relative to the project root, whatever the kernel's cwd."""
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path
