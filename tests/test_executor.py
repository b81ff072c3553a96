"""The optimized executor against the reference WanDiT (the oracle), fp32 on CPU unless stated.

Errors are relative L2 over the whole output, `|a - b| / |b|`.
"""
import gc
import math
import weakref

import numpy as np
import pytest
import torch

from wan_engine.attention import AttentionBackendError
from wan_engine.configs import DiTConfig, get_preset
from wan_engine.engine_config import EngineConfig
from wan_engine.executor import TextKV, WanExecutor, build_executor
from wan_engine.loading.random_init import random_state_dict
from wan_engine.reference.dit import WanDiT
from wan_engine.runner import make_guided_velocity

F32, BF16 = torch.float32, torch.bfloat16
TINY = get_preset("tiny").dit
# dim 24 = 2 heads of 12 (6 RoPE pairs per head, split 2/2/2), short text_len to keep it fast.
SMALL = DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=2, text_dim=20, freq_dim=32, text_len=16)
SMALL_I2V = DiTConfig(model_type="i2v", in_dim=36, dim=24, ffn_dim=40, num_heads=2, num_layers=2, text_dim=20,
                      freq_dim=32, text_len=16)
SMALL_FLF2V = DiTConfig(model_type="flf2v", in_dim=36, dim=24, ffn_dim=40, num_heads=2, num_layers=3,
                        text_dim=20, freq_dim=32, text_len=16)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def reference(cfg: DiTConfig, seed: int = 0, compute_dtype=F32) -> WanDiT:
    dit = WanDiT(cfg, compute_dtype=compute_dtype)
    dit.load_state_dict(random_state_dict(dit, seed))
    return dit.eval().requires_grad_(False)


def inputs(cfg: DiTConfig, batch: int, latent_fhw, text_tokens: int, seed: int = 0) -> dict:
    """Random latents, timesteps spread over [0, 1000), and text embeddings of the given length."""
    gen = torch.Generator().manual_seed(seed)
    f, h, w = latent_fhw
    args = dict(x=torch.randn(batch, 16, f, h, w, generator=gen),
                t=torch.rand(batch, generator=gen) * 999,
                context=torch.randn(batch, text_tokens, cfg.text_dim, generator=gen))
    if cfg.model_type != "t2v":
        tokens = 514 if cfg.model_type == "flf2v" else 257
        args["clip_fea"] = torch.randn(batch, tokens, 1280, generator=gen)
        args["y"] = torch.randn(batch, cfg.in_dim - 16, f, h, w, generator=gen)
    return args


# ---- one forward vs the reference -------------------------------------------------------------

@pytest.mark.parametrize("cfg, fhw, seq_len", [
    (TINY, (3, 6, 10), None),  # grid 3x3x5 = 45 tokens
    (SMALL, (5, 2, 14), None),  # grid 5x1x7
    (SMALL, (2, 4, 6), 17),  # 12 tokens padded to 17: padded keys masked
    (SMALL_I2V, (3, 2, 6), None),
    (SMALL_FLF2V, (1, 6, 2), None),
], ids=["tiny", "dim24", "dim24-padded", "i2v", "flf2v"])
def test_fp32_forward_matches_reference_torch_ops(cfg, fhw, seq_len):
    ref = reference(cfg)
    ex = build_executor(ref, EngineConfig(ops="torch"))
    args = inputs(cfg, 2, fhw, text_tokens=7)
    with torch.no_grad():
        want = ref(**args, seq_len=seq_len)
        got = ex(**args, seq_len=seq_len)
    err = rel_l2(got, want)
    print(f"fp32 torch ops {cfg.model_type} dim {cfg.dim} grid {fhw}: rel L2 {err:.2e}")
    assert got.shape == want.shape and got.dtype == F32
    assert err <= 1e-5


@pytest.mark.parametrize("cfg, fhw", [(TINY, (1, 2, 6)), (SMALL, (2, 2, 4))], ids=["tiny", "dim24"])
def test_fp32_forward_matches_reference_triton_ops(cfg, fhw):
    """The Triton kernels (interpreted on CPU: tiny grids only) inside the whole model."""
    triton = pytest.importorskip("triton")
    if not (torch.cuda.is_available() or triton.knobs.runtime.interpret):
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = reference(cfg).to(device)
    ex = build_executor(ref, EngineConfig(ops="triton", attention="math" if device == "cpu" else "auto"))
    assert ex.ops.backend == "triton"
    args = {k: v.to(device) for k, v in inputs(cfg, 2, fhw, text_tokens=5, seed=1).items()}
    with torch.no_grad():
        err = rel_l2(ex(**args), ref(**args))
    print(f"fp32 triton ops dim {cfg.dim} grid {fhw}: rel L2 {err:.2e}")
    assert err <= 1e-5


