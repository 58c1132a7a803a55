"""PAVE on transformers' LLaVA-OneVision: frozen base + PAVE patches (one per side channel) + optional peft LoRA.

The video path runs on STORED features, never pixels, and computes exactly what HF's
`LlavaOnevisionModel.get_video_features` computes from pixels (as the official PAVE code does):
    SigLIP layer features [F, 729, 1152] (stored) -> projector -> HF's 2x2 bilinear pooling (apply_pooling) [F, 196, D]
    + sum(patch outputs)  (each patch's queries: the same pooling of the stored pre-projector features)
    -> newline layout -> scattered into the input embeddings at the video placeholder tokens (config.video_token_id).
Newline layouts: "grid" puts one image_newline after each row of each frame (196 + 14 = 210 tokens per frame: the
official PAVE scripts' mm_newline_position=grid, which its checkpoints expect); "one" puts a single image_newline
after the whole video (HF's get_video_features).

A store may instead hold the pooled pre-projector tokens [F, 196, 1152] (`pave materialize --video-tokens pooled`,
3.7x fewer bytes): then the projector runs on pooled tokens. Its GELU does not commute with pooling, so a frozen
pretrained LLM then sees video tokens slightly unlike those it was trained on; the layout is told apart by the
tokens per frame (27x27 vs 14x14 at 384 px) and recorded in the store version's fingerprint.

Only public submodules and methods of the HF model are used (multi_modal_projector, image_newline, language_model,
lm_head, get_input_embeddings); the modelling file is not forked. HF's apply_pooling (a bilinear resize) is computed
as the linear map it is, one matrix product (pool_2x2): the same numbers, without the generic upsample kernel that
cost a quarter of a 0.5B training step on an H200 (BENCHMARKS.md).
"""
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from featurestore import TokenSchema
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


NEWLINES = ("grid", "one")


def patch_grid(video: TokenSchema) -> int:
    """Patches per side of the vision tower that made the stored video tokens: their square root, doubled for
    tokens that were pooled 2x2 before storing (`--video-tokens pooled`)."""
    side = math.isqrt(video.tokens_per_step)
    return 2 * side if video.attrs.get("pool") == "half" else side


@dataclass(frozen=True)
class VideoLayout:
    """How stored main-video tokens become LLM tokens, for a vision tower with `grid` x `grid` patches per frame."""

    grid: int  # 27 for SigLIP-so400m at 384 px / 14
    newline: str = "grid"  # one of NEWLINES

    def __post_init__(self):
        if self.newline not in NEWLINES:
            raise ValueError(f"newline layout {self.newline!r}: expected one of {', '.join(NEWLINES)}")

    @property
    def side(self) -> int:
        """Pooled tokens per side of a frame (HF's 2x2 bilinear pooling: ceil(grid / 2))."""
        return math.ceil(self.grid / 2)

    def is_full(self, tokens_per_frame: int) -> bool:
        """True for the full patch grid, False for pooled tokens; anything else is not this tower's."""
        if tokens_per_frame in (self.grid**2, self.side**2):
            return tokens_per_frame == self.grid**2
        raise ValueError(f"{tokens_per_frame} video tokens per frame: neither this vision tower's full {self.grid}x"
                         f"{self.grid} grid nor its {self.side}x{self.side} pooling (tokens of another encoder?)")

    def llm_tokens(self, num_frames: int, tokens_per_frame: int) -> int:
        """Placeholder tokens a video of `num_frames` stored frames occupies in the prompt."""
        self.is_full(tokens_per_frame)
        if self.newline == "grid":
            return num_frames * self.side * (self.side + 1)
        return num_frames * self.side**2 + 1


@lru_cache(maxsize=8)
def pooling_matrix(grid: int, device: torch.device) -> torch.Tensor:
    """HF LLaVA-OneVision's apply_pooling as a matrix [ceil(grid/2)^2, grid^2] (float32): F.interpolate(mode="bilinear",
    align_corners=False) of a grid x grid map to ceil(grid/2)^2 is linear in the map, so its weights are its output
    for each one-hot input (computed once, in float64)."""
    side = math.ceil(grid / 2)
    one_hot = torch.eye(grid * grid, dtype=torch.float64).view(grid * grid, 1, grid, grid)
    weights = F.interpolate(one_hot, size=[side, side], mode="bilinear").view(grid * grid, side * side)
    return weights.T.contiguous().to(device=device, dtype=torch.float32)


