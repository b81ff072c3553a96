"""The reference builds its complex128 RoPE table once per grid and device, not every forward."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wan_engine.configs import get_preset
from wan_engine.loading.random_init import random_state_dict
from wan_engine.reference.dit import WanDiT
from wan_engine.reference.rope import rope_freqs, rope_grid_table

TINY = get_preset("tiny").dit


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_second_forward_builds_no_rope_table():
    dit = WanDiT(TINY)
    dit.load_state_dict(random_state_dict(dit, 0))
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 16, 2, 4, 6, generator=gen), torch.tensor([500.0]), torch.randn(1, 5, TINY.text_dim, generator=gen))
    with torch.no_grad(), _OpCounter() as first:
        out1 = dit(*args)
    with torch.no_grad(), _OpCounter() as second:
        out2 = dit(*args)
    assert "aten.polar" in first.ops  # the counter sees the table being built the first time
    assert "aten.polar" not in second.ops
    assert torch.equal(out1, out2)
    grid = (2, 2, 3)
    assert dit.rope_table(grid, torch.device("cpu")) is dit.rope_table(grid, "cpu")
    assert torch.equal(dit.rope_table(grid, "cpu"), rope_grid_table(rope_freqs(TINY.head_dim), grid))
    assert dit.rope_table((1, 2, 3), "cpu").shape == (6, TINY.head_dim // 2)  # another grid, its own table
