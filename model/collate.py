"""Batches for PaveLlava from feature rows: the chat prompt (Qwen2's chat format, which the official PAVE code uses
for training and eval), the <video> placeholder expanded to the video's token count, labels on the tokens that
`loss_tokens` names, padding to the longest sample of the batch (not a fixed length) or, with pack=True, the samples
packed one after another into one sequence with per-sample position ids (no padding: transformers builds the
block-causal mask from the position ids), and the side channels packed without padding."""
import json
from dataclasses import dataclass

import numpy as np
import torch

from model.llava import IGNORE_INDEX, VideoLayout, expand_video_tokens
from model.patch import SideBatch, VideoBatch
from model.varlen import packing_kwargs
from pipelines.annotations import LEGACY_MARKER, VIDEO_MARKER

# The Qwen2-Instruct tokenizer's chat template, which LLaVA-OneVision's tokenizer inherits. For text messages it
# renders the official PAVE prompt: the system line "You are a helpful assistant." and ChatML turns. The Collator
# passes it explicitly: a base saved through its processor carries the processor's template instead (it expects
# structured content and renders our text messages as empty turns).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# "answer": each assistant answer and its end-of-turn tokens; "llava": LLaVA-OneVision's masking, which the official
# PAVE training uses: each whole assistant turn (its "<|im_start|>assistant\n" header too) and, anywhere in the
# conversation, every <|im_start|>, <|im_end|> and newline token
LOSS_TOKENS = ("answer", "llava")


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
    tokenizer: object  # a transformers tokenizer with Qwen2's <|im_start|>, <|im_end|> and a <video> token
    video_token_id: int
    layout: VideoLayout  # the model's: how many LLM tokens a video of stored tokens becomes
    side_names: tuple[str, ...]
    modality_dtypes: dict[str, str]  # stored dtype per modality, "video" included
    compute_dtype: torch.dtype = torch.float32
    for_generation: bool = False  # True: prompt up to the answer, left padding, answers returned as text
    pack: bool = False  # training only: one sequence [1, sum of lengths] with position_ids instead of padding
    loss_tokens: str = "answer"  # training only: one of LOSS_TOKENS

    def __post_init__(self):
        if self.loss_tokens not in LOSS_TOKENS:
            raise ValueError(f"loss_tokens {self.loss_tokens!r}: expected one of {', '.join(LOSS_TOKENS)}")
        # the token ids that "llava" labels wherever they occur: <|im_start|>, <|im_end|> and the newline
        newline = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
        if self.loss_tokens == "llava" and len(newline) != 1:
            raise ValueError(f"loss_tokens 'llava' needs a tokenizer with one newline token; this one makes {newline}")
        self._always_labelled = {*self.tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]), *newline}

    def _messages(self, turns: list) -> list[dict]:
        messages = [{"role": role, "content": text} for role, text in turns]
        first_user = next(m for m in messages if m["role"] == "user")
        text = first_user["content"].replace(LEGACY_MARKER, VIDEO_MARKER)
        first_user["content"] = text if VIDEO_MARKER in text else f"{VIDEO_MARKER}\n{text}"
        return messages

    def _text(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=QWEN2_CHAT_TEMPLATE, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def _ids(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        return self.tokenizer(self._text(messages, generation_prompt), add_special_tokens=False)["input_ids"]

    def prompt(self, turns: list) -> str:
        """The text generation continues: the conversation before its last answer, the assistant's turn opened."""
        return self._text(self._messages(turns)[:-1], generation_prompt=True)

    def _labels(self, messages: list[dict], ids: list[int]) -> list[int]:
        whole_turn = self.loss_tokens == "llava"
        labels = [IGNORE_INDEX] * len(ids)
        for k, message in enumerate(messages):
            if message["role"] == "assistant":
                start = len(self._ids(messages[:k], generation_prompt=not whole_turn))
                end = len(self._ids(messages[: k + 1], generation_prompt=False))
                labels[start:end] = ids[start:end]
        if whole_turn:
            labels = [i if i in self._always_labelled else label for i, label in zip(ids, labels)]
        # nothing before a sample's first token predicts it (in a packed batch, the previous sample's last one would)
        return [IGNORE_INDEX] + labels[1:]

    def encode(self, turns: list, n_video_tokens: int) -> tuple[list[int], list[int]]:
        """Token ids and labels of one conversation; labels are IGNORE_INDEX except on the `loss_tokens` tokens (none
        for generation) and never on the video's tokens."""
        if self.for_generation:
            ids = self.tokenizer(self.prompt(turns), add_special_tokens=False)["input_ids"]
            labels = [IGNORE_INDEX] * len(ids)
        else:
            messages = self._messages(turns)
            ids = self._ids(messages, generation_prompt=False)
            labels = self._labels(messages, ids)
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
