"""params.yaml -> one frozen, typed dataclass per stage.

Config flows one way. ``load(stage)`` takes the stage's section of ``params.yaml`` and merges
onto it, deeply (OmegaConf), its ``cpu`` or ``paper`` part when the top-level ``profile`` names
one (``embedded``, the default, has none), a named variant (``variants.<stage>.<name>``, and
its own profile part), its ``smoke`` part when ``smoke`` is on, and the
caller's overrides (notebook parameters); derived fields are filled in (``_DERIVED``) and the
result is validated field by field into the stage's frozen dataclass (pydantic): a wrong type,
a missing or an unknown key is an error naming the file and the key. A papermill string such
as "false" is rejected for ``smoke``.

Every key ``load`` reads is recorded (``params_read``): the DVC stage running that notebook
must declare it in ``dvc.yaml`` (a test checks), so ``dvc status`` never misses a change.

Runs are referred to by name everywhere (params, tables): ``scratch``, ``stage1``, ``stage2``
or ``<stage1|stage2>:<variant>``; ``run_dir`` is the one place that maps a name to its
directory (``runs/stage2_variants/<variant>``); any other value is a path. A pretraining
stage trains ``pretrain_seeds`` independent runs of its name: ``<name>@<k>`` is the k-th
(``stage2@1`` -> ``runs/stage2/seed1``; ``@0`` is the name itself), and a claim about a
pretraining method is read across them (``seed_refs``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml
from omegaconf import OmegaConf
from pydantic import ConfigDict, TypeAdapter, ValidationError

from mmpd_core.checkpoint import git_sha

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = PROJECT_ROOT / "params.yaml"
PROFILES = ("embedded", "cpu", "paper")  # embedded: the section itself; else its part
PROFILE_PARTS = PROFILES[1:]
STRICT = ConfigDict(extra="forbid")  # unknown keys are errors


@dataclass(frozen=True)
class ModelsStage:
    """The ``models`` stage: size, FLOPs and step time of every registered model."""

    __pydantic_config__ = STRICT
    models: tuple[str, ...]  # models.MODELS names
    batch_size: int
    num_points: int
    num_classes: int
    repeats: int
    seed: int
    out_dir: str


@dataclass(frozen=True)
class DataPrepStage:
    """The ``data_prep`` stage: the embedded procedural benchmark, or the real datasets."""

    __pydantic_config__ = STRICT
    source: Literal["embedded", "real"]  # embedded: generate the procedural benchmark
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
    renders_dir: str  # "": render the shapes here; else ULIP's released renders (checked)
    captioner: Literal["templates", "blip2"]  # templates: from shape attributes / class names
    blip2_model: str  # hub id or local directory, for captioner "blip2"
    captions_per_shape: int
    caption_selection: Literal["likelihood", "clip"]  # how BLIP-2 captions are chosen
    caption_candidates: int  # BLIP-2 captions per view to choose from (selection "clip")
    caption_clip: dict  # open_clip spec (model, pretrained) that scores them
    caption_cache: str  # BLIP-2 captions logged as they are made: resumable, torchrun shards
    contact_sheet: str  # PNG of renders for a person to look at


@dataclass(frozen=True)
class TeacherCacheStage:
    """The ``teacher_cache`` stage: frozen-teacher features of every view and caption."""

    __pydantic_config__ = STRICT
    teachers: tuple[dict, ...]  # specs for mmpd_core.teachers.build_teacher
    data_manifest: str
    out_dir: str
    view_stride: int  # cache every view_stride-th rendered view (1: all)
    batch_size: int
    dtype: Literal["float16", "float32"]  # storage
    num_workers: int  # DataLoader workers decoding the rendered views
    amp: Literal["none", "bf16"]  # autocast of the teachers (GPU: bf16)


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
    amp: Literal["none", "bf16"]


def _check_warmup(schedule: Schedule) -> None:
    if not 0 <= schedule.warmup_epochs <= schedule.epochs:
        raise ValueError(
            f"warmup_epochs {schedule.warmup_epochs} must lie in [0, {schedule.epochs}]"
        )


def _check_seeds(cfg) -> None:
    if cfg.pretrain_seeds < 1:
        raise ValueError(f"pretrain_seeds must be at least 1, got {cfg.pretrain_seeds}")


@dataclass(frozen=True)
class Stage1Stage(Schedule):
    """The ``pretrain_stage1`` stage: multi-teacher alignment (Eq. 3)."""

    __pydantic_config__ = STRICT
    model: str  # a models.MODELS name (ignored when ``init`` names a run)
    init: str  # "": random initialisation; else a run (name or path) whose encoder starts here
    teachers: tuple[str, ...]  # names of cached teachers taking part (Table 11: one or all)
    caption_top_k: int  # draw a shape's caption among its first k (0: all; paper: top-1)
    data_manifest: str
    cache_dir: str
    online: bool  # run the teachers in the loop instead of reading the cache
    captions: Literal["named", "unnamed"]  # unnamed: never the category (Table 2, captions ✗)
    num_points: int
    accumulation: int
    num_workers: int
    pretrain_seeds: int  # independent runs of this name (seeds seed, seed+1, ...)
    seed: int
    run: str  # derived: the run's name (stage1, stage1:clip_like, ...)
    out_dir: str  # derived from the run name (run_dir)
    live_dir: str  # dvclive directory, derived likewise

    def __post_init__(self):
        _check_seeds(self)


@dataclass(frozen=True)
class Stage2Stage(Schedule):
    """``pretrain_stage2`` and its variants: masked point distillation (Eq. 4-6), the Table 4/7/8/11
    ablations, the Point-MAE baseline and joint single-stage training (all one code path)."""

    __pydantic_config__ = STRICT
    model: str  # a models.MODELS name, used when there is no teacher to copy the shape from
    teacher: str  # a Stage-1 run (name or path): its frozen encoder gives the targets; "": none
    init: Literal["teacher", "random"]  # the student starts as a copy of the teacher, or fresh
    local_target: Literal["features", "points", "none"]  # Eq. (4) | Chamfer of masked patches
    shuffle: bool  # shuffle token contents before the local decoder (positions stay)
    global_distill: bool  # Eq. (5)
    joint: bool  # add Stage-1 alignment (Eq. 3) on the same encoder, targets = its own features
    teachers: tuple[str, ...]  # joint only: cached teachers of the alignment term
    cache_dir: str
    data_manifest: str
    mask_ratio: float
    decoder_depth: int  # local decoder blocks
    decoder_heads: int
    global_decoder: Literal["transformer", "mlp"]
    global_decoder_depth: int
    distill_scale: int | None  # hierarchical encoders: the level distilled (None: the model's own)
    num_points: int
    accumulation: int
    num_workers: int
    pretrain_seeds: int  # independent runs of this name (seeds seed, seed+1, ...)
    seed: int
    run: str  # derived: the run's name (stage2, stage2:no_shuffle, ...)
    out_dir: str
    live_dir: str

    def __post_init__(self):
        _check_seeds(self)
        if self.local_target == "none" and not self.global_distill:
            raise ValueError("nothing to train: local_target 'none' and global_distill false")
        if not self.teacher and not self.joint:
            if self.local_target != "points" or self.global_distill or self.init == "teacher":
                raise ValueError(
                    "without a teacher (teacher '') only point reconstruction from a random "
                    "init can run (the Point-MAE baseline), unless joint is true"
                )
        if self.joint and self.teacher:
            raise ValueError("joint training distils the model's own features: set teacher ''")


@dataclass(frozen=True)
class Recipe(Schedule):
    """How an encoder is transferred to one dataset family: ``transfer.recipe`` merged with
    ``transfer.datasets.<family>``. The ``Schedule`` fields drive full fine-tuning."""

    __pydantic_config__ = STRICT
    num_points: int
    fps_points: int  # >0: upstream's per-step input, a random num_points of an FPS of this many
    vote: bool  # test-time voting on this family (upstream: ModelNet40 only)
    augment: Literal["scale_translate", "rotate_up", "none"]
    drop_path_rate: float
    head_epochs: int  # frozen protocols: full-batch epochs of the head on cached features
    head_lr: float
    # per architecture: its config at this cloud size (num_groups; M2AE pooling, group_sizes),
    # and any setting of its own recipe (PointMamba's drop_path_rate), over the family's
    grouping: dict[str, dict[str, int | float | str | tuple[int, ...]]]


Protocol = Literal["full", "mlp3", "linear"]
# + ``pointgst``: the encoder frozen, spectral adapters, cls and head trained (Point-MAE only)
GridProtocol = Literal["full", "mlp3", "linear", "pointgst"]


@dataclass(frozen=True)
class PointGSTAdapters:
    """The ``pointgst`` protocol's adapters (``peft.pointgst.PointGSTConfig`` fields); ``local``
    must divide the recipe's Point-MAE ``num_groups``."""

    __pydantic_config__ = STRICT
    rank: int
    local: int


