"""`pave import-checkpoint`: a checkpoint in the official PAVE layout, written here from a small re-implementation of
the official module (a B=1 loop; each sample's side steps up-sampled to the frame count when fewer, trilinear with
align_corners; split by index into one chunk per frame, the larger chunks first; V from the K projection) and an
official-style peft adapter on a Qwen2ForCausalLM, converts into our layout; the converted patch and LoRA give the
official outputs, on the side-channel shapes of the released features too."""
import json
import math
import re
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration, Qwen2ForCausalLM

from jobs.cli import main as pave
from model.llava import PaveLlava
from model.patch import PavePatch, SideBatch, VideoBatch
from training.config import load

SIDE_DIM, QUERY_DIM, D, HEADS, FRAMES, STEPS_PER_FRAME, Q = 12, 32, 16, 4, 4, 2, 4


class OfficialLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.q_linear, self.attn.k_linear, self.attn.v_linear = (nn.Linear(D, D) for _ in range(3))
        self.ffn = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2 * D, bias=False), nn.GELU(),
                                 nn.Linear(2 * D, D, bias=False))

    def forward(self, query, chunks):  # query [F, Q, D]; chunks: F tensors [L_k, D], frame k's side tokens
        def heads(x):
            return x.view(*x.shape[:2], HEADS, -1).transpose(1, 2)

        attended = []
        for frame, chunk in zip(query, chunks):  # one frame at a time: chunks differ in length
            q, k = heads(self.attn.q_linear(frame[None])), heads(self.attn.k_linear(chunk[None]))
            v = heads(self.attn.k_linear(chunk[None]))  # as the official forward: V from the K projection
            attended.append(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        query = torch.cat(attended) + query
        return self.ffn(query) + query


def split_list_lengths(total: int, parts: int) -> list[int]:
    """Chunk sizes of `total` steps in `parts` chunks: differing by at most one, the larger ones first."""
    return [total // parts + (k < total % parts) for k in range(parts)]


class OfficialModule(nn.Module):
    """PAVEModuleV5 as the official code builds it for linear side input, no RoPE, no dropout, output norm."""

    def __init__(self, llm_dim: int, layers: int = 2):
        super().__init__()
        self.input_mapping = nn.Linear(SIDE_DIM, D)
        self.query_input_mapping = nn.Linear(QUERY_DIM, D)
        self.cross_attn_layers = nn.ModuleList(OfficialLayer() for _ in range(layers))
        self.output_mapping = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, llm_dim))
        self.output_norm = nn.LayerNorm(llm_dim)

    def forward(self, queries, side):  # one sample: queries [F, Q, QUERY_DIM], side [S, T, SIDE_DIM], T = H * W
        frames, (steps, tokens, _) = len(queries), side.shape
        if steps < frames:  # the feature as (C, T, H, W), up-sampled along T only
            h = int(math.isqrt(tokens))
            grid = side.permute(2, 0, 1).reshape(1, SIDE_DIM, steps, h, tokens // h)
            grid = nn.functional.interpolate(grid, size=(frames, h, tokens // h), mode="trilinear",
                                             align_corners=True)
            side = grid.reshape(SIDE_DIM, frames, tokens).permute(1, 2, 0)
        memory = self.input_mapping(side)
        chunks = [c.flatten(0, 1) for c in memory.split(split_list_lengths(len(memory), frames))]
        x = self.query_input_mapping(queries)
        for layer in self.cross_attn_layers:
            x = layer(x, chunks)
        return self.output_norm(self.output_mapping(x))


@pytest.fixture(scope="module")
def official(tiny_dir, tmp_path_factory):
    """An official-layout release dir for the tiny base: patch weights and a LoRA adapter, all non-trivial."""
    torch.manual_seed(3)
    base = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_dir)
    module = OfficialModule(base.config.text_config.hidden_size).eval()
    for p in module.parameters():  # random everywhere, the zero-init output norm included
        nn.init.normal_(p, std=0.3)
    directory = tmp_path_factory.mktemp("official")
    torch.save({f"base_model.model.model.temporal_aggregator.{k}": v for k, v in module.state_dict().items()},
               directory / "non_lora_trainables.bin")
    llm = Qwen2ForCausalLM(base.config.text_config)
    llm.model.load_state_dict(base.model.language_model.state_dict())
    llm.lm_head.load_state_dict(base.lm_head.state_dict())
    targets = ["model.layers." + name for name, _ in llm.model.layers.named_modules() if "proj" in name]
    peft_llm = get_peft_model(llm, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    for name, p in peft_llm.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.3)
    peft_llm.save_pretrained(directory)
    return directory, module, peft_llm.eval()


def test_the_imported_patch_and_lora_give_the_official_outputs(official, tiny_dir, tmp_path):
    directory, module, peft_llm = official
    out = tmp_path / "imported"
    assert pave(["import-checkpoint", str(directory), "--out", str(out), "--base-model", str(tiny_dir),
                 "--sides", "audio"]) == 0
    run = load(out)
    assert (run.sides, run.model.newline, run.model.lora.r, run.model.patches.layers) == (["audio"], "grid", 4, 2)
    model = PaveLlava.from_pretrained(tiny_dir, out)
    assert model.layout.newline == "grid"

    # 4 frames at 1, 3, 5, 7 s; 2 side steps per frame at its +-0.5 s: the time neighbourhoods are the index chunks
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(1, FRAMES, Q, QUERY_DIM, generator=g)
    side = torch.randn(FRAMES * STEPS_PER_FRAME, 1, SIDE_DIM, generator=g)
    frame_t = torch.arange(FRAMES) * 2.0 + 1.0
    step_t = (frame_t[:, None] + torch.tensor([-0.5, 0.5])).flatten()
    with torch.no_grad():
        expected = module(queries[0], side)
        ours = model.patches["audio"](VideoBatch(queries, frame_t[None]), SideBatch.pack([(side, step_t, step_t)]))
    torch.testing.assert_close(ours[0], expected, atol=1e-5, rtol=1e-5)

    embeds = torch.randn(2, 7, model.hf.config.text_config.hidden_size, generator=g)
    with torch.no_grad():
        official_logits = peft_llm(inputs_embeds=embeds).logits
        hidden = model.hf.model.language_model(inputs_embeds=embeds).last_hidden_state
        torch.testing.assert_close(model.hf.lm_head(hidden), official_logits, atol=1e-5, rtol=1e-5)
        with model.llm.disable_adapter():  # the LoRA is not a no-op: without it the logits differ
            plain = model.hf.lm_head(model.hf.model.language_model(inputs_embeds=embeds).last_hidden_state)
    assert not torch.allclose(plain, official_logits, atol=1e-3)
    assert json.loads((out / "lora" / "adapter_config.json").read_text())["r"] == 4


def test_a_directory_that_is_no_release_gets_one_clear_line(tmp_path, tiny_dir, capsys):
    assert pave(["import-checkpoint", str(tmp_path), "--out", str(tmp_path / "out"), "--base-model", str(tiny_dir),
                 "--sides", "audio"]) == 2
    assert re.search("no non_lora_trainables.bin .is this an official PAVE release", capsys.readouterr().err)


# Side channels as the official release's features have them, beside 32 frames at the official indices of the clip:
# (steps, tokens per step, step times t_start, t_end)
RELEASED = {
    "2 s ImageBind windows of a 60.5 s clip": (59, 1, torch.arange(59.0), torch.arange(59.0) + 2),
    "AVSD's 29 audio steps, up-sampled": (29, 1, torch.arange(29.0), torch.arange(29.0) + 2),
    "LanguageBind at 2 fps for 120 s": (240, 4, torch.arange(240) / 2, torch.arange(240) / 2 + 0.5),
    "32 LLaVA-3D views": (32, 9, None, None),
}


def released_case(name: str, generator) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """(queries [32, Q, QUERY_DIM], frame times [32], side (tokens, t_start, t_end)) of one RELEASED case."""
    steps, tokens, t0, t1 = RELEASED[name]
    duration = 60.5 if t0 is None else float(t1[-1])
    frame_t = torch.linspace(0, duration * 30 - 1, 32).round() / 30  # 30 fps, 32 evenly spread frame indices
    if t0 is None:  # one view per frame, at the frame's time
        t0 = t1 = frame_t
    return (torch.randn(32, Q, QUERY_DIM, generator=generator), frame_t,
            (torch.randn(steps, tokens, SIDE_DIM, generator=generator), t0.double(), t1.double()))


def test_the_official_neighbourhoods_give_the_official_outputs_on_the_released_feature_shapes(official, tiny_dir,
                                                                                             tmp_path):
    directory, module, _ = official
    out = tmp_path / "imported"
    assert pave(["import-checkpoint", str(directory), "--out", str(out), "--base-model", str(tiny_dir),
                 "--sides", "audio"]) == 0
    patch = PavePatch.from_pretrained(out / "patches" / "audio").eval()
    run = load(out)
    assert (patch.config.neighbourhood, patch.config.tie_v_to_k) == ("official", True)
    assert (run.model.patches.neighbourhood, run.model.patches.tie_v_to_k) == ("official", True)
    by_time = PavePatch(replace(patch.config, neighbourhood="time")).eval()
    by_time.load_state_dict(patch.state_dict())

    g = torch.Generator().manual_seed(1)
    cases = [released_case(name, g) for name in RELEASED]
    def batch(*chosen):
        return (VideoBatch(torch.stack([c[0] for c in chosen]), torch.stack([c[1] for c in chosen])),
                SideBatch.pack([c[2] for c in chosen]))

    with torch.no_grad():
        expected = torch.stack([module(queries, side[0]) for queries, _, side in cases])
        ours = torch.cat([patch(*batch(c)) for c in cases])
        timed = torch.cat([by_time(*batch(c)) for c in cases])
        both_audio = patch(*batch(*cases[:2]))  # one batch of 59 and 29 steps: one up-sampled, one not
    torch.testing.assert_close(both_audio, expected[:2], atol=1e-5, rtol=1e-5)
    for k, name in enumerate(RELEASED):
        torch.testing.assert_close(ours[k], expected[k], atol=1e-5, rtol=1e-5, msg=name)
        off = (timed[k] - expected[k]).norm() / expected[k].norm()
        if name == "32 LLaVA-3D views":  # one step per frame: both rules pick the frame's own view
            assert off < 1e-5, off
        else:
            assert off > 0.1, (name, off)

    # a sample with padded frames: chunks over its valid frames only, the padded frames unchanged (zero)
    queries, frame_t, (tokens, t0, t1) = cases[0]
    padded = VideoBatch(torch.cat([queries, queries[:4]])[None], torch.cat([frame_t, frame_t[:4] * 0])[None],
                        torch.arange(36)[None] < 32)
    with torch.no_grad():
        result = patch(padded, SideBatch.pack([(tokens, t0, t1)]))
    torch.testing.assert_close(result[0, :32], expected[0], atol=1e-5, rtol=1e-5)
    assert not result[0, 32:].any()
