"""PointGST: equivalence with recorded upstream outputs (../shared/reference/pointgst_small,
skipped where absent), the checkpoint key map, the trainable-parameter rule and counts, the flags,
and hand-checkable cases of the graph basis, the z-order and the adapter that need no fixture."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import SHARED, compare_arrays, unit_sphere_cloud

from mmpd_core.models import save_encoder
from mmpd_core.models.point_mae import point_mae, point_mae_tiny
from mmpd_core.models.upstream import load_upstream_checkpoint, read_checkpoint
from mmpd_core.peft.pointgst import (
    PCSA,
    PointGSTConfig,
    SpectralBases,
    from_pretrained,
    graph_basis,
    graph_laplacian,
    load_pointgst_checkpoint,
    model_key,
    pairwise_distances,
    point_gst,
    spectral_bases,
    zorder,
    zorder_key,
)

REFERENCE = SHARED / "reference" / "pointgst_small"
CHECKPOINT = REFERENCE / "pointgst_finetune_format.pth"
SMALL = dict(trans_dim=96, depth=3, num_heads=4, num_groups=32, group_size=16)  # the fixture's
SMALL_GST = dict(rank=12, local=8)


@pytest.fixture(scope="module")
def reference():
    if not (REFERENCE / "pointgst_reference.npz").is_file():
        pytest.skip("../shared/reference/pointgst_small is absent (only in the development tree)")
    return dict(np.load(REFERENCE / "pointgst_reference.npz"))


@pytest.fixture(scope="module")
def trainable_json(reference):
    return json.loads((REFERENCE / "pointgst_trainable.json").read_text())


def fixture_model(**flags):
    """The fixture checkpoint loaded into the port (eval mode), with its load report."""
    model = point_gst(point_mae(**SMALL, num_classes=15), **SMALL_GST, **flags)
    report = load_pointgst_checkpoint(model, CHECKPOINT)
    return model.eval(), report


def array(reference, name) -> torch.Tensor:
    return torch.from_numpy(reference[name])


@torch.no_grad()
def port_outputs(reference) -> dict[str, torch.Tensor]:
    """Every array of the fixture, computed by the port under the fixture's names."""
    model, _ = fixture_model()
    points, adapter_input = array(reference, "points"), array(reference, "adapter_input")
    patches = model.group(points)
    bases = model.spectral_bases(patches.centers)
    out = {"points": points, "adapter_input": adapter_input}
    out |= {"centers": patches.centers, "neighborhood": patches.neighborhood}
    out |= {"zorder_key": bases.key, "zorder_idx0": bases.idx0, "zorder_idx1": bases.idx1}
    out |= {"U": bases.U, "sub_U": bases.sub_U}
    out |= {"global_min_distance": bases.global_scale, "local_min_distance": bases.local_scale}
    out["encoder_input_tokens"], out["encoder_input_pos"] = model.embed(patches)
    names = ("U", "sub_U", "zorder_idx0", "zorder_idx1")
    stored = SpectralBases(*(array(reference, name) for name in names))  # injected bases
    out["adapter0_output"] = model.adapters[0](adapter_input, stored)
    out["block0_output"] = model.forward_block(0, adapter_input, stored)
    features = model.forward_patches(patches)
    out["final_tokens"] = torch.cat([features["cls"][:, None], features["tokens"]], dim=1)
    out["logits"] = model.head(features["global"])
    out["logits_alone"] = torch.cat([model(cloud[None]) for cloud in points])
    exact, _ = fixture_model(exact_distances=True)
    out["U_exactdist"] = exact.spectral_bases(patches.centers).U
    out["logits_exactdist"] = exact(points)
    return out


def test_every_reference_array_matches_upstream(reference):
    """Here (torch 2.14.1, 1 thread) the centres, bases, scales, z-order and adapter0_output
    are bit-exact; the transformer outputs differ by <= 4.5e-6 (fused attention)."""
    ours = port_outputs(reference)
    assert set(ours) == set(reference), set(reference) ^ set(ours)
    problems, _ = compare_arrays(ours, reference, tol=1e-5)
    assert not problems, problems