@dataclass(frozen=True)
class ClassificationStage:
    """Every checkpoint x dataset x protocol, each over ``seeds`` (Table 3: ``classification``;
    Tables 4, 7, 8, 11: ``ablations``; one cell: ``finetune``, the notebook run by hand)."""

    __pydantic_config__ = STRICT
    checkpoints: tuple[str, ...]  # scratch | run names | encoder files | upstream .pth files
    datasets: tuple[str, ...]  # modelnet40 | scanobjectnn/<subset> (synthetic_*: embedded only)
    protocols: tuple[GridProtocol, ...]
    seeds: tuple[int, ...]
    votes: int  # augmented test passes averaged where a recipe votes (0: none), beside the plain
    model: str  # architecture of ``scratch`` and upstream checkpoints
    data_manifest: str
    num_workers: int
    recipes: dict[str, Recipe]  # per dataset family
    out_dir: str  # full fine-tuning runs (checkpoints while they run, dvclive)
    results_dir: str  # one JSON per (dataset, checkpoint, protocol)
    table: str  # <table>.csv / .json: one row per run; "": none
    reuse: str  # another grid's results_dir: its cells that ran exactly this are copied; "": none
    # checkpoint -> {protocols: [...], datasets: [...]}: that encoder runs only those cells
    only: dict[str, dict[str, tuple[str, ...]]]
    # protocol -> {checkpoints: [...], datasets: [...]}: that protocol runs only those cells
    protocol_only: dict[str, dict[str, tuple[str, ...]]]
    pointgst: PointGSTAdapters

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        for checkpoint, part in self.only.items():  # a checkpoint the grid lacks is ignored
            if set(part) - {"protocols", "datasets"}:
                raise ValueError(f"only[{checkpoint!r}] names protocols / datasets, got {part}")
        for protocol, part in self.protocol_only.items():
            if set(part) - {"checkpoints", "datasets"}:
                raise ValueError(
                    f"protocol_only[{protocol!r}] names checkpoints / datasets, got {part}"
                )


