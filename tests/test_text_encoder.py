"""umT5 text encoder: key map, official encoder math, trimming, truncation, tiny tokenizer.

The oracle below is written from the official `wan/modules/t5.py` encoder math and works directly
on Wan-named weights, so a wrong key mapping (e.g. swapped `gate.0`/`fc1`, which feed the
asymmetric GELU differently) shows up as a numeric mismatch. It runs in float64; the model under
test runs in fp32, whose rounding over a few O(1)-scaled layers stays near 1e-6, hence 1e-5.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
import torch
from safetensors.torch import save_file
from transformers import UMT5EncoderModel

from wan_engine.configs import TINY_T5, T5Config, WAN21_NEGATIVE_PROMPT
from wan_engine.loading.t5_format import (
    hf_to_wan_t5,
    infer_t5_config,
    load_t5_state_dict,
    to_hf_t5,
    wan_t5_to_hf,
)
from wan_engine.assembly import build_umt5_encoder, random_text_encoder
from wan_engine.reference.text_encoder import TextEncoder, umt5_config
from wan_engine.reference.tokenizer import (
    Tokenizer,
    clean_prompt,
    load_tokenizer,
    tiny_hf_tokenizer,
    tiny_tokenizer,
)

# Deliberately odd: heads*d_kv (30) != d_model (24), non-default bucket count and distance.
ODD_T5 = T5Config(vocab_size=300, d_model=24, d_kv=6, d_ff=40, num_layers=3, num_heads=5)
ODD_T5_BUCKETS = T5Config(
    vocab_size=300, d_model=20, d_kv=4, d_ff=36, num_layers=2, num_heads=3,
    relative_attention_num_buckets=20, relative_attention_max_distance=40,
)


# ----------------------------------------------------------------------------- oracle helpers


def wan_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
    """Official Wan key -> shape, written from wan/modules/t5.py (T5Encoder, shared_pos=False)."""
    d, inner, ff = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff
    shapes = {"token_embedding.weight": (cfg.vocab_size, d), "norm.weight": (d,)}
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        shapes.update({
            p + "norm1.weight": (d,),
            p + "attn.q.weight": (inner, d),
            p + "attn.k.weight": (inner, d),
            p + "attn.v.weight": (inner, d),
            p + "attn.o.weight": (d, inner),
            p + "pos_embedding.embedding.weight": (cfg.relative_attention_num_buckets, cfg.num_heads),
            p + "norm2.weight": (d,),
            p + "ffn.gate.0.weight": (ff, d),
            p + "ffn.fc1.weight": (ff, d),
            p + "ffn.fc2.weight": (d, ff),
        })
    return shapes


def wan_random_weights(cfg: T5Config, seed: int) -> dict[str, torch.Tensor]:
    """Random Wan-named fp32 weights scaled so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(wan_shapes(cfg).items()):
        noise = torch.randn(shape, generator=gen)
        if len(shape) == 1:
            out[name] = 1.0 + 0.1 * noise
        elif "pos_embedding" in name:
            out[name] = 0.5 * noise
        elif name == "token_embedding.weight":
            out[name] = noise
        else:
            out[name] = noise / math.sqrt(shape[1])
    return out


def oracle_bucket(rel: int, num_buckets: int, max_distance: int) -> int:
    """T5's bidirectional relative-position bucket for one distance (key pos - query pos)."""
    half = num_buckets // 2  # one half for keys after the query, one for keys before
    base = half if rel > 0 else 0
    dist = abs(rel)
    exact = half // 2
    if dist < exact:
        return base + dist
    log_bucket = exact + int(math.log(dist / exact) / math.log(max_distance / exact) * (half - exact))
    return base + min(log_bucket, half - 1)


def oracle_encoder(sd: dict[str, torch.Tensor], cfg: T5Config, ids: torch.Tensor, mask: torch.Tensor):
    """The official umT5 encoder forward in float64. ids, mask: [B, L] -> [B, L, d_model]."""
    w = {k: v.double() for k, v in sd.items()}
    b, length = ids.shape
    heads, dkv = cfg.num_heads, cfg.d_kv

    def rms_norm(x, gain):  # no mean subtraction, no bias
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.eps) * gain

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    buckets = torch.tensor([
        [oracle_bucket(k - q, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
         for k in range(length)]
        for q in range(length)
    ])
    key_is_pad = (mask == 0)[:, None, None, :]  # [B, 1, 1, Lk]

    x = w["token_embedding.weight"][ids]
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        h = rms_norm(x, w[p + "norm1.weight"])
        q, k, v = (
            (h @ w[p + f"attn.{n}.weight"].T).view(b, length, heads, dkv).transpose(1, 2) for n in "qkv"
        )
        bias = w[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)  # [H, Lq, Lk]
        logits = q @ k.transpose(-1, -2) + bias  # T5 does not scale by 1/sqrt(d_kv)
        attn = logits.masked_fill(key_is_pad, float("-inf")).softmax(-1)
        ctx = (attn @ v).transpose(1, 2).reshape(b, length, heads * dkv)
        x = x + ctx @ w[p + "attn.o.weight"].T
        h = rms_norm(x, w[p + "norm2.weight"])
        gated = gelu_tanh(h @ w[p + "ffn.gate.0.weight"].T) * (h @ w[p + "ffn.fc1.weight"].T)
        x = x + gated @ w[p + "ffn.fc2.weight"].T
    return rms_norm(x, w["norm.weight"])


def random_ids(lengths: list[int], length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), length), generator=gen)
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask  # pad id 0 beyond each length


