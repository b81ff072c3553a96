"""The `shapes` world generator and a few steps of the training at toy size."""
import dataclasses
from collections import Counter

import pytest
import torch

from wan_engine.shapes.world import (
    BACKGROUNDS, COLORS, DIRECTIONS, HELD_OUT, SHAPES, Combo, all_combos, make_clip, parse_caption, random_clips,
    training_combos,
)


def test_combinations_and_held_out_set():
    combos = all_combos()
    assert len(combos) == 7 * 3 * 4 * 3 - 3 * 4  # white never on white
    assert len(HELD_OUT) == 24 and not set(HELD_OUT) & set(training_combos())
    assert len(training_combos()) + len(HELD_OUT) == len(combos)
    # Every single attribute value is still seen in training; only the pairings are held out.
    seen = training_combos()
    for attr, values in (("color", COLORS), ("shape", SHAPES), ("direction", DIRECTIONS), ("background", BACKGROUNDS)):
        assert set(values) == {getattr(c, attr) for c in seen}, attr
    with pytest.raises(ValueError, match="invisible"):
        Combo("white", "circle", "left", "white")
    with pytest.raises(ValueError, match="color must be one of"):
        Combo("orange", "circle", "left", "black")


def test_captions_follow_the_grammar_and_parse_back():
    c = Combo("cyan", "triangle", "up", "gray")
    assert c.caption == "a cyan triangle moving up on a gray background"
    assert all(parse_caption(x.caption) == x for x in all_combos())
    with pytest.raises(ValueError, match="caption must read"):
        parse_caption("a cyan triangle going up on a gray background")


def test_clips_show_the_combination():
    combo = Combo("red", "square", "right", "black")
    clip = make_clip(combo, size=(96, 64), frames=9, seed=3)
    assert clip.shape == (3, 9, 64, 96) and clip.dtype == torch.float32
    assert torch.equal(clip, make_clip(combo, size=(96, 64), frames=9, seed=3))  # seeded
    rgb = ((clip + 1) * 127.5).round()
    bg = torch.tensor(BACKGROUNDS["black"], dtype=torch.float32)[:, None, None, None]
    fg = torch.tensor(COLORS["red"], dtype=torch.float32)[:, None, None, None]
    on_fg = (rgb - fg).abs().amax(0) < 2
    assert ((rgb - bg).abs().amax(0) < 2).float().mean() > 0.8  # mostly background
    assert on_fg[0].sum() > 100  # a sizeable shape in every frame
    xs = [torch.nonzero(on_fg[f])[:, 1].float().mean().item() for f in range(9)]
    assert all(b > a for a, b in zip(xs, xs[1:]))  # the centroid moves right every frame
    ys = [torch.nonzero(on_fg[f])[:, 0].float().mean().item() for f in range(9)]
    assert max(ys) - min(ys) < 0.5


def test_random_clips_cover_the_training_combinations():
    clips, combos = random_clips(64, (32, 32), 5, seed=1)
    assert clips.shape == (64, 3, 5, 32, 32) and clips.abs().max() <= 1
    assert not set(combos) & set(HELD_OUT)
    assert len(Counter(combos)) > 40


def test_a_few_training_steps_at_toy_size_export_the_official_layout(tmp_path):
    from wan_engine.assembly import load_dit, load_text_encoder, load_vae
    from wan_engine.shapes.train import export, toy_plan, train_all

    plan = toy_plan()
    logs = []
    trained = train_all(plan, tmp_path / "work", logs.append)
    assert any("[vae] step 3" in line for line in logs) and any("[dit] step 4" in line for line in logs)
    assert any("[decoder] step 2" in line for line in logs)
    out = export(trained, tmp_path / "out", plan)
    dit, vae = load_dit(out), load_vae(out)
    assert dit.config == plan.dit and vae.config.base_dim == plan.vae.base_dim
    for name, tensor in trained.dit.state_dict().items():
        assert torch.equal(dit.state_dict()[name], tensor), name
    text = load_text_encoder(out, text_len=plan.dit.text_len)
    assert torch.equal(text.encode_padded(["a red circle moving left on a black background"]),
                       trained.text_encoder.encode_padded(["a red circle moving left on a black background"]))
    # The folded latent statistics: the exported VAE's normalized latents are unit-scale.
    clips, _ = random_clips(8, plan.size, plan.frames, seed=5)
    with torch.no_grad():
        latents = vae.encode(clips)
    assert 0.5 < latents.std().item() < 2.0
    # Resuming from the checkpoints continues where the run stopped.
    more = train_all(toy_plan(vae_steps=4, dit_steps=5), tmp_path / "work", logs.append)
    assert any("resumed at step 3" in line for line in logs) and any("[dit] step 5" in line for line in logs)
    assert more.dit is not None


