import math

import pytest
import torch
import torch.nn.functional as F
from conftest import unit_sphere_cloud

from mmpd_core.layers import Attention, PatchTokenizer, TransformerStack
from mmpd_core.models import MODELS, create_model


def test_named_sizes_and_overrides():
    paper = create_model("point_mae").config
    assert (paper.trans_dim, paper.depth, paper.num_heads, paper.mlp_ratio) == (384, 12, 6, 4.0)
    assert (paper.drop_path_rate, paper.num_groups, paper.group_size) == (0.1, 64, 32)
    assert (MODELS["point_mae"].arch, MODELS["point_mae_tiny"].size) == ("point_mae", "tiny")
    model = create_model("point_mae_tiny", num_classes=7, depth=2)
    assert model.config.num_classes == 7 and len(model.blocks) == 2
    with pytest.raises(KeyError, match="unknown model"):
        create_model("pointnet")
    with pytest.raises(TypeError, match="unknown point_mae config fields"):
        create_model("point_mae_tiny", width=3)


def test_paper_model_parameter_count():
    # Point-MAE's classification model is reported as 22.1M parameters (paper Table 3).
    model = create_model("point_mae", num_classes=40)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(22.1, abs=0.05)


def test_forward_features_contract():
    model = create_model("point_mae_tiny", num_classes=5).eval()
    cfg = model.config
    out = model.forward_features(unit_sphere_cloud(3, 512))
    assert out["tokens"].shape == (3, cfg.num_groups, cfg.trans_dim)
    assert out["cls"].shape == (3, cfg.trans_dim)
    assert out["centers"].shape == (3, cfg.num_groups, 3)
    expected_global = torch.cat([out["cls"], out["tokens"].amax(1)], dim=-1)
    assert torch.equal(out["global"], expected_global)
    # tokens come out of the final LayerNorm (unit-variance rows up to its affine params)
    assert torch.allclose(out["tokens"].mean(-1), torch.zeros(3, cfg.num_groups), atol=1e-5)
    assert model(unit_sphere_cloud(3, 512)).shape == (3, 5)


def test_visible_subset_encoder_is_permutation_equivariant():
    model = create_model("point_mae_tiny").eval()
    patches = model.group(unit_sphere_cloud(2, 512))
    keep = torch.tensor([[0, 3, 5, 9], [1, 2, 8, 30]])
    tokens = model.tokenizer(patches.neighborhood)
    tok = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, 128))
    ctr = torch.gather(patches.centers, 1, keep[..., None].expand(-1, -1, 3))
    out = model.forward_encoder(tok, ctr, with_cls=False)
    assert out.shape == (2, 4, 128)  # no cls token
    perm = torch.tensor([2, 0, 3, 1])
    out_perm = model.forward_encoder(tok[:, perm], ctr[:, perm], with_cls=False)
    assert torch.allclose(out_perm, out[:, perm], atol=1e-5)


def explicit_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written out, to check the SDPA path."""
    b, t, d = x.shape
    h = attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(d // h)).softmax(-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(b, t, d))


def test_transformer_matches_explicit_math_with_pos_before_every_block():
    stack = TransformerStack(32, depth=2, num_heads=4).eval()
    assert stack.blocks[0].attn.qkv.bias is None
    x, pos = torch.randn(2, 6, 32), torch.randn(2, 6, 32)
    y = x
    for blk in stack.blocks:
        y = y + pos
        y = y + explicit_attention(blk.attn, blk.norm1(y))
        y = y + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(y))))
    assert torch.allclose(stack(x, pos), stack.norm(y), atol=1e-5)


def test_fused_tokenizer_equals_upstream_conv_structure():
    tokenizer = PatchTokenizer(64).train()
    nb = torch.randn(2, 5, 16, 3)
    conv = lambda layer, x: F.conv1d(x, layer.weight[..., None], layer.bias)  # noqa: E731
    x = nb.reshape(10, 16, 3).transpose(2, 1)  # (BG, 3, K), the upstream layout
    f = conv(
        tokenizer.first_conv[3],
        F.relu(F.batch_norm(conv(tokenizer.first_conv[0], x), None, None, training=True)),
    )
    f = torch.cat([f.amax(2, keepdim=True).expand(-1, -1, 16), f], dim=1)  # (BG, 512, K)
    bn = tokenizer.second_conv[1]
    f = F.relu(
        F.batch_norm(conv(tokenizer.second_conv[0], f), None, None, bn.weight, bn.bias, True)
    )
    expected = conv(tokenizer.second_conv[3], f).amax(2).reshape(2, 5, 64)
    assert torch.allclose(tokenizer(nb), expected, atol=1e-4)


def test_classification_head_layout():
    head = create_model("point_mae_tiny", num_classes=40).head
    weighted = [i for i, layer in enumerate(head) if sum(p.numel() for p in layer.parameters())]
    assert weighted == [0, 1, 4, 5, 8]
    assert head[0].in_features == 256 and head[8].out_features == 40


def test_same_seed_same_initialisation():
    torch.manual_seed(5)
    a = create_model("point_mae_tiny").state_dict()
    torch.manual_seed(5)
    b = create_model("point_mae_tiny").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_parameter_gets_a_gradient():
    model = create_model("point_mae_tiny", num_classes=3, drop_path_rate=0.0, head_dropout=0.0)
    points, labels = unit_sphere_cloud(6, 256), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = F.cross_entropy(model(points), labels)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_point_m2ae_named_sizes():
    with torch.device("meta"):
        paper = create_model("point_m2ae", num_classes=40)
        small = create_model("point_m2ae_small", num_classes=40)
    cfg = paper.config
    assert (cfg.num_groups, cfg.group_sizes) == ((512, 256, 64), (16, 8, 8))
    assert (cfg.encoder_dims, cfg.encoder_depths, cfg.num_heads) == ((96, 192, 384), (5,) * 3, 6)
    assert (cfg.local_radius, cfg.distill_scale) == ((0.32, 0.64, 1.28), -1)
    rates = [block.drop_path.p for stage in paper.stages for block in stage.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and len(rates) == 15
    assert (paper.dim, paper.global_dim, paper.patch_points) == (384, 384, 8)
    assert sum(p.numel() for p in paper.parameters()) == 12_830_056  # upstream's fine-tune model
    assert sum(p.numel() for p in small.parameters()) == 951_560
    assert (MODELS["point_m2ae"].size, MODELS["point_m2ae_small"].arch) == ("paper", "point_m2ae")
