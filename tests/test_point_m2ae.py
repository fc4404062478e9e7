"""Point-M2AE: equivalence with recorded upstream outputs (../shared/reference/pointm2ae_small,
skipped where absent), the checkpoint adapter, the upstream quirks and their flags, and unit
tests of the hierarchy that need no fixture."""

from __future__ import annotations

import copy
import re
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from conftest import SHARED, compare_arrays, unit_sphere_cloud

from mmpd_core.layers import Attention
from mmpd_core.models import create_model, load_encoder, save_encoder
from mmpd_core.models.point_m2ae import (
    PointM2AE,
    PointM2AEScanObjectNN,
    covered,
    group_levels,
    pack,
    point_m2ae,
)
from mmpd_core.models.point_m2ae_pretrain import PointM2AEDecoderConfig, PointM2AEPretrain
from mmpd_core.models.upstream import load_upstream_checkpoint

REFERENCE = SHARED / "reference" / "pointm2ae_small"
SMALL = dict(num_groups=(128, 64, 16), encoder_dims=(24, 48, 96), encoder_depths=(2, 2, 2))
DECODER = PointM2AEDecoderConfig(decoder_dims=(96, 48))
TINY = dict(
    num_groups=(32, 16, 8),
    group_sizes=(8, 4, 4),
    encoder_dims=(12, 24, 48),
    encoder_depths=(1, 1, 1),
    num_heads=2,
    tokenizer_hidden=16,
)


@pytest.fixture(scope="module")
def reference():
    if not (REFERENCE / "pointm2ae_reference.npz").is_file():
        pytest.skip("../shared/reference/pointm2ae_small is absent (only in the development tree)")
    return dict(np.load(REFERENCE / "pointm2ae_reference.npz"))


def fixture_models():
    """The three fixture checkpoints loaded into the port (eval mode) with their reports."""
    mn40 = point_m2ae(**SMALL, num_classes=40)
    scan = point_m2ae(**SMALL, num_classes=15, pooling="scanobjectnn")
    pretrain = PointM2AEPretrain(point_m2ae(**SMALL), DECODER)
    reports = {
        "mn40": load_upstream_checkpoint(mn40, REFERENCE / "pointm2ae_mn40_finetune_format.pth"),
        "scan": load_upstream_checkpoint(scan, REFERENCE / "pointm2ae_scan_finetune_format.pth"),
        "pretrain": load_upstream_checkpoint(pretrain, REFERENCE / "pointm2ae_pretrain_format.pth"),
    }
    return mn40.eval(), scan.eval(), pretrain.eval(), reports


@torch.no_grad()
def port_outputs(reference) -> dict[str, torch.Tensor]:
    """Every array of the fixture, computed by the port under the fixture's names."""
    mn40, scan, pretrain, _ = fixture_models()
    points = torch.from_numpy(reference["points"])
    patches = mn40.group(points)
    out = {"points": points}
    for i, level in enumerate(patches.levels):
        out |= {f"fps_idx_{i}": level.fps_idx, f"centers_{i}": level.centers}
        out |= {f"knn_idx_{i}": level.knn_idx, f"neighborhood_{i}": level.neighborhood}
    scales, _ = mn40.forward_scales(patches.levels)
    for i, scale in enumerate(scales):
        out |= {f"ft_embed_{i}": scale["embed"], f"ft_tokens_{i}": scale["tokens"]}
        out[f"ft_attn_mask_{i}"] = scale["attn_mask"]
    for name, model in (("mn40", mn40), ("scan", scan)):
        features = model.forward_patches(patches)
        out[f"{name}_norm_tokens"], out[f"{name}_feature"] = features["tokens"], features["global"]
        out[f"{name}_logits"] = model.head(features["global"])
    svm = pretrain.forward_svm_feature(points)
    out["nomask_svm_feature"] = svm["feature"]
    for i, (masked, encoded) in enumerate(zip(svm["masked"], svm["encoded"], strict=True)):
        out[f"nomask_dropped_{i}"], out[f"nomask_tokens_{i}"] = masked, encoded["tokens"]
        out[f"nomask_valid_{i}"], out[f"nomask_attn_mask_{i}"] = (
            encoded["valid"],
            encoded["attn_mask"],
        )
    run = pretrain(points, masked_top=torch.from_numpy(reference["masked_2"]))
    for i, (masked, encoded) in enumerate(zip(run["masked"], run["encoded"], strict=True)):
        out[f"masked_{i}"], out[f"vis_tokens_{i}"] = masked, encoded["tokens"]
        out[f"vis_valid_{i}"], out[f"vis_attn_mask_{i}"] = encoded["valid"], encoded["attn_mask"]
    out |= {"decoder_out": run["decoded"], "rec_points": run["rec_points"]}
    out |= {"rec_target": run["rec_target"], "pretrain_loss": run["loss"]}
    return out


