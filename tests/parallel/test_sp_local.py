"""Sequence-parallel primitives on one process (group None): log-sum-exp merging, padding
helpers, and argument checks. fp32 against a float64 oracle; tolerance as in the distributed
tests (fp32 softmax over tens of keys is accurate to ~1e-7 relative)."""
import pytest
import torch

from sp_harness import attention_oracle, local_math_attention, random_qkv, rel_l2
from wan_engine.parallel import (
    all_to_all,
    gather_sequence,
    merge_partial_attention,
    pad_to_multiple,
    padded_length,
    ring_attention,
    sequence_parallel_attention,
    split_sequence,
    ulysses_attention,
    usp_attention,
    ParallelMesh,
)
from wan_engine.parallel.ring import valid_keys_in_block

REL_TOL = 1e-5


@pytest.mark.parametrize("block_sizes", [(7,), (3, 4), (5, 1, 6), (2, 9, 4, 2)])
def test_merging_key_blocks_by_lse_equals_full_attention(block_sizes):
    total = sum(block_sizes)
    q, k, v = random_qkv(2, total, 3, 12, total, seed=total)
    q = q[:, :5]  # fewer queries than keys
    out = lse = None
    for block_k, block_v in zip(k.split(block_sizes, dim=1), v.split(block_sizes, dim=1)):
        block_out, block_lse = local_math_attention(q, block_k, block_v, None)
        if out is None:
            out, lse = block_out.clone(), block_lse.clone()
        else:
            merge_partial_attention(out, lse, block_out, block_lse)
    ref_out, ref_lse = attention_oracle(q, k, v)
    assert rel_l2(out, ref_out) < REL_TOL
    assert rel_l2(lse, ref_lse) < REL_TOL


def test_merge_handles_lse_far_apart_without_overflow():
    # A block whose scores are ~1e3 larger dominates completely; exp of raw lse would overflow.
    out = torch.ones(1, 2, 1, 3)
    lse = torch.full((1, 1, 2), -500.0)
    merge_partial_attention(out, lse, torch.full((1, 2, 1, 3), 2.0), torch.full((1, 1, 2), 600.0))
    assert torch.allclose(out, torch.full_like(out, 2.0)) and torch.allclose(lse, torch.full_like(lse, 600.0))


@pytest.mark.parametrize("attn", ["ulysses", "ring", "usp", "mesh"])
def test_single_rank_primitives_equal_local_attention_with_padding(attn):
    q, k, v = random_qkv(2, 11, 3, 8, real_len=8, seed=3)
    fns = {
        "ulysses": lambda **kw: ulysses_attention(q, k, v, None, local_math_attention, 8, **kw),
        "ring": lambda **kw: ring_attention(q, k, v, None, local_math_attention, 8, **kw),
        "usp": lambda **kw: usp_attention(q, k, v, None, None, local_math_attention, 8, **kw),
        "mesh": lambda **kw: sequence_parallel_attention(q, k, v, ParallelMesh.single(), local_math_attention, 8, **kw),
    }
    out, lse = fns[attn](return_lse=True)
    ref_out, ref_lse = attention_oracle(q, k, v, kv_len=8)
    assert rel_l2(out, ref_out) < REL_TOL and rel_l2(lse, ref_lse) < REL_TOL
    assert torch.equal(fns[attn](), out)


@pytest.mark.parametrize(
    "kv_len,block,block_len,expected",
    [(None, 3, 4, 4), (9, 0, 3, 3), (9, 2, 3, 3), (9, 3, 3, 0), (10, 3, 3, 1), (2, 1, 2, 0), (1, 5, 2, 0)],
)
def test_valid_keys_in_block(kv_len, block, block_len, expected):
    assert valid_keys_in_block(kv_len, block, block_len) == expected


def test_padding_helpers():
    assert [padded_length(n, 4) for n in (0, 1, 4, 5, 32760)] == [0, 4, 4, 8, 32760]
    x = torch.randn(2, 5, 3)
    padded = pad_to_multiple(x, 4, dim=1)
    assert padded.shape == (2, 8, 3) and torch.equal(padded[:, :5], x) and not padded[:, 5:].any()
    assert pad_to_multiple(x, 5, dim=1) is x
    assert pad_to_multiple(x, 2, dim=-1).shape == (2, 5, 4)
    # One rank: split and gather are the identity up to the requested length.
    assert split_sequence(x, None) is x
    assert torch.equal(gather_sequence(x, None, length=3), x[:, :3])
    assert all_to_all(x, None, 0, 1) is x
    with pytest.raises(ValueError, match="multiple must be >= 1"):
        padded_length(5, 0)
    with pytest.raises(ValueError, match=r"length must be in \[0, 5\]"):
        gather_sequence(x, None, length=6)


def test_bad_inputs_raise_clear_errors():
    q, k, v = random_qkv(1, 6, 4, 8, 6, seed=0)
    with pytest.raises(ValueError, match=r"kv_len must be an int in \[1, 6\]"):
        ring_attention(q, k, v, None, local_math_attention, kv_len=0)
    with pytest.raises(ValueError, match=r"kv_len must be an int in \[1, 6\]"):
        ulysses_attention(q, k, v, None, local_math_attention, kv_len=7)
    with pytest.raises(ValueError, match="q must be 4-D"):
        ring_attention(q[0], k, v, None, local_math_attention)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        ulysses_attention(q, k, v[:, :5], None, local_math_attention)
    with pytest.raises(ValueError, match="must agree on batch, heads and head_dim"):
        usp_attention(q, k[:, :, :2], v[:, :, :2], None, None, local_math_attention)
    with pytest.raises(ValueError, match="share one dtype"):
        ring_attention(q.double(), k, v, None, local_math_attention)
