"""PointGST (jerryfeng2003/PointGST @7fbe92f): spectral parameter-efficient fine-tuning of a
frozen Point-MAE encoder.

Every block gets an adapter (``PCSA``) in parallel with its MLP::

    x = x + attn(norm1 x);  t = adapter(x, bases);  x = x + mlp(norm2 x);  x = x + t

The adapter projects the tokens down to ``rank`` channels and, on the patch tokens (the cls row
excluded), adds a spectral correction in a global graph basis over all token centres and in local
bases over z-order chunks of ``local`` centres; ``up`` and the shared ``adapt1`` start at zero, so
a freshly adapted model computes exactly what the frozen encoder computes.

Upstream behaviour this port reproduces by default, each behind a documented flag
(``PointGSTConfig``; the reference fixture holds both sides where it matters):

- ``exact_distances=False``: ``torch.cdist`` takes its matmul route (more than 25 points per set),
  whose diagonal holds rounding residues instead of zeros, and the graph scale ``m`` (the smallest
  positive distance) becomes one of those residues. ``m`` is taken over the whole batch tensor, so
  one cloud's bases depend on the other clouds of its batch. ``True`` uses the exact route
  (``m`` is then the true smallest centre distance of the batch; still batch-wide).
- ``true_transform=False``: the spectral branch applies ``U h`` and inverts with ``Uᵀ`` (upstream
  notes the transpose was meant and keeps it to reproduce the paper); ``True`` applies the graph
  Fourier transform ``Uᵀ h`` and inverts with ``U``.
- ``swap_xy=True``: the z-order key interleaves (y, x, z) where (x, y, z) was meant.

Trained during PEFT (upstream's rule: parameter names containing 'adapt' or 'cls'): the adapters,
the cls token and position and the classification head; everything else is frozen. Upstream puts
the whole model in ``train()`` mode, so the frozen tokenizer's BatchNorm layers normalise with batch
statistics and keep updating their running statistics during PEFT; this port does the same (it
does not override ``train``).

Sizes: at paper size (384 wide, depth 12, rank 36, local 32, 15 classes) 622,831 of 22,447,855
parameters are trained; 22,093,327 without the adapters.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmpd_core.models import load_encoder, upstream
from mmpd_core.models.contract import Patches
from mmpd_core.models.point_mae import PointMAE
from mmpd_core.models.upstream import Layout, LoadReport, apply_layout, read_checkpoint


@dataclass(frozen=True)
class PointGSTConfig:
    rank: int = 36  # adapter width r
    local: int = 32  # centres per z-order chunk of the local bases; must divide num_groups
    exact_distances: bool = False  # True: exact cdist route for the graph (not upstream)
    true_transform: bool = False  # True: U^T h forward, U back (not upstream)
    swap_xy: bool = True  # False: z-order on (x, y, z) (not upstream)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- graph bases


def pairwise_distances(points: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """``torch.cdist`` of every set with itself (..., P, P), float32 as upstream. Default mode:
    the matmul route beyond 25 points, whose diagonal is not exactly zero; ``exact`` forces the
    direct route."""
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist_if_necessary"
    return torch.cdist(points, points, compute_mode=mode)  # (..., P, P)


def graph_laplacian(
    points: torch.Tensor, exact_distances: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised Laplacian of each set's distance graph and the graph scale ``m``.

    ``m`` is the smallest strictly positive distance over the WHOLE tensor (every set of the
    batch); edge weights ``W = 1 / (d / m + I)`` (self-loops weigh 1 where ``d_ii = 0``);
    ``L = I - D^-1/2 W D^-1/2`` with ``D = diag(rowsum W + 1e-6)``. Returns L (..., P, P), m ().
    """
    d = pairwise_distances(points, exact_distances)  # (..., P, P)
    m = torch.where(d > 0, d, torch.full_like(d, float("inf"))).amin()
    eye = torch.eye(d.shape[-1], dtype=d.dtype, device=d.device)  # (P, P)
    weights = 1 / (d / m + eye)  # (..., P, P)
    scale = torch.rsqrt(weights.sum(dim=-1) + 1e-6)  # (..., P)
    return eye - scale[..., :, None] * weights * scale[..., None, :], m


def graph_basis(points: torch.Tensor, exact_distances: bool = False) -> torch.Tensor:
    """Upstream ``get_basis``: eigenvectors (columns, ascending eigenvalues, signs as LAPACK
    returns them) of ``graph_laplacian(points)``, (..., P, P)."""
    laplacian, _ = graph_laplacian(points, exact_distances)
    return torch.linalg.eigh(laplacian).eigenvectors


# ---------------------------------------------------------------- z-order