@dataclass(frozen=True)
class FewshotStage:
    """The ``fewshot`` stage (Table 1): n-way m-shot episodes for several encoders."""

    __pydantic_config__ = STRICT
    checkpoints: tuple[str, ...]
    ways: tuple[int, ...]
    shots: tuple[int, ...]
    folds: int  # episodes per (way, shot); the official release has 10
    protocol: Protocol  # full (the paper) | mlp3 | linear (frozen encoder)
    model: str
    seed: int
    data_manifest: str
    recipe: Recipe  # the modelnet40 recipe with this section's ``recipe`` on top
    out_dir: str
    results_dir: str


@dataclass(frozen=True)
class TsneStage:
    """The ``tsne`` stage: t-SNE of test-split global features per encoder, with silhouettes."""

    __pydantic_config__ = STRICT
    checkpoints: tuple[str, ...]
    dataset: str  # modelnet40 | scanobjectnn/<subset>
    seed: int
    perplexity: float
    correct_only: bool  # keep only test clouds a linear probe classifies correctly
    model: str
    data_manifest: str
    recipes: dict[str, Recipe]
    out_dir: str  # figures: tsne_<dataset>.png / .pdf
    results: str  # silhouette scores (JSON, a DVC metric)


@dataclass(frozen=True)
class ReportStage:
    """The ``report`` stage: every paper table from the result files."""

    __pydantic_config__ = STRICT
    classification: str  # results CSV of the classification grid (Table 3)
    ablations: str  # results CSV of the ablation grid (Tables 4, 7, 8, 11)
    ablation_protocol: Protocol
    fewshot: str
    zeroshot: str  # per-run zero-shot accuracies (the claims table)
    segmentation: str  # the segmentation stage's results folder (the claims table)
    detection: str  # the detection stage's results folder (the claims table)
    model: str  # backbone whose parameter count Table 5 lists
    out_dir: str