def test_bf16_error_is_within_twice_the_reference_bf16_error():
    """Executor in bf16 vs the exact fp32 reference, against the reference itself run in bf16
    (the official amp numerics). The executor rounds less often (fused norms, RoPE, one rounding
    per op), so it should not be worse; 2x (+ 1e-4) absorbs seed-to-seed luck. Measured here:
    executor 2.9e-3, reference in bf16 2.9e-3."""
    cfg = TINY
    exact = reference(cfg)
    ref_bf16 = reference(cfg, compute_dtype=BF16)
    ex = build_executor(exact, EngineConfig(ops="torch", dtype="bf16"))
    args = inputs(cfg, 2, (3, 8, 8), text_tokens=11, seed=2)
    with torch.no_grad():
        want = exact(**args)
        ref_err = rel_l2(ref_bf16(**args), want)
        ex_err = rel_l2(ex(**args), want)
    print(f"bf16 rel L2 vs fp32 reference: executor {ex_err:.3e}, reference in bf16 {ref_err:.3e}")
    assert ex.compute_dtype == BF16
    assert ex_err <= 2 * ref_err + 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_gpu_bf16_triton_executor_matches_reference(compile):
    """On CUDA: Triton kernels, the auto attention backend, optionally torch.compile of the block
    (Triton launchers inside a compiled graph), at the 1.3B width with 2 layers."""
    import dataclasses

    cfg = dataclasses.replace(get_preset("t2v-1.3B").dit, num_layers=2)
    exact = reference(cfg).cuda()
    ref_bf16 = reference(cfg, compute_dtype=BF16).cuda()
    ex = build_executor(exact, EngineConfig(dtype="bf16", compile=compile))
    assert ex.ops.backend == "triton"
    args = {k: v.cuda() for k, v in inputs(cfg, 2, (3, 16, 16), text_tokens=20, seed=8).items()}
    with torch.no_grad():
        want = exact(**args)
        ref_err, ex_err = rel_l2(ref_bf16(**args), want), rel_l2(ex(**args), want)
    print(f"GPU bf16 rel L2 vs fp32: executor ({ex.ops.attention.name}, compile={compile}) {ex_err:.3e}, "
          f"reference in bf16 {ref_err:.3e}")
    assert ex_err <= 2 * ref_err + 1e-4


# ---- the fast path: text K/V reuse and CFG batching --------------------------------------------

def test_prepared_text_reuse_equals_recomputation():
    ref = reference(SMALL, seed=3)
    ex = build_executor(ref, EngineConfig(ops="torch"))
    args = inputs(SMALL, 2, (2, 4, 4), text_tokens=9, seed=3)
    text = ex.prepare_text(args["context"])
    assert text.k.shape == (SMALL.num_layers, 2, SMALL.text_len, SMALL.num_heads, SMALL.head_dim)
    with torch.no_grad():
        for t in (torch.tensor([999.0, 10.0]), torch.tensor([500.0, 500.0])):
            reused = ex.predict(args["x"], t, text)  # the same TextKV at every step
            assert torch.equal(reused, ex(args["x"], t, args["context"]))
            assert rel_l2(reused, ref(args["x"], t, args["context"])) <= 1e-5


def test_cfg_batched_equals_separate_and_the_official_formula():
    ref = reference(SMALL, seed=4)
    ex = build_executor(ref, EngineConfig(ops="torch"))
    a, b = inputs(SMALL, 1, (3, 4, 4), text_tokens=6, seed=4), inputs(SMALL, 1, (3, 4, 4), text_tokens=6, seed=5)
    x, ctx, ctx_null, t = a["x"], a["context"], b["context"], torch.tensor([700.0])
    with torch.no_grad():
        batched = make_guided_velocity(ex, ctx, ctx_null, guidance=5.0, cfg_batch=True)(x, t)
        separate = make_guided_velocity(ex, ctx, ctx_null, guidance=5.0, cfg_batch=False)(x, t)
        cond, uncond = ref(x, t, ctx), ref(x, t, ctx_null)
    official = uncond + 5.0 * (cond - uncond)
    print(f"cfg batched vs separate: rel L2 {rel_l2(batched, separate):.2e}")
    # Same math; batch-2 GEMMs may sum in another order (seen: ~6e-7 after the 5x guidance).
    assert rel_l2(batched, separate) <= 1e-5
    assert rel_l2(separate, official) <= 1e-5


