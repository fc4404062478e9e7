"""mmpd_core: Multimodal Masked Point Distillation, the library behind the notebooks.

Importable without CUDA, data or network. The paper's core sits at the top: ``losses``
(Eq. 1-6), ``shuffle`` (masking and the token shuffle), ``stage1``, ``stage2``. Around it:
``models/`` (the backbone contract and one module per architecture), ``teachers/`` (one module
per library, and the feature cache), ``tasks/`` (classification, few-shot, zero-shot),
``data/`` (the procedural benchmark, official-layout readers, renders, captions) and the
plumbing: ``geometry``, ``layers``, ``engine``, ``checkpoint``, ``distributed``, ``config``,
``report``, ``viz``, ``tracking``, ``profiling``, ``cli``.

The names below load ``models`` (and torch) on first use, so ``python -m mmpd_core.cli
notebook``, which every DVC stage runs before its kernel imports torch, starts without it.
"""

from __future__ import annotations

import importlib

__all__ = ["MODELS", "Backbone", "create_model", "load_encoder"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("mmpd_core.models"), name)
    raise AttributeError(f"module 'mmpd_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
