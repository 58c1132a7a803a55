"""Greedy decoding for PaveLlava (its `generate`): batched, with a KV cache sized to the batch, and each video's
prompt prefix prefilled once.

A batch's prompts come left-padded (model/collate.py). Each splits after its last video token into a prefix (system
prompt, user header, the video's tokens) and a suffix (the question and the assistant header). Rows that show the
same video (`video_keys`, e.g. several questions on one video) after the same prefix ids share it: the prefix is
embedded (projector, pooling, patches) and prefilled once, and its keys and values are copied into each of those
rows. Then the suffixes of all rows are prefilled in one forward, and each step decodes one token for every row.
A row's cache slots hold

    [pad | prefix | pad | suffix | new tokens]

with the pads masked and the RoPE positions counting the row's own tokens only, so that every row computes what
it would alone: greedy outputs equal batch 1's (tests/model/test_generate.py), up to the rounding of other kernel
shapes (bf16 on a GPU).

The cache is HF's StaticCache, rows x (longest prefix + longest suffix + max_new_tokens) slots. On a GPU the decode
step (embedding, LLM, lm_head, argmax) is compiled with CUDA graphs (torch.compile "reduce-overhead"): an eager 7B
decode step waits on its kernel launches, not on the GPU (docs/DESIGN.md, Performance notes). A graph has fixed
shapes, so there the cache length is rounded up to a multiple of BUCKET and the cache is kept for the next batch of
the same shape; another shape compiles once more. On a CPU nothing is compiled: there is no launch overhead to save.
"""
import inspect
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, StaticCache

from model.patch import SideBatch, VideoBatch

BUCKET = 512  # slots: compiled decode steps are shaped by (rows, cache length), so lengths are rounded up to this