@dataclass(frozen=True)
class ZeroShotStage:
    """The ``zeroshot`` stage: Table 2 on the clean classification test split."""

    __pydantic_config__ = STRICT
    checkpoints: tuple[str, ...]  # Stage-1 runs (each checkpoint names its text teacher)
    data_manifest: str
    num_points: int
    batch_size: int
    templates: Literal["mmpd20", "ulip64"]  # prompt templates (paper: ULIP's 64)
    out_dir: str
    results: str  # per-run accuracies (JSON)


@dataclass(frozen=True)
class SelectionStage:
    """``selection`` (``mmpd_core.selection``, ``make select``): recipe candidates scored on a
    validation split of the training shapes."""

    __pydantic_config__ = STRICT
    val_fraction: float  # of each class's training shapes, held out
    datasets: tuple[str, ...]
    seeds: int  # independent runs per candidate
    seed: int
    pretraining: dict[str, tuple[dict, ...]]  # Stage-2 run name -> candidates (overrides)
    encoder: str  # the run whose fine-tuning recipe candidates are scored
    transfer: tuple[dict, ...]  # candidates: recipe overrides
    model: str
    data_manifest: str
    recipes: dict[str, Recipe]
    out_dir: str  # scores and choices: <out_dir>/<profile>/
    runs_dir: str  # the candidates' runs (not tracked)

    def __post_init__(self):
        stages = {run.partition(":")[0] for run in self.pretraining}
        if stages - {"stage2"}:
            raise ValueError(f"selection.pretraining: Stage-2 runs only, got {sorted(stages)}")


@dataclass(frozen=True)
class DenseDataStage:
    """The ``dense_data`` stage: procedural rooms and part-labelled objects in the S3DIS and
    ShapeNetPart layouts, or the real datasets (checked)."""

    __pydantic_config__ = STRICT
    source: Literal["embedded", "real"]
    out_dir: str
    real_root: str  # source real: S3DIS (raw release or Area_<k>_<room>.npy) and ShapeNetPart
    seed: int
    areas: int  # Area_1 .. Area_<areas>; Area_5 is the test area
    rooms_per_area: int
    room_density: float  # points per square metre of surface
    part_train_per_category: int
    part_val_per_category: int
    part_test_per_category: int
    part_points: int
    figure: str

    def __post_init__(self):
        if self.areas < 5:
            raise ValueError(f"dense_data.areas must reach the test area 5, got {self.areas}")


@dataclass(frozen=True)
class DenseRecipe(Schedule):
    """Fine-tuning one segmentation task: the schedule, the clouds and the grouping (0: the
    model's own), drop path, and (semantic) the block protocol."""

    __pydantic_config__ = STRICT
    num_points: int  # per training block / shape and per test chunk
    num_groups: int
    group_size: int
    drop_path_rate: float
    block_size: float = 1.0  # metres (semantic)
    stride: float = 0.5  # whole-room test windows (semantic)
    min_block_points: int = 1024  # a training block holds more points than this (semantic)
    sample_rate: float = 1.0  # training blocks per epoch = sample_rate * points / num_points
    votes: int = 3  # whole-room test passes, per-point majority (semantic)

    def __post_init__(self):
        _check_warmup(self)


