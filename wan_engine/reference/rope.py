"""3D rotary position embedding exactly as the official Wan2.1 code computes it.

Each head's `head_dim` channels form `c = head_dim // 2` complex pairs of adjacent (interleaved)
elements `(x[2i], x[2i+1])`. The pairs are split over the three token axes (frame, height, width)
as `[c - 2*(c//3), c//3, c//3]` (head_dim 128 -> 22/21/21); each axis has its own frequency table
built with that axis' channel count (44, 42, 42 for head_dim 128), theta 10000.

The official code rotates in float64 complex arithmetic (`rope_apply`). The optimized executor and
the Triton kernels use the real table from `rope_cos_sin` in fp32 instead (complex tensors neither
export to ONNX nor exist in Triton); `rope_apply_real` is the torch form of that arithmetic.
"""
from __future__ import annotations

import torch

ROPE_MAX_LEN = 1024  # rows in the official table: the largest supported latent F, H/2 or W/2


def _axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real channel counts per axis (frame, height, width): official `d - 4*(d//6), 2*(d//6), 2*(d//6)`."""
    if head_dim < 6 or head_dim % 2:
        raise ValueError(f"head_dim must be an even number >= 6, got {head_dim}")
    side = 2 * (head_dim // 6)
    return head_dim - 2 * side, side, side


def _axis_table(max_len: int, dim: int, theta: float) -> torch.Tensor:
    """complex128 [max_len, dim // 2]: exp(i * pos * theta^(-2j/dim)), the official `rope_params`."""
    inv_freq = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def rope_freqs(head_dim: int, max_len: int = ROPE_MAX_LEN, theta: float = 10000.0) -> torch.Tensor:
    """The official frequency table: complex128 `[max_len, head_dim // 2]`.

    Columns are the frame, height and width tables concatenated (each built with its own dim).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return torch.cat([_axis_table(max_len, d, theta) for d in _axis_dims(head_dim)], dim=1)


def _check_grid(grid, max_len: int) -> tuple[int, int, int]:
    if len(grid) != 3:
        raise ValueError(f"grid must be (frames, height, width), got {tuple(grid)}")
    f, h, w = (int(g) for g in grid)
    if min(f, h, w) < 1 or max(f, h, w) > max_len:
        raise ValueError(f"grid sizes must be in [1, {max_len}], got {(f, h, w)}")
    return f, h, w


def _grid_table(freqs: torch.Tensor, grid) -> torch.Tensor:
    """complex [f*h*w, head_dim//2]: per token (frame-major, then h, then w) its three axis tables."""
    f, h, w = _check_grid(grid, freqs.shape[0])
    c = freqs.shape[1]
    split = [c - 2 * (c // 3), c // 3, c // 3]
    ff, fh, fw = freqs.split(split, dim=1)
    table = torch.cat([
        ff[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
        fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
        fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1)
    return table.reshape(f * h * w, c)


def rope_grid_table(freqs: torch.Tensor, grid) -> torch.Tensor:
    """complex128 `[f*h*w, head_dim//2]`: the rotation of every token of `grid` (frame-major)."""
    return _grid_table(freqs, grid)


def rope_apply(x: torch.Tensor, grid, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate q or k the official way: float64 complex multiply, result fp32.

    x: [B, S, H, D] with S >= f*h*w; rows past f*h*w (sequence padding) are returned unrotated.
    grid: (f, h, w) token grid shared by the batch. freqs: `rope_freqs(D)`, complex [>= max(grid), D//2].
    Returns fp32 [B, S, H, D] (the official returns `.float()` whatever the input dtype).
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [B, S, H, D], got shape {tuple(x.shape)}")
    if freqs.shape[1] != x.shape[-1] // 2:
        raise ValueError(f"freqs has {freqs.shape[1]} complex channels, x needs head_dim//2 = {x.shape[-1] // 2}")
    return rope_apply_table(x, rope_grid_table(freqs.to(x.device), grid))


def rope_apply_table(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """`rope_apply` with the grid's table (`rope_grid_table`) already built, on x's device."""
    if x.ndim != 4:
        raise ValueError(f"x must be [B, S, H, D], got shape {tuple(x.shape)}")
    b, s, n, d = x.shape
    if table.shape[1] != d // 2:
        raise ValueError(f"the RoPE table has {table.shape[1]} complex channels, x needs head_dim//2 = {d // 2}")
    tokens = table.shape[0]
    if tokens > s:
        raise ValueError(f"the RoPE grid has {tokens} tokens but x has only S={s}")
    rotated = torch.view_as_complex(x[:, :tokens].to(torch.float64).reshape(b, tokens, n, -1, 2))
    rotated = torch.view_as_real(rotated * table.view(1, tokens, 1, -1)).flatten(3)
    return torch.cat([rotated, x[:, tokens:].to(torch.float64)], dim=1).float()


def rope_cos_sin(head_dim: int, grid, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The real-valued table for the executor: (cos, sin), each fp32 `[f*h*w, head_dim // 2]`.

    Pair i of a token rotates (x[2i], x[2i+1]) by the angle whose cosine and sine are column i.
    Computed in float64 from the official table and rounded once to fp32.
    """
    table = _grid_table(rope_freqs(head_dim), grid)
    return (table.real.to(device=device, dtype=torch.float32),
            table.imag.to(device=device, dtype=torch.float32))


def rope_apply_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Real-arithmetic RoPE with the `rope_cos_sin` table, computed in fp32.

    x: [B, S, H, D]; cos, sin: [S', D//2] with S' <= S; rows past S' pass through unchanged.
    Returns fp32 [B, S, H, D].
    """
    if x.ndim != 4 or cos.shape != sin.shape or cos.shape[-1] * 2 != x.shape[-1]:
        raise ValueError(f"x must be [B, S, H, D] and cos/sin [S', D//2]; got {tuple(x.shape)}, "
                         f"{tuple(cos.shape)}, {tuple(sin.shape)}")
    tokens = cos.shape[0]
    if tokens > x.shape[1]:
        raise ValueError(f"cos/sin cover {tokens} tokens but x has only S={x.shape[1]}")
    pairs = x[:, :tokens].float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None, :].float(), sin[None, :, None, :].float()
    rotated = torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)
    return torch.cat([rotated, x[:, tokens:].float()], dim=1)
