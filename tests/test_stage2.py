"""Stage-2: token-shuffle semantics, the shortcut it removes, masking, frozen teacher, variants."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_point_m2ae import TINY as M2AE_TINY

from mmpd_core import config
from mmpd_core.checkpoint import load_checkpoint, save_checkpoint
from mmpd_core.data.shapes import CATEGORIES, sample_shape
from mmpd_core.losses import masked_point_loss
from mmpd_core.models import Patches, load_encoder, save_encoder
from mmpd_core.models.point_m2ae import point_m2ae
from mmpd_core.models.point_m2ae_pretrain import PointM2AEDecoderConfig, PointM2AEPretrain
from mmpd_core.models.point_mae import PointMAE, PointMAEConfig
from mmpd_core.models.point_mamba import point_mamba_small
from mmpd_core.shuffle import gather_tokens, random_masking
from mmpd_core.stage1 import Stage1Step
from mmpd_core.stage2 import Stage2Step, build_model, build_student
from mmpd_core.teachers.cache import TargetSource

SMALL = PointMAEConfig(trans_dim=32, depth=2, num_heads=2, num_groups=16, group_size=16)
MAMBA_SMALL = dict(trans_dim=32, depth=2, num_groups=16, tokenizer_hidden=16)
BACKBONES = {
    "point_mae": lambda: PointMAE(SMALL),
    "point_m2ae": lambda: point_m2ae(**M2AE_TINY),
    "point_mamba": lambda: point_mamba_small(**MAMBA_SMALL),
}


def shapes(batch: int, num_points: int = 512) -> torch.Tensor:
    """Procedural shapes of different categories (B, N, 3), like the pretraining data."""
    clouds = [sample_shape(CATEGORIES[i], i, 0, num_points).points for i in range(batch)]
    return torch.stack([torch.as_tensor(c, dtype=torch.float32) for c in clouds])


def stage2_cfg(variant: str = "", **overrides) -> config.Stage2Stage:
    cfg = config.load("pretrain_stage2", smoke=False, variant=variant)
    return dataclasses.replace(cfg, decoder_depth=1, decoder_heads=2, **overrides)


def make(variant: str = "", teacher=None, backbone: str = "point_mae", **overrides):
    """(model, step, teacher) of a params.yaml variant at SMALL size."""
    cfg = stage2_cfg(variant, **overrides)
    teacher = teacher or (BACKBONES[backbone]() if cfg.teacher else None)
    align, dims = None, None
    if cfg.joint:
        align = Stage1Step(fake_targets({"txt": 12, "img": 8}))
        dims = align.targets.dims
    student = build_student(cfg, teacher) if teacher else BACKBONES[backbone]()
    model = build_model(cfg, student, dims)
    return model, Stage2Step(teacher, mask_ratio=0.6, shuffle=cfg.shuffle, align=align), teacher


class FakeCache:
    """Stands in for a TeacherCache: random features of 8 shapes."""

    def __init__(self, dims):
        gen = torch.Generator().manual_seed(3)
        self.tensors = {
            "txt": {
                "features": torch.randn(8, 2, dims["txt"], generator=gen),
                "counts": torch.full((8,), 2),
            },
            "img": {"features": torch.randn(8, 3, 2, dims["img"], generator=gen)},
        }


def fake_targets(dims) -> TargetSource:
    source = TargetSource(
        [f"s{i}" for i in range(8)], {"txt": "text", "img": "image"}, [0, 60, 120], dims
    )
    source.cache = FakeCache(dims)
    return source


def batch_of(n: int = 4) -> dict:
    return {"points": shapes(n), "name": [f"s{i}" for i in range(n)], "label": torch.arange(n)}


def fit_fixed_batch(model, step, steps: int = 8) -> tuple[list[float], dict]:
    """AdamW on one batch with one fixed draw (masking, shuffle): the losses and last metrics."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batch, losses = batch_of(), []
    for _ in range(steps):
        loss, metrics = step(model, batch, torch.Generator().manual_seed(5))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, metrics


