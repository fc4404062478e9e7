"""Random masking (MAE's ``random_masking`` shape) and the Stage-2 token shuffle.

The shuffle permutes token *contents* while positions stay in centre order: after
``shuffle_tokens``, slot i holds the content of group perm[i], and the caller then adds the
positional embedding of group i (paper Section 4.2, "positional embeddings are added after the
shuffling"). Permuting tokens together with their own positional embeddings would be a no-op
for a permutation-equivariant decoder; this jigsaw is what removes the copy-through shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Masking:
    """Indices of one random masking; groups keep their centre (FPS) order inside each part.

    keep_idx (B, V) and mask_idx (B, M): sorted group indices of visible and masked groups.
    mask (B, G): True where masked. restore_idx (B, G): gathering cat([visible, masked]) with
    it gives the sequence back in centre order.
    """

    keep_idx: torch.Tensor
    mask_idx: torch.Tensor
    mask: torch.Tensor
    restore_idx: torch.Tensor


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens (B, T, D), idx (B, S) -> tokens[b, idx[b]] (B, S, D)."""
    return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def random_masking(
    batch: int,
    num_groups: int,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Masking:
    """Mask exactly int(ratio * G) groups of every sample, uniformly at random."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    num_mask = int(ratio * num_groups)
    noise = torch.rand(batch, num_groups, generator=generator)  # (B, G), drawn on CPU
    order = noise.argsort(dim=1)  # (B, G): a random permutation per sample
    mask_idx = order[:, :num_mask].sort(dim=1).values  # (B, M)
    keep_idx = order[:, num_mask:].sort(dim=1).values  # (B, V)
    mask = torch.zeros(batch, num_groups, dtype=torch.bool)
    mask.scatter_(1, mask_idx, True)  # (B, G)
    restore_idx = torch.cat([keep_idx, mask_idx], dim=1).argsort(dim=1)  # (B, G)
    return Masking(*(t.to(device) for t in (keep_idx, mask_idx, mask, restore_idx)))


def random_permutation(
    batch: int, length: int, *, generator: torch.Generator | None = None, device="cpu"
) -> torch.Tensor:
    """An independent uniform permutation of range(length) per sample: (B, length)."""
    return torch.rand(batch, length, generator=generator).argsort(dim=1).to(device)


def shuffle_tokens(
    tokens: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    perm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute token contents (B, T, D): out[b, i] = tokens[b, perm[b, i]].

    Returns ``(shuffled, perm)``. Add positional embeddings in centre order *after* this call.
    """
    if perm is None:
        perm = random_permutation(
            tokens.shape[0], tokens.shape[1], generator=generator, device=tokens.device
        )
    return gather_tokens(tokens, perm), perm


def unshuffle_tokens(shuffled: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of ``shuffle_tokens``: unshuffle_tokens(shuffle_tokens(x, perm=p)[0], p) == x."""
    return gather_tokens(shuffled, perm.argsort(dim=1))