# ----------------------------------------------------------------------------- key map


def test_wan_keys_round_trip_through_hf_names():
    wan = wan_random_weights(ODD_T5, seed=1)
    hf = wan_t5_to_hf(wan)
    with torch.device("meta"):
        expected = set(UMT5EncoderModel(umt5_config(ODD_T5)).state_dict())
    assert set(hf) == expected
    assert hf["shared.weight"] is hf["encoder.embed_tokens.weight"] is wan["token_embedding.weight"]
    assert hf["encoder.block.2.layer.1.DenseReluDense.wi_0.weight"] is wan["blocks.2.ffn.gate.0.weight"]
    assert hf["encoder.block.2.layer.1.DenseReluDense.wi_1.weight"] is wan["blocks.2.ffn.fc1.weight"]
    back = hf_to_wan_t5(hf)
    assert set(back) == set(wan) and all(back[k] is wan[k] for k in wan)


def test_hf_layout_with_one_embedding_name_gets_both():
    hf = wan_t5_to_hf(wan_random_weights(ODD_T5, seed=2))
    del hf["encoder.embed_tokens.weight"]  # what a saved diffusers text_encoder holds
    full = to_hf_t5(hf)
    assert full["encoder.embed_tokens.weight"] is full["shared.weight"] is hf["shared.weight"]


@pytest.mark.parametrize("bad_key", ["blocks.0.attn.q.bias", "pos_embedding.embedding.weight", "head.weight"])
def test_unknown_wan_key_raises(bad_key):
    wan = wan_random_weights(ODD_T5, seed=3)
    wan[bad_key] = torch.zeros(1)
    with pytest.raises(KeyError, match="unknown key"):
        wan_t5_to_hf(wan)