def test_batchwide_scale_quirk_is_recorded(reference):
    """The global m is a cdist residue on cloud 3's diagonal; the batch shares both scales, so
    each cloud alone gets other logits (cloud 3 supplies both minima: its logits stay)."""
    centers = array(reference, "centers")
    diagonal = pairwise_distances(centers).diagonal(dim1=-2, dim2=-1)  # (B, G)
    assert 0 < diagonal.max() < 1e-3 and diagonal[3].max() > 0
    assert graph_laplacian(centers)[1] == diagonal[diagonal > 0].min()
    assert pairwise_distances(centers, exact=True).diagonal(dim1=-2, dim2=-1).abs().max() == 0
    gap = np.abs(reference["logits"] - reference["logits_alone"]).max(axis=1)
    assert gap[3] < 1e-5 and np.all(np.delete(gap, 3) > 0.1)


@pytest.mark.parametrize(("flag", "minimum"), [("true_transform", 0.1), ("swap_xy", 0.1)])
def test_each_corrective_flag_changes_the_logits(reference, flag, minimum):
    """Upstream's effect sizes (fixture README): U^T 0.47, no x/y swap 0.25."""
    flipped, _ = fixture_model(**{flag: not getattr(PointGSTConfig(), flag)})
    with torch.no_grad():
        logits = flipped(array(reference, "points")).numpy()
    assert np.abs(logits - reference["logits"]).max() > minimum


def test_checkpoint_loads_strictly_through_the_key_map(reference):
    model, report = fixture_model()
    assert report.layout == "finetune" and report.epoch == 300
    assert report.metrics["acc"] == pytest.approx(85.29)
    assert not report.skipped and not report.kept_initialised
    state = read_checkpoint(CHECKPOINT)["state"]
    targets = [model_key(key) for key in state]
    assert None not in targets and len(set(targets)) == len(targets)
    assert set(targets) == set(model.state_dict()) == set(report.loaded)
    for key, target in zip(state, targets, strict=True):
        value = state[key][..., 0] if state[key].dim() == 3 and "conv" in key else state[key]
        assert torch.equal(model.state_dict()[target], value), key


def test_checkpoint_with_a_missing_or_foreign_key_fails_listing_it(reference, tmp_path):
    state = read_checkpoint(CHECKPOINT)["state"]
    missing = {k: v for k, v in state.items() if not k.endswith("blocks.1.gft_adapter.adapt1.bias")}
    foreign = {**state, "module.blocks.blocks.0.gft_adapter.adapt2.weight": torch.zeros(12, 12)}
    for name, broken, expected in (
        ("missing", missing, "adapters.1.adapt1.bias"),
        ("foreign", foreign, "gft_adapter.adapt2.weight"),
    ):
        torch.save({"base_model": broken, "epoch": 1}, tmp_path / f"{name}.pth")
        model = point_gst(point_mae(**SMALL, num_classes=15), **SMALL_GST)
        with pytest.raises(ValueError, match=expected):
            load_pointgst_checkpoint(model, tmp_path / f"{name}.pth")


def test_pointmae_pretrain_checkpoint_starts_a_fresh_pointgst():
    path = SHARED / "reference" / "pointmae_small" / "pointmae_pretrain_format.pth"
    if not path.is_file():
        pytest.skip("../shared/reference/pointmae_small is absent")
    model = point_gst(point_mae(**SMALL, num_classes=15), **SMALL_GST)
    report = load_pointgst_checkpoint(model, path)
    assert report.layout == "pretrain"
    kept = set(report.kept_initialised)
    assert {"encoder.cls_token", "encoder.cls_pos"} <= kept
    assert all(k.startswith(("adapters.", "encoder.head.", "encoder.cls_")) for k in kept)
    plain = point_mae(**SMALL, num_classes=15)
    load_upstream_checkpoint(plain, path)
    for name, value in plain.state_dict().items():
        if not name.startswith(("head.", "cls_")):
            assert torch.equal(model.encoder.state_dict()[name], value), name
    assert all(torch.count_nonzero(a.up.weight) == 0 for a in model.adapters)


