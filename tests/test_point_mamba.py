"""PointMamba: equivalence with recorded upstream outputs (../shared/reference/pointmamba_small,
skipped where absent), the checkpoint adapter, the serialisation and the selective scan, with
unit tests that need no fixture."""

from __future__ import annotations

import itertools
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED, compare_arrays, unit_sphere_cloud

from mmpd_core.models import create_model
from mmpd_core.models import selective_scan as scan_module
from mmpd_core.models.point_mamba import merge_orders, point_mamba, point_mamba_small
from mmpd_core.models.selective_scan import chunked_scan, selective_scan, selective_scan_ref
from mmpd_core.models.serialization import hilbert_encode, serialization_orders
from mmpd_core.models.upstream import load_upstream_checkpoint

REFERENCE = SHARED / "reference" / "pointmamba_small"
SMALL = dict(trans_dim=96, depth=3, num_groups=32, group_size=16)  # the fixture's config
TINY = dict(trans_dim=16, depth=2, num_groups=16, group_size=8, tokenizer_hidden=8)


@pytest.fixture(scope="module")
def reference():
    if not (REFERENCE / "pointmamba_reference.npz").is_file():
        pytest.skip("../shared/reference/pointmamba_small is absent (only in the development tree)")
    return dict(np.load(REFERENCE / "pointmamba_reference.npz"))


def fixture_models(**flags):
    """The fine-tune checkpoint (15 classes) and the pretrain one, loaded into the port."""
    finetune = point_mamba(**SMALL, num_classes=15, **flags)
    pretrain = point_mamba(**SMALL, **flags)
    reports = (
        load_upstream_checkpoint(finetune, REFERENCE / "pointmamba_finetune_format.pth"),
        load_upstream_checkpoint(pretrain, REFERENCE / "pointmamba_pretrain_format.pth"),
    )
    return finetune.eval(), pretrain.eval(), reports


@torch.no_grad()
def port_outputs(reference) -> dict[str, torch.Tensor]:
    """Every array of the fixture, computed by the port under the fixture's names."""
    model, pretrain, _ = fixture_models()
    points, mixer_input = (torch.from_numpy(reference[k]) for k in ("points", "mixer_input"))
    patches = model.group(points)
    out = {"points": points, "mixer_input": mixer_input}
    out |= {"centers": patches.centers, "neighborhood": patches.neighborhood}
    out["encoder_tokens"] = tokens = model.tokenizer(patches.neighborhood)
    out["pos_embed"] = pos = model.pos_embed(patches.centers)
    sequence, positions, orders = model.serialize(tokens, pos, patches.centers)
    out |= {"serialized_tokens": sequence, "serialized_pos": positions}
    out |= {"hilbert_order": orders[0], "hilbert_trans_order": orders[1]}
    alone = serialization_orders(patches.centers, batch_depth=False)
    out |= {"hilbert_order_alone": alone[0], "hilbert_trans_order_alone": alone[1]}
    out["mixer_output"] = model.forward_sequence(sequence + positions)[0]
    out["logits"] = model(points)
    out["logits_alone"] = torch.cat([model(cloud[None]) for cloud in points])
    out["pretrain_encoder_tokens_hilbert"] = pretrain.forward_one_order(patches, 0)[0]
    block = model.blocks[0]
    out["mixer_layer0_output"] = block.mixer(mixer_input)
    out["block_layer0_output"] = block(mixer_input)
    # the fixture's scan arguments are those of the block's call, on LayerNorm(mixer_input)
    args = block.mixer.scan_inputs(block.norm(mixer_input))
    out |= {f"scan_{name}": value for name, value in args.items()}
    out["scan_y"] = selective_scan(**args, delta_softplus=True)
    return out


def test_every_reference_array_matches_upstream(reference):
    ours = port_outputs(reference)
    assert set(ours) == set(reference), set(reference) ^ set(ours)
    problems, _ = compare_arrays(ours, reference, tol=1e-4)
    assert not problems, problems


