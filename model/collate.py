"""Batches for PaveLlava from feature rows: the chat prompt (the tokenizer's own chat template, Qwen2's for
LLaVA-OneVision), the <video> placeholder expanded to the video's token count, labels only on answer tokens, padding
to the longest sample of the batch (not a fixed length) or, with pack=True, the samples packed one after another
into one sequence with per-sample position ids (no padding: transformers builds the block-causal mask from the
position ids), and the side channels packed without padding."""
import json
from dataclasses import dataclass

import numpy as np
import torch

from model.llava import IGNORE_INDEX, VideoLayout, expand_video_tokens
from model.patch import SideBatch, VideoBatch
from model.varlen import packing_kwargs
from pipelines.annotations import LEGACY_MARKER, VIDEO_MARKER


def as_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    """A stored token array as torch; bfloat16 arrives as uint16 bit patterns."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def token_count(batch: dict) -> int:
    """Tokens the LLM processes for a collated batch, padding excluded (a packed batch has none)."""
    mask = batch["attention_mask"]
    return int(batch["input_ids"].numel() if mask is None else mask.sum())


def _rows(batch: dict) -> int:
    return len(batch["sample_id"])


@dataclass
class Collator:
    tokenizer: object  # a transformers tokenizer with a chat template
    video_token_id: int
    layout: VideoLayout  # the model's: how many LLM tokens a video of stored tokens becomes
    side_names: tuple[str, ...]
    modality_dtypes: dict[str, str]  # stored dtype per modality, "video" included
    compute_dtype: torch.dtype = torch.float32
    for_generation: bool = False  # True: prompt up to the answer, left padding, answers returned as text
    pack: bool = False  # training only: one sequence [1, sum of lengths] with position_ids instead of padding

    def _messages(self, turns: list) -> list[dict]:
        messages = [{"role": role, "content": text} for role, text in turns]
        first_user = next(m for m in messages if m["role"] == "user")
        text = first_user["content"].replace(LEGACY_MARKER, VIDEO_MARKER)
        first_user["content"] = text if VIDEO_MARKER in text else f"{VIDEO_MARKER}\n{text}"
        return messages

    def _ids(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, turns: list, n_video_tokens: int) -> tuple[list[int], list[int]]:
        """Token ids and labels of one conversation; labels are IGNORE_INDEX except on assistant turns."""
        messages = self._messages(turns)
        if self.for_generation:
            ids = self._ids(messages[:-1], generation_prompt=True)
            labels = [IGNORE_INDEX] * len(ids)
        else:
            ids = self._ids(messages, generation_prompt=False)
            labels = [IGNORE_INDEX] * len(ids)
            for k, message in enumerate(messages):
                if message["role"] == "assistant":
                    start = len(self._ids(messages[:k], generation_prompt=True))
                    end = len(self._ids(messages[: k + 1], generation_prompt=False))
                    labels[start:end] = ids[start:end]
        at = ids.index(self.video_token_id)
        return (
            expand_video_tokens(ids, self.video_token_id, n_video_tokens),
            labels[:at] + [IGNORE_INDEX] * n_video_tokens + labels[at + 1:],
        )

    def _video(self, batch: dict) -> VideoBatch:
        tokens = [as_torch(t, self.modality_dtypes["video"]) for t in batch["video_tokens"]]
        n_frames = max(len(t) for t in tokens)
        features = torch.zeros(len(tokens), n_frames, *tokens[0].shape[1:], dtype=self.compute_dtype)
        times = torch.zeros(len(tokens), n_frames, dtype=torch.float64)
        mask = torch.zeros(len(tokens), n_frames, dtype=torch.bool)
        for b, (t, ft) in enumerate(zip(tokens, batch["video_t"])):
            features[b, : len(t)] = t.to(self.compute_dtype)
            times[b, : len(t)] = torch.as_tensor(ft, dtype=torch.float64)
            mask[b, : len(t)] = True
        return VideoBatch(features, times, None if mask.all() else mask)

    def _side(self, batch: dict, name: str) -> SideBatch:
        dtype = self.modality_dtypes[name]
        return SideBatch.pack([
            (as_torch(tokens, dtype).to(self.compute_dtype), torch.as_tensor(t0), torch.as_tensor(t1))
            for tokens, t0, t1 in zip(batch[f"{name}_tokens"], batch[f"{name}_t_start"], batch[f"{name}_t_end"])
        ])

    @staticmethod
    def _packed(encoded: list[tuple[list[int], list[int]]]) -> dict:
        """input_ids, labels, position_ids [1, total]: the samples one after another, positions restarting at 0;
        `packing`: their lengths, for the packed attention functions (model.varlen.packing_kwargs)."""
        return {"input_ids": torch.tensor([[i for ids, _ in encoded for i in ids]]),
                "labels": torch.tensor([[label for _, labels in encoded for label in labels]]),
                "position_ids": torch.cat([torch.arange(len(ids)) for ids, _ in encoded])[None],
                "attention_mask": None, "packing": packing_kwargs([len(ids) for ids, _ in encoded])}

    def __call__(self, batch: dict) -> dict:
        video = self._video(batch)
        tokens_per_frame = video.features.shape[2]
        frames = video.mask.sum(1).tolist() if video.mask is not None else [video.features.shape[1]] * _rows(batch)
        encoded = [
            self.encode(json.loads(turns), self.layout.llm_tokens(int(f), tokens_per_frame))
            for turns, f in zip(batch["turns"], frames)
        ]
        if self.pack and not self.for_generation:
            return {**self._packed(encoded), "video": video, "sample_ids": list(batch["sample_id"]),
                    "side": {name: self._side(batch, name) for name in self.side_names}}
        length = max(len(ids) for ids, _ in encoded)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for b, (ids, lab) in enumerate(encoded):
            span = slice(length - len(ids), length) if self.for_generation else slice(0, len(ids))
            input_ids[b, span] = torch.tensor(ids)
            labels[b, span] = torch.tensor(lab)
            attention_mask[b, span] = 1
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "video": video,
            "side": {name: self._side(batch, name) for name in self.side_names},
            "sample_ids": list(batch["sample_id"]),
        }
        if self.for_generation:
            out["answers"] = [json.loads(turns)[-1][1] for turns in batch["turns"]]
        else:
            out["labels"] = labels
        return out
