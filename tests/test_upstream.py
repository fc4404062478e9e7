import argparse

import numpy as np
import pytest
import torch
from conftest import unit_sphere_cloud

from mmpd_core.models import create_model
from mmpd_core.models.upstream import load_upstream_checkpoint

SMALL = dict(trans_dim=96, depth=3, num_heads=4, num_groups=32, group_size=16)


def reference_model(num_classes=0):
    return create_model("point_mae", **SMALL, num_classes=num_classes)


def test_finetune_layout_reproduces_upstream_outputs(pointmae_reference):
    ref = np.load(pointmae_reference / "pointmae_reference.npz")
    model = reference_model(num_classes=40)
    report = load_upstream_checkpoint(model, pointmae_reference / "pointmae_finetune_format.pth")
    assert report.layout == "finetune" and not report.skipped and not report.kept_initialised
    assert report.epoch == 250 and report.metrics["acc"] == pytest.approx(93.19)
    model.eval()
    points = torch.from_numpy(ref["points"])
    with torch.no_grad():
        out = model.forward_features(points)
        logits = model(points)
    tokens = torch.cat([out["cls"][:, None], out["tokens"]], dim=1)
    np.testing.assert_allclose(out["centers"].numpy(), ref["centers"], atol=1e-5)
    np.testing.assert_allclose(tokens.numpy(), ref["finetune_tokens"], atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), ref["finetune_logits"], atol=1e-5)


def mae_encoder(model, points):
    """Upstream's pretraining encoder on every patch: tokens, no cls token."""
    patches = model.group(points)
    return model.forward_encoder(
        model.tokenizer(patches.neighborhood), patches.centers, with_cls=False
    )


def test_pretrain_layout_reproduces_upstream_encoder(pointmae_reference):
    ref = np.load(pointmae_reference / "pointmae_reference.npz")
    model = reference_model()
    report = load_upstream_checkpoint(model, pointmae_reference / "pointmae_pretrain_format.pth")
    assert report.layout == "pretrain"
    assert report.kept_initialised == ["cls_pos", "cls_token"]
    assert "mask_token" in report.skipped and "increase_dim.0.weight" in report.skipped
    assert all(
        k.startswith(("MAE_decoder", "decoder_pos", "mask", "increase")) for k in report.skipped
    )
    model.eval()
    with torch.no_grad():
        tokens = mae_encoder(model, torch.from_numpy(ref["points"]))
    np.testing.assert_allclose(tokens.numpy(), ref["pretrain_encoder_tokens"], atol=1e-5)


def test_finetune_head_of_another_class_count_is_skipped(pointmae_reference):
    model = reference_model(num_classes=15)
    report = load_upstream_checkpoint(model, pointmae_reference / "pointmae_finetune_format.pth")
    assert set(report.skipped) == {
        "module.cls_head_finetune.8.weight",
        "module.cls_head_finetune.8.bias",
    }
    assert report.kept_initialised == ["head.8.bias", "head.8.weight"]


# --- self-contained: writes upstream-layout files from our own model -------------------------


def to_upstream(model, layout: str) -> dict:
    """Our state dict in the released layout (conv weights (out, in, 1), upstream names)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("tokenizer.") and key.endswith("weight") and value.dim() == 2:
            value = value[..., None]
        key = (
            key.replace("tokenizer.", "encoder.")
            .replace("transformer.blocks.", "blocks.blocks.")
            .replace("transformer.norm.", "norm.")
            .replace("head.", "cls_head_finetune.")
        )
        if layout == "pretrain":
            if key.startswith(("cls_", "cls_head")):
                continue
            key = "MAE_encoder." + key
        else:
            key = "module." + key
        out[key] = value.clone()
    if layout == "pretrain":
        out["mask_token"] = torch.zeros(1, 1, model.config.trans_dim)
        out["MAE_decoder.norm.weight"] = torch.ones(model.config.trans_dim)
    return out


def write(path, state, **extra):
    torch.save(
        {"base_model": state, "optimizer": {}, "epoch": 3, "metrics": {"acc": 1.5}, **extra}, path
    )
    return path


@pytest.mark.parametrize("layout", ["pretrain", "finetune"])
def test_round_trip_through_upstream_layout(tmp_path, layout):
    source = create_model("point_mae_tiny", num_classes=4).eval()
    path = write(tmp_path / "ckpt.pth", to_upstream(source, layout))
    target = create_model("point_mae_tiny", num_classes=4).eval()
    report = load_upstream_checkpoint(target, path)
    assert report.layout == layout and report.metrics == {"acc": 1.5}
    points = unit_sphere_cloud(2, 256)
    with torch.no_grad():
        a, b = source.forward_features(points), target.forward_features(points)
    if layout == "finetune":
        assert torch.equal(a["global"], b["global"])
    else:  # cls token and head are not in a pretrain checkpoint: compare the MAE encoder
        assert not torch.equal(a["global"], b["global"])
        with torch.no_grad():
            assert torch.equal(mae_encoder(source, points), mae_encoder(target, points))


def test_unmapped_and_misshaped_keys_fail_loudly(tmp_path):
    source = create_model("point_mae_tiny")
    state = to_upstream(source, "finetune")
    state["module.some_new_layer.weight"] = torch.zeros(3)
    state["module.pos_embed.2.weight"] = torch.zeros(7, 128)
    path = write(tmp_path / "bad.pth", state)
    with pytest.raises(ValueError) as err:
        load_upstream_checkpoint(create_model("point_mae_tiny"), path)
    assert "unmapped checkpoint key 'module.some_new_layer.weight'" in str(err.value)
    assert "shape mismatch for 'module.pos_embed.2.weight'" in str(err.value)
    assert str(path) in str(err.value)


def test_missing_encoder_key_fails(tmp_path):
    state = to_upstream(create_model("point_mae_tiny"), "finetune")
    del state["module.norm.bias"]
    with pytest.raises(ValueError, match=r"model key 'transformer\.norm\.bias' has no value"):
        load_upstream_checkpoint(create_model("point_mae_tiny"), write(tmp_path / "c.pth", state))


def test_pickled_objects_are_refused(tmp_path):
    state = to_upstream(create_model("point_mae_tiny"), "finetune")
    path = write(tmp_path / "ulip_like.pth", state, args=argparse.Namespace(lr=1.0))
    with pytest.raises(ValueError, match="not a tensors-only PyTorch checkpoint"):
        load_upstream_checkpoint(create_model("point_mae_tiny"), path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_upstream_checkpoint(create_model("point_mae_tiny"), tmp_path / "absent.pth")