@dataclass(frozen=True)
class SegmentationStage:
    """The ``segmentation`` stage: semantic (S3DIS protocol) and part segmentation of every
    encoder over seeds, Table 6 and the part-segmentation table."""

    __pydantic_config__ = STRICT
    model: str  # architecture of a scratch encoder
    data_manifest: str
    checkpoints: tuple[str, ...]  # run names (config.run_dir) or "scratch"
    seeds: tuple[int, ...]
    tasks: tuple[Literal["semantic", "part"], ...]
    test_area: int
    head: dict  # SegmentationHead widths: propagation, hidden, category_dim, dropout
    semantic: DenseRecipe
    part: DenseRecipe
    num_workers: int
    out_dir: str  # per-run checkpoints while training (deleted when a run ends)
    results_dir: str
    tables_dir: str
    figure: str

    def __post_init__(self):
        if not self.seeds or not self.checkpoints:
            raise ValueError("segmentation needs at least one seed and one checkpoint")


@dataclass(frozen=True)
class DetectionRecipe(Schedule):
    """Fine-tuning the detector on ScanNet-layout scenes: the schedule, the points per scene
    and the encoder's grouping over them (0: the model's own), drop path, and how often each
    training scene is drawn per epoch (a fresh sample and augmentation each time)."""

    __pydantic_config__ = STRICT
    num_points: int
    num_groups: int
    group_size: int
    drop_path_rate: float
    repeats: int = 1

    def __post_init__(self):
        _check_warmup(self)
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")


@dataclass(frozen=True)
class DetectionStage:
    """The ``detection`` stage: a 3DETR-style detector fine-tuned from every encoder over
    seeds, the detection table and a figure of boxes over a validation scene."""

    __pydantic_config__ = STRICT
    model: str  # architecture of a scratch encoder
    data_manifest: str
    checkpoints: tuple[str, ...]  # run names (config.run_dir), "scratch" or "3detr"
    seeds: tuple[int, ...]
    detector: dict  # Detector3D sizes: num_queries, dim, depth, heads, dropout
    threedetr: dict  # ThreeDETREncoder sizes (the "3detr" checkpoint: 3DETR's own encoder)
    recipe: DetectionRecipe
    nms_iou: float  # class-aware 3D NMS over the predicted boxes (3DETR / VoteNet: 0.25)
    conf_thresh: float  # objectness below this drops a box before NMS (0.05)
    num_workers: int
    out_dir: str  # per-run checkpoints while training (deleted when a run ends)
    results_dir: str
    tables_dir: str
    figure: str

    def __post_init__(self):
        if not self.seeds or not self.checkpoints:
            raise ValueError("detection needs at least one seed and one checkpoint")
        if not 0 < self.nms_iou <= 1 or not 0 <= self.conf_thresh < 1:
            raise ValueError(f"nms_iou must lie in (0, 1] and conf_thresh in [0, 1), got "
                             f"{self.nms_iou}, {self.conf_thresh}")  # fmt: skip


STAGES: dict[str, type] = {
    "models": ModelsStage,
    "data_prep": DataPrepStage,
    "teacher_cache": TeacherCacheStage,
    "pretrain_stage1": Stage1Stage,
    "pretrain_stage2": Stage2Stage,
    "finetune": ClassificationStage,
    "classification": ClassificationStage,
    "ablations": ClassificationStage,
    "fewshot": FewshotStage,
    "tsne": TsneStage,
    "report": ReportStage,
    "zeroshot": ZeroShotStage,
    "selection": SelectionStage,
    "dense_data": DenseDataStage,
    "segmentation": SegmentationStage,
    "detection": DetectionStage,
}

