"""open_clip teachers: a CLIP's image or text tower (paper: ViT-B/16 ``openai``)."""

from __future__ import annotations

from pathlib import Path

import torch

from mmpd_core.config import resolve
from mmpd_core.teachers.base import _RANDOM_HINT, ImagePreprocess, Teacher, _check_texts


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
        hint = ""
        if model.startswith(("local-dir:", "hf-hub:")):
            hint = "; a local-dir:/hf-hub: model carries its weights: set pretrained to null"
        raise FileNotFoundError(
            f"open_clip {model!r}: {pretrained!r} is no file and no tag {tags}{hint}"
        )
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