def test_unknown_hf_key_raises():
    hf = wan_t5_to_hf(wan_random_weights(ODD_T5, seed=3))
    hf["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="unknown key"):
        to_hf_t5(hf)


# ----------------------------------------------------------------------------- config inference


def test_infer_config_tiny_from_real_tensors():
    assert infer_t5_config(wan_random_weights(TINY_T5, seed=0)) == TINY_T5
    assert infer_t5_config(wan_random_weights(ODD_T5, seed=0)) == ODD_T5


def test_infer_config_xxl_from_shapes_and_meta():
    xxl = T5Config()  # the published umT5-XXL encoder
    shapes = wan_shapes(xxl)
    assert infer_t5_config(shapes) == xxl
    meta = {k: torch.empty(s, device="meta", dtype=torch.bfloat16) for k, s in shapes.items()}
    assert infer_t5_config(meta) == xxl
    with torch.device("meta"):  # the diffusers text_encoder layout (HF names)
        hf_meta = UMT5EncoderModel(umt5_config(xxl)).state_dict()
    assert infer_t5_config(hf_meta) == xxl
    assert infer_t5_config(shapes, text_len=77).text_len == 77
    with pytest.raises(ValueError, match="text_len"):
        infer_t5_config(shapes, text_len=0)


def test_infer_config_rejects_gapped_blocks():
    shapes = wan_shapes(ODD_T5)
    shapes = {k: v for k, v in shapes.items() if not k.startswith("blocks.1.")}
    with pytest.raises(KeyError, match="numbered 0..n-1"):
        infer_t5_config(shapes)


# ----------------------------------------------------------------------------- loading files


def test_load_t5_state_dict_from_every_layout(tmp_path):
    wan = wan_random_weights(ODD_T5, seed=4)
    expected = wan_t5_to_hf(wan)

    pth = tmp_path / "original" / "models_t5_umt5-xxl-enc-bf16.pth"
    pth.parent.mkdir()
    torch.save(wan, pth)

    # diffusers text_encoder/: two shards plus an index, tied embedding stored once
    folder = tmp_path / "diffusers" / "text_encoder"
    folder.mkdir(parents=True)
    hf = {k: v for k, v in expected.items() if k != "encoder.embed_tokens.weight"}
    keys = sorted(hf)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, shard_keys in shards.items():
        save_file({k: hf[k].contiguous() for k in shard_keys}, str(folder / shard))
    weight_map = {k: shard for shard, shard_keys in shards.items() for k in shard_keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    for source in (pth, pth.parent, folder):
        loaded = load_t5_state_dict(source)
        assert set(loaded) == set(expected), source
        for k in expected:
            torch.testing.assert_close(loaded[k], expected[k], rtol=0, atol=0)


# ----------------------------------------------------------------------------- official math


def test_relative_buckets_hand_values_and_hf_agree():
    # Hand-computed for 32 buckets / max distance 128: 16 per direction, 8 exact, then log-spaced.
    hand = {0: 0, -1: 1, -7: 7, -8: 8, -12: 9, -16: 10, -127: 15, -128: 15, -1000: 15, 1: 17, 7: 23, 1000: 31}
    for rel, bucket in hand.items():
        assert oracle_bucket(rel, 32, 128) == bucket, rel
    # HF's vectorized float32 bucketing equals the oracle on every distance up to past saturation,
    # including the exact powers of two (16, 32, 64) where the log ratio lands on an integer.
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(T5Config()))
    attn = model.encoder.block[0].layer[0].SelfAttention
    rel = torch.arange(-300, 301)
    got = attn._relative_position_bucket(rel).tolist()
    assert got == [oracle_bucket(r, 32, 128) for r in rel.tolist()]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "cfg,lengths,seq",
    [(ODD_T5, [150, 37, 1], 150), (ODD_T5_BUCKETS, [61, 9], 61)],
    ids=["odd-dims-past-max-distance", "odd-buckets"],
)
def test_umt5_from_wan_weights_matches_official_math(cfg, lengths, seq, attn_implementation):
    wan = wan_random_weights(cfg, seed=5)
    model = build_umt5_encoder(cfg, wan, attn_implementation=attn_implementation)
    ids, mask = random_ids(lengths, seq, cfg.vocab_size, seed=6)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    want = oracle_encoder(wan, cfg, ids, mask)
    assert got.dtype == torch.float32 and got.shape == (len(lengths), seq, cfg.d_model)
    err = (got.double() - want).abs().max().item()
    assert err < 1e-5, f"max abs error {err:.3g} vs the float64 official-math oracle"
    assert want.abs().max() > 1.0  # the comparison is not between near-zero tensors