def test_fixture_checkpoint_reports_and_parameter_counts(reference):
    finetune, pretrain, (ft_report, pt_report) = fixture_models()
    assert ft_report.layout == "finetune" and ft_report.epoch == 300
    assert not ft_report.skipped and not ft_report.kept_initialised
    assert ft_report.metrics["acc"] == pytest.approx(88.31)
    assert pt_report.layout == "pretrain" and not pt_report.kept_initialised
    assert set(pt_report.skipped.values()) == {"pretraining decoder, not part of the encoder"}
    assert {k.split(".")[1] for k in pt_report.skipped} == {
        "mask_token", "decoder_pos_embed", "MAE_decoder", "increase_dim",
    }  # fmt: skip
    for name, value in pretrain.state_dict().items():  # upstream fine-tuned from this file
        assert torch.equal(finetune.state_dict()[name], value), name
    with_head = point_mamba(**SMALL, num_classes=15)
    report = load_upstream_checkpoint(with_head, REFERENCE / "pointmamba_pretrain_format.pth")
    assert report.kept_initialised and all(k.startswith("head.") for k in report.kept_initialised)


def test_reference_scan_and_parallel_scan_reproduce_the_fixture_scan(reference):
    args = {k[5:]: torch.from_numpy(v) for k, v in reference.items() if k.startswith("scan_")}
    expected = args.pop("y")
    for scan in (selective_scan_ref, selective_scan):
        torch.testing.assert_close(scan(**args, delta_softplus=True), expected, atol=1e-5, rtol=0)


def test_batch_depth_flag_reproduces_the_clouds_alone(reference):
    """Upstream: cloud 3 alone gets another curve depth, hence other logits (the quirk);
    ``batch_depth=False`` makes the batch's logits those of each cloud alone."""
    points, alone = torch.from_numpy(reference["points"]), reference["logits_alone"]
    faithful, _, _ = fixture_models()
    per_cloud, _, _ = fixture_models(batch_depth=False)
    with torch.no_grad():
        batch, fixed = faithful(points).numpy(), per_cloud(points).numpy()
    gap = np.abs(batch - alone).max(axis=1)
    assert gap[3] > 5e-3 and np.all(np.delete(gap, 3) < 1e-5)
    np.testing.assert_allclose(fixed, alone, atol=1e-5)


# ---------------------------------------------------------------- serialisation, no fixture


def hilbert_bitwise(point: tuple[int, int, int], depth: int) -> int:
    """Skilling's transform bit by bit on Python ints: the reference for ``hilbert_encode``."""
    bits = [[(c >> (depth - 1 - i)) & 1 for i in range(depth)] for c in point]  # MSB first
    for i in range(depth):
        for axis in range(3):
            for j in range(i + 1, depth):
                if bits[axis][i]:  # invert axis 0's lower bits
                    bits[0][j] ^= 1
                elif bits[0][j] != bits[axis][j]:  # exchange them with this axis's
                    bits[0][j] ^= 1
                    bits[axis][j] ^= 1
    code = prefix = 0
    for bit in (bits[axis][i] for i in range(depth) for axis in range(3)):
        prefix ^= bit  # Gray code -> binary
        code = 2 * code + prefix
    return code


def test_hilbert_code_of_the_cube_corners():
    corners = torch.tensor(list(itertools.product((0, 1), repeat=3)))  # (8, 3), x slowest
    assert hilbert_encode(corners, 1).tolist() == [0, 1, 3, 2, 7, 6, 4, 5]


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 7])
def test_hilbert_code_matches_the_bitwise_reference(depth):
    points = torch.randint(0, 2**depth, (60, 3), generator=torch.Generator().manual_seed(depth))
    expected = [hilbert_bitwise(tuple(p), depth) for p in points.tolist()]
    assert hilbert_encode(points, depth).tolist() == expected


def test_hilbert_curve_visits_every_cell_once_stepping_to_a_neighbour():
    cells = torch.tensor(list(itertools.product(range(8), repeat=3)))  # (512, 3)
    codes = hilbert_encode(cells, 3)
    assert torch.equal(codes.sort().values, torch.arange(512))
    path = cells[codes.argsort()]  # (512, 3), along the curve
    assert torch.equal((path[1:] - path[:-1]).abs().sum(1), torch.ones(511, dtype=torch.long))
    assert path[0].tolist() == [0, 0, 0]


