"""`WanExecutor`: the optimized Wan2.1 DiT, the same function as the reference `WanDiT`.

Two ways in:
- `executor(x, t, context)` exactly like the reference (prepares the text K/V on every call);
- the fast path the runner uses: `text = executor.prepare_text(context)` once per request, then
  `executor.predict(x, t, text)` every step, which patchifies, looks the RoPE table up in the
  instance's cache and calls `forward_tokens`, the fixed-shape core: no `.item()`, no branch on
  tensor values, every Python branch fixed by the model type or the shapes (so a later step can
  capture it as a CUDA graph or export it).

Sequence parallelism is installed from outside by `wan_engine.parallel.apply_parallel`, which
hands the executor two pieces of data through `parallelize`: the self-attention op and a shard
plan (the `TokenShardPlan` interface defined here, so the executor never imports the parallel
layer). With no plan (the default) the forward is the single-process one, unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import DiTConfig
from ..engine_config import EngineConfig
from ..ops import OpSet, resolve_ops
from ..reference.dit import sinusoidal_embedding_1d
from .block import BlockSpec, FirstRows, make_block_fn
from .rope_cache import RopeCache, RopeTable
from .sharding import TokenShardPlan, WeightShards
from .stream import FirstFrameMods, TokenStream
from .token_io import TokenIO
from .text_cache import TextKV, prepare_context_kv
from .weights import BlockWeights, ContextWeights, build_stores, official_slots

FP32 = torch.float32


def timestep_features(freq_dim: int, t: torch.Tensor) -> torch.Tensor:
    """The fp32 sinusoid features [B, k, freq_dim] the time embedding takes, of timesteps t [B]
    (k = 1) or [B, 2] (k = 2, TI2V: latent frame 0's timestep, the rest's): computed in float64 and
    rounded once, as the official. A tensor of features (ndim 3) is returned as it is: what the
    exported graphs take, so that no graph holds float64 (TensorRT has none, and onnxruntime's CPU
    float64 Cos came only in 1.29)."""
    if t.ndim == 3:
        if t.shape[2] != freq_dim or t.dtype != FP32:
            raise ValueError(f"timestep features must be fp32 [B, k, {freq_dim}]; got {t.dtype} {list(t.shape)}")
        return t
    if t.ndim not in (1, 2):
        raise ValueError(f"timesteps must be [B] or [B, 2] (or their features [B, k, {freq_dim}]); got "
                         f"{list(t.shape)}")
    return sinusoidal_embedding_1d(freq_dim, t.reshape(-1)).float().unflatten(0, (t.shape[0], -1))


class WanExecutor(nn.Module, TokenIO):
    """The Wan2.1 DiT on fused ops. Build it with `build_executor(reference_dit, engine_config)`.

    Weights live in buffers (so `.to(device)` moves them); the ops are resolved once for the
    device and compute dtype the executor is built on, and must run there.
    """

    def __init__(self, config: DiTConfig, state_dict: dict[str, torch.Tensor], engine_config: EngineConfig,
                 compute_dtype: torch.dtype, device: torch.device, consume: bool = False,
                 weights_device: torch.device | None = None):
        super().__init__()
        if not isinstance(engine_config, EngineConfig):
            raise ValueError(f"engine_config must be an EngineConfig; got {type(engine_config).__name__}")
        self.config = config
        self.engine_config = engine_config
        self.compute_dtype = compute_dtype
        # Resolve first: an unusable backend is reported before any weight is cast or moved.
        self.ops: OpSet = resolve_ops(engine_config, device, compute_dtype, config.head_dim)
        self.ops_device = torch.device(device)  # where the ops run (the weights may wait elsewhere)
        self.globals, self.blocks, self.contexts = build_stores(config, state_dict, compute_dtype, consume)
        self.to(device if weights_device is None else weights_device)
        self.rope_cache = RopeCache(config.head_dim)
        self.quant: str | None = None  # "fp8" / "fp8-emulated" after `quantize_weights`
        self.weight_shards: tuple[WeightShards, WeightShards] | None = None  # (blocks, contexts) once split
        self._linear = None  # the block GEMM (None: F.linear on the dense weights)
        self.parallelize(self.ops.attention, None)

    def parallelize(self, self_attention, shard_plan: TokenShardPlan | None) -> None:
        """Run self-attention with `self_attention` (called like `ops.attention`) on the token
        slice `shard_plan` assigns to this rank; `shard_plan` None computes the whole sequence.
        Normally called by `wan_engine.parallel.apply_parallel`, which builds both from a mesh.
        """
        if shard_plan is not None and not isinstance(shard_plan, TokenShardPlan):
            raise ValueError(f"shard_plan must implement TokenShardPlan (degree, padded_length, shard, "
                             f"gather) or be None, got {type(shard_plan).__name__}")
        if not callable(self_attention):
            raise ValueError(f"self_attention must be callable like ops.attention, got {type(self_attention).__name__}")
        cfg = self.config
        spec = BlockSpec(cfg.num_heads, cfg.head_dim, cfg.eps, self.compute_dtype, cfg.uses_clip)
        self.self_attention = self_attention
        # A degree-1 plan would only add no-op slicing; keep the single-process path exactly.
        self.shard_plan = shard_plan if shard_plan is not None and shard_plan.degree > 1 else None
        self._block = make_block_fn(self.ops, spec, self.compute_dtype, self_attention, self._linear)
        # The last block's `normed` feeds the fp32 head.
        self._last_block = make_block_fn(self.ops, spec, FP32, self_attention, self._linear)
        if self.engine_config.compile:
            self._block, self._last_block = torch.compile(self._block), torch.compile(self._last_block)

    def quantize_weights(self, mode: str) -> None:
        """Quantize the blocks' six GEMM weights to fp8 in place (executor/fp8.py): "fp8" runs them
        through torch._scaled_mm (sm_89+, bf16), "fp8-emulated" computes the same numerics anywhere.
        Merge LoRAs before this: the dense weights are gone afterwards."""
        from .fp8 import check_fp8_support, linear_for, quantize_store

        if self.quant is not None:
            raise ValueError(f"the executor's weights are already quantized ({self.quant})")
        self._check_unsharded("quantize")
        check_fp8_support(mode, self.ops_device, self.compute_dtype)
        for store in self.blocks:
            quantize_store(store, mode)
        self.quant, self._linear = mode, linear_for(mode)
        self.parallelize(self.self_attention, self.shard_plan)  # rebuild the block functions

    def shard_weights(self, blocks: WeightShards, contexts: WeightShards) -> None:
        """Fetch every block's step weights from `blocks` and its text K/V weights from `contexts`
        (one `take(i)` per layer, gathered from the ranks that hold them), instead of from the
        stores. Installed by `wan_engine.parallel.shard_block_weights`, after LoRAs and quantization."""
        for name, shards in (("blocks", blocks), ("contexts", contexts)):
            if not isinstance(shards, WeightShards) or len(shards) != len(self.blocks):
                raise ValueError(f"{name} must implement WeightShards (len, take) for {len(self.blocks)} layers")
        self._check_unsharded("split again")
        self.weight_shards = (blocks, contexts)

    def _check_unsharded(self, what: str) -> None:
        if self.weight_shards is not None:
            raise ValueError(f"cannot {what}: the block weights are split over the ranks of the sequence-parallel "
                             f"group (shard_weights); merge LoRAs and quantize at load, before the split")

    def _block_weights(self, i: int, then: int | None) -> BlockWeights:
        """Block i's weights; `then` is the block run next in this call (None: none), which split
        weights start gathering now."""
        return self.blocks[i].take(BlockWeights) if self.weight_shards is None else self.weight_shards[0].take(i, then)

    # -- the reference-compatible call ------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, seq_len: int | None = None,
                clip_fea: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Same arguments and result as `WanDiT.forward`: latents x [B, C, F, H, W], t [B],
        context [B, L, text_dim] -> fp32 velocity [B, out_dim, F, H, W]."""
        return self.predict(x, t, self.prepare_text(context, clip_fea), seq_len=seq_len, y=y)

    # -- the fast path ----------------------------------------------------------------------------

    def prepare_text(self, context: torch.Tensor, clip_fea: torch.Tensor | None = None) -> TextKV:
        """Text embeddings [B, L <= text_len, text_dim] (+ CLIP features for i2v/flf2v) -> the
        cross-attention K/V of every layer, to reuse for every step of a request."""
        if self.weight_shards is None:
            layers = [store.take(ContextWeights) for store in self.contexts]
        else:  # one layer gathered at a time, into one buffer: used before the next is fetched
            layers = _Gathered(self.weight_shards[1])
        return prepare_context_kv(self.ops, self.config, self.compute_dtype, self._globals(), layers,
                                  context, clip_fea)

    def predict(self, x: torch.Tensor, t: torch.Tensor, text: TextKV, seq_len: int | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity for latents x [B, C, F, H, W] (+ y for i2v/flf2v) at timesteps t [B] with the
        prepared `text` (batch B) -> fp32 [B, out_dim, F, H, W]. seq_len pads the token sequence
        (padded keys are masked), as the official sequence-parallel code does; under a shard plan
        the length is rounded up to a multiple of the sp degree, and every rank of the sp group
        must call this with the same inputs (each computes its slice, all return the whole)."""
        return self.finish(self.run_blocks(self.begin(x, t, seq_len=seq_len, y=y), text))

    # -- the same forward in stages (the runner's step cache skips the block stack between them) --

    def begin(self, x: torch.Tensor, t: torch.Tensor, seq_len: int | None = None,
              y: torch.Tensor | None = None) -> TokenStream:
        """Patchify, embed and modulate latents x [B, C, F, H, W] at timesteps t [B]: the stream
        at block 0 (this rank's token slice under a shard plan). Arguments as `predict`."""
        patches, rope = self.tokens_in(x, t, seq_len, y)
        return self.embed(patches, t, rope)

    def finish(self, stream: TokenStream) -> torch.Tensor:
        """The head and unpatchify after the last block: fp32 velocity [B, out_dim, F, H, W]."""
        return self.tokens_out(self.head(stream), stream.rope)

    def forward_tokens(self, patches: torch.Tensor, t: torch.Tensor, text: TextKV, rope: RopeTable) -> torch.Tensor:
        """The fixed-shape core. patches [B, f*h*w, in_dim*pt*ph*pw] (from `patchify`), t [B],
        text: TextKV of batch B, rope: the grid's table -> fp32 head output
        [B, rope.seq_len, pt*ph*pw*out_dim] (rows past rope.real_len are padding).
        Under a shard plan the blocks run on this rank's slice of the rope.seq_len tokens (a
        multiple of the sp degree) and the head output is gathered from every sp rank."""
        return self.head(self.run_blocks(self.embed(patches, t, rope), text))

    def embed(self, patches: torch.Tensor, t: torch.Tensor, rope: RopeTable) -> TokenStream:
        """Patch embedding and every block's modulation: the stream before block 0."""
        g = self._globals()
        plan = self.shard_plan
        if plan is None:
            # The official patch embedding is a stride-equal Conv3d, i.e. a GEMM over patches;
            # its bf16 output enters the fp32 residual stream.
            x = F.linear(patches.to(self.compute_dtype), g["patch_weight"], g["patch_bias"]).float()
            x = F.pad(x, (0, 0, 0, rope.seq_len - rope.real_len))
        else:
            # Slice before embedding: no rank materialises the whole [B, S, dim] stream. Padded
            # rows embed zero patches (the bias) instead of the official zeros; either is inert,
            # as padded keys are masked and padded rows are dropped at unpatchify.
            patches = plan.shard(F.pad(patches, (0, 0, 0, rope.seq_len - rope.real_len)))
            x = F.linear(patches.to(self.compute_dtype), g["patch_weight"], g["patch_bias"]).float()
        return self._renorm(self.stream_at(x, t, rope, 0, None))

    def stream_at(self, x: torch.Tensor, t: torch.Tensor, rope: RopeTable, block: int,
                  normed: torch.Tensor | None) -> TokenStream:
        """The stream before block `block` whose residual stream is x (this rank's token slice under
        a shard plan) at timesteps t, with `normed` as its input to that block (None: not formed;
        `skip_blocks` forms it): where a whole-step function resumes a forward (FBCache, after
        block 0). The step's modulation is recomputed from t, the same values `embed` formed."""
        if not 0 <= block <= len(self.blocks):
            raise ValueError(f"block must be in [0, {len(self.blocks)}]; got {block}")
        cos, sin = rope.cos, rope.sin
        if self.shard_plan is not None:
            cos, sin = self.shard_plan.shard(cos, dim=0), self.shard_plan.shard(sin, dim=0)
        features = timestep_features(self.config.freq_dim, t)
        mods, head_shift, head_scale = self._modulation(features.flatten(0, 1), self._globals())
        if features.shape[1] == 1:
            return TokenStream(x, normed, mods, head_shift, head_scale, cos, sin, rope, block)
        # t [B, 2]: latent frame 0's tokens (the first grid h*w) at t[:, 0], the rest at t[:, 1].
        first_mods, mods = mods.unflatten(2, (-1, 2)).unbind(3)
        (first_shift, head_shift), (first_scale, head_scale) = (v.unflatten(0, (-1, 2)).unbind(1)
                                                                for v in (head_shift, head_scale))
        frame0 = FirstFrameMods(self._first_frame_rows(rope, x.shape[1]), first_mods, first_shift, first_scale)
        return TokenStream(x, normed, mods, head_shift, head_scale, cos, sin, rope, block, frame0)

    def _first_frame_rows(self, rope: RopeTable, local_len: int) -> int:
        """How many of this rank's `local_len` token rows belong to latent frame 0 (its rows are
        the slice's first ones): all of frame 0's on one process; under a shard plan the part of
        it in this rank's slice, from the plan's slice of the row indices (host-side, static)."""
        frame0 = rope.grid[1] * rope.grid[2]
        if self.shard_plan is None:
            return min(frame0, local_len)
        local = self.shard_plan.shard(torch.arange(rope.seq_len)[None], dim=1)
        return int((local < frame0).sum())

    def run_blocks(self, stream: TokenStream, text: TextKV, stop: int | None = None) -> TokenStream:
        """Run blocks `stream.next_block` .. `stop - 1` (default: to the last) with `text` (batch B)."""
        stop = self._stop(stream, stop)
        if text.batch != stream.batch:
            raise ValueError(f"text K/V were prepared for batch {text.batch}, latents have batch {stream.batch}")
        x, normed, mods = stream.x, stream.normed, stream.mods
        last = len(self.blocks) - 1
        frame0 = stream.first if stream.first is not None and stream.first.rows > 0 else None
        for i in range(stream.next_block, stop):
            block = self._block if i < last else self._last_block
            next_shift, next_scale = _next_modulation(stream, i, last)
            first = None
            if frame0 is not None:
                first = FirstRows(frame0.rows, frame0.mods[i], *_next_modulation(frame0, i, last))
            weights = self._block_weights(i, i + 1 if i + 1 < stop else None)
            x, normed = block(x, normed, weights, mods[i], next_shift, next_scale,
                              *text.layer(i), stream.cos, stream.sin, stream.rope.real_len, first)
        return stream.advanced(x, normed, stop)

    def skip_blocks(self, stream: TokenStream, residual: torch.Tensor, stop: int | None = None) -> TokenStream:
        """Stand in for blocks `stream.next_block` .. `stop - 1` by adding `residual` (what those
        blocks added to the stream at an earlier step, same shape as `stream.x`) to the stream."""
        stop = self._stop(stream, stop)
        if residual.shape != stream.x.shape:
            raise ValueError(f"residual must have the stream's shape {tuple(stream.x.shape)}, got {tuple(residual.shape)}")
        return self._renorm(stream.advanced(stream.x + residual, None, stop))

    def head(self, stream: TokenStream) -> torch.Tensor:
        """The fp32 head on the stream after the last block -> [B, rope.seq_len, pt*ph*pw*out_dim]
        (gathered from every sp rank under a shard plan)."""
        if stream.next_block != len(self.blocks):
            raise ValueError(f"the head needs the stream after the last block; it is at block {stream.next_block}")
        g = self._globals()
        out = F.linear(stream.normed, g["head_weight"], g["head_bias"])
        return out if self.shard_plan is None else self.shard_plan.gather(out)

    # -- weights by official name (LoRA merging) ---------------------------------------------------

    def official_slots(self) -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
        """Official parameter name -> (a writable view of the stored tensor, the official shape);
        see `weights.official_slots`. Built fresh per call: `.to(device)` replaces the buffers."""
        self._check_unsharded("merge or unmerge a LoRA")
        return official_slots(self.config, self.globals, self.blocks, self.contexts)

    # -- helpers ----------------------------------------------------------------------------------

    def _stop(self, stream: TokenStream, stop: int | None) -> int:
        stop = len(self.blocks) if stop is None else stop
        if not stream.next_block <= stop <= len(self.blocks):
            raise ValueError(f"stop must be in [{stream.next_block}, {len(self.blocks)}] (the stream is at block "
                             f"{stream.next_block}); got {stop}")
        return stop

    def _renorm(self, stream: TokenStream) -> TokenStream:
        """The stream with `normed` formed from `x` for its next block (LN1 + modulation in the
        compute dtype) or for the head (fp32), as the blocks' fused epilogues form it."""
        i = stream.next_block

        def modulated(x, mods):
            if i < len(self.blocks):
                return self.ops.layer_norm_modulate(x, mods.mods[i, 0], mods.mods[i, 1], self.config.eps,
                                                    self.compute_dtype)
            return self.ops.layer_norm_modulate(x, mods.head_shift, mods.head_scale, self.config.eps, FP32)
        normed = modulated(stream.x, stream)
        frame0 = stream.first
        if frame0 is not None and frame0.rows > 0:
            # narrow (as FirstRows does): its length is `rows` exactly, also in an exported graph
            normed.narrow(1, 0, frame0.rows).copy_(modulated(stream.x.narrow(1, 0, frame0.rows), frame0))
        return stream.advanced(stream.x, normed, i)

    def _globals(self) -> dict[str, torch.Tensor]:
        return dict(self.globals.named_buffers())

    def time_embedding(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 e [N, dim] (the head's modulation input) and e0 = time_projection(e) [N, 6, dim]
        (the blocks') of timesteps t [N]: what TeaCache's signal is measured on."""
        return self.embed_time(timestep_features(self.config.freq_dim, t.reshape(-1)).flatten(0, 1))

    def embed_time(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`time_embedding` from the sinusoid features [N, freq_dim] (`timestep_features`)."""
        g = self._globals()
        e = F.linear(F.silu(F.linear(features, g["time_fc1_weight"], g["time_fc1_bias"])),
                     g["time_fc2_weight"], g["time_fc2_bias"])
        e0 = F.linear(F.silu(e), g["time_proj_weight"], g["time_proj_bias"]).unflatten(1, (6, -1))
        return e, e0

    def _modulation(self, features: torch.Tensor, g: dict[str, torch.Tensor]):
        """Time embedding and every block's modulation for the whole batch, once per step (fp32),
        from the timesteps' sinusoid features [B, freq_dim].

        Returns mods [num_layers, 6, B, dim] (shift1, scale1, gate1, shift2, scale2, gate2 per
        block) and the head's shift, scale [B, dim]. The head is modulated by e, not e0.
        """
        e, e0 = self.embed_time(features)
        mods = g["modulation"][:, :, None, :] + e0.transpose(0, 1)[None]
        head = g["head_modulation"][:, None, :] + e[None]
        return mods, head[0], head[1]


def _next_modulation(mods, i: int, last: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shift and scale that block i's last op forms the next input with (a TokenStream's or a
    FirstFrameMods' `mods`, `head_shift`, `head_scale`): block i+1's first, or the head's after the last."""
    if i < last:
        return mods.mods[i + 1, 0], mods.mods[i + 1, 1]
    return mods.head_shift, mods.head_scale


class _Gathered(Sequence):
    """Layers of a WeightShards fetched as they are indexed (each valid until the next)."""

    def __init__(self, shards: WeightShards):
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self.shards):
            raise IndexError(i)
        return self.shards.take(i, i + 1 if i + 1 < len(self.shards) else None)


def build_executor(dit: nn.Module, engine_config: EngineConfig | None = None,
                   device: torch.device | str | None = None, *, release_reference: bool = False,
                   weights_device: torch.device | str | None = None) -> WanExecutor:
    """An executor with the weights of a reference `WanDiT` (official parameter names).

    The compute dtype is `engine_config.dtype`, or the reference's `compute_dtype`; the device is
    `device`, or the reference's. Tensors whose dtype already matches are shared, not copied;
    the executor keeps no reference to `dit`.

    release_reference: move `dit` to the meta device first and free each of its tensors as soon
    as the executor has fused or cast it, so building peaks at the checkpoint plus one block's
    fused weights instead of holding the reference's q/k/v beside the fused copies (about 10 GB
    for 14B). `dit` is unusable afterwards; the loaders pass True.
    weights_device: where the weights are kept (default `device`, where the ops run); the CPU for
    an offloaded model, which is moved to `device` for its stage.
    """
    engine_config = EngineConfig() if engine_config is None else engine_config
    if not isinstance(engine_config, EngineConfig):
        raise ValueError(f"engine_config must be an EngineConfig; got {type(engine_config).__name__}")
    if not hasattr(dit, "config") or not isinstance(dit.config, DiTConfig):
        raise ValueError(f"dit must be a reference WanDiT (with a DiTConfig .config); got {type(dit).__name__}")
    if device is None:
        device = next(dit.parameters()).device
    dtype = engine_config.resolved_dtype(getattr(dit, "compute_dtype", FP32))
    state_dict = dict(dit.state_dict())  # detached tensors that share the parameters' storage
    if release_reference:
        dit.to("meta")  # the module drops its storages; `state_dict` now holds the only references
    return WanExecutor(dit.config, state_dict, engine_config, dtype, torch.device(device), consume=release_reference,
                       weights_device=None if weights_device is None else torch.device(weights_device))