def test_decoder_fine_tune_leaves_the_latent_space_alone(tmp_path):
    from wan_engine.shapes.train import finetune_decoder, init_vae, toy_plan

    plan = toy_plan(decoder_steps=3)
    vae = init_vae(plan.vae, seed=0)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    vae = finetune_decoder(plan, vae, tmp_path, lambda *_: None)
    after = vae.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "conv1."))]
    trained = [k for k in before if k.startswith(("decoder.", "conv2."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)


def test_training_continues_from_an_exported_model(tmp_path):
    """--init-from: the exported VAE and text encoder are kept, the DiT starts from the exported one."""
    from wan_engine.shapes.train import export, toy_plan, train_all

    plan = toy_plan()
    first = export(train_all(plan, tmp_path / "a", lambda *_: None), tmp_path / "out", plan)
    logs = []
    again = train_all(toy_plan(init_from=str(first), dit_steps=2, decoder_steps=0), tmp_path / "b", logs.append)
    assert any("[init]" in line for line in logs) and not any("[vae] step" in line for line in logs)
    from wan_engine.assembly import load_dit, load_vae

    exported_vae = load_vae(first).state_dict()
    assert all(torch.equal(again.vae.state_dict()[k], v) for k, v in exported_vae.items())
    start = load_dit(first).state_dict()
    assert any(not torch.equal(again.dit.state_dict()[k], v) for k, v in start.items())  # trained further


def test_dit_minutes_zero_fine_tunes_only_the_decoder_of_an_exported_model(tmp_path):
    """dit_minutes 0 with init_from: the DiT and the encoder (the latent space) stay bit for bit,
    the decoder trains on whole clips (decoder_crop), and no latents are encoded."""
    from wan_engine.assembly import load_dit, load_vae
    from wan_engine.shapes.train import export, toy_plan, train_all

    plan = toy_plan()
    first = export(train_all(plan, tmp_path / "a", lambda *_: None), tmp_path / "out", plan)
    logs = []
    again = train_all(toy_plan(init_from=str(first), dit_minutes=0, decoder_steps=2), tmp_path / "b", logs.append)
    assert any("[dit] skipped" in line for line in logs) and any("[decoder] step 2" in line for line in logs)
    assert not any(line.startswith("[latents]") for line in logs)
    assert all(torch.equal(again.dit.state_dict()[k], v) for k, v in load_dit(first).state_dict().items())
    before = load_vae(first).state_dict()
    after = again.vae.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith(("encoder.", "conv1.")))
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("decoder."))
    with pytest.raises(ValueError, match="init_from"):
        train_all(toy_plan(dit_minutes=0), tmp_path / "c", lambda *_: None)


def test_decoder_crops_are_whole_clips_by_default():
    from wan_engine.shapes.train import TrainPlan
    from wan_engine.shapes.train_vae import vae_crops

    plan = TrainPlan()
    crops = vae_crops(plan, torch.Generator().manual_seed(0), plan.decoder_batch, plan.decoder_crop)
    assert crops.shape == (plan.decoder_batch, 3, plan.frames, plan.size[1], plan.size[0])
    assert vae_crops(plan, torch.Generator().manual_seed(0)).shape == (plan.vae_batch, 3, *plan.vae_crop)


def test_the_word_tokenizer_puts_each_part_of_a_caption_at_a_fixed_position():
    from wan_engine.shapes.vocabulary import WORDS, shapes_tokenizer

    tok = shapes_tokenizer(16)
    ids, mask = tok([c.caption for c in all_combos()[:40]])
    assert mask.sum(1).tolist() == [10] * 40  # 9 words + EOS, whatever the colour's spelling
    colours = {c.color: ids[i, 1].item() for i, c in enumerate(all_combos()[:40])}
    assert len(set(colours.values())) == len(colours)  # one id per colour, always at position 1
    assert len(WORDS) == len(set(WORDS))
    # Lower-cased; punctuation and words outside the grammar are unknown (id 2).
    assert tok(["A RED, circle"])[0][0, :4].tolist() == [3, 3 + WORDS.index("red"), 2, 3 + WORDS.index("circle")]


