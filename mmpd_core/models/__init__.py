"""Point encoders behind one contract (``contract.py``), built by name.

``create_model(name, **overrides)`` looks the name up in ``MODELS``, a table of named
constructors keyed by architecture and size (timm's ``create_model`` over registered
constructors); keyword overrides replace fields of the architecture's config. Every entry
states its parameter count (with a 40-class head), checked on the meta device by the tests;
for the paper-size entries that is the paper's figure (Point-MAE 22.1 M) or, for Point-M2AE,
upstream's fine-tune model (12.83 M; the paper's 15.3 M counts its pretraining model, decoder
included: ``point_m2ae_pretrain.PointM2AEPretrain``) and, for PointMamba, upstream's
``PointMambaScan`` (12.30 M; its encoder alone 12.12 M).

Every pretraining run leaves ``encoder.safetensors`` (``save_encoder``); its config names the
architecture, so ``load_encoder`` rebuilds any registered backbone from the file alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mmpd_core.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from mmpd_core.models import point_m2ae, point_m2ae_pretrain, point_mae, point_mamba
from mmpd_core.models.contract import Backbone, Encoding, Patches

__all__ = [
    "ARCHITECTURES",
    "MODELS",
    "Backbone",
    "Encoding",
    "Patches",
    "arch_of",
    "build_encoder",
    "checkpoint_arch",
    "create_model",
    "encoder_config",
    "load_encoder",
    "point_model",
    "save_encoder",
]


@dataclass(frozen=True)
class ModelEntry:
    """One named constructor: its architecture, size and parameter count (millions, with a
    ``params_classes``-way classification head; the paper's figure at paper size)."""

    arch: str
    size: str
    build: Callable[..., Backbone]
    params_m: float
    params_classes: int = 40


MODELS: dict[str, ModelEntry] = {
    "point_mae": ModelEntry("point_mae", "paper", point_mae.point_mae, 22.1),
    "point_mae_tiny": ModelEntry("point_mae", "tiny", point_mae.point_mae_tiny, 1.06),
    "point_m2ae": ModelEntry("point_m2ae", "paper", point_m2ae.point_m2ae, 12.83),
    "point_m2ae_small": ModelEntry("point_m2ae", "small", point_m2ae.point_m2ae_small, 0.95),
    "point_mamba": ModelEntry("point_mamba", "paper", point_mamba.point_mamba, 12.30),
    "point_mamba_small": ModelEntry("point_mamba", "small", point_mamba.point_mamba_small, 0.94),
    "point_mamba_tiny": ModelEntry("point_mamba", "tiny", point_mamba.point_mamba_tiny, 0.68),
}
ARCHITECTURES: dict[str, type[Backbone]] = {
    "point_mae": point_mae.PointMAE,
    "point_m2ae": point_m2ae.PointM2AE,
    "point_mamba": point_mamba.PointMamba,
}


def _point_m2ae_model(encoder: point_m2ae.PointM2AE) -> nn.Module:
    if encoder.distill != encoder.config.num_scales - 1:
        raise ValueError(
            "Point-M2AE's point reconstruction masks the coarsest scale: distill_scale "
            f"{encoder.config.distill_scale} must be the coarsest (-1) for point targets"
        )
    config = point_m2ae_pretrain.PointM2AEDecoderConfig.for_encoder(encoder)
    return point_m2ae_pretrain.PointM2AEPretrain(encoder, config, share_final_norm=True)


# An architecture's own masked point-reconstruction model around an encoder: what its
# baseline pretrains (Point-M2AE: the upsampling decoder over its mask push-down). Stage-2's
# point targets use it; an architecture without an entry reconstructs the patches of its
# distillation level with the Point-MAE decoder (``stage2.LocalDecoder``).
POINT_MODELS: dict[str, Callable[[Backbone], nn.Module]] = {"point_m2ae": _point_m2ae_model}


def point_model(encoder: Backbone) -> nn.Module | None:
    """``POINT_MODELS[encoder.arch](encoder)``, or None. Its ``forward_levels(levels,
    masked_top)`` returns the ``loss`` and the ``encoded`` scales (coarsest last)."""
    build = POINT_MODELS.get(encoder.arch)
    return None if build is None else build(encoder)


def _unknown(kind: str, name: str, known) -> KeyError:
    return KeyError(f"unknown {kind} {name!r}; known: {sorted(known)}")


def _check_fields(cls: type[Backbone], overrides: dict, where: str) -> None:
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"{where}: unknown {cls.arch} config fields {unknown}; known {sorted(fields)}"
        )


def create_model(name: str, **overrides) -> Backbone:
    """Build a named variant; keyword overrides replace fields of its architecture's config."""
    if name not in MODELS:
        raise _unknown("model", name, MODELS)
    entry = MODELS[name]
    _check_fields(ARCHITECTURES[entry.arch], overrides, name)
    return entry.build(**overrides)


def arch_of(name: str) -> str:
    """The architecture of a registered model name."""
    if name not in MODELS:
        raise _unknown("model", name, MODELS)
    return MODELS[name].arch


def encoder_config(encoder: Backbone) -> dict:
    """What a checkpoint stores to rebuild ``encoder``: its architecture and config."""
    return {"arch": encoder.arch, **encoder.config.to_dict()}


def build_encoder(config: dict, where: str = "config", **overrides) -> Backbone:
    """A fresh encoder from an ``encoder_config`` dict; ``overrides`` replace config fields."""
    config = dict(config)
    arch = config.pop("arch", None)
    if arch not in ARCHITECTURES:
        raise KeyError(f"{where}: unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    _check_fields(cls, {**config, **overrides}, where)
    return cls(dataclasses.replace(cls.config_class(**config), **overrides))


ENCODER_FILE = "encoder.safetensors"  # what every pretraining run leaves for downstream tasks


def encoder_path(path) -> Path:
    """A run directory's ``encoder.safetensors``, or the file itself."""
    path = Path(path)
    return path / ENCODER_FILE if path.is_dir() else path


def save_encoder(run_dir, encoder: Backbone, *, extra: dict | None = None) -> Path:
    """Write ``<run_dir>/encoder.safetensors``: the encoder's weights, architecture and config."""
    path = Path(run_dir) / ENCODER_FILE
    save_checkpoint(path, encoder, config=encoder_config(encoder), extra=extra)
    return path


def checkpoint_arch(path) -> str:
    """The architecture an encoder file (or run directory) was saved with."""
    path = encoder_path(path)
    return read_metadata(path)["config"].get("arch", "")


def load_encoder(path, **overrides) -> Backbone:
    """The encoder of a pretraining run (its directory or its ``encoder.safetensors``).

    ``overrides`` change config fields that hold no weights (``num_classes`` adds a fresh
    head, ``drop_path_rate``); every stored encoder weight must load (strict, reported).
    """
    path = encoder_path(path)
    tensors, meta = load_checkpoint(path)
    encoder = build_encoder(meta["config"], str(path), **overrides)
    missing, unexpected = encoder.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise KeyError(f"{path}: missing encoder keys {missing}, unexpected keys {unexpected}")
    return encoder
