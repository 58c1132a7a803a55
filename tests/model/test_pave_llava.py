"""PAVE on the tiny LLaVA-OneVision: no-op at init, HF-identical video layout, label-only loss, varlen frames,
composable patches, LoRA targeting, save -> load in a fresh process, greedy generation."""
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

import modeldata
from model.llava import IGNORE_INDEX, PaveLlava
from model.patch import PatchConfig, PavePatch, SideBatch, VideoBatch

GRID, Q_SIDE = 4, 2  # tiny SigLIP: 4x4 patches per frame, 2x2 after pooling
Q = Q_SIDE * Q_SIDE


def load(tiny_dir):
    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


def patch(base, side_dim=12, live=True, seed=0) -> PavePatch:
    torch.manual_seed(seed)
    cfg = PatchConfig(side_dim=side_dim, query_dim=base.config.vision_config.hidden_size,
                      llm_dim=base.config.text_config.hidden_size, d_model=16, num_heads=2, ffn_dim=32, out_hidden=32)
    p = PavePatch(cfg).eval()
    if live:  # give the zero-init output LayerNorm weights, so the patch changes something
        torch.nn.init.normal_(p.out[-1].weight)
        torch.nn.init.normal_(p.out[-1].bias)
    return p


def batch(tok, base, frames=(3, 2), answers=("a dog", "two loud beeps"), pad_left=False, newline="grid"):
    """A chat batch whose stored video tokens are pooled (Q per frame), with placeholders for `newline`."""
    layout = PaveLlava(base, newline=newline).layout
    ids, am, labels = modeldata.chat_batch(tok, base.config.video_token_id, list(frames), Q, list(answers), pad_left,
                                           layout)
    video = modeldata.video(list(frames), Q, base.config.vision_config.hidden_size)
    return ids, am, labels, video


def sides(n=2):
    return {"audio": modeldata.side_batch([9, 4, 6][:n], 1, 12, duration=6.0),
            "exo": modeldata.side_batch([3, 7, 5][:n], 4, 8, duration=6.0, seed=7)}


def test_zero_init_patches_leave_logits_bit_identical(tiny_dir):
    base, tok = load(tiny_dir)
    ids, am, _, video = batch(tok, base)
    model = PaveLlava(base).eval()
    with torch.no_grad():
        plain = model(ids, am, video)
        model.add_patch("audio", patch(base, live=False))
        model.add_patch("exo", patch(base, side_dim=8, live=False))
        patched = model(ids, am, video, sides())
        assert torch.equal(patched, plain)
        model.add_patch("audio", patch(base))  # the same inputs with a live patch do change the logits
        assert not torch.allclose(model(ids, am, video, sides()), plain)


def stored_full_tokens(base, pixels: torch.Tensor) -> torch.Tensor:
    """What the feature store holds for `pixels` [B, F, 3, S, S]: SigLIP hidden_states[vision_feature_layer] (not
    last_hidden_state, which has the post-LayerNorm), every patch of the grid."""
    B, n_frames = pixels.shape[:2]
    hidden = base.model.vision_tower(pixels.flatten(0, 1), output_hidden_states=True).hidden_states
    return hidden[base.config.vision_feature_layer].view(B, n_frames, GRID * GRID, -1)


def test_input_embeddings_from_stored_tokens_equal_hfs_from_pixels(tiny_dir):
    """Layout "one": projector, then HF's pooling, one image_newline per video, scattered at the placeholders:
    exactly what HF's get_video_features + placeholder merge build from the same frames."""
    base, tok = load(tiny_dir)
    ids, _, _, _ = batch(tok, base, frames=(3, 3), newline="one")
    pixels = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        features = base.model.get_video_features(pixels).pooler_output  # layer and select: the config's
        features = features.reshape(len(pixels), -1, features.shape[-1])
        if features.numel() // features.shape[-1] < (ids == base.config.video_token_id).sum():
            # transformers 5.17 (the GPU image) adds each video's image_newline in forward, 5.25 in get_video_features
            newline = base.model.image_newline[None, None, :].expand(len(pixels), 1, -1)
            features = torch.cat((features, newline), dim=1)
        features = features.flatten(0, 1)
        embeds = base.get_input_embeddings()(ids)
        is_video = base.model.get_placeholder_mask(ids, inputs_embeds=embeds, video_features=features)[1]
        hf = embeds.masked_scatter(is_video, features)
        video = VideoBatch(stored_full_tokens(base, pixels), torch.arange(3.0).repeat(2, 1))
        ours = PaveLlava(base, newline="one").embed(ids, video)
    torch.testing.assert_close(ours, hf, atol=1e-6, rtol=1e-6)


