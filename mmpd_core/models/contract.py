"""The backbone contract: everything the stages and tasks may call on a point encoder.

The method is model-agnostic (paper Section 4), so Stage-1, Stage-2, fine-tuning, few-shot,
zero-shot and t-SNE talk to an encoder only through this interface; none of them reads a
backbone's own fields (``tokenizer``, ``trans_dim``, ``group_size``...). Every architecture
registered in ``mmpd_core.models`` subclasses ``Backbone`` and passes the one shared test suite
``tests/test_backbone_contract.py``.

Shapes: B clouds of N points; G tokens at the **distillation level** (the tokens Stage-2
distils; for a single-scale encoder its only level); V visible and M masked of them; D = ``dim``.

Attributes

- ``arch``: the architecture's registry name, stored in every checkpoint so that
  ``models.load_encoder`` rebuilds the encoder from the file alone;
- ``config``: a frozen dataclass (``config_class``) with ``to_dict()``;
  ``type(self)(config)`` rebuilds the module;
- ``dim`` (D), ``global_dim`` (width of the global feature), ``patch_points`` (points K per
  patch at the distillation level: a point-reconstruction target predicts 3K numbers per token).

Methods

- ``group(points (B, N, 3)) -> Patches``: centres (B, G, 3) and neighbourhoods (B, G, K, 3)
  of the distillation level (a multi-scale encoder adds its other levels to ``levels``);
- ``random_masking(patches, ratio, generator) -> Masking``: the backbone's own masking of the
  distillation level (Point-MAE: exactly int(ratio * G) random groups per sample); every draw
  comes from ``generator``;
- ``forward_visible(patches, masking) -> Encoding``: the Stage-2 student; only the visible
  patches enter (not even through BatchNorm statistics): tokens (B, V, D) in ``keep_idx``
  order and the cls token (B, D), or None for a backbone without one;
- ``forward_patches(patches, layers=()) -> Features``: the whole cloud (Stage-1, the Stage-2
  teacher, classification, segmentation);
- ``forward_features(points, layers=())``: ``forward_patches(group(points), layers)``;
- ``pool(tokens, cls) -> (B, global_dim)``: the global feature of a token sequence; the
  Stage-2 global decoder pools its output the same way as the teacher;
- ``make_head(num_classes) -> nn.Module``: a freshly initialised classification head on the
  global feature (the frozen ``mlp3`` protocol trains it on cached features);
- ``forward(points) -> (B, classes)`` logits, for an encoder built with ``num_classes > 0``.

``Features`` holds ``tokens`` (B, G, D) after the final norm, ``cls`` (B, D) or None,
``global`` (B, global_dim), ``centers`` (B, G, 3) and, when asked for, ``layers``: the tokens
after the given blocks (0-based), each through the final norm. A multi-scale encoder adds
``scales``: [(centres (B, G_s, 3), tokens (B, G_s, D_s))] of every scale, finest first (what a
dense head propagates).

Invariants (the shared test suite): shapes as above; the masking masks exactly the same
number of tokens in every sample, keep and mask indices partition range(G); encoding with
nothing masked equals the full encoding; masked patches cannot change visible outputs (for a
hierarchical encoder: the finest-level inputs its pushed-down mask hides); a seed fixes
initialisation and masking; gradients reach every parameter; save / load round-trips.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, TypedDict

import torch
from torch import nn

from mmpd_core.shuffle import Masking


@dataclass(frozen=True)
class Patches:
    """A grouped cloud at the distillation level: ``centers`` (B, G, 3) and ``neighborhood``
    (B, G, K, 3), each patch relative to its centre. ``levels`` holds whatever else an
    architecture needs (the other scales of a hierarchical encoder); callers leave it alone."""

    neighborhood: torch.Tensor
    centers: torch.Tensor
    levels: tuple = field(default=())

    @property
    def num_tokens(self) -> int:
        return self.centers.shape[1]


class Encoding(TypedDict):
    """The student's output on the visible patches."""

    tokens: torch.Tensor  # (B, V, D), in keep_idx order
    cls: torch.Tensor | None  # (B, D)


class Backbone(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every registered point encoder; see the module docstring. The methods
    below are abstract: an architecture that misses one cannot be instantiated."""

    arch: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    dim: int
    global_dim: int
    patch_points: int

    @abc.abstractmethod
    def group(self, points: torch.Tensor) -> Patches:
        """The cloud (B, N, 3) as patches and centres at the distillation level."""

    @abc.abstractmethod
    def random_masking(
        self, patches: Patches, ratio: float, generator: torch.Generator | None = None
    ) -> Masking:
        """The backbone's own masking of ``ratio`` of the tokens."""

    @abc.abstractmethod
    def forward_visible(self, patches: Patches, masking: Masking) -> Encoding:
        """The visible patches only (the Stage-2 student)."""

    @abc.abstractmethod
    def forward_patches(self, patches: Patches, layers: tuple[int, ...] = ()) -> dict:
        """Every patch: tokens, cls and the requested intermediate layers."""

    @staticmethod
    @abc.abstractmethod
    def pool(tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        """The global feature (B, global_dim) from tokens and cls."""

    @abc.abstractmethod
    def make_head(self, num_classes: int) -> nn.Module:
        """A classification head on the global feature."""

    def forward_features(self, points: torch.Tensor, layers: tuple[int, ...] = ()) -> dict:
        """The whole cloud (B, N, 3) -> ``Features`` (a dict: tokens, cls, global, centers)."""
        return self.forward_patches(self.group(points), layers)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes); needs an encoder built with ``num_classes > 0``."""
        head = getattr(self, "head", None)
        if head is None:
            raise RuntimeError(f"this {self.arch} encoder has no classification head")
        return head(self.forward_features(points)["global"])