def pool_2x2(features: torch.Tensor, grid: int) -> torch.Tensor:
    """HF's apply_pooling of [N, grid^2, C] tokens -> [N, ceil(grid/2)^2, C], as one float32 matrix product (autocast
    off; HF's interpolate runs in float32 under autocast too). Result in float32 under autocast, else in the input's
    dtype, as apply_pooling's."""
    with torch.autocast(features.device.type, enabled=False):
        pooled = torch.matmul(pooling_matrix(grid, features.device), features.float())
    return pooled if torch.is_autocast_enabled(features.device.type) else pooled.to(features.dtype)


def expand_video_tokens(input_ids: list[int], video_token_id: int, count: int) -> list[int]:
    """Replace the single <video> placeholder of a tokenized prompt by `count` copies."""
    i = input_ids.index(video_token_id)
    return input_ids[:i] + [video_token_id] * count + input_ids[i + 1:]


class PaveLlava(nn.Module):
    """Frozen LLaVA-OneVision + named PAVE patches (outputs summed) + optional LoRA on the LLM."""

    def __init__(self, base: LlavaOnevisionForConditionalGeneration, patches: Mapping[str, PavePatch] | None = None,
                 newline: str = "grid"):
        super().__init__()
        base.requires_grad_(False)
        self.llm: LlavaOnevisionForConditionalGeneration | PeftModel = base
        self.patches = nn.ModuleDict(patches or {})
        vision = base.config.vision_config
        self.layout = VideoLayout(vision.image_size // vision.patch_size, newline)

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

    def video_embeddings(self, video: VideoBatch, side: Mapping[str, SideBatch], dtype: torch.dtype) -> torch.Tensor:
        """The LLM tokens of a batch's videos, in placeholder order: [total tokens, D] (padded frames dropped)."""
        hf = self.hf
        B, n_frames, Q, _ = video.features.shape
        features = video.features.flatten(0, 1)  # [B*F, Q, Dv]
        tokens = hf.model.multi_modal_projector(features.to(dtype))
        if self.layout.is_full(Q):  # HF's order: projector, then pooling; the patch queries are pooled alike
            # (autocast runs the bilinear interpolation in float32: back to the embeddings' dtype)
            grid = self.layout.grid
            tokens, features = pool_2x2(tokens, grid).to(dtype), pool_2x2(features, grid)
        tokens = tokens.view(B, n_frames, -1, tokens.shape[-1])  # [B, F, P, D]
        queries = VideoBatch(features.view(B, n_frames, *features.shape[1:]), video.times, video.mask)
        for name, batch in side.items():
            tokens = tokens + self.patches[name](queries, batch).to(tokens.dtype)
        D, s = tokens.shape[-1], self.layout.side
        newline = hf.model.image_newline.to(tokens.dtype)
        frames = torch.ones(B, n_frames, dtype=torch.bool, device=tokens.device) if video.mask is None else (
            video.mask.bool())
        if self.layout.newline == "grid":  # a newline after each row of each frame
            rows = torch.cat([tokens.view(B, n_frames, s, s, D), newline.expand(B, n_frames, s, 1, D)], dim=3)
            return rows[frames].reshape(-1, D)
        per_video = [torch.cat([tokens[b][frames[b]].reshape(-1, D), newline[None]]) for b in range(B)]
        return torch.cat(per_video)  # one newline after each video

    def embed(self, input_ids: torch.Tensor, video: VideoBatch, side: Mapping[str, SideBatch] | None = None) -> torch.Tensor:
        """Input embeddings [B, T, D] with the (patched) video tokens at the video placeholder positions."""
        side = side or {}
        if unknown := set(side) - set(self.patches):
            raise KeyError(f"side inputs without a patch: {sorted(unknown)}")
        embeds = self.hf.get_input_embeddings()(input_ids)
        tokens = self.video_embeddings(video, side, embeds.dtype)
        is_video = input_ids == self.hf.config.video_token_id
        if int(is_video.sum()) != tokens.shape[0]:
            raise ValueError(f"{int(is_video.sum())} video placeholder tokens for {tokens.shape[0]} video tokens")
        return embeds.masked_scatter(is_video[..., None], tokens)

    def hidden_states(self, input_ids, attention_mask, video, side=None, position_ids=None, **packing) -> torch.Tensor:
        """Last hidden states; packed samples (one row, attention_mask None) are told apart by `packing`
        (model.varlen.packing_kwargs: their lengths, for the attention functions of model.varlen) or, for
        FlexAttention and SDPA's own mask, by `position_ids` restarting at 0 (transformers builds a block-causal
        mask from them)."""
        embeds = self.embed(input_ids, video, side)
        # no KV cache in training: a checkpointed layer that recomputes would append its keys to it a second time
        return self.hf.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                            position_ids=position_ids, use_cache=False, **packing).last_hidden_state

    def forward(self, input_ids, attention_mask, video: VideoBatch, side: Mapping[str, SideBatch] | None = None):
        """Full logits [B, T, vocab] (eval / tests; training uses `loss`)."""
        return self.hf.lm_head(self.hidden_states(input_ids, attention_mask, video, side))

    def loss(self, input_ids, attention_mask, video, side, labels, position_ids=None, **packing) -> torch.Tensor:
        """Mean next-token cross-entropy over label positions (labels == IGNORE_INDEX elsewhere; side may be None).
        Only the hidden states that predict a label go through lm_head: full-vocabulary logits at every position
        would dominate memory (docs/DESIGN.md: the first lever toward MFU). Packed samples: a sample's first token is a
        prompt token (IGNORE_INDEX), so no position predicts across a sample boundary."""
        hidden = self.hidden_states(input_ids, attention_mask, video, side, position_ids, **packing)[:, :-1]
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.hf.lm_head(hidden[keep]).float()
        return F.cross_entropy(logits, targets[keep])

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, video, side=None, max_new_tokens: int = 32, eos_token_id=None,
                 pad_token_id=None, video_keys: list | None = None, compile: bool | None = None) -> torch.Tensor:
        """Greedy decoding of left-padded prompts, batched with a KV cache (model/generation.py). Returns the new
        tokens [B, <= max_new_tokens], pad_token_id after a row's end. eos_token_id: an id or a list (default: the
        generation config's; [] runs every row to max_new_tokens). video_keys: a key per row naming its video (and
        side inputs): rows with the same key and prompt prefix prefill that prefix once. Inputs may be on the CPU:
        what is used moves to the model's device. compile: the decode step compiled into CUDA graphs (None: on a
        GPU)."""
        from model.generation import greedy

        return greedy(self, input_ids, attention_mask, video, side or {}, max_new_tokens, eos_token_id, pad_token_id,
                      video_keys, compile)

    def save_pretrained(self, directory) -> None:
        """directory/lora/ (peft adapter, when LoRA is on) + directory/patches/<name>/{config.json,model.safetensors}."""
        directory = Path(directory)
        if isinstance(self.llm, PeftModel):
            self.llm.save_pretrained(directory / "lora")
        for name, patch in self.patches.items():
            patch.save_pretrained(directory / "patches" / name)
        (directory / "pave.json").write_text(json.dumps({"patches": list(self.patches),
                                                         "newline": self.layout.newline}, indent=2))

    @classmethod
    def from_pretrained(cls, base_dir, checkpoint_dir=None, dtype=None, trainable: bool = False,
                        patches: list[str] | None = None, newline: str = "grid") -> "PaveLlava":
        """Rebuild from a local base model dir (+ a checkpoint written by `save_pretrained`: its newline layout
        wins over `newline`; `patches` picks which of its patches to load, default all). trainable=False: eval
        mode, everything frozen."""
        base = LlavaOnevisionForConditionalGeneration.from_pretrained(base_dir, dtype=dtype)
        saved = json.loads((Path(checkpoint_dir) / "pave.json").read_text()) if checkpoint_dir is not None else {}
        # a checkpoint saved before the layout was recorded was trained with one newline per video
        model = cls(base, newline=saved.get("newline", "one") if saved else newline)
        if checkpoint_dir is not None:
            checkpoint_dir = Path(checkpoint_dir)
            for name in saved["patches"] if patches is None else patches:
                model.add_patch(name, PavePatch.from_pretrained(checkpoint_dir / "patches" / name, dtype=dtype))
            if (checkpoint_dir / "lora").exists():
                model.llm = PeftModel.from_pretrained(base, checkpoint_dir / "lora", is_trainable=trainable)
        model.patches.requires_grad_(trainable)
        return model.train(trainable)