# ---------------------------------------------------------------------------- run names

RUNS = {"stage1": "pretrain_stage1", "stage2": "pretrain_stage2"}  # run name -> its stage


SEED_MARK = "@"  # stage2@1: the second independent run of stage2


def split_seed(ref: str) -> tuple[str, int]:
    """``stage2:no_shuffle@1`` -> (``stage2:no_shuffle``, 1); no mark -> (ref, 0)."""
    name, mark, k = ref.rpartition(SEED_MARK)
    if not mark or ref.partition(":")[0].partition(SEED_MARK)[0] not in RUNS:
        return ref, 0
    if not k.isdigit():
        raise ValueError(f"run {ref!r}: the seed after {SEED_MARK!r} must be a number")
    return name, int(k)


def seeded(ref: str, k: int) -> str:
    """The k-th independent run of a run name (``stage2``, 1 -> ``stage2@1``); scratch, "" and
    paths have one run and come back unchanged."""
    name, _ = split_seed(ref)
    if k == 0 or name.partition(":")[0] not in RUNS:
        return name if name.partition(":")[0] in RUNS else ref
    return f"{name}{SEED_MARK}{k}"


def run_dir(ref: str) -> str:
    """The directory of a run name (``stage2`` -> ``runs/stage2``; ``stage2:no_shuffle`` ->
    ``runs/stage2_variants/no_shuffle``; ``stage2@1`` -> ``runs/stage2/seed1``); ``scratch``,
    "" and paths come back unchanged."""
    ref, k = split_seed(ref)
    name, _, variant = ref.partition(":")
    if name not in RUNS:
        return ref
    base = f"runs/{name}_variants/{variant}" if variant else f"runs/{name}"
    return f"{base}/seed{k}" if k else base


def live_dir(ref: str) -> str:
    """The dvclive directory of a pretraining run name (its k-th seed: under ``seeds/``)."""
    ref, k = split_seed(ref)
    name, _, variant = ref.partition(":")
    base = (
        f"reports/dvclive/{name}_variants/{variant}" if variant else f"reports/dvclive/{RUNS[name]}"
    )
    return f"{base}/seeds/seed{k}" if k else base


SEEDS_FILE = "seeds.json"  # in a run's directory: how many independent runs it holds


def seed_refs(ref: str) -> list[str]:
    """Every independent run of a run name, as its stage recorded them (``runs/<name>/
    seeds.json``): ``stage2`` -> [``stage2``, ``stage2@1``]; one for scratch, paths, ``@k``."""
    name, k = split_seed(ref)
    record = resolve(run_dir(name)) / SEEDS_FILE
    if k or name.partition(":")[0] not in RUNS or not record.is_file():
        return [ref]
    count = len(json.loads(record.read_text())["seeds"])
    return [seeded(name, i) for i in range(count)]


def seed_runs(cfg):
    """A pretraining config per independent run: seed ``seed + k``, the run ``<run>@k``'s
    directories, and its teacher / init runs taken at the same k (Stage-2 seed k distils
    Stage-1 seed k)."""
    runs = []
    for k in range(cfg.pretrain_seeds):
        ref = seeded(cfg.run, k)
        fields = {"seed": cfg.seed + k, "out_dir": run_dir(ref), "live_dir": live_dir(ref)}
        for key in ("teacher", "init"):  # run names follow the seed; paths, "" and modes stay
            value = getattr(cfg, key, "")
            if value and value.partition(":")[0] in RUNS:
                fields[key] = seeded(value, k)
        runs.append(dataclasses.replace(cfg, **fields))
    return runs


def run_name(stage: str, variant: str = "") -> str:
    """The name of a pretraining stage's run (``pretrain_stage2``, ``no_shuffle`` ->
    ``stage2:no_shuffle``)."""
    base = {v: k for k, v in RUNS.items()}[stage]
    return f"{base}:{variant}" if variant else base


