"""BLIP-2 captions of rendered views: the paper's source of text for Stage-1.

The paper profile sets ``data_prep.captioner: blip2`` and ``data_prep.blip2_model`` to the
hub id ``Salesforce/blip2-opt-2.7b`` (or a local directory holding those weights, written by
``save_pretrained``); on a GPU the model runs in bfloat16. Every rendered view of a shape is
captioned once (greedy or beam search); the shape's top-k captions are its distinct captions
ranked by how many views produced them, ties broken by the model's mean token log-likelihood.
Nothing here downloads anything unless given a hub id on a machine that reaches the hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import Blip2ForConditionalGeneration, Blip2Processor


@dataclass
class Captioner:
    model: Blip2ForConditionalGeneration
    processor: Blip2Processor
    device: torch.device


def load_captioner(
    model_name_or_path: str | Path, *, device="cpu", dtype: torch.dtype | None = None
) -> Captioner:
    """BLIP-2 model + processor from a local directory (offline) or a hub id, in eval mode."""
    path = Path(model_name_or_path)
    local = path.is_dir() or str(model_name_or_path).startswith((".", "/", "~"))
    if local and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: no BLIP-2 checkpoint here (expected config.json and weights written by "
            "save_pretrained, or pass a hub id such as Salesforce/blip2-opt-2.7b)"
        )
    kwargs = {"local_files_only": True} if local else {}
    processor = Blip2Processor.from_pretrained(str(model_name_or_path), **kwargs)
    model = Blip2ForConditionalGeneration.from_pretrained(
        str(model_name_or_path), dtype=dtype, **kwargs
    )
    device = torch.device(device)
    return Captioner(model.to(device).eval(), processor, device)


def _to_pil(image) -> Image.Image:
    """A float tensor (3, H, W) in [0, 1] or a PIL image -> an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


@torch.no_grad()
def caption_images(
    captioner: Captioner,
    images: Sequence,
    *,
    prompt: str | None = None,
    max_new_tokens: int = 30,
    num_beams: int = 1,
    batch_size: int = 16,
    **generate_kwargs,
) -> tuple[list[str], list[float]]:
    """One caption per image and its mean token log-likelihood under the model."""
    texts, scores = [], []
    for start in range(0, len(images), batch_size):
        chunk = [_to_pil(im) for im in images[start : start + batch_size]]
        inputs = captioner.processor(
            images=chunk, text=[prompt] * len(chunk) if prompt else None, return_tensors="pt"
        ).to(captioner.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(captioner.model.dtype)
        out = captioner.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            **generate_kwargs,
        )
        generated = out.sequences[:, -len(out.scores) :]  # (b, T) the new tokens only
        token_logp = captioner.model.language_model.compute_transition_scores(
            out.sequences, out.scores, out.get("beam_indices"), normalize_logits=True
        )  # (b, T)
        real = generated != captioner.processor.tokenizer.pad_token_id
        mean_logp = (token_logp * real).sum(1) / real.sum(1).clamp_min(1)
        texts += captioner.processor.batch_decode(generated, skip_special_tokens=True)
        scores += mean_logp.float().tolist()
    return [t.strip() for t in texts], scores


def rank_captions(captions: Sequence[str], scores: Sequence[float], top_k: int) -> list[str]:
    """Distinct non-empty captions, most views first, then higher mean score, then first seen."""
    stats: dict[str, list] = {}
    for order, (text, score) in enumerate(zip(captions, scores, strict=True)):
        text = text.strip()
        if text:
            entry = stats.setdefault(text, [0, 0.0, order])
            entry[0], entry[1] = entry[0] + 1, entry[1] + score
    ranked = sorted(stats.items(), key=lambda kv: (-kv[1][0], -kv[1][1] / kv[1][0], kv[1][2]))
    return [text for text, _ in ranked[:top_k]]


def caption_shapes(
    captioner: Captioner, views_per_shape: Sequence, *, top_k: int = 5, **caption_kwargs
) -> list[list[str]]:
    """For each shape's views (V, 3, H, W) or list of images, its top-k captions."""
    ranked = []
    for views in tqdm(views_per_shape, desc="BLIP-2 captions"):
        texts, scores = caption_images(captioner, list(views), **caption_kwargs)
        ranked.append(rank_captions(texts, scores, top_k))
    return ranked