def official_grid_order(tokens: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """The official PAVE / LLaVA-NeXT `add_token_per_grid` order, built independently: pooled video tokens
    [F, s*s, D] -> for each frame, for each row, its s tokens then one image_newline -> [F*s*(s+1), D]."""
    n_frames, count, _ = tokens.shape
    s = int(count**0.5)
    out = []
    for f in range(n_frames):
        for row in range(s):
            out += [tokens[f, row * s + col] for col in range(s)] + [newline]
    return torch.stack(out)


def test_grid_layout_is_the_official_token_order(tiny_dir):
    base, tok = load(tiny_dir)
    ids, _, _, _ = batch(tok, base, frames=(3, 2), newline="grid")  # two videos, the second one padded
    video = modeldata.video([3, 2], GRID * GRID, base.config.vision_config.hidden_size)
    with torch.no_grad():
        ours = PaveLlava(base, newline="grid").embed(ids, video)
        expected = []
        for b, n in enumerate((3, 2)):
            pooled = base.model.apply_pooling(base.model.multi_modal_projector(video.features[b, :n]))
            expected.append(official_grid_order(pooled, base.model.image_newline))
    is_video = ids == base.config.video_token_id
    assert int(is_video[0].sum()) == 3 * Q_SIDE * (Q_SIDE + 1)  # 6 tokens per frame for the 2x2 pooled grid
    torch.testing.assert_close(ours[is_video], torch.cat(expected), atol=1e-6, rtol=1e-6)


def test_pooled_store_tokens_feed_the_projector_directly(tiny_dir):
    """`--video-tokens pooled`: stored tokens already pooled before the projector (the older compact layout)."""
    base, tok = load(tiny_dir)
    ids, _, _, video = batch(tok, base, frames=(2, 2), newline="one")  # Q = 4: the 2x2 pooled grid
    with torch.no_grad():
        ours = PaveLlava(base, newline="one").embed(ids, video)
        projected = base.model.multi_modal_projector(video.features)  # [B, F, 4, D]
    is_video = ids == base.config.video_token_id
    expected = [torch.cat([projected[b].flatten(0, 1), base.model.image_newline[None]]) for b in range(2)]
    torch.testing.assert_close(ours[is_video], torch.cat(expected))
    with pytest.raises(ValueError, match="5 video tokens per frame: neither"):
        PaveLlava(base).embed(ids, VideoBatch(torch.zeros(2, 2, 5, 32), torch.zeros(2, 2)))


def test_label_only_loss_equals_full_logits_cross_entropy(tiny_dir):
    base, tok = load(tiny_dir)
    ids, am, labels, video = batch(tok, base, answers=("a dog", "two loud beeps and music"))
    model = PaveLlava(base, {"audio": patch(base)}).eval()
    side = {"audio": sides()["audio"]}
    with torch.no_grad():
        logits = model(ids, am, video, side)
        want = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        got = model.loss(ids, am, video, side, labels)
    assert (labels != IGNORE_INDEX).sum() >= 6
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_batched_logits_equal_per_sample_with_fewer_frames(tiny_dir):
    base, tok = load(tiny_dir)
    frames = (3, 1)
    ids, am, _, video = batch(tok, base, frames=frames)
    audio = [modeldata.side_sample(n, 1, 12, duration=6.0, seed=n) for n in (9, 4)]
    model = PaveLlava(base, {"audio": patch(base)}).eval()
    with torch.no_grad():
        batched = model(ids, am, video, {"audio": SideBatch.pack(audio)})
        for b in range(2):
            n = int(am[b].sum())
            alone = model(ids[b : b + 1, :n], am[b : b + 1, :n], modeldata.subset(video, b),
                          {"audio": SideBatch.pack([audio[b]])})
            torch.testing.assert_close(batched[b, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_patches_compose_by_sum_and_are_removable(tiny_dir):
    base, tok = load(tiny_dir)
    ids, _, _, video = batch(tok, base, newline="one")
    patches = {"audio": patch(base, seed=1), "exo": patch(base, side_dim=8, seed=2)}
    model = PaveLlava(base, patches, newline="one").eval()
    s = sides()
    with torch.no_grad():
        none, audio = model.embed(ids, video), model.embed(ids, video, {"audio": s["audio"]})
        exo, both = model.embed(ids, video, {"exo": s["exo"]}), model.embed(ids, video, s)
        torch.testing.assert_close(both - none, (audio - none) + (exo - none), atol=1e-6, rtol=1e-6)
        # each patch adds exactly its output at its frame's tokens, nothing to the newline or the text
        out = model.patches["audio"](video, s["audio"])
        n_frames = video.mask.sum(1).tolist()
        expected = torch.cat([torch.cat([out[b, :n].flatten(0, 1), torch.zeros(1, out.shape[-1])])
                              for b, n in enumerate(n_frames)])
        is_video = ids == base.config.video_token_id
        torch.testing.assert_close((audio - none)[is_video], expected, atol=1e-6, rtol=1e-6)
        assert torch.equal(audio[~is_video], none[~is_video]) and expected.abs().sum() > 0
        removed = model.remove_patch("exo")
        assert isinstance(removed, PavePatch) and list(model.patches) == ["audio"]
        assert torch.equal(model.embed(ids, video, {"audio": s["audio"]}), audio)
    with pytest.raises(KeyError, match="exo"):
        model.embed(ids, video, s)


def test_lora_wraps_only_llm_projections_and_only_patch_and_lora_train(tiny_dir):
    base, tok = load(tiny_dir)
    ids, am, labels, video = batch(tok, base)
    model = PaveLlava(base, {"audio": patch(base)})
    model.add_lora()
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    n_layers = base.config.text_config.num_hidden_layers
    assert len(wrapped) == 7 * n_layers
    assert all(".language_model." in n and n.endswith("_proj") for n in wrapped)
    assert model.llm.peft_config["default"].r == 64 and model.llm.peft_config["default"].lora_alpha == 16
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if "lora_" in n or n.startswith("patches.")}
    model.train().loss(ids, am, video, {"audio": sides()["audio"]}, labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith("patches.") or "lora_B" in n)  # lora_A gets no gradient while B is still zero
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


LOAD_SCRIPT = textwrap.dedent("""
    import sys, torch
    from peft import PeftModel
    from transformers import LlavaOnevisionForConditionalGeneration
    from model.llava import PaveLlava
    from model.patch import SideBatch, VideoBatch
    base_dir, ckpt, io = sys.argv[1:]
    x = torch.load(io + "/inputs.pt")
    model = PaveLlava.from_pretrained(base_dir, ckpt)
    video = VideoBatch(x["features"], x["times"], x["mask"])
    side = {"audio": SideBatch(x["tokens"], x["t_start"], x["t_end"], x["offsets"])}
    plain = PeftModel.from_pretrained(LlavaOnevisionForConditionalGeneration.from_pretrained(base_dir), ckpt + "/lora")
    with torch.no_grad():
        torch.save({"logits": model(x["ids"], x["am"], video, side),
                    "text_logits": plain(input_ids=x["ids"][:, :12]).logits}, io + "/out.pt")
""")


def test_save_then_load_in_a_fresh_process_gives_identical_logits(tiny_dir, tmp_path):
    base, tok = load(tiny_dir)
    ids, am, _, video = batch(tok, base)
    model = PaveLlava(base, {"audio": patch(base)})
    model.add_lora()
    for name, p in model.named_parameters():  # a trained-looking LoRA (B starts at zero)
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    model.eval()
    side = {"audio": sides()["audio"]}
    with torch.no_grad():
        logits = model(ids, am, video, side)
        text_logits = model.hf(input_ids=ids[:, :12]).logits
        with model.llm.disable_adapter():
            assert not torch.allclose(model.hf(input_ids=ids[:, :12]).logits, text_logits)  # LoRA matters
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt/lora/adapter_model.safetensors").exists()
    assert (tmp_path / "ckpt/patches/audio/model.safetensors").exists()
    a = side["audio"]
    torch.save(dict(ids=ids, am=am, features=video.features, times=video.times, mask=video.mask, tokens=a.tokens,
                    t_start=a.t_start, t_end=a.t_end, offsets=a.offsets), tmp_path / "inputs.pt")
    subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tiny_dir), str(tmp_path / "ckpt"), str(tmp_path)],
                   check=True, cwd=Path(__file__).parents[2])
    out = torch.load(tmp_path / "out.pt")
    assert torch.equal(out["logits"], logits)
    assert torch.equal(out["text_logits"], text_logits)
    # patches are individually loadable: a second patch saved alongside, only the first one loaded back
    model.add_patch("exo", patch(base, side_dim=8, seed=3))
    model.save_pretrained(tmp_path / "ckpt2")
    only_audio = PaveLlava.from_pretrained(tiny_dir, tmp_path / "ckpt2", patches=["audio"])
    assert list(only_audio.patches) == ["audio"]
    with torch.no_grad():
        assert torch.equal(only_audio.embed(ids, video, side), model.embed(ids, video, side))


