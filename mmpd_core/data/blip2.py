"""BLIP-2 captions of rendered views: the paper's captioner.

The paper captions every rendered view of a shape with BLIP-2 (OPT-2.7b) and keeps the top-k
captions per shape as that shape's text. This module is that path, on ``transformers``:

- ``load_captioner(name_or_dir)`` loads ``Blip2ForConditionalGeneration`` and its processor,
  frozen and in eval mode;
- ``caption_images`` writes one caption per image;
- ``caption_shapes`` writes one caption per view and keeps each shape's ``top_k`` by
  ``rank_captions``: distinct captions, most frequent across the views first, ties broken by the
  model's mean token log-likelihood.

How the paper profile selects it: ``params.yaml`` sets ``data_prep.captioner: blip2`` and
``data_prep.blip2_model``, and the caller passes that value on, e.g.
``load_captioner("Salesforce/blip2-opt-2.7b", device="cuda")`` (a hub id: needs the hub or a warm
Hugging Face cache) or ``load_captioner("/data/weights/blip2-opt-2.7b", device="cuda")`` (a
local directory written by ``save_pretrained`` or ``huggingface-cli download``). On CUDA the
default dtype is bfloat16, as in the paper; on CPU it is float32. ``data_prep.captions_per_shape``
is ``top_k``. The decoding defaults follow the LAVIS BLIP-2 captioner: 5 beams, at most 30 new
tokens, at least 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm
from transformers import Blip2ForConditionalGeneration, Blip2Processor

# A Hugging Face hub id: "name" or "owner/name", no leading dot, slash or tilde.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")

ImageLike = torch.Tensor | Image.Image


@dataclass(frozen=True)
class Captioner:
    """A loaded BLIP-2: frozen model, its processor, and where/in what dtype it runs."""

    model: Blip2ForConditionalGeneration
    processor: Blip2Processor
    device: torch.device
    dtype: torch.dtype


def _resolve_source(
    model_name_or_path: str | Path, local_files_only: bool | None
) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, its ``local_files_only``).

    An existing directory is loaded offline and must hold a ``config.json``; a ``Path`` or a
    string that cannot be a hub id (absolute, ``./``, ``~``) must be an existing directory; any
    other string is a hub id, passed through unchanged.
    """
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} has no config.json: not a saved BLIP-2 model directory"
            )
        return str(path), True if local_files_only is None else local_files_only
    if isinstance(model_name_or_path, Path) or not _HUB_ID.fullmatch(model_name_or_path):
        raise FileNotFoundError(f"BLIP-2 model directory not found: {path}")
    return model_name_or_path, bool(local_files_only)


def load_captioner(
    model_name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
) -> Captioner:
    """Load BLIP-2 (model + processor) from a hub id or a local directory, frozen, in eval mode.

    ``dtype`` defaults to bfloat16 on CUDA and float32 elsewhere. ``local_files_only`` defaults
    to True for a local directory and False for a hub id.
    """
    source, local = _resolve_source(model_name_or_path, local_files_only)
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    processor = Blip2Processor.from_pretrained(source, local_files_only=local)
    model = Blip2ForConditionalGeneration.from_pretrained(
        source, dtype=dtype, local_files_only=local
    )
    if model.config.image_token_index is None:
        raise ValueError(f"{source}: the config has no image_token_index (an old BLIP-2 save)")
    if processor.num_query_tokens is None:  # older processors: the prompt needs one per query
        processor.num_query_tokens = model.config.num_query_tokens
    model.to(device).eval().requires_grad_(False)
    return Captioner(model=model, processor=processor, device=device, dtype=dtype)


