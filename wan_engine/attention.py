"""Scaled dot-product attention over several backends, one signature, optional log-sum-exp.

Layout is the Wan executor's: q `[B, Sq, H, D]`, k/v `[B, Sk, H, D]`, output `[B, Sq, H, D]` in q's
dtype. With `return_lse=True` the natural-log softmax denominator `lse[b, h, i] =
logsumexp_j(scale * q_i . k_j)` comes back as `[B, H, Sq]` float32 (float64 for float64 inputs);
ring attention merges partial results with it.

The executor resolves a backend ONCE (`resolve_attention_backend`) and calls the returned frozen
object on every step: all checks that depend on the device, dtype, head_dim or installed packages
happen at resolve time, so the call itself is straight-line code (CUDA-graph and compile friendly).

Backends:
  fa3             flash_attn_interface.flash_attn_func (FlashAttention-3, Hopper)
  fa2             flash_attn.flash_attn_func (FlashAttention-2, Ampere or newer)
  sdpa            torch SDPA with torch's own kernel choice; for the lse, the aten flash (half
                  precision) or memory-efficient op on CUDA, the CPU flash op on CPU
  sdpa-flash      SDPA forced to one kernel (torch.nn.attention.sdpa_kernel); the lse comes
  sdpa-efficient  from the matching aten op
  sdpa-cudnn
  math            explicit softmax in (at least) fp32: the reference oracle, runs anywhere
  auto            on CUDA, the fastest of the candidates that can run here (AUTO_ORDER: fa3, fa2,
                  sdpa-cudnn, sdpa-flash, sdpa), measured by a short probe when the backend is
                  resolved (PROBE_*: a few ms per candidate; a candidate that raises or returns
                  non-finite values is dropped); a later candidate must beat the earlier ones by
                  PROBE_MARGIN, so near-ties keep the documented order. sdpa elsewhere.
  auto-order      the same candidates without the probe: the first that can run

The choice is made once, in the resolved object (its `selection` says how and its `probe_ms`
what was measured); nothing is cached globally. flash-attn packages are optional and imported
only when a backend needs them.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = ("auto", "fa3", "fa2", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "math", "auto-order")
AUTO = ("auto", "auto-order")
# The documented preference on CUDA: FlashAttention-3 (Hopper), FlashAttention-2, then torch's
# cuDNN and flash kernels, then torch's own choice (which also covers fp32/fp64).
AUTO_ORDER = ("fa3", "fa2", "sdpa-cudnn", "sdpa-flash", "sdpa")
# The probe: self-attention-like inputs [1, PROBE_TOKENS, PROBE_HEADS, head_dim], seeded.
# ~0.1 ms per call at head_dim 128 on an H100; PROBE_WARMUP calls absorb kernel selection and
# cuDNN's plan build, then the median of PROBE_REPEATS CUDA-event timings.
PROBE_TOKENS, PROBE_HEADS = 4096, 16
PROBE_WARMUP, PROBE_REPEATS = 2, 5
PROBE_MARGIN = 0.05  # a later candidate must be 5% faster to displace an earlier one

_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# (out [B,Sq,H,D], lse [B,H,Sq] or None) = impl(q, k, v, scale, return_lse)
_Impl = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, bool],
                 tuple[torch.Tensor, Optional[torch.Tensor]]]


class AttentionBackendError(RuntimeError):
    """An explicitly requested attention backend cannot run here (missing package, device, dtype)."""


# --------------------------------------------------------------------------------------------
# Implementations. Each takes q/k/v already validated, k/v already cut to the valid keys.
# --------------------------------------------------------------------------------------------

def _to_bhsd(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # A view, no copy: SDPA and the aten ops accept the strided [B, H, S, D] view.
    return tuple(t.transpose(1, 2) for t in tensors)


def _pad_head_dim(multiple: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Zero-pad D to a multiple: zeros add nothing to q.k and give zero output columns."""
    d = tensors[0].shape[-1]
    pad = (-d) % multiple
    if pad == 0:
        return tensors
    return tuple(F.pad(t, (0, pad)) for t in tensors)


def _math_impl(q, k, v, scale, return_lse):
    """Explicit softmax in fp32 (fp64 stays fp64): the oracle every other backend is held to."""
    ct = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(ct), k.to(ct)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v.to(ct)).to(q.dtype)
    return out, (lse if return_lse else None)