def test_text_kv_cat_stacks_the_batch():
    ex = build_executor(reference(SMALL), EngineConfig(ops="torch"))
    ctx = torch.randn(3, 5, SMALL.text_dim)
    one = [ex.prepare_text(ctx[i: i + 1]) for i in range(3)]
    both = TextKV.cat(one)
    whole = ex.prepare_text(ctx)
    assert both.batch == 3
    torch.testing.assert_close(both.k, whole.k, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(both.v, whole.v, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        TextKV.cat([])


# ---- build-time layout ---------------------------------------------------------------------------

def test_weights_are_fused_and_kept_in_the_right_dtypes():
    ref = reference(TINY, seed=6)
    ex = build_executor(ref, EngineConfig(ops="torch", dtype="bf16"))
    sd = ref.state_dict()
    blk = ex.blocks[1]
    qkv = torch.cat([sd[f"blocks.1.self_attn.{n}.weight"] for n in "qkv"]).to(BF16)
    assert torch.equal(blk.qkv_weight, qkv) and blk.qkv_weight.shape == (3 * TINY.dim, TINY.dim)
    kv = torch.cat([sd[f"blocks.1.cross_attn.{n}.weight"] for n in "kv"]).to(BF16)
    assert torch.equal(ex.contexts[1].kv_weight, kv)
    for name in ("qkv_weight", "o_weight", "cross_q_weight", "ffn1_weight", "ffn2_bias"):
        assert getattr(blk, name).dtype == BF16, name
    for name in ("norm_q", "norm_k", "norm3_weight", "cross_norm_q"):
        assert getattr(blk, name).dtype == F32, name  # official fp32 regions
    g = dict(ex.globals.named_buffers())
    for name in ("time_fc1_weight", "time_proj_weight", "modulation", "head_weight", "head_modulation"):
        assert g[name].dtype == F32, name
    assert g["modulation"].shape == (TINY.num_layers, 6, TINY.dim)
    assert torch.equal(g["modulation"][1], sd["blocks.1.modulation"][0])
    assert g["patch_weight"].dtype == BF16


def test_executor_keeps_no_reference_to_the_dit():
    ref = reference(TINY)
    ex = build_executor(ref, EngineConfig(ops="torch"))
    alive = weakref.ref(ref)
    del ref
    gc.collect()
    assert alive() is None and isinstance(ex, WanExecutor)


def test_rope_table_is_built_once_per_grid():
    ex = build_executor(reference(SMALL), EngineConfig(ops="torch"))
    args = inputs(SMALL, 1, (2, 4, 6), text_tokens=4)
    text = ex.prepare_text(args["context"])
    with torch.no_grad():
        for _ in range(3):
            ex.predict(args["x"], args["t"], text)
    assert len(ex.rope_cache) == 1
    table = ex.rope_table((2, 2, 3), 12, torch.device("cpu"))
    assert table is ex.rope_table((2, 2, 3), 12, torch.device("cpu"))  # cached, not rebuilt
    padded = ex.rope_table((2, 2, 3), 15, torch.device("cpu"))
    assert padded.cos.shape == (15, SMALL.head_dim // 2) and padded.real_len == 12
    assert torch.equal(padded.cos[12:], torch.ones(3, 6)) and torch.equal(padded.sin[12:], torch.zeros(3, 6))
    for f in range(1, 12):  # more grids than the cache holds: the oldest go
        ex.rope_table((f, 1, 1), f, torch.device("cpu"))
    assert len(ex.rope_cache) == ex.rope_cache.capacity


@pytest.mark.slow
def test_compiled_block_matches_eager():
    """torch.compile of the block function (torch ops; Inductor's CPU backend)."""
    ref = reference(SMALL, seed=7)
    eager = build_executor(ref, EngineConfig(ops="torch"))
    compiled = build_executor(ref, EngineConfig(ops="torch", compile=True))
    args = inputs(SMALL, 2, (3, 2, 6), text_tokens=5, seed=7)
    with torch.no_grad():
        err = rel_l2(compiled(**args), eager(**args))
        err_ref = rel_l2(compiled(**args), ref(**args))
    print(f"compiled vs eager executor: rel L2 {err:.2e}; vs reference {err_ref:.2e}")
    assert err <= 1e-5 and err_ref <= 1e-5


# ---- the whole pipeline ---------------------------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_tiny_pipeline_video_matches_the_reference_engine():
    """Same prompt and seed through both engines in fp32. The DiTs agree to ~1e-7 per step, so
    the uint8 frames can only differ where a value sits on a quantisation edge; 40 dB allows an
    RMS difference of 2.5 levels, far above that, and far below what any real bug gives
    (a wrong modulation or RoPE changes the video completely, < 15 dB)."""
    import wan_engine

    kw = dict(size=(48, 32), num_frames=5, steps=4, seed=11)
    videos = {engine: wan_engine.WanPipeline.from_pretrained("tiny", device="cpu", engine=engine)
              .generate("a paper boat on a pond", **kw) for engine in ("executor", "reference")}
    value = psnr(videos["executor"], videos["reference"])
    print(f"tiny pipeline executor vs reference: PSNR {value:.1f} dB")
    assert videos["executor"].shape == videos["reference"].shape == (5, 32, 48, 3)
    assert value >= 40.0


# ---- errors ----------------------------------------------------------------------------------------

def test_unavailable_backends_are_clear_errors():
    ref = reference(TINY)
    with pytest.raises(AttentionBackendError, match="attention backend 'fa2' requested but"):
        build_executor(ref, EngineConfig(attention="fa2", dtype="bf16"))
    with pytest.raises(AttentionBackendError, match="'sdpa-flash' requested but it needs a CUDA device"):
        build_executor(ref, EngineConfig(attention="sdpa-flash", dtype="bf16"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="ops backend 'triton' requested but"):
            build_executor(ref, EngineConfig(ops="triton"), device="cuda")


def test_bad_inputs_are_refused():
    ref = reference(SMALL)
    ex = build_executor(ref, EngineConfig(ops="torch"))
    args = inputs(SMALL, 2, (2, 2, 4), text_tokens=4)
    text = ex.prepare_text(args["context"])
    with pytest.raises(ValueError, match=r"t must have shape \[B\] or \[B, 2\] \(latent frame 0, the rest\) "
                                         r"with B = 2; got \(1,\)"):
        ex.predict(args["x"], args["t"][:1], text)
    with pytest.raises(ValueError, match=r"t must have shape .* got \(2, 3\)"):
        ex.predict(args["x"], args["t"][:, None].expand(2, 3), text)
    with pytest.raises(ValueError, match="text K/V were prepared for batch 2, latents have batch 1"):
        ex.predict(args["x"][:1], args["t"][:1], text)
    with pytest.raises(ValueError, match="must be divisible by patch size 2"):
        ex.predict(args["x"][..., :3], args["t"], text)
    with pytest.raises(ValueError, match="seq_len must be an int >= the 4 tokens"):
        ex.predict(args["x"], args["t"], text, seq_len=3)
    with pytest.raises(ValueError, match=r"context length L must be in \[1, 16\]"):
        ex.prepare_text(torch.randn(1, 17, SMALL.text_dim))
    with pytest.raises(ValueError, match="clip_fea is only accepted by i2v/flf2v"):
        ex.prepare_text(args["context"], torch.randn(2, 257, 1280))
    i2v = build_executor(reference(SMALL_I2V), EngineConfig(ops="torch"))
    with pytest.raises(ValueError, match="needs clip_fea with B\\*257 tokens"):
        i2v.prepare_text(args["context"])
    with pytest.raises(ValueError, match="dit must be a reference WanDiT"):
        build_executor(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="engine_config must be an EngineConfig"):
        build_executor(ref, {"ops": "torch"})
    with torch.device("meta"):
        meta = WanDiT(SMALL)
    with pytest.raises(ValueError, match="is on the meta device"):
        build_executor(meta, device="cpu")
    with pytest.raises(ValueError, match="needs qk_norm=True"):
        build_executor(reference(DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=1, text_dim=20,
                                           freq_dim=32, text_len=16, qk_norm=False)))
