"""Text for the shapes: template captions from category + attributes, and zero-shot prompts.

The paper captions rendered views with BLIP-2 (``mmpd_core.blip2``, the paper profile); the
embedded default describes each procedural shape from what its generator knows: category,
adjectives ('tall'), colour of its largest part, and features ('four legs', 'a slatted back').
Several diverse captions per shape, chosen deterministically from the shape's own seed.
"""

from __future__ import annotations

import re

import numpy as np

# Zero-shot prompt templates in the style of ULIP / CLIP's ImageNet prompts; class-name
# embeddings are averaged over all of them.
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a point cloud model of {}.",
    "a point cloud of a {}.",
    "a 3D model of a {}.",
    "a 3D rendering of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a large {}.",
    "a photo of a small {}.",
    "a rendering of a {}.",
    "a render of the {}.",
    "a depth map of a {}.",
    "a sketch of a {}.",
    "a low poly {}.",
    "a CAD model of a {}.",
    "an object that is a {}.",
    "there is a {} in the scene.",
    "a {} in a white background.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
    "a cropped photo of a {}.",
)

# ULIP's 64 ModelNet40 zero-shot templates (its data/templates.json, "modelnet40_64"), used by
# the paper's Table 2 comparison; kept verbatim, the one missing full stop included.
ULIP_TEMPLATES: tuple[str, ...] = (
    "a point cloud model of {}.", "There is a {} in the scene.", "There is the {} in the scene.",
    "a photo of a {} in the scene.", "a photo of the {} in the scene.",
    "a photo of one {} in the scene.", "itap of a {}.", "itap of my {}.", "itap of the {}.",
    "a photo of a {}.", "a photo of my {}.", "a photo of the {}.", "a photo of one {}.",
    "a photo of many {}.", "a good photo of a {}.", "a good photo of the {}.",
    "a bad photo of a {}.", "a bad photo of the {}.", "a photo of a nice {}.",
    "a photo of the nice {}.", "a photo of a cool {}.", "a photo of the cool {}.",
    "a photo of a weird {}.", "a photo of the weird {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of a clean {}.", "a photo of the clean {}.", "a photo of a dirty {}.",
    "a photo of the dirty {}.", "a bright photo of a {}.", "a bright photo of the {}.",
    "a dark photo of a {}.", "a dark photo of the {}.", "a photo of a hard to see {}.",
    "a photo of the hard to see {}.", "a low resolution photo of a {}.",
    "a low resolution photo of the {}.", "a cropped photo of a {}.",
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a blurry photo of a {}.", "a blurry photo of the {}.", "a pixelated photo of a {}.",
    "a pixelated photo of the {}.", "a black and white photo of the {}.",
    "a black and white photo of a {}", "a plastic {}.", "the plastic {}.", "a toy {}.",
    "the toy {}.", "a plushie {}.", "the plushie {}.", "a cartoon {}.", "the cartoon {}.",
    "an embroidered {}.", "the embroidered {}.", "a painting of the {}.", "a painting of a {}.",
)  # fmt: skip
TEMPLATE_SETS = {"mmpd20": ZERO_SHOT_TEMPLATES, "ulip64": ULIP_TEMPLATES}

# How a caption frames the object; "{obj}" is e.g. "tall red chair".
_FRAMES = (
    "{art} {obj}{feat}",
    "a 3D model of {art} {obj}{feat}",
    "a rendering of {art} {obj}{feat}",
    "a photo of {art} {obj}{feat}",
    "{art} {obj}{feat}, on a white background",
)

DISPLAY_NAMES = {"monitor": "computer monitor", "cone": "traffic cone", "tent": "camping tent"}


def display_name(category: str) -> str:
    """The words used for a category in text (``flower_pot`` -> ``flower pot``)."""
    return DISPLAY_NAMES.get(category, category.replace("_", " "))


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def _join(features: list[str]) -> str:
    return features[0] if len(features) == 1 else ", ".join(features[:-1]) + " and " + features[-1]


def shape_captions(
    category: str, attributes: dict, count: int, rng: np.random.Generator
) -> list[str]:
    """``count`` distinct captions (fewer if the shape offers fewer), e.g. 'a tall chair with
    four legs and a slatted back'."""
    name = display_name(category)
    adjectives, features = attributes.get("adjectives", []), attributes.get("features", [])
    colour = attributes.get("colour")
    captions: list[str] = []
    for _ in range(8 * count):
        words = [a for a in adjectives if rng.random() < 0.7]
        if colour and rng.random() < 0.5:
            words.append(colour)
        obj = " ".join([*words, name])
        chosen = [f for f in features if rng.random() < 0.75]
        feat = " with " + _join(chosen) if chosen else ""
        text = _FRAMES[rng.integers(len(_FRAMES))].format(art=_article(obj), obj=obj, feat=feat)
        if text not in captions:
            captions.append(text)
        if len(captions) == count:
            break
    return captions


GENERIC_NOUN = "object"


def unnamed(caption: str, category: str) -> str:
    """``caption`` with the category's name replaced by 'object' (the article follows): the
    Table 2 "manual captions ✗" source, describing parts, proportions and colour only.
    'a 3D model of a tall red chair with four legs' -> 'a 3D model of a tall red object with
    four legs'."""
    text = caption
    for words in dict.fromkeys((display_name(category), category.replace("_", " "))):
        text = re.sub(rf"\b{re.escape(words)}(e?s)?\b", GENERIC_NOUN, text, flags=re.IGNORECASE)
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def class_prompts(category: str, templates: tuple[str, ...] = ZERO_SHOT_TEMPLATES) -> list[str]:
    """Every zero-shot template filled with the category's display name."""
    return [t.format(display_name(category)) for t in templates]