def test_training_a_new_dit_on_an_exported_vae(tmp_path):
    """--vae-from: only the VAE is kept (no VAE phase, no decoder phase); text encoder and DiT are new."""
    from wan_engine.assembly import load_vae
    from wan_engine.shapes.train import export, toy_plan, train_all

    plan = toy_plan()
    first = export(train_all(plan, tmp_path / "a", lambda *_: None), tmp_path / "out", plan)
    logs = []
    again = train_all(toy_plan(vae_from=str(first), dit_steps=2), tmp_path / "b", logs.append)
    assert not any("[vae] step" in line or "[decoder] step" in line for line in logs)
    assert all(torch.equal(again.vae.state_dict()[k], v) for k, v in load_vae(first).state_dict().items())
    with pytest.raises(ValueError, match="exclude each other"):
        train_all(toy_plan(vae_from=str(first), init_from=str(first)), tmp_path / "c", lambda *_: None)


def test_the_sigma_range_draws_an_experts_share_and_the_default_draws_all():
    """An expert trains on its side of the boundary only; the default range is the whole shifted
    distribution, drawn bit for bit as before the range existed (the shipped DiT's objective)."""
    from wan_engine.shapes.train import TrainPlan, flow_matching_batch

    x0 = torch.randn(4096, 1, 1, 1, 1)
    plan = TrainPlan()
    _, t, _ = flow_matching_batch(plan, x0, torch.Generator().manual_seed(0))
    u = torch.rand(4096, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, plan.shift * u / (1 + (plan.shift - 1) * u) * 1000)
    for low, high in ((0.875, 1.0), (0.0, 0.875), (0.3, 0.6)):
        _, t, _ = flow_matching_batch(dataclasses.replace(plan, sigma_range=(low, high)), x0,
                                      torch.Generator().manual_seed(1))
        assert 1000 * low <= t.min() and t.max() <= 1000 * high + 1e-3, (low, high, t.min(), t.max())
        assert t.max() - t.min() > 0.9 * 1000 * (high - low)  # it spans its range, not a corner of it


def test_experts_fine_tune_from_an_exported_model_into_the_a14b_layout(tmp_path):
    """Each expert starts from the exported DiT and trains on its share; the export is the Wan2.2
    A14B original layout, read by the normal loaders, with the VAE and text encoder files unchanged."""
    from wan_engine.assembly import load_dit
    from wan_engine.loading.layout import detect_layout
    from wan_engine.shapes.experts import expert_plans, export_experts, train_experts
    from wan_engine.shapes.train import export, toy_plan, train_all

    first = export(train_all(toy_plan(), tmp_path / "a", lambda *_: None), tmp_path / "one", toy_plan())
    plan = toy_plan(init_from=str(first), dit_steps=2)
    assert {name: p.sigma_range for name, p in expert_plans(plan, 0.6).items()} == {
        "high_noise_model": (0.6, 1.0), "low_noise_model": (0.0, 0.6)}
    with pytest.raises(ValueError, match="boundary"):
        expert_plans(plan, 1.0)
    logs = []
    experts = train_experts(plan, 0.6, tmp_path / "work", logs.append)
    assert any(line.startswith("[high_noise_model] [dit] step 2") for line in logs)
    assert any(line.startswith("[low_noise_model] [dit] step 2") for line in logs)
    out = export_experts(experts, tmp_path / "two", plan, 0.6, dtype=torch.float32)
    layout = detect_layout(out)
    assert layout.has_experts and layout.vae is not None and layout.text_encoder is not None
    start = load_dit(first).state_dict()
    high, low = load_dit(layout.dit_dir).state_dict(), load_dit(layout.low_noise_dit_dir).state_dict()
    for name, state in (("high_noise_model", high), ("low_noise_model", low)):
        assert all(torch.equal(state[k], v) for k, v in experts[name].state_dict().items())
    assert any(not torch.equal(high[k], start[k]) for k in start)  # each trained further ...
    assert any(not torch.equal(high[k], low[k]) for k in start)   # ... on its own share
    for name in ("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"):
        assert (out / name).read_bytes() == (first / name).read_bytes()
    with pytest.raises(ValueError, match="init_from"):
        train_experts(toy_plan(), 0.6, tmp_path / "c", lambda *_: None)