def zorder_key(points: torch.Tensor, swap_xy: bool = True, depth: int = 16) -> torch.Tensor:
    """Morton key of ``int64(100 * points)`` (truncated toward zero), (...,) int64.

    At bit level i, key bit 3i+2 is bit i of the first coordinate, 3i+1 of the second and 3i of
    the third; upstream passes (y, x, z) (``swap_xy``). Negative values enter as their
    ``depth``-bit two's complement, so they sort after positive ones on every level."""
    coords = (points * 100).long()  # (..., 3)
    x, y, z = coords.unbind(-1)
    first, second = (y, x) if swap_xy else (x, y)
    key = torch.zeros_like(x)
    for i in range(depth):
        key |= ((first >> i) & 1) << (3 * i + 2)
        key |= ((second >> i) & 1) << (3 * i + 1)
        key |= ((z >> i) & 1) << (3 * i)
    return key


def zorder(
    centers: torch.Tensor, swap_xy: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Key (B, G), ``idx0`` (z-order position i holds centre idx0[i]; per cloud, no batch bits)
    and its inverse ``idx1``. Ties (two centres in one 1 cm cell; none in the fixture) keep FPS
    order here (stable sort), where upstream's unstable ``torch.sort`` leaves them unspecified."""
    key = zorder_key(centers, swap_xy)  # (B, G)
    idx0 = torch.sort(key, dim=-1, stable=True).indices  # (B, G)
    positions = torch.arange(idx0.shape[-1], device=idx0.device).expand_as(idx0)  # (B, G)
    idx1 = torch.empty_like(idx0).scatter_(-1, idx0, positions)  # (B, G)
    return key, idx0, idx1


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of x (B, G, C) in the order ``index`` (B, G)."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))  # (B, G, C)


class SpectralBases(NamedTuple):
    """What every adapter of one forward pass shares."""

    U: torch.Tensor  # (B, G, G) global basis over the centres of each cloud
    sub_U: torch.Tensor  # (B, G/l, l, l) local bases of the z-order chunks
    idx0: torch.Tensor  # (B, G) z-order -> FPS index
    idx1: torch.Tensor  # (B, G) its inverse
    key: torch.Tensor | None = None  # (B, G) z-order key
    global_scale: torch.Tensor | None = None  # m of the global graph (whole batch)
    local_scale: torch.Tensor | None = None  # m of the local graphs (all chunks of the batch)


def spectral_bases(centers: torch.Tensor, config: PointGSTConfig) -> SpectralBases:
    """Global and local bases of the centres (B, G, 3) of a batch, as upstream computes them."""
    batch, groups, _ = centers.shape
    if groups % config.local:
        raise ValueError(f"{groups} centres do not split into chunks of {config.local}")
    exact = config.exact_distances
    laplacian, global_scale = graph_laplacian(centers, exact)  # (B, G, G)
    key, idx0, idx1 = zorder(centers, config.swap_xy)
    chunks = gather_rows(centers, idx0).reshape(-1, config.local, 3)  # (B G/l, l, 3)
    sub_laplacian, local_scale = graph_laplacian(chunks, exact)  # (B G/l, l, l)
    sub_u = torch.linalg.eigh(sub_laplacian).eigenvectors  # (B G/l, l, l)
    sub_u = sub_u.reshape(batch, groups // config.local, config.local, -1)  # (B, G/l, l, l)
    u = torch.linalg.eigh(laplacian).eigenvectors  # (B, G, G)
    return SpectralBases(u, sub_u, idx0, idx1, key, global_scale, local_scale)


# ---------------------------------------------------------------- the adapter


class PCSA(nn.Module):
    """Upstream's adapter, in closed form with h = down(x) on the G patch rows (the last rows;
    the cls row only gets ``up(SiLU(h))``), P the z-order permutation, S the chunks' bases:

    ``global(h) = h + Uᵀ SiLU(adapt1(norm_ly1(U h)))``,
    ``local(h)  = h + Pᵀ Sᵀ SiLU(adapt1(norm_ly2(S P h)))``,
    ``output    = up(SiLU(h) + global(h) + local(h))``.

    ``adapt1`` serves both branches; the norms act over the rank channels. ``true_transform``
    swaps U for Uᵀ (and S for Sᵀ) on both sides. ``up`` and ``adapt1`` start at zero, ``down``
    Xavier-uniform (its bias at ``nn.Linear``'s default), as upstream.
    """

    def __init__(self, dim: int, rank: int, true_transform: bool = False):
        super().__init__()
        self.rank, self.true_transform = rank, true_transform
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        self.adapt1 = nn.Linear(rank, rank)
        self.norm_ly1 = nn.LayerNorm(rank)
        self.norm_ly2 = nn.LayerNorm(rank)
        nn.init.xavier_uniform_(self.down.weight)
        for layer in (self.up, self.adapt1):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def spectral(self, basis: torch.Tensor, h: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """``B⁻¹ [B h + SiLU(adapt1(norm(B h)))]`` with B = basis (upstream) or basisᵀ."""
        forward, inverse = (basis.mT, basis) if self.true_transform else (basis, basis.mT)
        spectrum = forward @ h  # (..., P, r)
        return inverse @ (spectrum + F.silu(self.adapt1(norm(spectrum))))

    def forward(self, x: torch.Tensor, bases: SpectralBases) -> torch.Tensor:
        """Tokens (B, T, D), cls first, the G = T - 1 patch tokens in FPS order -> (B, T, D)."""
        batch, chunks, local, _ = bases.sub_U.shape
        groups = chunks * local
        h = self.down(x)  # (B, T, r)
        patches = h[:, -groups:]  # (B, G, r)
        glob = self.spectral(bases.U, patches, self.norm_ly1)  # (B, G, r)
        sub = gather_rows(patches, bases.idx0)  # (B, G, r) in z-order
        sub = sub.reshape(batch, chunks, local, self.rank)  # (B, G/l, l, r)
        sub = self.spectral(bases.sub_U, sub, self.norm_ly2)  # (B, G/l, l, r)
        loc = gather_rows(sub.reshape(batch, groups, self.rank), bases.idx1)  # (B, G, r)
        act = F.silu(h)  # (B, T, r)
        mixed = torch.cat([act[:, :-groups], (glob + loc) + act[:, -groups:]], dim=1)  # (B, T, r)
        return self.up(mixed)


# ---------------------------------------------------------------- the adapted encoder


def is_trainable(name: str) -> bool:
    """Upstream's rule ('adapt' or 'cls' in the upstream name) on this port's names: the
    adapters, ``cls_token``, ``cls_pos`` and the head (upstream ``cls_head_finetune``)."""
    return name in ("encoder.cls_token", "encoder.cls_pos") or name.startswith(
        ("adapters.", "encoder.head.")
    )


class PointGST(nn.Module):
    """A Point-MAE encoder (``encoder``, unmodified, its weights frozen by ``mark_trainable``)
    with one ``PCSA`` per block (``adapters``). Build it with ``point_gst``."""

    arch = "pointgst"

    def __init__(self, encoder: PointMAE, config: PointGSTConfig | None = None):
        super().__init__()
        config = config or PointGSTConfig()
        if getattr(encoder, "arch", None) != "point_mae":
            raise TypeError(f"PointGST adapts a point_mae encoder, not {encoder.arch!r}")
        if encoder.config.num_groups % config.local:
            raise ValueError(
                f"num_groups {encoder.config.num_groups} is not a multiple of local {config.local}"
            )
        self.config, self.encoder = config, encoder
        self.adapters = nn.ModuleList(
            PCSA(encoder.dim, config.rank, config.true_transform) for _ in encoder.blocks
        )

    @property
    def head(self) -> nn.Module | None:
        return self.encoder.head

    def group(self, points: torch.Tensor) -> Patches:
        return self.encoder.group(points)

    def spectral_bases(self, centers: torch.Tensor) -> SpectralBases:
        """The bases of this batch (they depend on every cloud in it: see the module doc)."""
        return spectral_bases(centers, self.config)

    def embed(self, patches: Patches) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder inputs: [cls_token, patch tokens] and [cls_pos, pos_embed(centres)]."""
        enc = self.encoder
        batch = patches.centers.shape[0]
        tokens = enc.tokenizer(patches.neighborhood)  # (B, G, D)
        tokens = torch.cat([enc.cls_token.expand(batch, -1, -1), tokens], dim=1)  # (B, 1+G, D)
        pos = enc.pos_embed(patches.centers)  # (B, G, D)
        return tokens, torch.cat([enc.cls_pos.expand(batch, -1, -1), pos], dim=1)  # (B, 1+G, D)

    def forward_block(self, index: int, x: torch.Tensor, bases: SpectralBases) -> torch.Tensor:
        """Block ``index`` with its adapter beside the MLP; ``x`` already holds the position."""
        block = self.encoder.blocks[index]
        x = x + block.drop_path(block.attn(block.norm1(x)))
        adapted = self.adapters[index](x, bases)
        x = x + block.drop_path(block.mlp(block.norm2(x)))
        return x + adapted

    def forward_patches(self, patches: Patches) -> dict:
        """Features like ``PointMAE.forward_patches`` (tokens, cls, global, centers) + bases."""
        bases = self.spectral_bases(patches.centers)
        x, pos = self.embed(patches)  # (B, 1+G, D) each
        for index in range(len(self.adapters)):
            x = self.forward_block(index, x + pos, bases)
        x = self.encoder.transformer.norm(x)
        cls, tokens = x[:, 0], x[:, 1:]  # (B, D), (B, G, D)
        return {
            "tokens": tokens,
            "cls": cls,
            "global": self.encoder.pool(tokens, cls),
            "centers": patches.centers,
            "bases": bases,
        }

    def forward_features(self, points: torch.Tensor) -> dict:
        return self.forward_patches(self.group(points))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes) from the head on [cls, max over tokens]."""
        if self.head is None:
            raise RuntimeError("this PointGST's encoder has no classification head")
        return self.head(self.forward_features(points)["global"])

    # ------------------------------------------------------------ PEFT

    def trainable_names(self) -> list[str]:
        """Parameter names upstream trains (``is_trainable``), in module order."""
        return [name for name, _ in self.named_parameters() if is_trainable(name)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [param for name, param in self.named_parameters() if is_trainable(name)]

    def mark_trainable(self) -> list[str]:
        """Freeze everything but ``trainable_names()`` (requires_grad); returns those names.
        BatchNorm statistics are buffers: they still update in ``train()`` mode, as upstream."""
        for name, param in self.named_parameters():
            param.requires_grad_(is_trainable(name))
        return self.trainable_names()

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups of the trainable parameters as upstream builds them: no decay on 1-D
        tensors, biases and names containing 'token'."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not is_trainable(name):
                continue
            plain = param.dim() == 1 or name.endswith(".bias") or "token" in name
            (no_decay if plain else decay).append(param)
        return [
            {"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay},
        ]


def point_gst(encoder: PointMAE, **overrides) -> PointGST:
    """Fresh adapters (paper size: rank 36, local 32) on ``encoder``; overrides replace fields
    of ``PointGSTConfig``. The adapted model starts equal to ``encoder``."""
    return PointGST(encoder, dataclasses.replace(PointGSTConfig(), **overrides))


def from_pretrained(source, num_classes: int, **overrides) -> PointGST:
    """PointGST on a pretrained mmpd Point-MAE encoder, adapters fresh: ``source`` is a
    ``PointMAE`` (wrapped as is; give it a head of ``num_classes`` first) or an
    ``encoder.safetensors`` / run directory (``models.load_encoder`` with a fresh head).
    An upstream Point-MAE pretrain checkpoint loads with ``load_pointgst_checkpoint``."""
    if isinstance(source, PointMAE):
        if source.head is None or source.config.num_classes != num_classes:
            raise ValueError(f"the encoder needs a {num_classes}-class head (num_classes)")
        return point_gst(source, **overrides)
    encoder = load_encoder(source, num_classes=num_classes)
    if not isinstance(encoder, PointMAE):
        raise TypeError(f"{source}: PointGST adapts a point_mae encoder, not {encoder.arch!r}")
    return point_gst(encoder, **overrides)


# ---------------------------------------------------------------- upstream checkpoints

# Point-MAE's key map (``models.upstream``) under the wrapper's ``encoder.``, after the
# adapters' rule (it must win over the block rule); the first match wins.
_ADAPTER_RULE = (r"blocks\.blocks\.(\d+)\.gft_adapter\.(.+)", r"adapters.\1.\2")
_ENCODER_RULES = [(p, "encoder." + t) for p, t in upstream._ENCODER_RULES]
FINETUNE_RULES = [_ADAPTER_RULE, *[(p, "encoder." + t) for p, t in upstream._FINETUNE_RULES]]
LAYOUTS = {
    # upstream PointGST checkpoints (PointTransformer_PGST, the released fine-tuned files)
    "finetune": Layout("finetune", FINETUNE_RULES, head="encoder.head."),
    # a Point-MAE pretrain checkpoint, where upstream PointGST fine-tuning starts
    "pretrain": Layout(
        "pretrain",
        [(r"MAE_encoder\." + pattern, target) for pattern, target in _ENCODER_RULES],
        skip=[
            (
                r"(mask_token|decoder_pos_embed\..+|MAE_decoder\..+|increase_dim\..+)",
                "pretraining decoder, not part of the encoder",
            )
        ],
        absent=("encoder.cls_token", "encoder.cls_pos", "adapters."),
        head="encoder.head.",
    ),
}


def model_key(upstream_key: str) -> str | None:
    """The port's name of an upstream PointGST key (``module.`` stripped), or None."""
    key = upstream_key.removeprefix("module.")
    for pattern, target in FINETUNE_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    return None


def load_pointgst_checkpoint(model: PointGST, path: str | Path) -> LoadReport:
    """Load an upstream PointGST checkpoint (``base_model`` keys with ``module.``) or a
    Point-MAE pretrain checkpoint (encoder only; adapters, cls and head kept) into ``model``,
    strictly, through ``LAYOUTS``; raises ``ValueError`` listing every unmapped key."""
    path = Path(path)
    raw = read_checkpoint(path)
    pretrain = any(k.removeprefix("module.").startswith("MAE_encoder.") for k in raw["state"])
    return apply_layout(
        model, path, raw, LAYOUTS["pretrain" if pretrain else "finetune"], "PointGST"
    )