# ---------------------------------------------------------------- trainable parameters


def counts(model) -> tuple[int, int, int]:
    trainable = model.trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    return len(trainable), sum(p.numel() for p in trainable), total


def small_model():
    return point_gst(point_mae(**SMALL, num_classes=15), **SMALL_GST)


def paper_model():
    """Upstream's full config (ScanObjectNN hardest: 128 groups, 15 classes) on the meta device,
    and the parameter count of its encoder alone."""
    with torch.device("meta"):
        encoder = point_mae(num_groups=128, num_classes=15)
        plain = sum(p.numel() for p in encoder.parameters())
        return point_gst(encoder), plain


def test_trainable_counts_at_small_and_paper_size():
    assert counts(small_model()) == (42, 128_119, 822_583)
    model, plain = paper_model()
    assert (model.config.rank, model.config.local) == (36, 32)
    assert plain == 22_093_327  # Point-MAE's "22.1 M"
    assert counts(model) == (132, 622_831, 22_447_855)  # 12 x 29,544 + 768 + 267,535
    assert sum(p.numel() for p in model.adapters[0].parameters()) == 29_544
    assert sum(p.numel() for p in model.head.parameters()) == 267_535


@pytest.mark.parametrize("size", ["small", "full"])
def test_trainable_names_are_upstreams_through_the_key_map(trainable_json, size):
    recorded = trainable_json[size]
    model = small_model() if size == "small" else paper_model()[0]
    assert set(model.trainable_names()) == {model_key(name) for name in recorded["names"]}
    expected = (recorded["trainable_tensors"], recorded["trainable_params"])
    assert counts(model) == (*expected, recorded["total_params"])


def test_mark_trainable_freezes_the_rest_and_gradients_reach_only_the_trainable():
    model = point_gst(point_mae_tiny(num_classes=5), rank=6, local=8)
    for adapter in model.adapters:  # leave the zero start so every adapter tensor gets a gradient
        torch.nn.init.normal_(adapter.up.weight)
        torch.nn.init.normal_(adapter.adapt1.weight)
    names = set(model.mark_trainable())
    model.train()
    logits = model(unit_sphere_cloud(4, 512))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, param in model.named_parameters():
        if name in names:
            assert param.requires_grad and param.grad is not None, name
            assert torch.count_nonzero(param.grad) > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name
    assert names >= {"encoder.cls_token", "encoder.cls_pos", "encoder.head.8.weight"}


def test_fresh_adapters_train_only_up_at_first():
    """Zero ``up`` blocks every other adapter gradient at step 0 (upstream's zero start)."""
    model = point_gst(point_mae_tiny(num_classes=5), rank=6, local=8)
    model.mark_trainable()
    model(unit_sphere_cloud(2, 512)).square().sum().backward()
    for adapter in model.adapters:
        assert torch.count_nonzero(adapter.up.weight.grad) > 0
        assert torch.count_nonzero(adapter.down.weight.grad) == 0


def test_train_mode_keeps_updating_the_frozen_batchnorm_statistics():
    """Upstream PEFT runs the whole model in train(): frozen BN still tracks batch statistics."""
    model = point_gst(point_mae_tiny(num_classes=5), rank=6, local=8)
    model.mark_trainable()
    bn = model.encoder.tokenizer.first_conv[1]
    before = bn.running_mean.clone()
    model.train()(unit_sphere_cloud(2, 512))
    assert not bn.weight.requires_grad and not torch.equal(bn.running_mean, before)


def test_optimizer_groups_follow_upstreams_weight_decay_rule():
    model = point_gst(point_mae_tiny(num_classes=5), rank=6, local=8)
    no_decay, decay = model.optimizer_groups(0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in no_decay["params"] + decay["params"]} == ids
    assert any(p is model.encoder.cls_token for p in no_decay["params"])
    assert any(p is model.encoder.cls_pos for p in decay["params"])  # 3-D, no 'token' in name
    assert all(p.dim() > 1 for p in decay["params"])


# ---------------------------------------------------------------- the wrapper starts as the encoder


