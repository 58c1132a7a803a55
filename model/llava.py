"""PAVE on transformers' LLaVA-OneVision: frozen base + PAVE patches (one per side channel) + optional peft LoRA.

The video path runs on STORED features, never pixels. HF's LLaVA-OneVision computes
    SigLIP(frames) [F, 729, 1152] -> projector -> 2x2 bilinear pool [F, 196, D] -> flatten + one image_newline
whereas we pool BEFORE the projector: the feature store keeps the pooled pre-projector tokens [F, 196, 1152]
(3.7x fewer tokens than the 729 per frame HF would need to re-project), and here
    projector(features) + sum(patch outputs) -> flatten over frames -> + image_newline (one per video, as HF)
is scattered into the input embeddings at the video placeholder tokens (config.video_token_id). The projector's
first Linear commutes with the pooling but its GELU does not, so the video tokens differ slightly from HF's; the
queries of the reference PAVE patch are the same pooled pre-projector tokens, and LoRA trains on top of them.

Only public submodules of the HF model are used (multi_modal_projector, image_newline, language_model, lm_head,
get_input_embeddings); the modelling file is not forked.
"""
import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from model.patch import PavePatch, SideBatch, VideoBatch

IGNORE_INDEX = -100
# every *_proj Linear of the LLM (q/k/v/o, gate/up/down); the vision tower, projector and patches stay unwrapped
LLM_PROJ_REGEX = r".*language_model\..*_proj"


def lora_config(r: int = 64, alpha: int = 16, dropout: float = 0.05, target_modules: str = LLM_PROJ_REGEX) -> LoraConfig:
    """The reference recipe: LoRA r=64, alpha=16, dropout 0.05 on every projection of the LLM."""
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)


