import pytest
import torch

from mmpd_core.layers import TransformerStack, position_mlp
from mmpd_core.shuffle import (
    gather_tokens,
    random_masking,
    random_permutation,
    shuffle_tokens,
    unshuffle_tokens,
)


def test_random_masking_exact_count_and_restore():
    m = random_masking(5, 64, 0.6, generator=torch.Generator().manual_seed(0))
    assert m.mask_idx.shape == (5, 38) and m.keep_idx.shape == (5, 26)  # int(0.6 * 64) = 38
    assert torch.equal(m.mask.sum(1), torch.full((5,), 38))
    for b in range(5):
        both = torch.cat([m.keep_idx[b], m.mask_idx[b]]).sort().values
        assert torch.equal(both, torch.arange(64))  # disjoint and complete
        assert torch.equal(m.mask[b].nonzero().flatten(), m.mask_idx[b])
    assert torch.equal(m.keep_idx, m.keep_idx.sort(1).values)  # centre order kept
    x = torch.randn(5, 64, 4)
    joined = torch.cat([gather_tokens(x, m.keep_idx), gather_tokens(x, m.mask_idx)], dim=1)
    assert torch.equal(gather_tokens(joined, m.restore_idx), x)


def test_masking_is_seeded():
    a = random_masking(3, 32, 0.6, generator=torch.Generator().manual_seed(7))
    b = random_masking(3, 32, 0.6, generator=torch.Generator().manual_seed(7))
    c = random_masking(3, 32, 0.6, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    with pytest.raises(ValueError, match=r"mask ratio must be in \[0, 1\)"):
        random_masking(1, 8, 1.0)


def test_shuffle_contents_and_inverse():
    x = torch.randn(4, 10, 6)
    shuffled, perm = shuffle_tokens(x, generator=torch.Generator().manual_seed(1))
    for b in range(4):
        for i in range(10):
            assert torch.equal(shuffled[b, i], x[b, perm[b, i]])  # slot i holds group perm[i]
    assert torch.equal(unshuffle_tokens(shuffled, perm), x)
    assert not torch.equal(shuffled, x)
    again, perm2 = shuffle_tokens(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(perm, perm2) and torch.equal(again, shuffled)


def test_identity_permutation_is_the_unshuffled_path():
    x = torch.randn(2, 7, 3)
    identity = torch.arange(7).expand(2, -1)
    assert torch.equal(shuffle_tokens(x, perm=identity)[0], x)


def decoder_fixture():
    torch.manual_seed(3)
    return TransformerStack(16, depth=2, num_heads=2).eval(), position_mlp(16)


def test_moving_tokens_with_their_positions_is_a_no_op():
    decoder, pos_mlp = decoder_fixture()
    tokens, centers = torch.randn(2, 9, 16), torch.randn(2, 9, 3)
    perm = random_permutation(2, 9, generator=torch.Generator().manual_seed(4))
    plain = decoder(tokens, pos_mlp(centers))
    moved = decoder(gather_tokens(tokens, perm), pos_mlp(gather_tokens(centers, perm)))
    assert torch.allclose(moved, gather_tokens(plain, perm), atol=1e-5)  # only the order changed
    assert torch.allclose(unshuffle_tokens(moved, perm), plain, atol=1e-5)


def test_content_shuffle_changes_what_each_slot_sees():
    decoder, pos_mlp = decoder_fixture()
    tokens, centers = torch.randn(2, 9, 16), torch.randn(2, 9, 3)
    perm = random_permutation(2, 9, generator=torch.Generator().manual_seed(4))
    plain = decoder(tokens, pos_mlp(centers))
    shuffled, _ = shuffle_tokens(tokens, perm=perm)
    jigsaw = decoder(shuffled, pos_mlp(centers))  # positions stay in centre order
    moved_slots = perm != torch.arange(9)
    differ = (jigsaw - plain).abs().amax(-1) > 1e-3
    assert differ[moved_slots].all()  # every slot whose content moved sees something else
    assert not torch.allclose(unshuffle_tokens(jigsaw, perm), plain, atol=1e-3)  # ...not a reorder