def rank_captions(captions: Sequence[str], scores: Sequence[float], top_k: int) -> list[str]:
    """The ``top_k`` best distinct captions of one shape, best first.

    ``captions[i]`` is view i's caption and ``scores[i]`` its mean token log-likelihood.
    Captions are compared after collapsing whitespace; empty ones are dropped. Distinct captions
    are ranked by how many views produced them, then by their score averaged over those views,
    then by first appearance.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    views: dict[str, list[float]] = {}
    for caption, score in zip(captions, scores, strict=True):
        text = " ".join(caption.split())
        if text:
            views.setdefault(text, []).append(float(score))
    ranked = sorted(views, key=lambda t: (-len(views[t]), -sum(views[t]) / len(views[t])))
    return ranked[:top_k]


def _split_images(images: torch.Tensor | Sequence[ImageLike]) -> list[ImageLike]:
    """A (V, 3, H, W) tensor or a sequence of (3, H, W) tensors / PIL images, as a list."""
    if isinstance(images, torch.Tensor) and (images.ndim != 4 or images.shape[1] != 3):
        raise ValueError(f"images must have shape (V, 3, H, W), got {tuple(images.shape)}")
    return list(images)


def _to_processor_image(image: ImageLike) -> ImageLike:
    """Float [0, 1] tensors become uint8 (3, H, W) tensors, exactly what a PIL image becomes
    inside the processor; uint8 tensors and PIL images pass through."""
    if not isinstance(image, torch.Tensor) or image.dtype == torch.uint8:
        return image
    if not image.is_floating_point() or image.shape[0] != 3:
        shape = tuple(image.shape)
        raise ValueError(f"expected a float (3, H, W) image in [0, 1], got {image.dtype} {shape}")
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _until_eos(tokens: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """1 for generated tokens up to and including the first EOS of each row, else 0."""
    eos = torch.as_tensor(eos_token_id, device=tokens.device).reshape(-1)
    is_eos = torch.isin(tokens, eos).long()  # (N, T)
    eos_before = is_eos.cumsum(dim=1) - is_eos  # (N, T)
    return (eos_before == 0).float()


def _caption_batch(
    captioner: Captioner,
    images: list[ImageLike],
    prompt: str | None,
    generate_kwargs: dict,
) -> tuple[list[str], torch.Tensor]:
    """Captions of one batch and their mean token log-likelihoods (N,) under the model.

    The captions hold only the generated tokens, never the prompt, and never the ``<image>``
    placeholder that transformers adds to OPT's vocabulary (LAVIS's BLIP-2 has no such token).
    The log-likelihood comes from the raw logits (``compute_transition_scores`` with
    ``normalize_logits``), so it is the model's, not the beam search's, and counts tokens up to
    and including EOS.
    """
    model, processor = captioner.model, captioner.processor
    text = None if prompt is None else [prompt] * len(images)
    pixels = [_to_processor_image(image) for image in images]
    batch = processor(images=pixels, text=text, return_tensors="pt")
    batch = batch.to(captioner.device, captioner.dtype)
    with torch.inference_mode():
        kwargs = dict(do_sample=False, suppress_tokens=[model.config.image_token_index])
        kwargs.update(generate_kwargs, output_logits=True, return_dict_in_generate=True)
        out = model.generate(**batch, **kwargs)
        token_logp = model.compute_transition_scores(
            out.sequences, out.logits, out.get("beam_indices"), normalize_logits=True
        )  # (N, T)
    new_tokens = out.sequences[:, -token_logp.shape[1] :]  # (N, T)
    eos = model.generation_config.eos_token_id or model.config.text_config.eos_token_id
    keep = _until_eos(new_tokens, eos)  # (N, T)
    mean_logp = (token_logp.float() * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)  # (N,)
    captions = processor.batch_decode(new_tokens, skip_special_tokens=True)
    return [c.strip() for c in captions], mean_logp.cpu()


def _caption_all(
    captioner: Captioner,
    images: list[ImageLike],
    *,
    prompt: str | None,
    batch_size: int,
    progress: bool,
    generate_kwargs: dict,
) -> tuple[list[str], torch.Tensor]:
    """``_caption_batch`` over ``images`` in batches of ``batch_size``, with a progress bar."""
    captions: list[str] = []
    scores: list[torch.Tensor] = []
    with tqdm(total=len(images), desc="BLIP-2 captions", unit="view", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            texts, logp = _caption_batch(captioner, batch, prompt, generate_kwargs)
            captions += texts
            scores.append(logp)
            bar.update(len(batch))
    return captions, torch.cat(scores) if scores else torch.zeros(0)


def caption_images(
    captioner: Captioner,
    images: torch.Tensor | Sequence[ImageLike],
    *,
    prompt: str | None = None,
    max_new_tokens: int = 30,
    min_new_tokens: int = 1,
    num_beams: int = 5,
    batch_size: int = 16,
    **generate_kwargs,
) -> list[str]:
    """One caption per image, stripped (empty only if ``min_new_tokens`` is 0).

    ``images``: a float (V, 3, H, W) tensor in [0, 1], or a sequence of (3, H, W) tensors or PIL
    images. With a ``prompt`` (e.g. "a photo of") the caption is its continuation only. Decoding
    is deterministic; ``generate_kwargs`` (e.g. ``repetition_penalty``) go to ``generate``.
    """
    generate_kwargs.update(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_beams=num_beams
    )
    captions, _ = _caption_all(
        captioner,
        _split_images(images),
        prompt=prompt,
        batch_size=batch_size,
        progress=False,
        generate_kwargs=generate_kwargs,
    )
    return captions


def rank_by_clip(
    candidates: Sequence[Sequence[str]], scores: torch.Tensor, top_k: int
) -> list[str]:
    """The ``top_k`` best distinct captions of one shape by CLIP: each view keeps its candidate
    most similar to the view (``scores`` (V, C): image-text cosine), then the views' choices
    are ranked by that similarity, best first (empty captions dropped)."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    best: dict[str, float] = {}
    for texts, row in zip(candidates, scores.tolist(), strict=True):
        kept = [(score, " ".join(text.split())) for text, score in zip(texts, row, strict=True)]
        kept = [(score, text) for score, text in kept if text]
        if kept:
            score, text = max(kept)
            best[text] = max(score, best.get(text, -2.0))
    return sorted(best, key=lambda t: -best[t])[:top_k]


