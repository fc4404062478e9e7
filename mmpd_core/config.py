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
class Stage1Stage:
    """The ``pretrain_stage1`` stage: multi-teacher alignment (Eq. 3)."""

    model: str  # a models.VARIANTS name
    teachers: tuple[str, ...]  # names of cached teachers taking part (Table 11: one or all)
    data_manifest: str
    cache_dir: str
    online: bool  # run the teachers in the loop instead of reading the cache
    num_points: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    min_lr: float
    grad_clip: float
    accumulation: int
    amp: str
    num_workers: int
    seed: int
    out_dir: str


@dataclass(frozen=True)
class ZeroShotStage:
    """The ``zeroshot`` stage: Table 2 on the clean classification test split."""

    checkpoint_dir: str  # a Stage-1 run's out_dir (its checkpoint names the text teacher)
    data_manifest: str
    num_points: int
    batch_size: int
    out_dir: str


STAGES: dict[str, type] = {
    "models": ModelsStage,
    "data_prep": DataPrepStage,
    "teacher_cache": TeacherCacheStage,
    "pretrain_stage1": Stage1Stage,
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


def load(stage: str, *, smoke: bool | None = None, params_path=None, **overrides):
    """The config of ``stage``: its params.yaml section, + its ``smoke`` part, + overrides.

    ``smoke=None`` takes the top-level ``smoke`` flag of params.yaml (how the DVC pipeline
    is shrunk for tests); overrides that are None are ignored (unset notebook parameters).
    """
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGES)}")
    params = read_params(params_path)
    smoke = params.get("smoke", False) if smoke is None else smoke
    if not isinstance(smoke, bool):
        raise TypeError(f"smoke must be True or False, got {smoke!r}")
    where = f"{params_path or PARAMS_FILE}:{stage}"
    section = dict(params.get(stage) or {})
    smoke_part = section.pop("smoke", None) or {}
    if "seed" in {f.name for f in dataclasses.fields(STAGES[stage])}:
        section = {"seed": params.get("seed", 0), **section}  # the project-wide seed
    if smoke:
        section.update(smoke_part)
    section.update({k: v for k, v in overrides.items() if v is not None})
    return build(STAGES[stage], section, where)


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