@pytest.mark.parametrize("flags", [{}, {"true_transform": True, "exact_distances": True}])
def test_fresh_pointgst_equals_the_frozen_encoder_exactly(flags):
    encoder = point_mae_tiny(num_classes=5).eval()
    model = point_gst(encoder, rank=6, local=8, **flags).eval()
    points = unit_sphere_cloud(3, 512)
    with torch.no_grad():
        ours, theirs = model.forward_features(points), encoder.forward_features(points)
        for key in ("tokens", "cls", "global", "centers"):
            assert torch.equal(ours[key], theirs[key]), key
        assert torch.equal(model(points), encoder(points))


def test_from_pretrained_wraps_an_encoder_file_with_fresh_adapters(tmp_path):
    encoder = point_mae_tiny()
    save_encoder(tmp_path, encoder)
    model = from_pretrained(tmp_path, num_classes=7, rank=6, local=16)
    assert model.config.local == 16 and model.head[-1].out_features == 7
    for name, value in encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], value), name
    assert all(torch.count_nonzero(a.up.weight) == 0 for a in model.adapters)
    with pytest.raises(ValueError, match="7-class head"):
        from_pretrained(encoder, num_classes=7)
    assert (
        from_pretrained(point_mae_tiny(num_classes=7), 7, local=8).encoder.config.num_groups == 32
    )


def test_groups_must_split_into_local_chunks():
    with pytest.raises(ValueError, match="multiple of local 12"):
        point_gst(point_mae_tiny(), local=12)


# ---------------------------------------------------------------- graph basis by hand


def test_graph_laplacian_of_three_points_by_hand():
    points = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    laplacian, scale = graph_laplacian(points)
    assert scale == 1.0  # d01 = 1, d02 = 2, d12 = sqrt(5)
    w = [[1, 1, 1 / 2], [1, 1, 1 / math.sqrt(5)], [1 / 2, 1 / math.sqrt(5), 1]]
    deg = [sum(row) + 1e-6 for row in w]
    expected = [
        [(i == j) - w[i][j] / math.sqrt(deg[i] * deg[j]) for j in range(3)] for i in range(3)
    ]
    torch.testing.assert_close(laplacian, torch.tensor(expected), atol=1e-6, rtol=0)
    basis = graph_basis(points)
    values = torch.linalg.eigvalsh(laplacian)
    torch.testing.assert_close(basis.T @ laplacian @ basis, torch.diag(values), atol=1e-6, rtol=0)
    assert values[0].abs() < 1e-6  # D^1/2 1 is the null vector of a normalised Laplacian
    null = torch.tensor(deg).sqrt() / torch.tensor(deg).sqrt().norm()
    assert torch.allclose(basis[:, 0].abs(), null, atol=1e-6)


def test_graph_scale_is_the_smallest_positive_distance_of_the_whole_batch():
    one = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    batch = torch.stack([one, 0.5 * one])  # (2, 3, 3)
    laplacian, scale = graph_laplacian(batch)
    assert scale == 0.5
    d = torch.cdist(one, one)
    w = 1 / (d / 0.5 + torch.eye(3))  # cloud 0 weighted with the other cloud's scale
    s = torch.rsqrt(w.sum(-1) + 1e-6)
    torch.testing.assert_close(laplacian[0], torch.eye(3) - s[:, None] * w * s[None])
    assert not torch.allclose(laplacian[0], graph_laplacian(one)[0])


def test_cdist_matmul_route_and_the_exact_flag():
    points = unit_sphere_cloud(2, 40)  # > 25 points: the matmul route
    d, exact = pairwise_distances(points), pairwise_distances(points, exact=True)
    torch.testing.assert_close(d, exact, atol=1e-3, rtol=0)
    assert exact.diagonal(dim1=-2, dim2=-1).abs().max() == 0
    config = PointGSTConfig(local=8, exact_distances=True)
    bases = spectral_bases(points[:, :32], config)
    off = ~torch.eye(32, dtype=torch.bool)
    assert bases.global_scale == exact[:, :32, :32][:, off].min()


# ---------------------------------------------------------------- z-order by hand


