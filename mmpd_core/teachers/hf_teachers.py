"""Hugging Face ``transformers`` teachers: a ViT such as DINOv2 (the CLS token of the last
hidden state) and a text encoder with attention-mask mean pooling (sentence-transformers style;
MiniLM in the embedded default)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mmpd_core.config import resolve
from mmpd_core.teachers.base import (
    _RANDOM_HINT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocess,
    Teacher,
    _check_texts,
    resolve_asset,
)

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
