"""The umT5 text encoder: transformers' `UMT5EncoderModel` behind Wan2.1's calling convention.

`UMT5EncoderModel` computes the official `wan/modules/t5.py` encoder: per-layer relative position
bias (bidirectional buckets), RMS norm without mean subtraction, unscaled attention logits, and a
gated tanh-GELU feed-forward. As in the official `T5EncoderModel.__call__`, prompts are padded to
`text_len`, encoded with the padding masked out of attention, and each output is trimmed to the
prompt's true token count (EOS included). Building one from weights is `wan_engine.assembly`'s job.
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import UMT5Config, UMT5EncoderModel

from ..configs import T5Config
from .tokenizer import Tokenizer


def umt5_config(config: T5Config, attn_implementation: str | None = None) -> UMT5Config:
    """The transformers config for `config`: gated tanh-GELU FFN, no dropout, tied embedding.

    `attn_implementation` None lets transformers choose: SDPA in 5.x (its fused GPU kernels keep the
    softmax in fp32, like the official `softmax(attn.float())`, where eager would run it in bf16),
    eager in 4.x, where UMT5 has no SDPA path.
    """
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return UMT5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        layer_norm_epsilon=config.eps,
        feed_forward_proj="gated-gelu",  # transformers maps this to the tanh approximation ("gelu_new")
        dropout_rate=0.0,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        **extra,
    )


class TextEncoder:
    """Prompts -> umT5 hidden states, the DiT's text context.

    `encode` returns one `[L_i, d_model]` tensor per prompt (L_i = its token count incl. EOS,
    at most `text_len`); `encode_padded` returns `[B, text_len, d_model]` with zero rows past
    each L_i, the layout the DiT consumes. Outputs are in the model's dtype and on its device.
    """

    def __init__(
        self,
        model: UMT5EncoderModel,
        tokenizer: Tokenizer,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer emits ids up to {tokenizer.vocab_size - 1} but the model's vocab_size is "
                f"{model.config.vocab_size}"
            )
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def text_len(self) -> int:
        return self.tokenizer.text_len

    @property
    def d_model(self) -> int:
        return self.model.config.d_model

    @torch.no_grad()
    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask: int `[B, L]` -> `[B, L, d_model]`; rows where mask is 0 are computed but meaningless."""
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(
                f"ids and mask must both be [B, L]; got {tuple(ids.shape)} and {tuple(mask.shape)}"
            )
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return out.last_hidden_state

    def _run(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer(prompts)
        return self.hidden_states(ids, mask), mask.to(self.device)

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> list[torch.Tensor]:
        """One `[L_i, d_model]` tensor per prompt, trimmed to its token count (EOS included)."""
        hidden, mask = self._run(prompts)
        lengths = mask.sum(dim=1).tolist()
        return [row[:n] for row, n in zip(hidden, lengths)]

    @torch.no_grad()
    def encode_padded(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """`[B, text_len, d_model]`: each prompt's rows, then zeros up to text_len."""
        hidden, mask = self._run(prompts)
        return hidden.masked_fill(mask[..., None] == 0, 0.0)