def test_greedy_generate_matches_a_step_by_step_argmax(tiny_dir):
    base, tok = load(tiny_dir)
    frames = (2, 3)
    ids, am, _, video = batch(tok, base, frames=frames, answers=("", ""), pad_left=True)
    audio = [modeldata.side_sample(n, 1, 12, duration=6.0, seed=n) for n in (9, 4)]
    model = PaveLlava(base, {"audio": patch(base)}).eval()
    new = model.generate(ids, am, video, {"audio": SideBatch.pack(audio)}, max_new_tokens=6, eos_token_id=[])
    assert new.shape == (2, 6)
    for b in range(2):
        seq = ids[b, am[b].bool()][None]
        one = (modeldata.subset(video, b), {"audio": SideBatch.pack([audio[b]])})
        with torch.no_grad():
            for _ in range(6):
                seq = torch.cat([seq, model(seq, torch.ones_like(seq), *one)[:, -1:].argmax(-1)], dim=1)
        assert torch.equal(new[b], seq[0, -6:]), b


@pytest.mark.parametrize("grid", [27, 4, 3])
def test_pooling_matrix_is_hf_apply_pooling(grid):
    """pool_2x2 (one matrix product) equals HF's apply_pooling (F.interpolate bilinear to ceil(grid/2)^2) at the
    SigLIP grid (27) and at tiny even and odd grids, in float32 (to its rounding) and (within bf16 rounding) for bf16
    input."""
    from model.llava import pool_2x2

    x = torch.randn(5, grid * grid, 16)
    side = math.ceil(grid / 2)
    def hf(t):
        image = t.view(5, grid, grid, -1).permute(0, 3, 1, 2)
        return F.interpolate(image, size=[side, side], mode="bilinear").permute(0, 2, 3, 1).reshape(5, -1, 16)
    torch.testing.assert_close(pool_2x2(x, grid), hf(x), atol=1e-5, rtol=1e-5)  # float32 rounding of the weights
    ours = pool_2x2(x.bfloat16(), grid)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), hf(x.bfloat16().float()), atol=1e-2, rtol=1e-2)