def test_serialization_grid_and_the_trans_order_swaps_x_and_y():
    centers = torch.rand(2, 20, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    orders = serialization_orders(centers)
    swapped = serialization_orders(centers[..., [1, 0, 2]])
    assert torch.equal(orders[0], swapped[1]) and torch.equal(orders[1], swapped[0])
    shifted = serialization_orders(centers + torch.tensor([0.4, -0.2, 0.6]))  # whole cells
    assert torch.equal(shifted, orders)


def test_batch_depth_flag_changes_only_the_small_clouds_order():
    gen = torch.Generator().manual_seed(1)
    big = torch.rand(1, 32, 3, generator=gen) * 2 - 1  # depth 7 on the 0.02 grid
    small = (torch.rand(1, 32, 3, generator=gen) * 2 - 1) * 0.3  # depth 5 alone
    batch = torch.cat([big, small])
    faithful = serialization_orders(batch)
    per_cloud = serialization_orders(batch, batch_depth=False)
    for index, cloud in enumerate((big, small)):
        assert torch.equal(per_cloud[:, index], serialization_orders(cloud)[:, 0])
    assert torch.equal(faithful[:, 0], per_cloud[:, 0])
    assert not torch.equal(faithful[:, 1], per_cloud[:, 1])


def test_order_indicators_scale_tokens_not_positions_and_positions_enter_once():
    model = point_mamba(**TINY).eval()
    with torch.no_grad():
        for indicator, value in zip(model.order_indicators, (2.0, -3.0), strict=True):
            indicator.gamma.fill_(value)
            indicator.beta.fill_(value / 2)
    patches = model.group(unit_sphere_cloud(2, 128))
    tokens, pos = torch.randn(2, 16, 16), torch.randn(2, 16, 16)
    sequence, positions, orders = model.serialize(tokens, pos, patches.centers)
    gather = lambda x, o: x.gather(1, o[..., None].expand(-1, -1, 16))  # noqa: E731
    torch.testing.assert_close(sequence[:, :16], gather(tokens, orders[0]) * 2.0 + 1.0)
    torch.testing.assert_close(sequence[:, 16:], gather(tokens, orders[1]) * -3.0 - 1.5)
    assert torch.equal(positions, torch.cat([gather(pos, orders[0]), gather(pos, orders[1])], 1))
    with torch.no_grad():
        out = model.forward_patches(patches)
        tokens, pos = model.tokenizer(patches.neighborhood), model.pos_embed(patches.centers)
        sequence, positions, orders = model.serialize(tokens, pos, patches.centers)
        x = sequence + positions  # once, before the first block
        for block in model.blocks:
            x = block(x)
        expected = merge_orders(model.norm(x), orders)
    torch.testing.assert_close(out["tokens"], expected)


def test_merge_orders_averages_the_two_occurrences_in_fps_order():
    tokens = torch.randn(3, 10, 4)
    orders = torch.stack([torch.randperm(10).expand(3, 10), torch.rand(3, 10).argsort(1)])
    gather = lambda o: tokens.gather(1, o[..., None].expand(-1, -1, 4))  # noqa: E731
    sequence = torch.cat([gather(orders[0]), 3 * gather(orders[1])], 1)  # (3, 20, 4)
    merged = merge_orders(sequence, orders)
    torch.testing.assert_close(merged, 2 * tokens)
    torch.testing.assert_close(merged.mean(1), sequence.mean(1))  # pool == upstream's avg_head


# ---------------------------------------------------------------- the selective scan


def scan_args(batch=2, channels=6, length=23, states=4, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    return {
        "u": rand(batch, channels, length),
        "delta": rand(batch, channels, length),
        "A": -torch.rand(channels, states, generator=gen, dtype=dtype) * 4,
        "B": rand(batch, states, length),
        "C": rand(batch, states, length),
        "D": rand(channels),
        "z": rand(batch, channels, length),
        "delta_bias": rand(channels),
    }


@pytest.mark.parametrize("length", [1, 2, 16, 23, 64])
def test_parallel_scan_equals_the_sequential_reference(length):
    args = scan_args(length=length)
    expected = selective_scan_ref(**args, delta_softplus=True)
    torch.testing.assert_close(selective_scan(**args, delta_softplus=True), expected)
    plain = {k: args[k] for k in ("u", "A", "B", "C")}  # no D, z, bias nor softplus
    plain["delta"] = args["delta"].abs()  # Δ > 0: the state decays
    torch.testing.assert_close(selective_scan(**plain), selective_scan_ref(**plain))


def test_no_grad_scan_in_channel_blocks_equals_the_reference(monkeypatch):
    """Without grad the scan reads out per step, in blocks of NO_GRAD_BLOCK_ELEMENTS, chunked
    or, for steps of more than SEQUENTIAL_STEP_ELEMENTS state entries, one step at a time."""
    args = scan_args(batch=2, channels=5, length=13)
    expected = selective_scan_ref(**args, delta_softplus=True)
    calls, sequential = [], scan_module._sequential_readout
    monkeypatch.setattr(
        scan_module, "_sequential_readout", lambda *a: calls.append(1) or sequential(*a)
    )
    for block, one_at_a_time in itertools.product((13 * 2 * 4, 1 << 23), (False, True)):
        # one channel per block, or all in one; chunked, or one step at a time
        monkeypatch.setattr(scan_module, "NO_GRAD_BLOCK_ELEMENTS", block)
        monkeypatch.setattr(
            scan_module, "SEQUENTIAL_STEP_ELEMENTS", 0 if one_at_a_time else 1 << 30
        )
        calls.clear()
        with torch.no_grad():
            torch.testing.assert_close(selective_scan(**args, delta_softplus=True), expected)
        assert len(calls) == (0 if not one_at_a_time else 1 if block == 1 << 23 else 5)


def test_only_cpu_scans_with_large_steps_run_one_step_at_a_time():
    """The crossover is a CPU one; on a GPU every step would cost kernel launches."""
    a2 = torch.empty(16, 768)  # (N, e): 12 288 state entries a batch row
    big, small = torch.empty(64, 4, 768), torch.empty(64, 2, 768)  # (L, b, e)
    assert scan_module._one_step_at_a_time(big, a2)  # 49 152 > 32 768
    assert not scan_module._one_step_at_a_time(small, a2)  # 24 576
    assert not scan_module._one_step_at_a_time(big.to("meta"), a2.to("meta"))


def test_parallel_scan_gradients_equal_the_references():
    args = scan_args(length=19)
    grads = []
    for scan in (selective_scan_ref, selective_scan):
        leaves = {k: v.clone().requires_grad_(True) for k, v in args.items()}
        (scan(**leaves, delta_softplus=True) * torch.linspace(-1, 1, 19)).sum().backward()
        grads.append({k: v.grad for k, v in leaves.items()})
    for name in args:
        assert grads[1][name].abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [None, 1, 3, 4, 16])
def test_chunked_scan_equals_the_recurrence_both_ways(chunk):
    gen = torch.Generator().manual_seed(0)
    coef, x = torch.rand(10, 2, 3, generator=gen), torch.randn(10, 2, 3, generator=gen)
    forward, backward = [], [None] * 10
    state = torch.zeros(2, 3)
    for t in range(10):
        state = coef[t] * state + x[t]
        forward.append(state)
    state = torch.zeros(2, 3)
    for t in range(9, -1, -1):  # reverse, with the coefficients shifted by one step
        state = x[t] + (coef[t + 1] * state if t < 9 else 0)
        backward[t] = state
    torch.testing.assert_close(chunked_scan(coef, x, chunk), torch.stack(forward))
    reverse = chunked_scan(coef[1:], x, chunk, reverse=True)
    torch.testing.assert_close(reverse, torch.stack(backward))


@pytest.mark.parametrize("chunk", [None, 1, 3, 16])
def test_chunked_scan_rate_factors_and_readout_equal_the_plain_scan(chunk):
    """coef = exp2(r a): chunk totals from one exp2 of summed rates (including the padding of
    a last, shorter chunk); x as two factors, never multiplied out; readout: Σ_N R h without
    writing h. Both ways of scanning."""
    gen = torch.Generator().manual_seed(1)
    r = torch.rand(11, 2, 1, 3, generator=gen)  # (L, b, 1, e) rates (Δ)
    a = -torch.rand(4, 3, generator=gen) * 3  # (N, e)
    p, q = torch.randn(11, 2, 1, 3, generator=gen), torch.randn(11, 2, 4, 1, generator=gen)
    x = p * q  # (L, b, N, e)
    readout = torch.randn(11, 2, 4, generator=gen)  # (L, b, N)
    coef = torch.exp2(r * a)
    for reverse, (c, rates) in ((False, (coef, r)), (True, (coef[1:], r[1:]))):
        plain = chunked_scan(c, x, chunk, reverse=reverse)
        fast = chunked_scan(c, x, chunk, reverse=reverse, rate=(rates, a))
        torch.testing.assert_close(fast, plain)
        torch.testing.assert_close(chunked_scan(c, (p, q), chunk, reverse=reverse), plain)
        read = chunked_scan(c, (p, q), chunk, reverse=reverse, rate=(rates, a), readout=readout)
        torch.testing.assert_close(read, (plain * readout.unsqueeze(-1)).sum(-2))
        made = chunked_scan(None, (p, q), chunk, reverse=reverse, rate=(rates, a))  # coef from r
        torch.testing.assert_close(made, plain)
        made = chunked_scan(None, (p, q), chunk, reverse=reverse, rate=(rates, a), readout=readout)
        torch.testing.assert_close(made, read)
    with pytest.raises(ValueError, match="a forward scan needs 11 rates, got 10"):
        chunked_scan(None, (p, q), chunk, rate=(r[1:], a))
    with pytest.raises(ValueError, match="needs coef, or rate"):
        chunked_scan(None, (p, q), chunk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_matches_torch_and_its_gradient_is_the_sigmoid(dtype):
    """Over the whole range: underflow of exp(-|x|), the log1p correction near 0 and huge x."""
    tiny = torch.finfo(dtype).tiny
    edges = torch.tensor([0.0, 1e-30, -1e-30, 1e4, -1e4, 88.0, -88.0], dtype=dtype)
    x = torch.cat([torch.linspace(-120, 120, 20001, dtype=dtype), edges])
    exact = x.double()
    exact = exact.clamp_min(0) + torch.log1p(torch.exp(-exact.abs()))  # float64 log1p is exact
    if dtype == torch.float32:
        torch.testing.assert_close(exact, F.softplus(x).double(), rtol=2.5e-7, atol=tiny)
    expected = exact
    got = scan_module.softplus(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=4 * torch.finfo(dtype).eps, atol=tiny)
    leaf = x.clone().requires_grad_(True)
    scan_module.softplus(leaf).backward(torch.ones_like(x))
    torch.testing.assert_close(leaf.grad, torch.sigmoid(x))
    assert torch.autograd.gradcheck(
        scan_module.softplus, torch.randn(7, dtype=torch.float64, requires_grad=True)
    )


@pytest.mark.parametrize("block", [1 << 19, 40])  # all channels in one block; one per block
@pytest.mark.parametrize("kept", [0, 1 << 23])  # states recomputed in the backward / kept
def test_selective_scan_gradcheck(monkeypatch, block, kept):
    monkeypatch.setattr(scan_module, "BLOCK_ELEMENTS", block)
    monkeypatch.setattr(scan_module, "SAVE_STATES_MAX", kept)
    args = scan_args(batch=2, channels=3, length=7, states=2, dtype=torch.float64)
    names = list(args)
    leaves = tuple(v.requires_grad_(True) for v in args.values())
    scan = lambda *xs: selective_scan(**dict(zip(names, xs, strict=True)), delta_softplus=True)  # noqa: E731
    assert torch.autograd.gradcheck(scan, leaves)


def test_kept_and_recomputed_states_give_identical_gradients(monkeypatch):
    args = scan_args(batch=2, channels=6, length=21)
    calls, states = [], scan_module._states
    monkeypatch.setattr(scan_module, "_states", lambda *a: calls.append(1) or states(*a))
    monkeypatch.setattr(scan_module, "BLOCK_ELEMENTS", 21 * 2 * 4 * 2)  # 3 blocks of 2 channels
    grads = []
    for kept in (0, 1 << 23):
        monkeypatch.setattr(scan_module, "SAVE_STATES_MAX", kept)
        leaves = {k: v.clone().requires_grad_(True) for k, v in args.items()}
        loss = (selective_scan(**leaves, delta_softplus=True) * torch.linspace(-1, 1, 21)).sum()
        calls.clear()
        loss.backward()
        grads.append({k: v.grad for k, v in leaves.items()})
        assert len(calls) == (3 if kept == 0 else 0)  # the backward recomputes, or not
    # the states are the same either way; the output y is not read out the same way (during
    # the scan, or from the kept states), so z, whose gradient is SiLU'(z) y, differs by rounding
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in args if k != "z")
    torch.testing.assert_close(grads[0]["z"], grads[1]["z"])


def test_importing_never_needs_mamba_ssm_and_cpu_never_calls_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # any import of it now fails
    scan_module.cuda_selective_scan.cache_clear()
    try:
        assert scan_module.cuda_selective_scan() is None
    finally:
        scan_module.cuda_selective_scan.cache_clear()

    def kernel(*args):
        raise AssertionError("the CUDA kernel was called on a CPU tensor")

    monkeypatch.setattr(scan_module, "cuda_selective_scan", lambda: kernel)
    args = scan_args(length=5)
    torch.testing.assert_close(selective_scan(**args), selective_scan_ref(**args))


def test_scan_runs_in_float32_and_returns_the_input_dtype():
    args = scan_args(length=9, dtype=torch.float64)
    half = {k: v.to(torch.bfloat16) for k, v in args.items()}
    out = selective_scan(**half, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    expected = selective_scan_ref(**{k: v.float() for k, v in half.items()}, delta_softplus=True)
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)
    single = {k: v.float() for k, v in args.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the scan itself stays in float32
        autocast = selective_scan(**single, delta_softplus=True)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, selective_scan_ref(**single, delta_softplus=True))


# ---------------------------------------------------------------- model, init, checkpoints


def test_named_sizes_and_upstream_parameter_counts():
    with torch.device("meta"):
        paper40 = create_model("point_mamba", num_classes=40)
        paper15 = create_model("point_mamba", num_classes=15)
        encoder = create_model("point_mamba")
        small = create_model("point_mamba_small", num_classes=40)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(paper40), count(paper15), count(encoder)) == (12_297_768, 12_291_343, 12_122_112)
    assert count(small) == 936_232
    cfg = paper40.config
    assert (cfg.trans_dim, cfg.depth, cfg.num_groups, cfg.group_size) == (384, 12, 64, 32)
    mixer = paper40.blocks[0].mixer
    assert (mixer.rank, mixer.A_log.shape) == (24, (768, 16))
    assert mixer.conv1d.weight.shape == (768, 1, 4) and mixer.in_proj.weight.shape == (1536, 384)
    assert (paper40.dim, paper40.global_dim, paper40.patch_points) == (384, 384, 32)
    rates = [block.drop_path.p for block in paper40.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1)


