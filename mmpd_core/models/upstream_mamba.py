"""PointMamba upstream checkpoints (LMD0311/PointMamba) through an explicit key map.

Both layouts are whole training checkpoints (``base_model``, ``optimizer``, ``epoch``,
``metrics``, ``best_metrics``), with ``module.`` on every key when saved from DataParallel
(the documented single-process launch):

- pretraining (``Point_MAE_Mamba_serializationV2``): the encoder under ``MAE_encoder.``
  (``encoder``, ``pos_embed``, ``blocks.layers.N.{norm,mixer}``, ``blocks.norm_f``,
  ``OrderScale_{gamma,beta}_{1,2}``) and the decoder (``mask_token``, ``decoder_pos_embed``,
  ``MAE_decoder``, ``increase_dim``), which an encoder deliberately does not load; the head
  stays initialised;
- fine-tuning (``PointMambaScan``): the same encoder keys without ``MAE_encoder.`` and
  ``cls_head_finetune.{0,1,4,5,8}.*`` (a head of another class count is skipped, reported).

Renamed here: ``encoder`` -> ``tokenizer``, ``blocks.layers.N`` -> ``blocks.N``,
``blocks.norm_f`` -> ``norm``, ``OrderScale_gamma_1`` -> ``order_indicators.0.gamma`` (and
so on), ``cls_head_finetune`` -> ``head``. A checkpoint with a cls token (``use_cls_token``
True) has keys this model lacks and fails, naming them.
"""

from __future__ import annotations

from pathlib import Path

from mmpd_core.models.upstream import (
    Layout,
    LoadReport,
    apply_layout,
    read_checkpoint,
    strip_module_prefix,
)

# (checkpoint-key pattern, model-key template) of the encoder; the first match wins.
_ENCODER_RULES = [
    (r"encoder\.(first_conv|second_conv)\.(\d+)\.(.+)", r"tokenizer.\1.\2.\3"),
    (r"pos_embed\.(0|2)\.(weight|bias)", r"pos_embed.\1.\2"),
    (r"blocks\.layers\.(\d+)\.(norm|mixer)\.(.+)", r"blocks.\1.\2.\3"),
    (r"blocks\.norm_f\.(weight|bias)", r"norm.\1"),
    (r"OrderScale_(gamma|beta)_1", r"order_indicators.0.\1"),
    (r"OrderScale_(gamma|beta)_2", r"order_indicators.1.\1"),
]
_FINETUNE_RULES = [*_ENCODER_RULES, (r"cls_head_finetune\.(\d+)\.(.+)", r"head.\1.\2")]
_PRETRAIN_RULES = [(r"MAE_encoder\." + pattern, target) for pattern, target in _ENCODER_RULES]
_DECODER = r"(mask_token|decoder_pos_embed\..+|MAE_decoder\..+|increase_dim\..+)"

LAYOUTS = {
    "pretrain": Layout(
        "pretrain",
        _PRETRAIN_RULES,
        skip=[(_DECODER, "pretraining decoder, not part of the encoder")],
    ),
    "finetune": Layout("finetune", _FINETUNE_RULES),
}


def checkpoint_layout(state: dict) -> str:
    """``pretrain`` when the file holds ``MAE_encoder.*`` keys, else ``finetune``."""
    pretrain = any(strip_module_prefix(k).startswith("MAE_encoder.") for k in state)
    return "pretrain" if pretrain else "finetune"


def load_mamba_checkpoint(model, path: str | Path) -> LoadReport:
    """Load an upstream PointMamba checkpoint (either layout) into a ``PointMamba``. Strict:
    raises ``ValueError`` naming every unmapped, ambiguous or missing key and every shape
    mismatch."""
    path = Path(path)
    raw = read_checkpoint(path)
    return apply_layout(model, path, raw, LAYOUTS[checkpoint_layout(raw["state"])], "PointMamba")