def test_shuffled_slot_holds_other_content_at_its_own_position_scored_against_its_group():
    model, step, _ = make()
    model.eval()
    patches = model.encoder.group(shapes(2))
    masking, perm = step.draw(model.encoder, patches, torch.Generator().manual_seed(0))
    assert not torch.equal(perm, torch.arange(16).expand(2, 16))
    out = model(patches, masking, perm)
    visible = model.encoder.forward_visible(patches, masking)["tokens"]  # (B, V, D)
    for b in range(2):
        for i in range(16):
            src = perm[b, i].item()  # slot i carries group src's content ...
            if masking.mask[b, src]:
                expected = model.local.mask_token[0, 0]
            else:
                expected = visible[b, (masking.keep_idx[b] == src).nonzero().item()]
            torch.testing.assert_close(out["slots"][b, i], expected)
    pos = model.local.pos_embed(patches.centers)  # ... and centre i's position (centre order)
    manual = model.local.head(model.local.transformer(out["slots"], pos))
    torch.testing.assert_close(out["local"], manual)
    target = step.teacher_targets(patches)["tokens"]  # slot i vs group i
    loss, _ = step(
        model, {"points": shapes(2), "name": ["a", "b"]}, torch.Generator().manual_seed(0)
    )
    expected = (1 - F.cosine_similarity(out["local"], target, dim=-1)).mean()
    expected = (
        expected
        + (
            1 - F.cosine_similarity(out["global"], step.teacher_targets(patches)["global"], dim=-1)
        ).mean()
    )
    torch.testing.assert_close(loss, expected)


def test_without_shuffle_the_path_is_plain_masked_distillation():
    model, step, _ = make("no_shuffle")
    model.eval()
    patches = model.encoder.group(shapes(2))
    masking, perm = step.draw(model.encoder, patches, torch.Generator().manual_seed(1))
    assert torch.equal(perm, torch.arange(16).expand(2, 16))
    out = model(patches, masking, perm)
    visible = model.encoder.forward_visible(patches, masking)["tokens"]
    plain = model.local.mask_token.expand(2, 16, -1).clone()  # mask tokens everywhere ...
    for b in range(2):
        plain[b, masking.keep_idx[b]] = visible[b]  # ... visible tokens at their own groups
    torch.testing.assert_close(out["slots"], plain)
    pos = model.local.pos_embed(patches.centers)
    manual = model.local.head(model.local.transformer(plain, pos))
    torch.testing.assert_close(out["local"], manual)


def test_the_shuffle_removes_the_copy_shortcut():
    """Student = teacher weights: a decoder returning its input matches the teacher on visible
    slots without the shuffle, and does not with it, although the contents are all there."""
    teacher = PointMAE(SMALL).eval()
    batch, scores = batch_of(8), {}
    for variant in ("no_shuffle", ""):
        model, step, _ = make(variant, teacher=teacher)
        model.eval()
        with torch.no_grad():
            _, metrics = step(model, batch, torch.Generator().manual_seed(2))
        scores[variant] = metrics["copy_cos_visible"]
    assert scores["no_shuffle"] > 0.5, scores
    assert scores[""] < 0.5 * scores["no_shuffle"], scores
    with torch.no_grad():  # scored against the group each content came from, it is high again
        patches = model.encoder.group(batch["points"])
        masking, perm = step.draw(model.encoder, patches, torch.Generator().manual_seed(2))
        slots = model(patches, masking, perm)["slots"]
        target = gather_tokens(step.teacher_targets(patches)["tokens"], perm)
        from_visible = ~torch.gather(masking.mask, 1, perm)  # (B, G): content of a visible group
        cos = F.cosine_similarity(slots, target, dim=-1)[from_visible].mean().item()
    assert cos == pytest.approx(scores["no_shuffle"], abs=0.02)


