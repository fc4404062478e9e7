"""Load released upstream checkpoints through an explicit key map (Point-MAE now).

Two layouts exist upstream, both whole training checkpoints (``base_model``, ``optimizer``,
``epoch``, ``metrics``, ``best_metrics``), with keys possibly prefixed by ``module.``:

- pretraining: ``MAE_encoder.{encoder,pos_embed,blocks.blocks.N,norm}.*`` plus the decoder
  (``mask_token``, ``decoder_pos_embed``, ``MAE_decoder``, ``increase_dim``), which a downstream
  encoder deliberately does not load;
- fine-tuning: ``cls_token``, ``cls_pos``, ``encoder.*``, ``pos_embed.*``, ``blocks.blocks.N.*``,
  ``norm.*``, ``cls_head_finetune.{0,1,4,5,8}.*``.

Loading is strict: every checkpoint key is either mapped or skipped for a stated reason, every
model key is either loaded or expected to be absent from that layout, and shapes must match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmpd_core.models.contract import Backbone

# (checkpoint-key pattern, model-key template); the first match wins.
_ENCODER_RULES = [
    (r"encoder\.(first_conv|second_conv)\.(\d+)\.(.+)", r"tokenizer.\1.\2.\3"),
    (r"pos_embed\.(\d+)\.(weight|bias)", r"pos_embed.\1.\2"),
    (r"blocks\.blocks\.(\d+)\.(.+)", r"transformer.blocks.\1.\2"),
    (r"norm\.(weight|bias)", r"transformer.norm.\1"),
]
_FINETUNE_RULES = [
    (r"cls_token", "cls_token"),
    (r"cls_pos", "cls_pos"),
    (r"cls_head_finetune\.(\d+)\.(.+)", r"head.\1.\2"),
    *_ENCODER_RULES,
]
_PRETRAIN_RULES = [(r"MAE_encoder\." + pattern, target) for pattern, target in _ENCODER_RULES]
_PRETRAIN_DECODER = re.compile(
    r"(mask_token|decoder_pos_embed\..+|MAE_decoder\..+|increase_dim\..+)"
)


@dataclass
class LoadReport:
    """What ``load_upstream_checkpoint`` did, key by key."""

    layout: str
    loaded: list[str] = field(default_factory=list)  # model keys now holding checkpoint values
    skipped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> reason
    kept_initialised: list[str] = field(default_factory=list)  # model keys the layout lacks
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.layout} checkpoint (epoch {self.epoch}): loaded {len(self.loaded)} tensors, "
            f"skipped {len(self.skipped)}, kept initialised {len(self.kept_initialised)}"
        )


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or a pickle that is not tensors-only
        raise ValueError(f"{path}: not a tensors-only PyTorch checkpoint ({exc})") from exc
    state = ckpt.get("base_model", ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict with a 'base_model' state dict")
    return {"state": state, "epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics") or {}}


def _strip(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def _map_key(key: str, rules) -> str | None:
    for pattern, target in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    return None


def _to_model_shape(value: torch.Tensor, expected: torch.Size) -> torch.Tensor:
    """Conv1d(k=1) weights (out, in, 1) become Linear weights (out, in)."""
    if value.dim() == 3 and value.shape[-1] == 1 and value.shape[:2] == expected:
        return value[..., 0]
    return value


def load_upstream_checkpoint(model: Backbone, path: str | Path) -> LoadReport:
    """Load a released Point-MAE checkpoint (pretrain or fine-tune layout) into ``model``.

    Raises ``ValueError`` listing every unmapped checkpoint key, missing model key and shape
    mismatch. A fine-tuned head with another class count is skipped (and reported) rather
    than loaded. Returns a ``LoadReport``.
    """
    if model.arch != "point_mae":
        raise ValueError(f"{path}: no upstream checkpoint adapter for {model.arch!r} (point_mae)")
    path = Path(path)
    raw = _read(path)
    state = raw["state"]
    pretrain = any(_strip(k).startswith("MAE_encoder.") for k in state)
    report = LoadReport(layout="pretrain" if pretrain else "finetune", epoch=raw["epoch"])
    report.metrics = {k: float(v) for k, v in raw["metrics"].items()}
    rules = _PRETRAIN_RULES if pretrain else _FINETUNE_RULES
    own = model.state_dict()
    mapped, problems, misshaped = {}, [], set()
    for key, value in state.items():
        target = _map_key(_strip(key), rules)
        if target is None:
            if pretrain and _PRETRAIN_DECODER.fullmatch(_strip(key)):
                report.skipped[key] = "pretraining decoder, not part of the encoder"
            else:
                problems.append(f"unmapped checkpoint key {key!r} {tuple(value.shape)}")
            continue
        if target.startswith("head.") and (model.head is None or own[target].shape != value.shape):
            report.skipped[key] = "classification head of another class count (or no head)"
            continue
        if target not in own:
            problems.append(f"checkpoint key {key!r} maps to {target!r}, absent from the model")
            continue
        value = _to_model_shape(value, own[target].shape)
        if value.shape != own[target].shape:
            problems.append(
                f"shape mismatch for {key!r} -> {target!r}: checkpoint {tuple(value.shape)}, "
                f"model {tuple(own[target].shape)}"
            )
            misshaped.add(target)
            continue
        mapped[target] = value
    absent = [k for k in own if k not in mapped and k not in misshaped]
    allowed_absent = ("cls_token", "cls_pos", "head.") if pretrain else ("head.",)
    for key in absent:
        if key.startswith(allowed_absent):
            report.kept_initialised.append(key)
        else:
            problems.append(f"model key {key!r} has no value in the checkpoint")
    if problems:
        raise ValueError(
            f"{path}: cannot load as Point-MAE {report.layout}:\n  " + "\n  ".join(problems)
        )
    model.load_state_dict({**own, **mapped}, strict=True)
    report.loaded = sorted(mapped)
    report.kept_initialised.sort()
    return report