def dataset_key(dataset: str, subset: str) -> str:
    """``scanobjectnn`` + ``pb_t50_rs`` -> ``scanobjectnn/pb_t50_rs``; ModelNet40 has none."""
    if "/" in dataset or "scanobjectnn" not in dataset:
        return dataset
    return f"{dataset}/{subset}"


# ---------------------------------------------------------------------------- reading


class _Params:
    """params.yaml, recording every dotted key that is read."""

    def __init__(self, data: dict, path: Path):
        self.data, self.path, self.read = data, path, []

    def get(self, dotted: str, default=None):
        self.read.append(dotted)
        node = self.data
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return copy.deepcopy(node)


def read_params(path: str | Path | None = None) -> dict:
    path = Path(path) if path else PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with open(path) as handle:
        params = yaml.safe_load(handle)
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of stage sections at the top level")
    return params


def merge(*parts: dict) -> dict:
    """Deep merge of plain dicts, later parts winning; lists are replaced, not concatenated."""
    return OmegaConf.to_container(OmegaConf.merge(*(OmegaConf.create(p) for p in parts)))


def _section(params: _Params, name: str, profile: str, smoke: bool, variant: str = "") -> dict:
    """A section with its profile part, a variant (and its profile part) and its smoke part
    merged in."""
    section = params.get(name) or {}
    base = {k: v for k, v in section.items() if k not in ("smoke", *PROFILE_PARTS)}
    parts = [base, (section.get(profile) or {}) if profile in PROFILE_PARTS else {}]
    if variant:
        known = (params.data.get("variants") or {}).get(name) or {}
        if name not in RUNS.values() or variant not in known:
            raise KeyError(
                f"{params.path}:{name}: unknown variant {variant!r}; variants.{name} has "
                f"{sorted(known)}"
            )
        overrides = params.get(f"variants.{name}.{variant}") or {}
        parts.append({k: v for k, v in overrides.items() if k not in PROFILE_PARTS})
        parts.append((overrides.get(profile) or {}) if profile in PROFILE_PARTS else {})
    parts.append((section.get("smoke") or {}) if smoke else {})
    return merge(*parts)


def _transfer(params, profile, smoke) -> dict:
    """The ``transfer`` section with the per-family recipes merged: {model, data_manifest,
    num_workers, recipes: {family: recipe}}."""
    transfer = _section(params, "transfer", profile, smoke)
    recipe = transfer.pop("recipe")
    families = transfer.pop("datasets")
    transfer["recipes"] = {family: merge(recipe, part) for family, part in families.items()}
    return transfer


def _derive_finetune(section: dict, transfer: dict) -> dict:
    """The notebook's one cell (dataset, subset, checkpoint, protocol) as a grid."""
    cell = {
        "datasets": [dataset_key(section.pop("dataset"), section.pop("subset"))],
        "checkpoints": [section.pop("checkpoint")],
        "protocols": [section.pop("protocol")],
        "table": "",
        "reuse": "",
        "only": {},
        "protocol_only": {},
    }
    return {**section, **cell, **transfer}


def _derive_fewshot(section: dict, transfer: dict) -> dict:
    recipe = merge(transfer["recipes"]["modelnet40"], section.pop("recipe", None) or {})
    return {**section, "recipe": recipe, "model": transfer["model"], **_keep(transfer)}


def _keep(transfer: dict, keys=("data_manifest",)) -> dict:
    return {k: transfer[k] for k in keys}


_DERIVED = {  # stage -> (section, transfer) -> the dataclass's fields
    "finetune": _derive_finetune,
    "classification": lambda s, t: {**s, **t},
    "ablations": lambda s, t: {**s, **t},
    "fewshot": _derive_fewshot,
    "tsne": lambda s, t: {
        **{k: v for k, v in s.items() if k != "subset"},
        "dataset": dataset_key(s["dataset"], s.get("subset", "")),
        **{k: t[k] for k in ("model", "data_manifest", "recipes")},
    },
    "report": lambda s, t: {**s, "model": t["model"]},
    "selection": lambda s, t: {**s, **{k: t[k] for k in ("model", "data_manifest", "recipes")}},
}