def test_every_reference_array_matches_upstream(reference):
    ours = port_outputs(reference)
    assert set(ours) == set(reference), set(reference) ^ set(ours)
    problems, errors = compare_arrays(ours, reference, tol=1e-5)
    assert not problems, problems
    assert max(errors.values()) < 1e-5
    assert ours["pretrain_loss"].item() == pytest.approx(1.2795419, abs=1e-5)


def upstream_count(model) -> int:
    """Parameters as upstream counts them: its pretraining model has no fine-tune ``norm``."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder.norm."))


def test_fixture_reports_and_parameter_counts(reference):
    mn40, scan, pretrain, reports = fixture_models()
    for name in ("mn40", "scan"):
        report = reports[name]
        assert report.layout == "finetune" and report.epoch == 250
        assert not report.skipped and not report.kept_initialised
    assert reports["mn40"].metrics["acc"] == pytest.approx(93.43)
    assert reports["pretrain"].layout == "pretrain" and reports["pretrain"].epoch == 300
    assert reports["pretrain"].kept_initialised == ["encoder.norm.bias", "encoder.norm.weight"]
    counts = tuple(upstream_count(m) for m in (pretrain, mn40, scan))
    assert counts == (812_800, 748_168, 766_319)  # the fixture README's figures


def test_paper_size_parameter_counts():
    with torch.device("meta"):
        mn40 = create_model("point_m2ae", num_classes=40)
        scan = create_model("point_m2ae", num_classes=15, pooling="scanobjectnn")
        pretrain = PointM2AEPretrain(create_model("point_m2ae"))
    counts = tuple(upstream_count(m) for m in (mn40, scan, pretrain))
    assert counts == (12_830_056, 12_921_935, 15_255_856)  # REFERENCE.md: 12.83 / 12.92 / 15.26 M


def test_pretrain_checkpoint_into_an_encoder_skips_what_is_not_encoder(reference):
    model = point_m2ae(**SMALL).eval()
    report = load_upstream_checkpoint(model, REFERENCE / "pointm2ae_pretrain_format.pth")
    assert report.kept_initialised == ["norm.bias", "norm.weight"]
    reasons = set(report.skipped.values())
    assert len(reasons) == 2 and any("per-scale pretraining norms" in r for r in reasons)
    assert {k.split(".")[0] for k in report.skipped} == {
        "h_encoder", "mask_token", "h_decoder", "decoder_pos_embeds", "token_prop",
        "decoder_norm", "rec_head",
    }  # fmt: skip
    with torch.no_grad():  # the fine-tune encoders were loaded from this file upstream
        scales, _ = model.forward_scales(model.group(torch.from_numpy(reference["points"])).levels)
    for i, scale in enumerate(scales):
        np.testing.assert_allclose(scale["tokens"].numpy(), reference[f"ft_tokens_{i}"], atol=1e-5)


def test_older_mae_encoder_naming_loads_from_the_fixture(reference, tmp_path):
    ckpt = torch.load(REFERENCE / "pointm2ae_pretrain_format.pth", weights_only=True)
    renamed = {
        re.sub(r"^h_encoder\.token_embed\.", "MAE_encoder.encoders.", k): v
        for k, v in ckpt["base_model"].items()
    }
    assert sum(k.startswith("MAE_encoder.encoders.") for k in renamed) == 54
    torch.save({**ckpt, "base_model": renamed}, tmp_path / "old.pth")
    model = PointM2AEPretrain(point_m2ae(**SMALL), DECODER).eval()
    load_upstream_checkpoint(model, tmp_path / "old.pth")
    with torch.no_grad():
        run = model(
            torch.from_numpy(reference["points"]),
            masked_top=torch.from_numpy(reference["masked_2"]),
        )
    assert run["loss"].item() == pytest.approx(float(reference["pretrain_loss"]), abs=1e-5)


def test_quirk_flags_change_what_upstream_does(reference):
    points = torch.from_numpy(reference["points"])
    masked_2 = torch.from_numpy(reference["masked_2"])

    def run(**flags):
        model = PointM2AEPretrain(point_m2ae(**SMALL, **flags), DECODER).eval()
        load_upstream_checkpoint(model, REFERENCE / "pointm2ae_pretrain_format.pth")
        with torch.no_grad():
            return model(points, masked_top=masked_2), model.forward_svm_feature(points)

    (faithful, _), (no_index0, _) = run(), run(index0_quirk=False)
    expected_1 = torch.from_numpy(reference["masked_1"]).clone()
    expected_1[0, 0] = True  # sample 0's coarsest token 0 is masked: so is its scale-1 token 0
    assert torch.equal(no_index0["masked"][1], expected_1)
    changed = no_index0["masked"][0] ^ torch.from_numpy(reference["masked_0"])
    assert changed[1:].sum() == 0 and changed[0].nonzero().flatten().tolist() == [48, 49, 103]
    _, no_drop = run(drop_uncovered=False)
    assert not any(m.any() for m in no_drop["masked"])  # nothing masked, nothing dropped
    kept = [0, 1, 4]  # the samples whose unmasked path dropped nothing upstream
    assert not reference["nomask_dropped_0"][kept].any()
    np.testing.assert_allclose(
        no_drop["feature"][kept], reference["nomask_svm_feature"][kept], atol=1e-5
    )
    assert not np.allclose(no_drop["feature"][2:4], reference["nomask_svm_feature"][2:4], atol=1e-3)
    no_padding, _ = run(padding_quirk=False)
    for i, encoded in enumerate(no_padding["encoded"]):
        valid = encoded["valid"]
        assert torch.equal(encoded["attn_mask"], ~(valid[:, :, None] & valid[:, None, :]))
        if i == 0:  # only the padded samples change
            full = valid.all(1)
            assert full.any() and not full.all()
            same = torch.isclose(encoded["tokens"], faithful["encoded"][0]["tokens"], atol=1e-6)
            assert same[full].all() and not same[~full][valid[~full]].all()


def test_scanobjectnn_max_quirk_flag(reference):
    model = point_m2ae(**SMALL, num_classes=15, pooling="scanobjectnn", scan_max_skips_first=False)
    load_upstream_checkpoint(model, REFERENCE / "pointm2ae_scan_finetune_format.pth")
    tokens = torch.from_numpy(reference["scan_norm_tokens"])
    with torch.no_grad():
        feature = model.eval().forward_features(torch.from_numpy(reference["points"]))["global"]
    expected = torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1)
    torch.testing.assert_close(feature, expected, atol=1e-5, rtol=0)
    assert not np.allclose(feature.numpy(), reference["scan_feature"], atol=1e-4)


# --- no fixture needed -----------------------------------------------------------------------


def tiny(**overrides) -> PointM2AE:
    torch.manual_seed(0)
    return point_m2ae(**{**TINY, **overrides})


def upstream_push_down(knn_idx, masked, size):
    """Upstream's formula, written out: flat indices (sample offsets added), masked groups'
    indices zeroed, "visible" scattered to all of them."""
    batch, groups, k = knn_idx.shape
    flat = (knn_idx + torch.arange(batch)[:, None, None] * size).reshape(batch * groups, k)
    flat = (~masked).reshape(-1, 1) * flat  # (B*G, K): masked rows all 0
    hidden = torch.ones(batch * size).scatter(0, flat.reshape(-1), 0).bool()
    return hidden.reshape(batch, size)


def brute_force_hidden(knn_idx, masked, size):
    """Hidden iff held by a masked group and by no visible one (mmpd's rule)."""
    hidden = torch.zeros(knn_idx.shape[0], size, dtype=torch.bool)
    for b, groups in enumerate(knn_idx.tolist()):
        by_visible = {t for g, members in enumerate(groups) if not masked[b, g] for t in members}
        by_masked = {t for g, members in enumerate(groups) if masked[b, g] for t in members}
        for t in by_masked - by_visible:
            hidden[b, t] = True
    return hidden


def test_push_down_rules_against_their_definitions():
    model = tiny()
    pretrain = PointM2AEPretrain(model, PointM2AEDecoderConfig(decoder_dims=(48, 24)))
    patches = model.group(unit_sphere_cloud(3, 128))
    masking = model.random_masking(patches, 0.5, torch.Generator().manual_seed(0))
    visible = model.visible_hierarchy(patches, masking)
    upstream = pretrain.push_down(patches.levels, masking.mask)
    for scale in (2, 1):
        knn_idx, size = patches.levels[scale].knn_idx, patches.levels[scale - 1].centers.shape[1]
        held = brute_force_hidden(knn_idx, ~visible[scale], size)
        assert torch.equal(~visible[scale - 1], held)
        assert torch.equal(upstream[scale - 1], upstream_push_down(knn_idx, upstream[scale], size))
    assert not upstream[0][0, 0] and not upstream[1][0, 0]  # the index-0 quirk
    held_by_visible = covered(patches.levels[2].knn_idx, ~masking.mask, 16)
    assert torch.equal(held_by_visible[1:], ~upstream[1][1:])  # quirk only in sample 0


def sample(obj, b: int):
    """A dataclass of batched tensors (Patches, Level, Masking) cut to sample ``b``."""
    cut = {f.name: getattr(obj, f.name)[b : b + 1] for f in fields(obj) if f.name != "levels"}
    return replace(obj, **cut)


def test_visible_encoding_of_a_sample_does_not_depend_on_the_batch():
    """Padding is never attended: each sample alone encodes as in the batch, at every scale
    (unlike the upstream pretraining path, whose padding and index-0 quirks couple samples)."""
    model = tiny().eval()
    patches = model.group(unit_sphere_cloud(3, 128))
    masking = model.random_masking(patches, 0.6, torch.Generator().manual_seed(3))
    visible = model.visible_hierarchy(patches, masking)
    assert len(set(visible[0].sum(1).tolist())) > 1  # rows of different lengths: padding
    with torch.no_grad():
        batch, _ = model.forward_scales(patches.levels, visible)
        for b in range(3):
            levels = tuple(sample(level, b) for level in patches.levels)
            alone, _ = model.forward_scales(levels, [v[b : b + 1] for v in visible])
            for ours, theirs in zip(alone, batch, strict=True):
                length = ours["tokens"].shape[1]
                torch.testing.assert_close(ours["tokens"][0], theirs["tokens"][b, :length])


def test_reuse_distance_quirk_takes_the_previous_scale_distances():
    """Upstream keeps the centre distances of the previous scale when the packed length is
    the same: crafted masks with 10 visible tokens at scales 0 and 1 (7 in sample 1, so
    padding), other tokens at each scale (the scale-1 centres are the first scale-0 ones)."""
    model = tiny()
    patches = model.group(unit_sphere_cloud(2, 128))
    masked = [torch.ones(2, 32, dtype=torch.bool), torch.ones(2, 16, dtype=torch.bool)]
    masked[0][0, 10:20], masked[0][1, 20:27] = False, False
    masked[1][0, :10], masked[1][1, 3:10] = False, False
    masked.append(torch.zeros(2, 8, dtype=torch.bool))

    def scale_1_mask(**flags):
        pretrain = PointM2AEPretrain(point_m2ae(**TINY, **flags), PointM2AEDecoderConfig((48, 24)))
        with torch.no_grad():
            return pretrain.eval().forward_encoder(patches.levels, masked)[1]

    def packed_distances(scale):
        order, valid = pack(~masked[scale])
        centers = torch.gather(patches.levels[scale].centers, 1, order[..., None].expand(-1, -1, 3))
        return torch.cdist(centers * valid[..., None], centers * valid[..., None])

    reused, fresh = scale_1_mask(), scale_1_mask(reuse_distance_quirk=False)
    padding = ~(reused["valid"][:, :, None] & reused["valid"][:, None, :])
    assert torch.equal(reused["attn_mask"], padding & (packed_distances(0) >= 0.64))
    assert torch.equal(fresh["attn_mask"], padding & (packed_distances(1) >= 0.64))
    assert not torch.equal(reused["attn_mask"], fresh["attn_mask"])


def test_a_point_m2ae_student_trains_in_stage2():
    from mmpd_core.stage2 import Stage2Model, Stage2Step

    teacher = tiny(pooling="scanobjectnn")
    student = type(teacher)(teacher.config)
    model = Stage2Model(
        student, local_target="features", global_distill=True, decoder_depth=1, decoder_heads=2
    )
    step = Stage2Step(teacher, mask_ratio=0.6, shuffle=True)
    loss, metrics = step(model, {"points": unit_sphere_cloud(2, 128)}, torch.Generator())
    loss.backward()
    assert torch.isfinite(loss) and {"loss_local", "loss_global"} <= set(metrics)
    assert student.stages[0].tokenizer.first_conv[0].weight.grad.abs().sum() > 0


def test_pack_puts_visible_tokens_first_in_ascending_order():
    visible = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    order, valid = pack(visible)
    assert order.shape == (2, 3)
    assert order[0].tolist() == [0, 2, 3] and order[1, 0] == 2
    assert valid.tolist() == [[True, True, True], [True, False, False]]


def test_hierarchy_groups_previous_centres():
    points = unit_sphere_cloud(2, 128)
    levels = group_levels(points, (32, 16, 8), (8, 4, 4))
    source = points
    for level in levels:
        assert torch.equal(
            level.centers, torch.gather(source, 1, level.fps_idx[..., None].expand(-1, -1, 3))
        )
        assert (level.fps_idx[:, 0] == 0).all()  # FPS starts at index 0 at every scale
        nearest = torch.cdist(level.centers, source).topk(level.knn_idx.shape[-1], largest=False)
        assert torch.equal(level.knn_idx, nearest.indices)
        source = level.centers


def test_masked_attention_is_the_explicit_additive_bias():
    attn = Attention(24, 6).eval()
    x, mask = torch.randn(2, 7, 24), torch.rand(2, 7, 7) > 0.5
    bias = torch.where(mask, -1e5, 0.0)  # (B, T, T)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 6, 4).permute(2, 0, 3, 1, 4)  # (B, H, T, 4) each
    weights = ((q @ k.transpose(-1, -2)) * 4**-0.5 + bias[:, None]).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(attn(x, bias[:, None]), expected, atol=1e-5, rtol=1e-5)


def test_pooling_picks_the_class_and_survives_rebuild_copy_and_save(tmp_path):
    assert type(tiny()) is PointM2AE and tiny().global_dim == 48
    scan = tiny(pooling="scanobjectnn", num_classes=3)
    assert type(scan) is PointM2AEScanObjectNN and scan.global_dim == 96
    assert type(type(scan)(scan.config)) is PointM2AEScanObjectNN
    assert type(copy.deepcopy(scan)) is PointM2AEScanObjectNN
    assert type(tiny(pooling="scanobjectnn", scan_max_skips_first=False)).__name__.endswith(
        "AllTokens"
    )
    tokens = torch.randn(2, 5, 4)
    tokens[:, 0] += 10  # token 0 holds every maximum: upstream's ScanObjectNN max leaves it out
    assert torch.equal(scan.pool(tokens, None)[:, 4:], tokens[:, 1:].amax(1))
    save_encoder(tmp_path, scan.eval())
    loaded = load_encoder(tmp_path).eval()
    assert type(loaded) is PointM2AEScanObjectNN and loaded.config == scan.config
    with pytest.raises(ValueError, match="pooling"):
        tiny(pooling="mean")


def test_distill_scale_one_keeps_the_token_level_contract():
    model = tiny(distill_scale=1).eval()
    patches = model.group(unit_sphere_cloud(2, 128))
    assert patches.centers.shape == (2, 16, 3) and model.dim == 24 and model.patch_points == 4
    nothing = model.random_masking(patches, 0.0, torch.Generator().manual_seed(0))
    masking = model.random_masking(patches, 0.5, torch.Generator().manual_seed(0))
    hidden = ~model.visible_hierarchy(patches, masking)[0]  # (B, G_0)
    finest = patches.levels[0]
    noisy = finest.neighborhood.clone()
    noisy[hidden] += 1.0
    moved = replace(patches, levels=(replace(finest, neighborhood=noisy), *patches.levels[1:]))
    with torch.no_grad():
        full = model.forward_patches(patches, layers=(0,))
        unmasked = model.forward_visible(patches, nothing)["tokens"]
        visible = model.forward_visible(patches, masking)["tokens"]
        assert torch.equal(model.forward_visible(moved, masking)["tokens"], visible)
    assert full["tokens"].shape == (2, 16, 24) and visible.shape == (2, 8, 24)
    torch.testing.assert_close(unmasked, full["tokens"])
    torch.testing.assert_close(full["layers"][-1], full["tokens"])
    assert full["global"].shape == (2, 48)  # pooled from the coarsest tokens, not these


def test_pretraining_step_trains_every_decoder_part():
    model = PointM2AEPretrain(
        tiny(drop_path_rate=0.0), PointM2AEDecoderConfig(decoder_dims=(48, 24))
    )
    out = model(unit_sphere_cloud(3, 128), torch.Generator().manual_seed(0))
    assert out["masked"][2].sum(1).tolist() == [6, 6, 6]  # int(0.8 * 8) per sample
    assert out["rec_points"].shape[1:] == (8, 3) and out["rec_target"].shape[1:] == (4, 3)
    out["loss"].backward()
    untouched = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    # the fine-tune norm, and scale 0's norm: the decoder never reaches scale 0 (nor upstream's)
    norms = ("encoder.norm", "encoder_norms.0")
    assert set(untouched) == {f"{norm}.{p}" for norm in norms for p in ("weight", "bias")}


def test_every_path_keeps_its_tensors_on_the_model_device():
    """The meta device stands in for a GPU (tests/device_check.py): grouping, masking, both
    encoder paths, the pretraining model and its loss allocate nothing on the CPU."""
    from device_check import DeviceCheck

    meta = torch.device("meta")
    model = tiny(num_classes=3).to(meta)
    pretrain = PointM2AEPretrain(model, PointM2AEDecoderConfig(decoder_dims=(48, 24))).to(meta)
    points = unit_sphere_cloud(2, 128).to(meta)
    with DeviceCheck():
        assert model(points).shape == (2, 3)
        patches = model.group(points)
        masking = model.random_masking(patches, 0.6, torch.Generator())
        assert model.forward_visible(patches, masking)["tokens"].device == meta
        pretrain(points, torch.Generator())["loss"].backward()
        assert pretrain.forward_svm_feature(points)["feature"].shape == (2, 48)


# --- the checkpoint adapter without the fixture -------------------------------------------------

_TO_UPSTREAM = [
    (r"(encoder\.)?stages\.(\d+)\.tokenizer\.(.+)", r"h_encoder.token_embed.\2.\3"),
    (r"(encoder\.)?stages\.(\d+)\.pos_embed\.(.+)", r"h_encoder.encoder_pos_embeds.\2.\3"),
    (r"(encoder\.)?stages\.(\d+)\.blocks\.(.+)", r"h_encoder.encoder_blocks.\2.blocks.\3"),
    (r"head\.(.+)", r"cls_head_finetune.\1"),
    (r"encoder_norms\.(.+)", r"h_encoder.encoder_norms.\1"),
    (r"decoder_blocks\.(\d+)\.(.+)", r"h_decoder.\1.blocks.\2"),
    (r"propagation\.(\d+)\.fuse\.(.+)", r"token_prop.\1.fuse.net.\2"),
    (r"propagation\.(\d+)\.blocks\.(.+)", r"token_prop.\1.extraction.operation.\2"),
]
_CONV = re.compile(r"(tokenizer|propagation|rec_head).*weight")


def to_upstream(model, prefix: str = "") -> dict:
    """Our state dict in upstream's names, Conv1d(k=1) weights (out, in, 1)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.norm.") or key.startswith("encoder.head."):
            continue
        if _CONV.search(key) and value.dim() == 2:
            value = value[..., None]
        for pattern, template in _TO_UPSTREAM:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, template, key)
                break
        out[prefix + key] = value.clone()
    return out


def write(path, state):
    torch.save({"base_model": state, "optimizer": {}, "epoch": 7, "metrics": {"acc": 2.0}}, path)
    return path


def test_round_trips_through_both_layouts(tmp_path):
    source = tiny(num_classes=4).eval()
    target = point_m2ae(**TINY, num_classes=4).eval()
    report = load_upstream_checkpoint(
        target, write(tmp_path / "ft.pth", to_upstream(source, "module."))
    )
    assert report.layout == "finetune" and report.metrics == {"acc": 2.0}
    points = unit_sphere_cloud(2, 128)
    with torch.no_grad():
        assert torch.equal(source(points), target(points))
    pretrain = PointM2AEPretrain(source, PointM2AEDecoderConfig(decoder_dims=(48, 24))).eval()
    path = write(tmp_path / "pre.pth", to_upstream(pretrain))
    reloaded = PointM2AEPretrain(point_m2ae(**TINY), PointM2AEDecoderConfig(decoder_dims=(48, 24)))
    load_upstream_checkpoint(reloaded.eval(), path)
    masked = torch.zeros(2, 8, dtype=torch.bool)
    masked[:, :5] = True
    with torch.no_grad():
        assert torch.equal(
            pretrain(points, masked_top=masked)["loss"], reloaded(points, masked_top=masked)["loss"]
        )
    with pytest.raises(ValueError, match="a fine-tune checkpoint holds no pretraining decoder"):
        load_upstream_checkpoint(reloaded, tmp_path / "ft.pth")


def test_ambiguous_and_unknown_keys_fail_naming_them(tmp_path):
    state = to_upstream(tiny(num_classes=4), "module.")
    old = "module.MAE_encoder.encoders.0.first_conv.0.weight"
    state[old] = state["module.h_encoder.token_embed.0.first_conv.0.weight"].clone()
    state["module.MAE_encoder.blocks.0.norm1.weight"] = torch.ones(12)
    with pytest.raises(ValueError) as err:
        load_upstream_checkpoint(tiny(num_classes=4), write(tmp_path / "bad.pth", state))
    message = str(err.value)
    assert (
        "ambiguous: checkpoint keys 'module.h_encoder.token_embed.0.first_conv.0.weight' and "
        f"'{old}' both map to 'stages.0.tokenizer.first_conv.0.weight'" in message
    )
    assert "unmapped checkpoint key 'module.MAE_encoder.blocks.0.norm1.weight'" in message
    del state[old], state["module.MAE_encoder.blocks.0.norm1.weight"]
    del state["module.norm.bias"]
    with pytest.raises(ValueError, match=r"model key 'norm\.bias' has no value"):
        load_upstream_checkpoint(tiny(num_classes=4), write(tmp_path / "c.pth", state))
    report = load_upstream_checkpoint(
        tiny(num_classes=9),
        write(tmp_path / "d.pth", {**state, "module.norm.bias": torch.zeros(48)}),
    )
    assert report.kept_initialised == ["head.8.bias", "head.8.weight"]


def test_transfer_recipes_give_m2ae_each_datasets_pooling():
    """params.yaml's per-dataset grouping builds the ModelNet40 or ScanObjectNN head input
    (mean + max, D wide; concat(mean, max), 2D wide) in every profile."""
    from mmpd_core import config
    from mmpd_core.tasks.features import load_pretrained

    for profile in config.PROFILES:
        cfg = config.load("finetune", smoke=False, profile=profile)
        for family, width in (("modelnet40", 1), ("scanobjectnn", 2)):
            grouping = cfg.recipes[family].grouping
            encoder = load_pretrained(
                "scratch", "point_m2ae_small", grouping=grouping, num_classes=15
            )
            assert encoder.global_dim == width * encoder.dim, (profile, family)
            logits = encoder.eval()(unit_sphere_cloud(2, 512))
            assert logits.shape == (2, 15)