def _lse_math(q, k, v, scale):
    return _math_impl(q, k, v, scale, True)


def _sdpa_out(q, k, v, scale):
    qt, kt, vt = _to_bhsd(q, k, v)
    return F.scaled_dot_product_attention(qt, kt, vt, scale=scale).transpose(1, 2).contiguous()


def _sdpa_forced_out(kernel, q, k, v, scale):
    # The fused kernels want head_dim % 8 == 0; pad here rather than rely on SDPA doing it.
    d = q.shape[-1]
    with sdpa_kernel(kernel):
        return _sdpa_out(*_pad_head_dim(8, q, k, v), scale)[..., :d].contiguous()


def _lse_cpu_flash(q, k, v, scale):
    qt, kt, vt = _to_bhsd(q, k, v)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt, scale=scale)
    return out.transpose(1, 2).contiguous(), lse


def _lse_cuda_flash(q, k, v, scale):
    d, sq = q.shape[-1], q.shape[1]
    # The aten op skips SDPA's own head-dim padding and insists on a multiple of 8.
    qt, kt, vt = _to_bhsd(*_pad_head_dim(8, q, k, v))
    res = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, False, False, scale=scale)
    out, lse = res[0], res[1]
    return out.transpose(1, 2)[..., :d].contiguous(), lse[..., :sq].contiguous()


def _lse_cuda_efficient(q, k, v, scale):
    d, sq = q.shape[-1], q.shape[1]
    qt, kt, vt = _to_bhsd(*_pad_head_dim(8, q, k, v))
    res = torch.ops.aten._scaled_dot_product_efficient_attention(qt, kt, vt, None, True, 0.0, False, scale=scale)
    # The memory-efficient kernel pads lse's sequence dim to a multiple of 32.
    return res[0].transpose(1, 2)[..., :d].contiguous(), res[1][..., :sq].contiguous()


def _lse_cuda_cudnn(q, k, v, scale):
    d, sq = q.shape[-1], q.shape[1]
    qt, kt, vt = _to_bhsd(*_pad_head_dim(8, q, k, v))
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        qt, kt, vt, None, True, 0.0, False, False, scale=scale)
    # cuDNN returns lse as [B, H, Sq, 1].
    lse = res[1].flatten(2)[..., :sq].contiguous()
    return res[0].transpose(1, 2)[..., :d].contiguous(), lse


def _sdpa_family_impl(out_fn, lse_fn, q, k, v, scale, return_lse):
    if return_lse:
        return lse_fn(q, k, v, scale)
    return out_fn(q, k, v, scale), None


def _fa2_impl(flash_attn_func, q, k, v, scale, return_lse):
    # return_attn_probs only materialises probabilities when dropout_p > 0; here it just adds lse.
    res = flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=False,
                          return_attn_probs=return_lse)
    if return_lse:
        return res[0], res[1]
    return res, None


def _fa3_impl(flash_attn_func, lse_kwarg, q, k, v, scale, return_lse):
    # FA3 releases differ: older ones always return (out, lse), newer ones only with
    # return_attn_probs=True; `lse_kwarg` says whether this install has the flag.
    kwargs = {"return_attn_probs": return_lse} if lse_kwarg else {}
    d = q.shape[-1]
    res = flash_attn_func(*_pad_head_dim(8, q, k, v), softmax_scale=scale, causal=False, **kwargs)
    if isinstance(res, tuple):
        out, lse = res[0], res[1]
    else:
        out, lse = res, None
    return out[..., :d].contiguous(), (lse if return_lse else None)


