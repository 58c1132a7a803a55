"""`pave import-checkpoint`: a checkpoint in the official PAVE layout, written here from a small re-implementation of
the official module (index chunks, a B=1 loop, V from the K projection) and an official-style peft adapter on a
Qwen2ForCausalLM, converts into our layout; the converted patch and LoRA give the official outputs."""
import json
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration, Qwen2ForCausalLM

from jobs.cli import main as pave
from model.llava import PaveLlava
from model.patch import SideBatch, VideoBatch
from training.config import load

SIDE_DIM, QUERY_DIM, D, HEADS, FRAMES, STEPS_PER_FRAME, Q = 12, 32, 16, 4, 4, 2, 4


class OfficialLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.q_linear, self.attn.k_linear, self.attn.v_linear = (nn.Linear(D, D) for _ in range(3))
        self.ffn = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2 * D, bias=False), nn.GELU(),
                                 nn.Linear(2 * D, D, bias=False))

    def forward(self, query, memory):  # query [F, Q, D]; memory [F, L, D]: each frame's chunk
        def heads(x):
            return x.view(*x.shape[:2], HEADS, -1).transpose(1, 2)

        q, k = heads(self.attn.q_linear(query)), heads(self.attn.k_linear(memory))
        v = heads(self.attn.k_linear(memory))  # as the official forward: V from the K projection
        attended = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        query = attended + query
        return self.ffn(query) + query


class OfficialModule(nn.Module):
    """PAVEModuleV5 as the official code builds it for linear side input, no RoPE, no dropout, output norm."""

    def __init__(self, llm_dim: int, layers: int = 2):
        super().__init__()
        self.input_mapping = nn.Linear(SIDE_DIM, D)
        self.query_input_mapping = nn.Linear(QUERY_DIM, D)
        self.cross_attn_layers = nn.ModuleList(OfficialLayer() for _ in range(layers))
        self.output_mapping = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, llm_dim))
        self.output_norm = nn.LayerNorm(llm_dim)

    def forward(self, queries, side):  # one sample: queries [F, Q, QUERY_DIM], side [S, T, SIDE_DIM], S % F == 0
        x = self.query_input_mapping(queries)
        memory = self.input_mapping(side).reshape(len(queries), -1, D)  # equal index chunks, one per frame
        for layer in self.cross_attn_layers:
            x = layer(x, memory)
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
                 "--side", "audio"]) == 0
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
                 "--side", "audio"]) == 2
    assert re.search("no non_lora_trainables.bin .is this an official PAVE release", capsys.readouterr().err)
