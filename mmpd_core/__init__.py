"""mmpd_core: Multimodal Masked Point Distillation, the library behind the notebooks.

Importable without CUDA, data or network. The paper's core sits at the top: ``losses``
(Eq. 1-6), ``shuffle`` (masking and the token shuffle), ``stage1``, ``stage2``. Around it:
``models/`` (the backbone contract and one module per architecture), ``teachers/`` (one module
per library, and the feature cache), ``tasks/`` (classification, few-shot, zero-shot),
``data/`` (the procedural benchmark, official-layout readers, renders, captions) and the
plumbing: ``geometry``, ``layers``, ``engine``, ``checkpoint``, ``distributed``, ``config``,
``report``, ``viz``, ``tracking``, ``profiling``, ``cli``.
"""

from mmpd_core.models import MODELS, Backbone, create_model, load_encoder

__all__ = ["MODELS", "Backbone", "create_model", "load_encoder"]
__version__ = "0.1.0"