@torch.no_grad()
def clip_scores(scorer, images: list, texts: list[list[str]]) -> torch.Tensor:
    """(V, C) cosine similarity of view v's image and its candidates under a CLIP teacher."""
    pixels = torch.stack([_to_float_image(image) for image in images])  # (V, 3, H, W)
    image = F.normalize(scorer.encode_images(pixels), dim=-1)  # (V, D)
    flat = [t or "." for row in texts for t in row]  # an empty caption scores, then is dropped
    text = F.normalize(scorer.encode_texts(flat), dim=-1).view(len(texts), -1, image.shape[1])
    return torch.einsum("vd,vcd->vc", image, text).cpu()


def _to_float_image(image: ImageLike) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.float() / 255 if image.dtype == torch.uint8 else image.float()
    return torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1).float() / 255


def caption_shapes(
    captioner: Captioner,
    views_per_shape: Sequence[torch.Tensor | Sequence[ImageLike]],
    *,
    top_k: int = 5,
    prompt: str | None = None,
    max_new_tokens: int = 30,
    min_new_tokens: int = 1,
    num_beams: int = 5,
    batch_size: int = 16,
    progress: bool = True,
    selection: str = "likelihood",
    candidates: int = 1,
    scorer=None,
    **generate_kwargs,
) -> list[list[str]]:
    """For each shape, its ``top_k`` captions (at most ``top_k``; none if every caption came
    back empty). Views of several shapes share a batch, and only one batch at a time is
    converted for the processor.

    ``selection="likelihood"``: one caption per view, ranked by ``rank_captions`` (how many
    views produced it, then the model's mean token log-likelihood). ``selection="clip"``
    (ULIP-2's idea: generated captions ranked by CLIP): ``candidates`` captions per view (the
    best beams), each view keeps the candidate its image matches best under the CLIP
    ``scorer`` (a teacher with ``encode_images`` / ``encode_texts``), ``rank_by_clip``.
    """
    if selection not in ("likelihood", "clip"):
        raise ValueError(f"selection must be 'likelihood' or 'clip', got {selection!r}")
    if selection == "clip" and scorer is None:
        raise ValueError("selection 'clip' needs a CLIP scorer")
    per_view = candidates if selection == "clip" else 1
    generate_kwargs.update(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
        num_beams=max(num_beams, per_view), num_return_sequences=per_view,
    )  # fmt: skip
    views = [_split_images(shape) for shape in views_per_shape]
    flat = [image for shape in views for image in shape]
    captions, scores = _caption_all(
        captioner,
        flat,
        prompt=prompt,
        batch_size=batch_size,
        progress=progress,
        generate_kwargs=generate_kwargs,
    )
    ranked, start = [], 0
    for shape in views:
        stop = start + len(shape)
        texts = captions[start * per_view : stop * per_view]
        if selection == "clip":
            rows = [texts[i * per_view : (i + 1) * per_view] for i in range(len(shape))]
            ranked.append(rank_by_clip(rows, clip_scores(scorer, flat[start:stop], rows), top_k))
        else:
            ranked.append(rank_captions(texts, scores[start:stop].tolist(), top_k))
        start = stop
    return ranked