def _load(params: _Params, stage: str, smoke, variant: str, overrides: dict):
    where = f"{params.path}:{stage}"
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGES)}")
    smoke = params.get("smoke", False) if smoke is None else smoke
    if not isinstance(smoke, bool):
        raise TypeError(f"smoke must be True or False, got {smoke!r}")
    profile = params.get("profile", "embedded")
    if profile not in PROFILES:
        raise ValueError(f"{where}: profile must be one of {PROFILES}, got {profile!r}")
    cls = STAGES[stage]
    fields = {f.name for f in dataclasses.fields(cls)}
    section = _section(params, stage, profile, smoke, variant)
    if "seed" in fields:
        section = {"seed": params.get("seed", 0), **section}  # the project-wide seed
    if stage in RUNS.values():  # pretraining: the run's directories follow from its name
        name = run_name(stage, variant)
        section.update(run=name, out_dir=run_dir(name), live_dir=live_dir(name))
    section = merge(section, {k: v for k, v in overrides.items() if v is not None})
    if stage in _DERIVED:
        section = _DERIVED[stage](section, _transfer(params, profile, smoke))
    return validate(cls, section, where)


def validate(cls: type, values: dict, where: str):
    """The frozen dataclass ``cls`` from plain values; a ValueError names every bad key."""
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as err:
        problems = [
            f"{'.'.join(map(str, e['loc'])) or '(section)'}: {e['msg']}" for e in err.errors()
        ]
        raise ValueError(f"{where}: " + "; ".join(problems)) from None


def load(
    stage: str,
    *,
    smoke: bool | None = None,
    variant: str = "",
    profile: str | None = None,
    params_path=None,
    **overrides,
):
    """The config of ``stage`` (see the module docstring). ``smoke=None`` takes the top-level
    ``smoke`` flag of params.yaml (how the DVC pipeline is shrunk for tests), ``profile=None``
    its ``profile``; overrides that are None are ignored (unset notebook parameters)."""
    path = Path(params_path) if params_path else PARAMS_FILE
    data = read_params(path)
    if profile is not None:  # instead of params.yaml's own (tools, tests)
        data = {**data, "profile": profile}
    return _load(_Params(data, path), stage, smoke, variant, overrides)


def variant_group(variants: str) -> list[str]:
    """The names of a comma-separated group of variants (a notebook's ``-p variant a,b``);
    "" is the stage's own run."""
    return [name.strip() for name in variants.split(",")]


def load_group(stage: str, variants: str = "", *, smoke: bool | None = None) -> dict:
    """{name: ``load(stage, smoke=smoke, variant=name)``} for each name of ``variants``
    (``variant_group``), in order: what one pretraining notebook runs in turn."""
    return {name: load(stage, smoke=smoke, variant=name) for name in variant_group(variants)}


def params_read(stage: str, *, variant: str = "", params_path=None) -> set[str]:
    """Every params.yaml key ``load(stage, variant=...)`` reads, under every profile and with
    smoke on and off: what the DVC stage must declare."""
    path = Path(params_path) if params_path else PARAMS_FILE
    data = read_params(path)
    keys = set()
    for profile in PROFILES:
        for smoke in (False, True):
            params = _Params({**data, "profile": profile, "smoke": smoke}, path)
            _load(params, stage, None, variant, {})
            keys.update(params.read)
    return keys


def variant_names(stage: str, params_path=None) -> list[str]:
    """Names of the variants of ``stage`` in params.yaml (``variants.<stage>``)."""
    return list((read_params(params_path).get("variants") or {}).get(stage) or {})


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


def resolve_run(ref: str) -> Path:
    """The directory (or file) of a run name or path (``stage2:no_shuffle``, ``runs/x``)."""
    return resolve(run_dir(ref))