def test_masked_count_is_exact_and_seeded():
    _, step, _ = make()
    encoder = PointMAE(SMALL)
    patches = Patches(torch.zeros(5, 32, 16, 3), torch.zeros(5, 32, 3))
    for seed in range(3):
        masking, perm = step.draw(encoder, patches, torch.Generator().manual_seed(seed))
        assert torch.equal(masking.mask.sum(1), torch.full((5,), 19))  # int(0.6 * 32)
        assert torch.equal(perm.sort(1).values, torch.arange(32).expand(5, 32))
    a = step.draw(encoder, patches, torch.Generator().manual_seed(9))
    b = step.draw(encoder, patches, torch.Generator().manual_seed(9))
    assert torch.equal(a[0].mask, b[0].mask) and torch.equal(a[1], b[1])


def test_teacher_gets_no_gradient_and_stays_fixed():
    model, step, teacher = make()
    before = copy.deepcopy(teacher.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss, _ = step(model, batch_of(), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    optimizer.step()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not any(p is q for p in model.parameters() for q in teacher.parameters())


def test_visible_encoding_does_not_see_masked_points():
    model, _, _ = make()
    model.train()  # BatchNorm in training mode: statistics must come from visible patches only
    patches = model.encoder.group(shapes(2))
    masking = random_masking(2, 16, 0.6, generator=torch.Generator().manual_seed(4))

    def visible(neighborhood):
        torch.manual_seed(0)
        out = model.encoder.forward_visible(Patches(neighborhood, patches.centers), masking)
        return torch.cat([out["cls"][:, None], out["tokens"]], 1)

    ref = visible(patches.neighborhood)
    noisy = patches.neighborhood.clone()
    noisy[masking.mask] += torch.randn_like(noisy[masking.mask])  # only masked patches move
    torch.testing.assert_close(visible(noisy), ref, rtol=0, atol=0)
    noisy = patches.neighborhood.clone()
    noisy[~masking.mask] += 0.1 * torch.randn_like(noisy[~masking.mask])
    assert not torch.allclose(visible(noisy), ref)


def test_masked_point_loss_is_chamfer_of_masked_patches_only():
    neighborhood = torch.zeros(1, 3, 2, 3)
    neighborhood[0, 1] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])  # group 1, masked
    pred = torch.zeros(1, 3, 6)
    pred[0, 1] = torch.tensor([1.0, 0, 0, 0, 0, 0])  # predicts (1,0,0) and (0,0,0)
    pred[0, 0] = 5.0  # a visible group: must not count
    loss = masked_point_loss(pred, neighborhood, torch.tensor([[1]]))
    # pred->target: 0 and min(1, 1) = 1 -> mean 0.5; target->pred: 0 and min(2, 1) = 1 -> 0.5
    torch.testing.assert_close(loss, torch.tensor(1.0))


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("variant", ["", *config.variant_names("pretrain_stage2")])
def test_every_variant_steps_and_learns_a_fixed_batch(variant, backbone):
    """Every pretraining variant on each backbone (the method is model-agnostic)."""
    torch.manual_seed(0)
    model, step, _ = make(variant, backbone=backbone)
    losses, metrics = fit_fixed_batch(model, step)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses
    assert {k for k in metrics if k.startswith("loss_")}


def test_variants_resolve_to_their_own_directories_and_bad_ones_fail(tmp_path):
    cfg = config.load("pretrain_stage2", smoke=False, variant="point_mae")
    assert cfg.out_dir == "runs/stage2_variants/point_mae" and cfg.teacher == ""
    assert cfg.live_dir == "reports/dvclive/stage2_variants/point_mae"
    with pytest.raises(KeyError, match="unknown variant 'nope'"):
        config.load("pretrain_stage2", variant="nope")
    with pytest.raises(ValueError, match="without a teacher"):
        stage2_cfg("point_mae", global_distill=True)
    with pytest.raises(ValueError, match="nothing to train"):
        stage2_cfg("", local_target="none", global_distill=False)