def test_mixer_initialisations():
    upstream = point_mamba_small(depth=2)
    mamba = point_mamba_small(depth=2, mixer_init="mamba")
    for model in (upstream, mamba):
        mixer = model.blocks[0].mixer
        torch.testing.assert_close(mixer.A_log[3], torch.log(torch.arange(1.0, 17.0)))
        assert torch.equal(mixer.D, torch.ones(256))
    assert not upstream.blocks[0].mixer.dt_proj.bias.any()  # Δ starts at softplus(0)
    dt = torch.nn.functional.softplus(mamba.blocks[0].mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6 and dt.std() > 0.01
    with pytest.raises(ValueError, match="mixer_init"):
        point_mamba_small(mixer_init="xavier")


def upstream_state(model) -> dict[str, torch.Tensor]:
    """The model's weights under upstream's fine-tune names (DataParallel's ``module.``)."""
    renames = [
        (r"^tokenizer\.", "encoder."),
        (r"^blocks\.(\d+)\.", r"blocks.layers.\1."),
        (r"^norm\.", "blocks.norm_f."),
        (r"^order_indicators\.0\.(gamma|beta)", r"OrderScale_\1_1"),
        (r"^order_indicators\.1\.(gamma|beta)", r"OrderScale_\1_2"),
        (r"^head\.", "cls_head_finetune."),
    ]
    state = {}
    for key, value in model.state_dict().items():
        for pattern, target in renames:
            key = re.sub(pattern, target, key)
        conv = key.startswith("encoder.") and key.endswith("weight") and value.dim() == 2
        state["module." + key] = value[..., None] if conv else value  # Conv1d(k=1) weights
    return state


def test_upstream_layout_round_trip_and_unknown_keys_fail(tmp_path):
    source = point_mamba(**TINY, num_classes=5)
    state = upstream_state(source)
    torch.save({"base_model": state, "epoch": 3, "metrics": {}}, tmp_path / "ft.pth")
    model = point_mamba(**TINY, num_classes=5)
    report = load_upstream_checkpoint(model, tmp_path / "ft.pth")
    assert report.layout == "finetune" and not report.skipped and not report.kept_initialised
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    extra = {"module.cls_token": torch.zeros(1, 1, 16), "module.cls_pos": torch.zeros(1, 1, 16)}
    cls = {**state, **extra}
    torch.save({"base_model": cls}, tmp_path / "cls.pth")
    with pytest.raises(ValueError, match=r"unmapped checkpoint key 'module\.cls_token'"):
        load_upstream_checkpoint(point_mamba(**TINY, num_classes=5), tmp_path / "cls.pth")