# --------------------------------------------------------------------------------------------
# The resolved backend
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionBackend:
    """An attention backend resolved for one device, dtype and head_dim.

    `name` is the concrete backend ("fa3", "sdpa", ...; never "auto"). Call it like `attention`.
    `requested` is the name it was resolved from, `selection` how it was chosen (for "auto": the
    probe's timings or the order), `probe_ms` the probe's (candidate, median ms) pairs.
    """

    name: str
    device_type: str
    dtype: torch.dtype
    head_dim: int
    _impl: _Impl = field(repr=False, compare=False)
    requested: str = ""
    selection: str = field(default="", compare=False)
    probe_ms: tuple[tuple[str, float], ...] = field(default=(), compare=False)

    @property
    def label(self) -> str:
        """The concrete name, marked when chosen automatically: "sdpa-cudnn (auto)"."""
        return f"{self.name} ({self.requested})" if self.requested in AUTO else self.name

    def describe(self) -> str:
        """One line: the backend and how it was chosen."""
        return f"{self.name} ({self.requested}: {self.selection})" if self.selection else self.name

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 kv_len: int | None = None, return_lse: bool = False, scale: float | None = None):
        """q `[B,Sq,H,D]`, k/v `[B,Sk,H,D]` -> out `[B,Sq,H,D]` (and lse `[B,H,Sq]` fp32).

        kv_len: number of valid keys; keys/values at positions >= kv_len are padding and are
        sliced off (exact, and the shapes stay static for a given kv_len).
        """
        _check_qkv(q, k, v)
        if q.dtype != self.dtype or q.shape[-1] != self.head_dim or q.device.type != self.device_type:
            raise ValueError(
                f"attention backend {self.name!r} was resolved for {self.device_type}/{self.dtype}/"
                f"head_dim {self.head_dim}, got q on {q.device.type}/{q.dtype}/head_dim {q.shape[-1]}; "
                f"resolve a backend for these inputs")
        if kv_len is not None:
            k, v = _cut_padding(k, v, kv_len)
        if scale is None:
            scale = 1.0 / math.sqrt(q.shape[-1])
        elif isinstance(scale, bool) or not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a positive finite float or None, got {scale!r}")
        out, lse = self._impl(q, k, v, float(scale), return_lse)
        if not return_lse:
            return out
        if lse.dtype != torch.float64:
            lse = lse.float()
        return out, lse


