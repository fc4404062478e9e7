"""Load released upstream checkpoints through an explicit key map: Point-MAE here, Point-M2AE
in ``upstream_m2ae.py``, PointMamba in ``upstream_mamba.py`` (``load_upstream_checkpoint``
picks the adapter from the model).

Two layouts exist upstream, both whole training checkpoints (``base_model``, ``optimizer``,
``epoch``, ``metrics``, ``best_metrics``), with keys possibly prefixed by ``module.``:

- pretraining: ``MAE_encoder.{encoder,pos_embed,blocks.blocks.N,norm}.*`` plus the decoder
  (``mask_token``, ``decoder_pos_embed``, ``MAE_decoder``, ``increase_dim``), which a downstream
  encoder deliberately does not load;
- fine-tuning: ``cls_token``, ``cls_pos``, ``encoder.*``, ``pos_embed.*``, ``blocks.blocks.N.*``,
  ``norm.*``, ``cls_head_finetune.{0,1,4,5,8}.*``.

Loading is strict: every checkpoint key is either mapped or skipped for a stated reason, every
model key is either loaded or expected to be absent from that layout, no two checkpoint keys
fill the same model key, and shapes must match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

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
_PRETRAIN_DECODER = r"(mask_token|decoder_pos_embed\..+|MAE_decoder\..+|increase_dim\..+)"
HEAD_SKIP = "classification head of another class count (or no head)"


@dataclass(frozen=True)
class Layout:
    """One checkpoint layout: ``rules`` (checkpoint-key pattern, model-key template; the first
    match wins), ``skip`` (pattern, reason) for keys deliberately not loaded, and the model-key
    prefixes ``absent`` from such files (kept initialised). A mapped key under ``head`` whose
    shape differs (another class count) or that the model lacks is skipped, not an error."""

    name: str
    rules: list
    skip: list = field(default_factory=list)
    absent: tuple[str, ...] = ()
    head: str = "head."


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


def read_checkpoint(path: Path) -> dict:
    """A whole upstream training checkpoint, tensors only: its ``state`` (``base_model``),
    ``epoch`` and ``metrics``."""
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


def strip_module_prefix(key: str) -> str:
    """A DataParallel key without its ``module.``."""
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


def apply_layout(model, path: Path, raw: dict, layout: Layout, label: str) -> LoadReport:
    """Map ``raw`` (from ``read_checkpoint``) into ``model`` by ``layout``; raise ``ValueError``
    listing every unmapped or doubly mapped checkpoint key, missing model key and shape
    mismatch at once. Returns the ``LoadReport``."""
    report = LoadReport(layout=layout.name, epoch=raw["epoch"])
    report.metrics = {k: float(v) for k, v in raw["metrics"].items()}
    own = model.state_dict()
    mapped, sources, problems, misshaped = {}, {}, [], set()
    for key, value in raw["state"].items():
        bare = strip_module_prefix(key)
        target = _map_key(bare, layout.rules)
        if target is None:
            reason = next((why for rule, why in layout.skip if re.fullmatch(rule, bare)), None)
            if reason is not None:
                report.skipped[key] = reason
            else:
                problems.append(f"unmapped checkpoint key {key!r} {tuple(value.shape)}")
            continue
        if target.startswith(layout.head) and (
            target not in own or own[target].shape != value.shape
        ):
            report.skipped[key] = HEAD_SKIP
            continue
        if target not in own:
            problems.append(f"checkpoint key {key!r} maps to {target!r}, absent from the model")
            continue
        if target in sources:
            problems.append(
                f"ambiguous: checkpoint keys {sources[target]!r} and {key!r} both map to {target!r}"
            )
            continue
        sources[target] = key
        value = _to_model_shape(value, own[target].shape)
        if value.shape != own[target].shape:
            problems.append(
                f"shape mismatch for {key!r} -> {target!r}: checkpoint {tuple(value.shape)}, "
                f"model {tuple(own[target].shape)}"
            )
            misshaped.add(target)
            continue
        mapped[target] = value
    for key in own:
        if key in mapped or key in misshaped:
            continue
        if key.startswith((*layout.absent, layout.head)):
            report.kept_initialised.append(key)
        else:
            problems.append(f"model key {key!r} has no value in the checkpoint")
    if problems:
        raise ValueError(
            f"{path}: cannot load as {label} {layout.name}:\n  " + "\n  ".join(problems)
        )
    model.load_state_dict({**own, **mapped}, strict=True)
    report.loaded = sorted(mapped)
    report.kept_initialised.sort()
    return report


_POINT_MAE_LAYOUTS = {
    "pretrain": Layout(
        "pretrain",
        _PRETRAIN_RULES,
        skip=[(_PRETRAIN_DECODER, "pretraining decoder, not part of the encoder")],
        absent=("cls_token", "cls_pos"),
    ),
    "finetune": Layout("finetune", _FINETUNE_RULES),
}


def load_upstream_checkpoint(model, path: str | Path) -> LoadReport:
    """Load a released checkpoint (pretrain or fine-tune layout) into ``model``: a Point-MAE
    encoder here, a Point-M2AE encoder or pretraining model via ``upstream_m2ae``, a
    PointMamba encoder via ``upstream_mamba``.

    Raises ``ValueError`` listing every unmapped checkpoint key, missing model key and shape
    mismatch. A fine-tuned head with another class count is skipped (and reported) rather
    than loaded. Returns a ``LoadReport``.
    """
    arch = getattr(model, "arch", None)
    if arch == "point_m2ae":
        from mmpd_core.models.upstream_m2ae import load_m2ae_checkpoint

        return load_m2ae_checkpoint(model, path)
    if arch == "point_mamba":
        from mmpd_core.models.upstream_mamba import load_mamba_checkpoint

        return load_mamba_checkpoint(model, path)
    if arch != "point_mae":
        raise ValueError(
            f"{path}: no upstream checkpoint adapter for {arch!r} "
            "(point_mae, point_m2ae, point_mamba)"
        )
    path = Path(path)
    raw = read_checkpoint(path)
    pretrain = any(strip_module_prefix(k).startswith("MAE_encoder.") for k in raw["state"])
    layout = _POINT_MAE_LAYOUTS["pretrain" if pretrain else "finetune"]
    return apply_layout(model, path, raw, layout, "Point-MAE")