def interleave(first: int, second: int, third: int, depth: int = 16) -> int:
    """Python-int Morton code of 16-bit two's-complement coordinates."""
    a, b, c = (v & (2**depth - 1) for v in (first, second, third))
    return sum(
        ((a >> i) & 1) << (3 * i + 2) | ((b >> i) & 1) << (3 * i + 1) | ((c >> i) & 1) << (3 * i)
        for i in range(depth)
    )


def test_zorder_key_by_hand():
    point = torch.tensor([[0.015, 0.025, 0.035]])  # int64(100 p) = (1, 2, 3)
    assert zorder_key(point).tolist() == [0b101011]  # (y, x, z) = (2, 1, 3) interleaved
    assert zorder_key(point, swap_xy=False).tolist() == [0b011101]  # (1, 2, 3)
    negative = torch.tensor([[0.0, -0.019, 0.0]])  # truncates to -1: all 16 bits set
    assert zorder_key(negative).tolist() == [4 * (8**16 - 1) // 7]
    assert zorder_key(negative).item() < 2**48


def test_zorder_key_matches_bitwise_interleaving_with_negatives():
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(200, 3, generator=gen) * 4 - 2  # (200, 3) in [-2, 2)
    ints = (points * 100).long().tolist()
    assert zorder_key(points).tolist() == [interleave(y, x, z) for x, y, z in ints]
    assert zorder_key(points, swap_xy=False).tolist() == [interleave(*p) for p in ints]


def test_zorder_sorts_negatives_last_and_idx1_inverts_idx0():
    centers = torch.tensor([[[0.0, -0.5, 0.0], [0.0, 0.5, 0.0], [0.3, 0.1, 0.2], [0.0, 0.0, 0.0]]])
    key, idx0, idx1 = zorder(centers)
    assert idx0.tolist() == [[3, 2, 1, 0]]
    assert torch.equal(torch.gather(idx0, 1, idx1), torch.arange(4)[None])
    assert torch.equal(key.gather(1, idx0), key.sort(dim=1).values)


# ---------------------------------------------------------------- the adapter in closed form


def closed_form(adapter: PCSA, x, bases: SpectralBases, true_transform: bool) -> torch.Tensor:
    """The adapter written with dense matrices: P the z-order permutation, S = blockdiag."""
    batch, chunks, local, _ = bases.sub_U.shape
    groups = chunks * local
    h = adapter.down(x)
    silu, out = torch.nn.functional.silu, []
    for b in range(batch):
        p = torch.eye(groups)[bases.idx0[b]]  # (G, G): (P h)_i = h_idx0[i]
        s = torch.block_diag(*bases.sub_U[b])  # (G, G)
        u = bases.U[b]
        if true_transform:
            u, s = u.T, s.T
        hb = h[b, -groups:]
        glob = hb + u.T @ silu(adapter.adapt1(adapter.norm_ly1(u @ hb)))
        loc = hb + p.T @ s.T @ silu(adapter.adapt1(adapter.norm_ly2(s @ p @ hb)))
        out.append(torch.cat([silu(h[b, :-groups]), silu(hb) + glob + loc]))
    return adapter.up(torch.stack(out))


@pytest.mark.parametrize("true_transform", [False, True])
def test_adapter_equals_its_closed_form(true_transform):
    torch.manual_seed(1)
    adapter = PCSA(16, 6, true_transform=true_transform)
    for layer in (adapter.up, adapter.adapt1, adapter.norm_ly1, adapter.norm_ly2):
        torch.nn.init.normal_(layer.weight)
        torch.nn.init.normal_(layer.bias)
    centers = unit_sphere_cloud(2, 16)
    bases = spectral_bases(centers, PointGSTConfig(local=4))
    x = torch.randn(2, 17, 16)
    expected = closed_form(adapter, x, bases, true_transform)
    torch.testing.assert_close(adapter(x, bases), expected, atol=1e-5, rtol=1e-5)
    other = PCSA(16, 6, true_transform=not true_transform)
    other.load_state_dict(adapter.state_dict())
    assert (other(x, bases) - expected).abs().max() > 1e-2
