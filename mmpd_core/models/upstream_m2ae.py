"""Point-M2AE upstream checkpoints (ZrrSkywalker/Point-M2AE) through an explicit key map.

Both layouts are whole training checkpoints (``base_model``, ``optimizer``, ``epoch``,
``metrics``, ``best_metrics``):

- pretraining, bare keys: ``h_encoder.{token_embed,encoder_pos_embeds,encoder_blocks}.*`` (the
  encoder), ``h_encoder.encoder_norms.*`` and the decoder (``mask_token``, ``h_decoder.*``,
  ``decoder_pos_embeds.*``, ``token_prop.*``, ``decoder_norm.*``, ``rec_head.*``). A
  ``PointM2AEPretrain`` loads all of it; a ``PointM2AE`` encoder skips the per-scale norms
  (pretraining only: the fine-tune model replaces them by one final ``norm``) and the decoder
  (not part of the encoder), and keeps its ``norm`` and head initialised;
- fine-tuning, saved from DataParallel (``module.``): the encoder keys, ``norm.*`` and
  ``cls_head_finetune.{0,1,4,5,8}.*`` (a head of another class count is skipped, reported).

Older released files name the token embeddings ``MAE_encoder.encoders.{i}.*`` (Point-M2AE
issue #5); that prefix maps unambiguously onto ``token_embed.{i}`` and is accepted. Any other
key (older names whose layout is not known, a pretrain file that is not this model, issue
#16) fails with every such key named, as does a model key filled by two checkpoint keys.
"""

from __future__ import annotations

from pathlib import Path

from mmpd_core.models.point_m2ae import PointM2AE
from mmpd_core.models.point_m2ae_pretrain import PointM2AEPretrain
from mmpd_core.models.upstream import (
    Layout,
    LoadReport,
    apply_layout,
    read_checkpoint,
    strip_module_prefix,
)

_CONV = r"(first_conv|second_conv)\.(\d+)\.(.+)"
# (checkpoint-key pattern, model-key template) of the encoder; the first match wins.
_ENCODER_RULES = [
    (r"h_encoder\.token_embed\.(\d+)\." + _CONV, r"stages.\1.tokenizer.\2.\3.\4"),
    (r"MAE_encoder\.encoders\.(\d+)\." + _CONV, r"stages.\1.tokenizer.\2.\3.\4"),  # issue #5
    (r"h_encoder\.encoder_pos_embeds\.(\d+)\.(0|2)\.(weight|bias)", r"stages.\1.pos_embed.\2.\3"),
    (r"h_encoder\.encoder_blocks\.(\d+)\.blocks\.(\d+)\.(.+)", r"stages.\1.blocks.\2.\3"),
]
_FINETUNE_RULES = [
    *_ENCODER_RULES,
    (r"norm\.(weight|bias)", r"norm.\1"),
    (r"cls_head_finetune\.(\d+)\.(.+)", r"head.\1.\2"),
]
_DECODER_RULES = [
    (r"h_encoder\.encoder_norms\.(\d+)\.(weight|bias)", r"encoder_norms.\1.\2"),
    (r"mask_token", "mask_token"),
    (r"h_decoder\.(\d+)\.blocks\.(\d+)\.(.+)", r"decoder_blocks.\1.\2.\3"),
    (r"decoder_pos_embeds\.(\d+)\.(0|2)\.(weight|bias)", r"decoder_pos_embeds.\1.\2.\3"),
    (r"token_prop\.(\d+)\.fuse\.net\.(\d+)\.(.+)", r"propagation.\1.fuse.\2.\3"),
    (
        r"token_prop\.(\d+)\.extraction\.operation\.(\d+)\.(net1|net2)\.(\d+)\.(.+)",
        r"propagation.\1.blocks.\2.\3.\4.\5",
    ),
    (r"decoder_norm\.(weight|bias)", r"decoder_norm.\1"),
    (r"rec_head\.(weight|bias)", r"rec_head.\1"),
]
_ENCODER_NORMS = r"h_encoder\.encoder_norms\..+"
_DECODER = r"(mask_token|h_decoder\..+|decoder_pos_embeds\..+|token_prop\..+|decoder_norm\..+|rec_head\..+)"  # noqa: E501

LAYOUTS = {
    "pretrain": Layout(
        "pretrain",
        _ENCODER_RULES,
        skip=[
            (_ENCODER_NORMS, "per-scale pretraining norms; the fine-tune encoder has `norm`"),
            (_DECODER, "pretraining decoder, not part of the encoder"),
        ],
        absent=("norm.",),
    ),
    "finetune": Layout("finetune", _FINETUNE_RULES),
    "pretrain_model": Layout(
        "pretrain",
        [(pattern, "encoder." + target) for pattern, target in _ENCODER_RULES] + _DECODER_RULES,
        absent=("encoder.norm.",),
        head="encoder.head.",
    ),
}


def checkpoint_layout(state: dict) -> str:
    """``finetune`` when the file holds the fine-tune ``norm`` or head, else ``pretrain``."""
    keys = [strip_module_prefix(k) for k in state]
    finetune = any(k.startswith(("norm.", "cls_head_finetune.")) for k in keys)
    return "finetune" if finetune else "pretrain"


def load_m2ae_checkpoint(model, path: str | Path) -> LoadReport:
    """Load an upstream Point-M2AE checkpoint into a ``PointM2AE`` encoder (either layout) or
    a ``PointM2AEPretrain`` model (pretrain layout). Strict: raises ``ValueError`` naming
    every unmapped, ambiguous or missing key and every shape mismatch."""
    path = Path(path)
    raw = read_checkpoint(path)
    layout = checkpoint_layout(raw["state"])
    if isinstance(model, PointM2AEPretrain):
        if layout != "pretrain":
            raise ValueError(f"{path}: a fine-tune checkpoint holds no pretraining decoder")
        return apply_layout(model, path, raw, LAYOUTS["pretrain_model"], "Point-M2AE")
    if not isinstance(model, PointM2AE):
        raise ValueError(f"{path}: expected a PointM2AE or PointM2AEPretrain, got {type(model)}")
    return apply_layout(model, path, raw, LAYOUTS[layout], "Point-M2AE")