@dataclass
class Prompts:
    """A batch of prompts split after their videos (`split`)."""

    prefix_ids: torch.Tensor  # [G, Lp] one row per distinct prefix, left-padded
    prefix_mask: torch.Tensor  # [G, Lp] bool
    suffix_ids: torch.Tensor  # [B, Ls] one row per prompt, left-padded
    suffix_mask: torch.Tensor  # [B, Ls] bool
    group: torch.Tensor  # [B] each prompt's prefix row
    first: list[int]  # [G] the first prompt of each prefix: its video and side inputs are the prefix's


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (0 in the padding: any id will do where the mask is off) and the mask."""
    length = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, length - len(row):] = True
    return ids, mask


def split(input_ids: torch.Tensor, attention_mask: torch.Tensor, video_token_id: int, video_keys: list | None) \
        -> Prompts:
    """Each prompt cut just after its last video token; prompts with the same video key and prefix ids share one
    prefix row (without keys, none share)."""
    prefixes, suffixes, group, first, seen = [], [], [], [], {}
    for b in range(len(input_ids)):
        ids = input_ids[b, attention_mask[b].bool()].tolist()
        cut = len(ids) - ids[::-1].index(video_token_id)
        key = (b if video_keys is None else video_keys[b], tuple(ids[:cut]))
        if key not in seen:
            seen[key] = len(first)
            first.append(b)
            prefixes.append(ids[:cut])
        group.append(seen[key])
        suffixes.append(ids[cut:])
    return Prompts(*left_padded(prefixes), *left_padded(suffixes), torch.tensor(group), first)


def select(video: VideoBatch, side: dict[str, SideBatch], rows: list[int]) -> tuple[VideoBatch, dict[str, SideBatch]]:
    """The video and side inputs of `rows` only (side channels stay packed)."""
    if rows == list(range(len(video.features))):  # no copy of a batch's video features when no prompt shares one
        return video, side
    mask = None if video.mask is None else video.mask[rows]
    picked = {}
    for name, s in side.items():
        spans = [torch.arange(int(s.offsets[r]), int(s.offsets[r + 1])) for r in rows]
        steps = torch.cat(spans).to(s.offsets.device)
        lengths = torch.tensor([len(span) for span in spans], device=s.offsets.device)
        picked[name] = SideBatch(s.tokens[steps], s.t_start[steps], s.t_end[steps], F.pad(lengths.cumsum(0), (1, 0)))
    return VideoBatch(video.features[rows], video.times[rows], mask), picked


class Decoder:
    """Greedy decoding with one HF LLaVA-OneVision: the step, compiled or not, and (compiled) the cache that its
    graphs were made for."""

    def __init__(self, hf, compiled: bool):
        self.hf = hf
        self.lm = hf.model.language_model  # LoRA, when present, is injected into it in place
        # the cache argument's name: past_key_values in transformers 5.17 (the GPU image), cache in 5.25
        self.cache_arg = "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"
        self.step = torch.compile(self.eager_step, mode="reduce-overhead", dynamic=False) if compiled else None
        self.kept: tuple[tuple[int, int], StaticCache] | None = None  # ((rows, length), cache)

    def forward(self, embeds, mask, positions, cache) -> torch.Tensor:
        return self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                       **{self.cache_arg: cache}).last_hidden_state

    def eager_step(self, tokens, positions, mask, cache) -> torch.Tensor:
        hidden = self.forward(self.hf.get_input_embeddings()(tokens[:, None]), mask, positions[:, None], cache)
        return self.hf.lm_head(hidden[:, -1]).argmax(-1)

    def cache(self, rows: int, length: int) -> StaticCache:
        if self.step is None:
            return StaticCache(config=self.lm.config, max_cache_len=length)
        shape = (rows, math.ceil(length / BUCKET) * BUCKET)
        if self.kept is not None and self.kept[0] == shape:
            self.kept[1].reset()  # the same tensors: the graphs recorded their addresses
        else:
            self.kept = None  # freed before the next one is allocated
            self.kept = shape, StaticCache(config=self.lm.config, max_cache_len=shape[1])
        return self.kept[1]

    def __call__(self, model, input_ids, attention_mask, video: VideoBatch, side: dict[str, SideBatch],
                 max_new_tokens: int, eos: list[int], pad_id: int, video_keys: list | None) -> torch.Tensor:
        hf = self.hf
        device = hf.lm_head.weight.device
        prompts = split(input_ids.cpu(), attention_mask.cpu(), hf.config.video_token_id, video_keys)
        video, side = select(video, side, prompts.first)
        video, side = video.to(device), {name: s.to(device) for name, s in side.items()}
        group = prompts.group.to(device)
        rows, Lp, Ls = len(group), prompts.prefix_ids.shape[1], prompts.suffix_ids.shape[1]
        cache = self.cache(rows, Lp + Ls + max_new_tokens)

        # every prefix once, into a cache of its own (prompts of one length: no mask, the fastest attention), then
        # copied into the slots of each row that shares it
        prefix_mask = prompts.prefix_mask.to(device)
        embeds = model.embed(prompts.prefix_ids.to(device), video, side)
        prefilled = DynamicCache(config=self.lm.config)
        self.forward(embeds, prefix_mask, (prefix_mask.cumsum(1) - 1).clamp(min=0), prefilled)
        for i, layer in enumerate(prefilled.layers):
            cache.update(layer.keys[group], layer.values[group], i)
        del prefilled, embeds

        # the mask over every slot of the cache; positions count each row's own tokens
        mask = torch.zeros(rows, cache.layers[0].max_cache_len, dtype=torch.bool, device=device)
        mask[:, :Lp] = prefix_mask[group]
        mask[:, Lp:Lp + Ls] = prompts.suffix_mask.to(device)
        positions = mask[:, :Lp + Ls].cumsum(1) - 1
        hidden = self.forward(hf.get_input_embeddings()(prompts.suffix_ids.to(device)), mask, positions[:, Lp:],
                              cache)
        token, position = hf.lm_head(hidden[:, -1]).argmax(-1), positions[:, -1]

        eos = torch.tensor(eos, dtype=torch.long, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        new = []
        for i in range(max_new_tokens):
            token = torch.where(done, pad_id, token)  # after its end, a row is padded (its steps run on, unused)
            new.append(token)
            done |= torch.isin(token, eos)
            if i == max_new_tokens - 1 or bool(done.all()):
                break
            mask[:, Lp + Ls + i] = True
            position = position + 1
            if self.step is None:
                token = self.eager_step(token, position, mask, cache)
            else:
                torch.compiler.cudagraph_mark_step_begin()
                token = self.step(token, position, mask, cache).clone()  # the graph's output buffer is reused
        return torch.stack(new, dim=1)


# a compiled decoder per model (its graphs and cache serve every batch); it holds the HF model, not the key
# (a value that held its key would keep it alive)
_decoders: "weakref.WeakKeyDictionary[torch.nn.Module, Decoder]" = weakref.WeakKeyDictionary()


def greedy(model, input_ids, attention_mask, video: VideoBatch, side: dict[str, SideBatch], max_new_tokens: int,
           eos_token_id=None, pad_token_id=None, video_keys: list | None = None,
           compile: bool | None = None) -> torch.Tensor:
    """PaveLlava.generate's decoding (the module docstring)."""
    config = model.hf.generation_config
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad_id = next(p for p in (pad_token_id, config.pad_token_id, *eos, 0) if p is not None)
    compiled = model.hf.lm_head.weight.is_cuda if compile is None else compile
    decoder = _decoders.get(model) if compiled else None
    if decoder is None:
        decoder = Decoder(model.hf, compiled)
        if compiled:
            _decoders[model] = decoder
    return decoder(model, input_ids, attention_mask, video, side, max_new_tokens, eos, pad_id, video_keys)