def reference_config(preset: str) -> LlavaOnevisionConfig:
    """LLaVA-OneVision-Qwen2 0.5B / 7B shapes (SigLIP-so400m + Qwen2), for parameter counts without weights."""
    text = {
        "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
        "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    }[preset]
    return LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", max_position_embeddings=32768, **text),
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def video_token_count(num_frames: int, tokens_per_frame: int) -> int:
    """Placeholder tokens a video occupies in the prompt: every frame's tokens plus one image_newline."""
    return num_frames * tokens_per_frame + 1


def expand_video_tokens(input_ids: list[int], video_token_id: int, count: int) -> list[int]:
    """Replace the single <video> placeholder of a tokenized prompt by `count` copies."""
    i = input_ids.index(video_token_id)
    return input_ids[:i] + [video_token_id] * count + input_ids[i + 1:]


class PaveLlava(nn.Module):
    """Frozen LLaVA-OneVision + named PAVE patches (outputs summed) + optional LoRA on the LLM."""

    def __init__(self, base: LlavaOnevisionForConditionalGeneration, patches: Mapping[str, PavePatch] | None = None):
        super().__init__()
        base.requires_grad_(False)
        self.llm: LlavaOnevisionForConditionalGeneration | PeftModel = base
        self.patches = nn.ModuleDict(patches or {})

    @property
    def hf(self) -> LlavaOnevisionForConditionalGeneration:
        """The HF model (LoRA layers, when present, are injected into it in place)."""
        return self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm

    def add_patch(self, name: str, patch: PavePatch) -> None:
        self.patches[name] = patch

    def remove_patch(self, name: str) -> PavePatch:
        return self.patches.pop(name)

    def add_lora(self, config: LoraConfig | None = None) -> None:
        self.llm = get_peft_model(self.llm, config or lora_config())

    def embed(self, input_ids: torch.Tensor, video: VideoBatch, side: Mapping[str, SideBatch] | None = None) -> torch.Tensor:
        """Input embeddings [B, T, D] with the (patched) video tokens at the video placeholder positions."""
        hf = self.hf
        side = side or {}
        if unknown := set(side) - set(self.patches):
            raise KeyError(f"side inputs without a patch: {sorted(unknown)}")
        embeds = hf.get_input_embeddings()(input_ids)
        tokens = hf.model.multi_modal_projector(video.features.to(embeds.dtype))  # [B, F, Q, D]
        for name, batch in side.items():
            tokens = tokens + self.patches[name](video, batch).to(tokens.dtype)
        B, n_frames, Q, D = tokens.shape
        newline = hf.model.image_newline.to(tokens.dtype).expand(B, 1, D)
        tokens = torch.cat([tokens.flatten(1, 2), newline], dim=1)  # [B, F*Q + 1, D]
        if video.mask is not None:  # drop padded frames, keep the newline
            keep = torch.cat([video.mask.bool().repeat_interleave(Q, dim=1), video.mask.new_ones(B, 1, dtype=torch.bool)], 1)
            tokens = tokens[keep]
        tokens = tokens.reshape(-1, D)
        is_video = input_ids == hf.config.video_token_id
        if int(is_video.sum()) != tokens.shape[0]:
            raise ValueError(f"{int(is_video.sum())} video placeholder tokens for {tokens.shape[0]} video tokens")
        return embeds.masked_scatter(is_video[..., None], tokens)

    def hidden_states(self, input_ids, attention_mask, video, side=None) -> torch.Tensor:
        embeds = self.embed(input_ids, video, side)
        return self.hf.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids, attention_mask, video: VideoBatch, side: Mapping[str, SideBatch] | None = None):
        """Full logits [B, T, vocab] (eval / tests; training uses `loss`)."""
        return self.hf.lm_head(self.hidden_states(input_ids, attention_mask, video, side))

    def loss(self, input_ids, attention_mask, video, side, labels) -> torch.Tensor:
        """Mean next-token cross-entropy over label positions (labels == IGNORE_INDEX elsewhere; side may be None).
        Only the hidden states that predict a label go through lm_head: full-vocabulary logits at every position
        would dominate memory (DESIGN: the first lever toward MFU)."""
        hidden = self.hidden_states(input_ids, attention_mask, video, side)[:, :-1]
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.hf.lm_head(hidden[keep]).float()
        return F.cross_entropy(logits, targets[keep])

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, video, side=None, max_new_tokens: int = 32, **kwargs) -> torch.Tensor:
        """Greedy decoding from the patched video embeddings (left-pad batched prompts). Returns the new tokens
        [B, <= max_new_tokens]; extra kwargs go to HF `generate` (e.g. eos_token_id)."""
        embeds = self.embed(input_ids, video, side)
        return self.hf.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False, **kwargs
        )

    def save_pretrained(self, directory) -> None:
        """directory/lora/ (peft adapter, when LoRA is on) + directory/patches/<name>/{config.json,model.safetensors}."""
        directory = Path(directory)
        if isinstance(self.llm, PeftModel):
            self.llm.save_pretrained(directory / "lora")
        for name, patch in self.patches.items():
            patch.save_pretrained(directory / "patches" / name)
        (directory / "pave.json").write_text(json.dumps({"patches": list(self.patches)}, indent=2))

    @classmethod
    def from_pretrained(cls, base_dir, checkpoint_dir=None, dtype=None, trainable: bool = False,
                        patches: list[str] | None = None) -> "PaveLlava":
        """Rebuild from a local base model dir (+ a checkpoint written by `save_pretrained`; `patches` picks which
        of its patches to load, default all). trainable=False: eval mode, everything frozen."""
        base = LlavaOnevisionForConditionalGeneration.from_pretrained(base_dir, dtype=dtype)
        model = cls(base)
        if checkpoint_dir is not None:
            checkpoint_dir = Path(checkpoint_dir)
            saved = json.loads((checkpoint_dir / "pave.json").read_text())["patches"]
            for name in saved if patches is None else patches:
                model.add_patch(name, PavePatch.from_pretrained(checkpoint_dir / "patches" / name, dtype=dtype))
            if (checkpoint_dir / "lora").exists():
                model.llm = PeftModel.from_pretrained(base, checkpoint_dir / "lora", is_trainable=trainable)
        model.patches.requires_grad_(trainable)
        return model.train(trainable)