def _check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, S, H, D], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [B, Sk, H, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    b, _, h, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, h, d):
        raise ValueError(f"k/v {tuple(k.shape)} must match q {tuple(q.shape)} in batch, heads and head_dim")
    if k.shape[1] < 1 or q.shape[1] < 1:
        raise ValueError(f"q and k need at least one token, got Sq={q.shape[1]}, Sk={k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def _cut_padding(k, v, kv_len):
    sk = k.shape[1]
    if isinstance(kv_len, bool) or not isinstance(kv_len, int) or not 1 <= kv_len <= sk:
        raise ValueError(f"kv_len must be a python int in [1, {sk}] (the number of valid keys), got {kv_len!r}")
    if kv_len == sk:
        return k, v
    return k[:, :kv_len], v[:, :kv_len]


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------

def _unavailable(name: str, why: str) -> AttentionBackendError:
    return AttentionBackendError(f"attention backend {name!r} requested but {why}")


def _import_optional(module: str):
    """The module, or None when it is absent or fails to load (e.g. built for another CUDA)."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.import_module(module)
    except (ImportError, OSError, RuntimeError):
        return None


def _cuda_capability(name: str, device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        raise _unavailable(name, f"it needs a CUDA device, got {device.type!r}")
    if not torch.cuda.is_available():
        raise _unavailable(name, "CUDA is not available on this machine")
    return torch.cuda.get_device_capability(device)


def _require(name: str, ok: bool, why: str) -> None:
    if not ok:
        raise _unavailable(name, why)


def _build(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> _Impl:
    """The implementation of an explicitly named backend, or AttentionBackendError saying why not."""
    if name == "math":
        return _math_impl

    if name == "sdpa":
        if device.type == "cuda":
            major, _ = _cuda_capability(name, device)
            use_flash = dtype in _HALF and head_dim <= 256 and major >= 8
            if use_flash:
                lse_fn = _lse_cuda_flash
            else:  # the memory-efficient kernel has no float64 variant
                lse_fn = _lse_math if dtype == torch.float64 else _lse_cuda_efficient
        elif device.type == "cpu":
            lse_fn = _lse_cpu_flash
        else:  # no lse-returning fused op known for this device: compute it explicitly
            lse_fn = _lse_math
        return functools.partial(_sdpa_family_impl, _sdpa_out, lse_fn)

    if name.startswith("sdpa-"):
        major, _ = _cuda_capability(name, device)
        if name == "sdpa-flash":
            _require(name, dtype in _HALF, f"the flash kernel needs float16/bfloat16, got {dtype}")
            _require(name, head_dim <= 256, f"the flash kernel supports head_dim <= 256, got {head_dim}")
            _require(name, major >= 8, f"the flash kernel needs compute capability >= 8.0, got {major}.x")
            kernel, lse_fn = SDPBackend.FLASH_ATTENTION, _lse_cuda_flash
        elif name == "sdpa-efficient":
            _require(name, dtype in (torch.float16, torch.bfloat16, torch.float32),
                     f"the memory-efficient kernel needs float16/bfloat16/float32, got {dtype}")
            kernel, lse_fn = SDPBackend.EFFICIENT_ATTENTION, _lse_cuda_efficient
        else:
            _require(name, torch.backends.cudnn.is_available(), "cuDNN is not available")
            _require(name, dtype in _HALF, f"the cuDNN kernel needs float16/bfloat16, got {dtype}")
            _require(name, head_dim <= 256, f"the cuDNN kernel supports head_dim <= 256, got {head_dim}")
            _require(name, major >= 8, f"the cuDNN kernel needs compute capability >= 8.0, got {major}.x")
            kernel, lse_fn = SDPBackend.CUDNN_ATTENTION, _lse_cuda_cudnn
        return functools.partial(_sdpa_family_impl, functools.partial(_sdpa_forced_out, kernel), lse_fn)

    if name == "fa2":
        module = _import_optional("flash_attn")
        _require(name, module is not None and hasattr(module, "flash_attn_func"),
                 "flash_attn is not installed (pip install flash-attn)")
        major, _ = _cuda_capability(name, device)
        _require(name, major >= 8, f"FlashAttention-2 needs compute capability >= 8.0, got {major}.x")
        _require(name, dtype in _HALF, f"FlashAttention-2 needs float16/bfloat16, got {dtype}")
        _require(name, head_dim <= 256, f"FlashAttention-2 supports head_dim <= 256, got {head_dim}")
        return functools.partial(_fa2_impl, module.flash_attn_func)

    if name == "fa3":
        module = _import_optional("flash_attn_interface")
        _require(name, module is not None and hasattr(module, "flash_attn_func"),
                 "flash_attn_interface (FlashAttention-3, built from flash-attention/hopper) is not installed")
        major, minor = _cuda_capability(name, device)
        _require(name, major == 9, f"FlashAttention-3 needs a Hopper GPU (sm90), got sm{major}{minor}")
        _require(name, dtype in _HALF, f"FlashAttention-3 needs float16/bfloat16 here, got {dtype}")
        _require(name, head_dim <= 256, f"FlashAttention-3 supports head_dim <= 256, got {head_dim}")
        try:
            lse_kwarg = "return_attn_probs" in inspect.signature(module.flash_attn_func).parameters
        except (TypeError, ValueError):  # a compiled function without a signature: old FA3
            lse_kwarg = False
        return functools.partial(_fa3_impl, module.flash_attn_func, lse_kwarg)

    raise AssertionError(name)  # unreachable: names are checked by the caller


@dataclass(frozen=True)
class AutoChoice:
    """What `select_backend` chose: the backend, how, and the probe's (name, median ms) pairs."""

    name: str
    impl: _Impl = field(repr=False)
    selection: str
    probe_ms: tuple[tuple[str, float], ...] = ()


def select_backend(candidates: Sequence[str], build: Callable[[str], _Impl],
                   time_call: Callable[[str, _Impl], float] | None = None,
                   margin: float = PROBE_MARGIN) -> AutoChoice:
    """Choose among `candidates` (in preference order).

    build(name) returns the implementation or raises AttentionBackendError (why it cannot run).
    Without `time_call`, or with one candidate left, the first that builds wins. Otherwise
    time_call(name, impl) returns seconds per call (an exception or a non-positive/non-finite
    time drops that candidate, with its reason in the selection); walking in preference order, a
    candidate replaces the current best only when faster by more than `margin`, so near-ties are
    decided by the order, not by timing noise.
    """
    built, skipped = [], []
    for name in candidates:
        try:
            built.append((name, build(name)))
        except AttentionBackendError as err:
            skipped.append(f"{name} ({str(err).split(' but ', 1)[-1]})")
    if not built:
        raise AttentionBackendError("no attention backend can run here: " + "; ".join(skipped))
    unavailable = f"; unavailable: {', '.join(skipped)}" if skipped else ""
    if time_call is None or len(built) == 1:
        why = "order" if time_call is None else "the only candidate"
        return AutoChoice(built[0][0], built[0][1], f"{why} {' > '.join(candidates)}{unavailable}")
    timed, failed = [], []
    for name, impl in built:
        try:
            seconds = float(time_call(name, impl))
            if not (seconds > 0 and math.isfinite(seconds)):
                raise ValueError(f"probe time {seconds!r}")
            timed.append((name, impl, seconds))
        except Exception as err:  # noqa: BLE001 - a backend that fails the probe is not chosen
            failed.append(f"{name} ({type(err).__name__}: {' '.join(str(err).split())[:120]})")
    if not timed:
        raise AttentionBackendError("every attention backend failed the probe: " + "; ".join(failed))
    best = timed[0]
    for entry in timed[1:]:
        if entry[2] < best[2] * (1 - margin):
            best = entry
    probe_ms = tuple((name, 1e3 * seconds) for name, _, seconds in timed)
    measured = ", ".join(f"{name} {ms:.3f} ms" for name, ms in probe_ms)
    failures = f"; failed: {', '.join(failed)}" if failed else ""
    return AutoChoice(best[0], best[1], f"probe {measured}{failures}{unavailable}", probe_ms)


def _probe_timer(device: torch.device, dtype: torch.dtype, head_dim: int) -> Callable[[str, _Impl], float]:
    """time_call for `select_backend`: median seconds of one call on seeded probe inputs."""
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, PROBE_TOKENS, PROBE_HEADS, head_dim, generator=gen, device=device).to(dtype)
               for _ in range(3))
    scale = 1.0 / math.sqrt(head_dim)

    def time_call(name: str, impl: _Impl) -> float:
        with torch.no_grad():
            for _ in range(PROBE_WARMUP):
                out, _ = impl(q, k, v, scale, False)
            if not bool(torch.isfinite(out).all()):  # a sync: fine once, at resolve time
                raise ValueError("non-finite output")
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(PROBE_REPEATS)]
            for start, end in events:
                start.record()
                impl(q, k, v, scale, False)
                end.record()
            torch.cuda.synchronize(device)
        return sorted(start.elapsed_time(end) for start, end in events)[PROBE_REPEATS // 2] / 1e3

    return time_call


def resolve_attention_backend(name: str, device: torch.device | str, dtype: torch.dtype,
                              head_dim: int) -> AttentionBackend:
    """Pick and check a backend once, for inputs on `device` with `dtype` and `head_dim`.

    "auto": on CUDA the fastest of AUTO_ORDER that can run here, by a short probe (see the
    module docstring); "auto-order": the first of AUTO_ORDER that can run; both are sdpa
    elsewhere. A named backend that cannot run raises AttentionBackendError saying why; an
    unknown name raises ValueError.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if dtype not in _FLOATS:
        raise ValueError(f"dtype must be one of {[str(d) for d in _FLOATS]}, got {dtype}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")

    if name in AUTO:
        on_cuda = device.type == "cuda"
        timer = _probe_timer(device, dtype, head_dim) if on_cuda and name == "auto" else None
        choice = select_backend(AUTO_ORDER if on_cuda else ("sdpa",),
                                lambda candidate: _build(candidate, device, dtype, head_dim), timer)
        return AttentionBackend(choice.name, device.type, dtype, head_dim, choice.impl, requested=name,
                                selection=choice.selection, probe_ms=choice.probe_ms)
    return AttentionBackend(name, device.type, dtype, head_dim, _build(name, device, dtype, head_dim),
                            requested=name)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              backend: str | AttentionBackend = "auto", kv_len: int | None = None,
              return_lse: bool = False, scale: float | None = None):
    """softmax(scale * q k^T) v for q `[B,Sq,H,D]`, k/v `[B,Sk,H,D]` -> `[B,Sq,H,D]` in q's dtype.

    return_lse: also return lse `[B,H,Sq]` float32 (natural log of the softmax denominator,
    scale included). kv_len: keys at positions >= kv_len are padding and are not attended.
    scale defaults to 1/sqrt(D). `backend` may be a name (resolved on every call, fine for
    tests and one-off use; "auto" then takes the documented order, since a probe on every call
    would cost more than it saves) or an AttentionBackend resolved once by the caller (the fast
    path).
    """
    if not isinstance(backend, AttentionBackend):
        _check_qkv(q, k, v)
        name = "auto-order" if backend == "auto" else backend
        backend = resolve_attention_backend(name, q.device, q.dtype, q.shape[-1])
    return backend(q, k, v, kv_len=kv_len, return_lse=return_lse, scale=scale)
