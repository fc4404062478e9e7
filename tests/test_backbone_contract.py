"""The backbone contract (mmpd_core/models/contract.py): one suite every registered model passes.

Each architecture runs at a small size (its registry entry with ``SMALL`` overrides); the
parameter count of every entry is checked at full size on the meta device (no memory, no time).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import unit_sphere_cloud

from mmpd_core.models import (
    ARCHITECTURES,
    MODELS,
    Backbone,
    Patches,
    checkpoint_arch,
    create_model,
    load_encoder,
    save_encoder,
)

# Per architecture: a fast size for the suite (the smallest entry, shrunk further).
SMALL = {
    "point_mae": ("point_mae_tiny", {"depth": 2, "trans_dim": 32, "num_heads": 2}),
    "point_m2ae": (
        "point_m2ae_small",
        {
            "num_groups": (48, 24, 12),
            "encoder_dims": (12, 24, 48),
            "encoder_depths": (1, 1, 2),
            "num_heads": 2,
            "tokenizer_hidden": 16,
        },
    ),
    "point_mamba": ("point_mamba_small", {"depth": 2, "trans_dim": 32, "tokenizer_hidden": 16}),
}
POINTS = 256


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request) -> str:
    return request.param


def small(arch: str, seed: int = 0, **overrides) -> Backbone:
    name, base = SMALL[arch]
    torch.manual_seed(seed)
    return create_model(name, **{**base, **overrides})


def test_every_architecture_has_a_small_size_in_this_suite():
    assert set(SMALL) == set(ARCHITECTURES)
    assert {entry.arch for entry in MODELS.values()} == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_of_every_entry_on_the_meta_device(name):
    entry = MODELS[name]
    with torch.device("meta"):
        model = create_model(name, num_classes=entry.params_classes)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(entry.params_m, abs=0.005), (name, count)
    assert model.arch == entry.arch and isinstance(model, Backbone)


def test_shapes(arch):
    model = small(arch, num_classes=5).eval()
    points = unit_sphere_cloud(3, POINTS)
    patches = model.group(points)
    batch, groups = 3, patches.num_tokens
    assert patches.centers.shape == (batch, groups, 3)
    assert patches.neighborhood.shape == (batch, groups, model.patch_points, 3)
    with torch.no_grad():
        out = model.forward_patches(patches)
        assert out["tokens"].shape == (batch, groups, model.dim)
        assert out["global"].shape == (batch, model.global_dim)
        assert torch.equal(out["centers"], patches.centers)
        assert torch.equal(out["global"], model.pool(out["tokens"], out["cls"]))
        assert model(points).shape == (batch, 5)
        assert model.make_head(7)(out["global"]).shape == (batch, 7)
        depth = len(list(model.blocks))
        layers = model.forward_patches(patches, layers=(0, depth - 1))["layers"]
    assert [tuple(x.shape) for x in layers] == [(batch, groups, model.dim)] * 2
    torch.testing.assert_close(layers[-1], out["tokens"])  # the last block, through the norm


def test_masking_partitions_the_tokens_the_same_way_in_every_sample(arch):
    model = small(arch)
    patches = model.group(unit_sphere_cloud(4, POINTS))
    groups = patches.num_tokens
    masking = model.random_masking(patches, 0.6, torch.Generator().manual_seed(0))
    assert torch.equal(masking.mask.sum(1), torch.full((4,), int(0.6 * groups)))
    both = torch.cat([masking.keep_idx, masking.mask_idx], 1)  # (B, G)
    assert torch.equal(both.sort(1).values, torch.arange(groups).expand(4, groups))
    assert torch.equal(masking.mask.gather(1, masking.mask_idx), torch.ones_like(masking.mask_idx))
    assert not masking.mask.gather(1, masking.keep_idx).any()
    restored = both.gather(1, masking.restore_idx)  # [visible, masked] back to centre order
    assert torch.equal(restored, torch.arange(groups).expand(4, groups))


def test_visible_encoding_with_nothing_masked_is_the_full_encoding(arch):
    model = small(arch).eval()
    patches = model.group(unit_sphere_cloud(2, POINTS))
    nothing = model.random_masking(patches, 0.0, torch.Generator().manual_seed(0))
    assert nothing.mask_idx.shape[1] == 0
    with torch.no_grad():
        visible = model.forward_visible(patches, nothing)
        full = model.forward_patches(patches)
    torch.testing.assert_close(visible["tokens"], full["tokens"], rtol=1e-5, atol=1e-6)
    if full["cls"] is not None:
        torch.testing.assert_close(visible["cls"], full["cls"], rtol=1e-5, atol=1e-6)


def with_noise(model, patches: Patches, masking, where: str, scale: float) -> Patches:
    """``patches`` with noise on the input content of the masked (``where="masked"``) or the
    visible patches. A flat encoder reads its patches from the distillation level; a
    hierarchical one (``levels``, finest first: Point-M2AE) from the finest level, where the
    hidden tokens are those its ``visible_hierarchy`` (the pushed-down mask) leaves out."""
    if not patches.levels:
        pick = masking.mask if where == "masked" else ~masking.mask  # (B, G)
        noisy = patches.neighborhood.clone()
        noisy[pick] += scale * torch.randn_like(noisy[pick])
        return dataclasses.replace(patches, neighborhood=noisy)
    visible = model.visible_hierarchy(patches, masking)[0]  # (B, G_0)
    pick = ~visible if where == "masked" else visible
    assert pick.any() and not pick.all()
    finest = patches.levels[0]
    noisy = finest.neighborhood.clone()
    noisy[pick] += scale * torch.randn_like(noisy[pick])
    levels = (dataclasses.replace(finest, neighborhood=noisy), *patches.levels[1:])
    return dataclasses.replace(patches, levels=levels)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_masked_patches_cannot_change_the_visible_encoding(arch, mode):
    model = small(arch, drop_path_rate=0.0)
    patches = model.group(unit_sphere_cloud(2, POINTS))
    for module in model.modules():  # eval statistics of real activations, not the fresh 0 / 1
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative: one pass sets them to that batch's
    with torch.no_grad():
        model.train().forward_patches(patches)
    model.train(mode == "train")
    masking = model.random_masking(patches, 0.6, torch.Generator().manual_seed(1))

    def visible(patches):
        with torch.no_grad():
            return model.forward_visible(patches, masking)["tokens"]

    clean = visible(patches)
    assert torch.equal(visible(with_noise(model, patches, masking, "masked", 1.0)), clean)
    noisy = patches.neighborhood.clone()  # the distillation level's own masked patches
    noisy[masking.mask] += torch.randn_like(noisy[masking.mask])
    assert torch.equal(visible(dataclasses.replace(patches, neighborhood=noisy)), clean)
    assert not torch.allclose(visible(with_noise(model, patches, masking, "visible", 0.1)), clean)


def test_a_seed_fixes_initialisation_and_masking(arch):
    a, b, c = small(arch, seed=3), small(arch, seed=3), small(arch, seed=4)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not all(torch.equal(a.state_dict()[k], v) for k, v in c.state_dict().items())
    patches = a.group(unit_sphere_cloud(3, POINTS))
    one, two = (a.random_masking(patches, 0.6, torch.Generator().manual_seed(9)) for _ in "ab")
    assert torch.equal(one.mask, two.mask)
    other = a.random_masking(patches, 0.6, torch.Generator().manual_seed(10))
    assert not torch.equal(one.mask, other.mask)


def test_gradients_reach_every_parameter(arch):
    model = small(arch, num_classes=3, drop_path_rate=0.0, head_dropout=0.0)
    points, labels = unit_sphere_cloud(6, POINTS), torch.tensor([0, 1, 2, 0, 1, 2])
    F.cross_entropy(model(points), labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()
    patches = model.group(points)
    masking = model.random_masking(patches, 0.6, torch.Generator().manual_seed(0))
    model.forward_visible(patches, masking)["tokens"].square().mean().backward()
    touched = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()]
    assert any(n.startswith("blocks") or ".blocks." in n for n in touched)


def test_save_load_round_trip_rebuilds_the_architecture_from_the_file(arch, tmp_path):
    model = small(arch, num_classes=4).eval()
    save_encoder(tmp_path, model)
    assert checkpoint_arch(tmp_path) == arch
    loaded = load_encoder(tmp_path).eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    points = unit_sphere_cloud(2, POINTS)
    with torch.no_grad():
        assert torch.equal(
            loaded.forward_features(points)["global"], model.forward_features(points)["global"]
        )
        assert torch.equal(loaded(points), model(points))


def test_unknown_names_are_errors_that_list_the_known_ones(tmp_path):
    from mmpd_core.checkpoint import save_checkpoint

    with pytest.raises(KeyError, match=r"unknown model 'pointnet'; known: \['point_m2ae'"):
        create_model("pointnet")
    save_checkpoint(tmp_path / "x.safetensors", {}, config={"arch": "pointnet2"})
    with pytest.raises(KeyError, match=r"x\.safetensors: unknown architecture 'pointnet2'; known"):
        load_encoder(tmp_path / "x.safetensors")


def test_an_architecture_missing_a_contract_method_cannot_be_built():
    from mmpd_core.models.contract import Backbone

    class Incomplete(Backbone):
        def group(self, points):
            return None

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
