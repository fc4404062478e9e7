"""mmpd_core: Multimodal Masked Point Distillation, the library behind the notebooks.

Importable without CUDA, data or network. One module per concept: ``geometry`` (FPS, kNN,
grouping, Chamfer), ``layers`` and ``models`` (the point transformer), ``losses`` (Eq. 1-6),
``shuffle`` (masking and token shuffle), ``checkpoint``, ``upstream`` (released Point-MAE
weights), ``config`` (params.yaml), ``profiling``.
"""

from mmpd_core.models import VARIANTS, ModelConfig, PointTransformer, create_model

__all__ = ["VARIANTS", "ModelConfig", "PointTransformer", "create_model"]
__version__ = "0.1.0"