def test_padding_is_masked_not_attended():
    # Changing only padded ids must not change any real token's output.
    wan = wan_random_weights(ODD_T5, seed=7)
    model = build_umt5_encoder(ODD_T5, wan)
    ids, mask = random_ids([20, 5], 20, ODD_T5.vocab_size, seed=8)
    noisy = torch.where(mask.bool(), ids, torch.randint(3, ODD_T5.vocab_size, ids.shape))
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(input_ids=noisy, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a[1, :5], b[1, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(a[1, 5:], b[1, 5:])  # the padded rows did see the change


# ----------------------------------------------------------------------------- TextEncoder


TINY_T5_SHORT = dataclasses.replace(TINY_T5, text_len=24)


@pytest.fixture(scope="module")
def tiny_encoder() -> TextEncoder:
    return random_text_encoder(TINY_T5_SHORT, seed=3)


def test_encode_trims_each_prompt_to_its_token_count(tiny_encoder):
    prompts = ["a cat", "", "  two   words\n"]
    counts = tiny_encoder.tokenizer.token_counts(prompts)
    assert counts == [6, 1, 10]  # bytes of the cleaned text + EOS
    outs = tiny_encoder.encode(prompts)
    assert [tuple(o.shape) for o in outs] == [(n, TINY_T5.d_model) for n in counts]
    for prompt, out in zip(prompts, outs):  # batch composition does not leak between prompts
        torch.testing.assert_close(tiny_encoder.encode([prompt])[0], out, rtol=0, atol=1e-5)
    # Masked padding makes the trimmed output independent of text_len.
    longer = TextEncoder(tiny_encoder.model, tiny_tokenizer(TINY_T5.vocab_size, text_len=40))
    for a, b in zip(outs, longer.encode(prompts)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_encode_padded_zeroes_past_each_length(tiny_encoder):
    prompts = ["hello there", "x"]
    padded = tiny_encoder.encode_padded(prompts)
    assert padded.shape == (2, 24, TINY_T5.d_model)
    for row, trimmed in zip(padded, tiny_encoder.encode(prompts)):
        n = trimmed.shape[0]
        torch.testing.assert_close(row[:n], trimmed, rtol=0, atol=0)
        assert row[:n].abs().amin(-1).gt(0).all() and not row[n:].any()


def test_long_prompt_truncates_with_warning_naming_counts():
    tok = tiny_tokenizer(384, text_len=8)
    with pytest.warns(UserWarning, match=r"prompt 1 has 13 tokens.*text_len is 8.*truncated to 8"):
        ids, mask = tok(["ok", "abcdefghijkl"])
    assert ids[1].tolist() == [3 + b for b in b"abcdefg"] + [1]  # 7 text tokens, then EOS
    assert mask[1].tolist() == [1] * 8
    assert ids[0].tolist() == [3 + ord("o"), 3 + ord("k"), 1, 0, 0, 0, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(["abcdef"])  # 7 tokens fit in 8: no warning


def test_bf16_encoder_close_to_fp32(tiny_encoder):
    bf16 = random_text_encoder(TINY_T5_SHORT, seed=3, dtype=torch.bfloat16)  # same draws, cast
    prompt = ["a bf16 prompt"]
    got, want = bf16.encode(prompt)[0], tiny_encoder.encode(prompt)[0]
    assert got.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits (rel. 2^-8 per rounding); through 2 layers of O(1) activations
    # errors of a few 1e-2 are expected, while a wrong cast or mapping would give O(1).
    err = (got.float() - want).abs().max().item()
    assert err < 0.15, err


# ----------------------------------------------------------------------------- tokenizer


def test_clean_prompt_matches_official_whitespace_cleaning():
    assert clean_prompt("  a&amp;amp;b \n\t c\u3000d  ") == "a&b c d"
    assert clean_prompt("&lt;x&gt;") == "<x>"


def test_clean_prompt_runs_ftfy_like_the_official_cleaner():
    """The official cleaner always runs ftfy.fix_text, which maps fullwidth ASCII forms to ASCII and
    straightens quotes: the default negative prompt's fullwidth commas reach the tokenizer as ','."""
    cleaned = clean_prompt(WAN21_NEGATIVE_PROMPT)
    assert "\uff0c" not in cleaned and cleaned.count(",") == WAN21_NEGATIVE_PROMPT.count("\uff0c") > 0
    assert cleaned == WAN21_NEGATIVE_PROMPT.replace("\uff0c", ",")
    assert clean_prompt("\u201cquoted\u201d \uff46\uff55\uff4c\uff4c") == '"quoted" full'


def test_tiny_tokenizer_is_deterministic_and_offline(tmp_path):
    prompts = ["A cat, 1 ball.", WAN21_NEGATIVE_PROMPT[:40], ""]
    ids_a, mask_a = tiny_tokenizer(384, text_len=160)(prompts)
    ids_b, mask_b = tiny_tokenizer(384, text_len=160)(prompts)
    assert torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)
    for row, m, prompt in zip(ids_a, mask_a, prompts):
        want = [3 + b for b in clean_prompt(prompt).encode()] + [1]  # ftfy turns "，" into ","
        assert row[: len(want)].tolist() == want and not row[len(want):].any()
        assert m.sum().item() == len(want)
    assert ids_a.max() < 384 and ids_a.dtype == torch.int64
    # A saved copy loads from a local diffusers-style `tokenizer/` folder, never the network.
    tiny_hf_tokenizer(384).save_pretrained(str(tmp_path / "tokenizer"))
    ids_c, mask_c = load_tokenizer(tmp_path, text_len=160)(prompts)
    assert torch.equal(ids_a, ids_c) and torch.equal(mask_a, mask_c)


def test_bad_inputs_raise_clear_errors(tiny_encoder, tmp_path):
    with pytest.raises(ValueError, match="text_len"):
        Tokenizer(tiny_hf_tokenizer(), text_len=1)
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_hf_tokenizer(100)
    with pytest.raises(ValueError, match="prompts"):
        tiny_encoder.encode([])
    with pytest.raises(ValueError, match="prompts"):
        tiny_encoder.encode(["ok", 3])
    with pytest.raises(ValueError, match="vocab_size"):
        small_vocab = T5Config(vocab_size=200, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)
        random_text_encoder(small_vocab, tokenizer=tiny_tokenizer())
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing")


@pytest.mark.gpu
def test_cuda_encoder_matches_official_math():
    wan = wan_random_weights(ODD_T5, seed=9)
    model = build_umt5_encoder(ODD_T5, wan, device="cuda")
    ids, mask = random_ids([150, 37, 1], 150, ODD_T5.vocab_size, seed=10)
    with torch.no_grad():
        got = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).last_hidden_state.cpu()
    err = (got.double() - oracle_encoder(wan, ODD_T5, ids, mask)).abs().max().item()
    assert err < 1e-4, err  # fp32 GPU GEMMs may reassociate sums; TF32 is off by default