def test_encoder_round_trip_is_strict(tmp_path):
    encoder = PointMAE(SMALL)
    save_encoder(tmp_path, encoder)
    loaded = load_encoder(tmp_path, num_classes=5)  # a fresh head on the stored encoder
    assert loaded.head is not None and loaded.config.num_classes == 5
    for name, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    partial = torch.nn.Module()
    partial.tokenizer = encoder.tokenizer  # only the tokenizer's weights
    config_ = {"arch": "point_mae", **SMALL.to_dict()}
    save_checkpoint(tmp_path / "partial.safetensors", partial, config=config_)
    with pytest.raises(KeyError, match=r"partial\.safetensors: missing encoder keys"):
        load_encoder(tmp_path / "partial.safetensors")


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_stage1_alignment_learns_a_fixed_batch_on_each_backbone(backbone):
    """Stage-1 (Eq. 3) needs only the contract's global feature: it runs on every backbone."""
    from mmpd_core.stage1 import Stage1Model

    torch.manual_seed(0)
    step = Stage1Step(fake_targets({"txt": 12, "img": 8}))
    losses, _ = fit_fixed_batch(Stage1Model(BACKBONES[backbone](), step.targets.dims), step)
    assert losses[-1] < 0.9 * losses[0], losses


# ---------------------------------------------------------------- hierarchical encoders


def test_point_m2ae_point_targets_are_its_own_pretraining_objective(tmp_path):
    """Point targets on Point-M2AE run upstream's pretraining model (upsampling decoder, mask
    push-down, Chamfer at scale 1) on the step's coarsest mask: the Stage-2 loss equals that
    model's loss computed on its own, and the coarsest pretraining norm is the encoder's."""
    torch.manual_seed(0)
    model, step, _ = make("point_m2ae", backbone="point_m2ae")
    assert isinstance(model.native, PointM2AEPretrain) and model.local is None
    assert model.native.encoder_norms[-1] is model.encoder.norm
    model.eval()  # drop path and BatchNorm statistics out of the comparison
    batch = batch_of()
    loss, metrics = step(model, batch, torch.Generator().manual_seed(5))
    patches = model.encoder.group(batch["points"])
    masking, _ = step.draw(model.encoder, patches, torch.Generator().manual_seed(5))
    decoder = PointM2AEDecoderConfig.for_encoder(model.encoder)
    assert decoder.decoder_dims == (48, 24) and decoder.decoder_depths == (1, 1)
    alone = PointM2AEPretrain(point_m2ae(**M2AE_TINY), decoder).eval()
    alone.load_state_dict(model.native.state_dict())
    expected = alone(batch["points"], masked_top=masking.mask)["loss"]
    torch.testing.assert_close(loss, expected)
    assert metrics["loss_local"] == pytest.approx(expected.item())
    # the tied norm is stored under both names and loads back strictly
    save_checkpoint(tmp_path / "tied.safetensors", model, config={})
    again, _, _ = make("point_m2ae", backbone="point_m2ae")
    again.load_state_dict(load_checkpoint(tmp_path / "tied.safetensors")[0], strict=True)
    assert again.native.encoder_norms[-1] is again.encoder.norm


def test_distill_scale_picks_the_level_and_coarser_scales_keep_their_weights():
    """distill_scale 1: teacher tokens and student slots are scale 1's (16 x 24 here), the
    global term reads them too, and the coarsest scale gets no gradient from Stage-2."""
    torch.manual_seed(0)
    teacher = point_m2ae(**M2AE_TINY, distill_scale=1)
    model, step, _ = make("", teacher=teacher, backbone="point_m2ae", distill_scale=1)
    batch = batch_of()
    patches = model.encoder.group(batch["points"])
    assert patches.centers.shape == (4, 16, 3)
    assert step.teacher_targets(patches)["tokens"].shape == (4, 16, 24)
    loss, _ = step(model, batch, torch.Generator().manual_seed(5))
    loss.backward()
    grads = {n: p.grad for n, p in model.encoder.named_parameters()}
    assert all(g is None for n, g in grads.items() if n.startswith(("stages.2.", "norm.")))
    assert all(g is not None for n, g in grads.items() if n.startswith(("stages.0.", "stages.1.")))
    losses, _ = fit_fixed_batch(model, step)
    assert losses[-1] < 0.9 * losses[0], losses
    with pytest.raises(ValueError, match="distill_scale 1 must be the coarsest"):
        make("point_targets", teacher=teacher, backbone="point_m2ae", distill_scale=1)
