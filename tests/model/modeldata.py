"""Random inputs for the model tests: videos, side channels, chat prompts with video placeholders."""
import torch

from model.llava import IGNORE_INDEX, VideoLayout, expand_video_tokens
from model.patch import PatchConfig, SideBatch, VideoBatch

SMALL = PatchConfig(side_dim=12, query_dim=20, llm_dim=24, d_model=16, num_heads=2, ffn_dim=32, out_hidden=32)


def video(n_frames: list[int], Q: int, dim: int, spacing: float = 2.0, seed: int = 0) -> VideoBatch:
    """Frames at 0, spacing, 2*spacing, ...; samples with fewer frames are padded and masked."""
    g = torch.Generator().manual_seed(seed)
    F = max(n_frames)
    mask = torch.arange(F)[None] < torch.tensor(n_frames)[:, None]
    times = (torch.arange(F, dtype=torch.float32) * spacing).repeat(len(n_frames), 1)
    return VideoBatch(torch.randn(len(n_frames), F, Q, dim, generator=g), times, mask)


def side_sample(n_steps: int, tokens_per_step: int, dim: int, duration: float, seed: int = 0):
    """Steps with random start times and random durations (so end times are NOT sorted with start times)."""
    g = torch.Generator().manual_seed(seed)
    t_start = torch.rand(n_steps, generator=g) * duration
    t_end = t_start + torch.rand(n_steps, generator=g) * 3.0
    return torch.randn(n_steps, tokens_per_step, dim, generator=g), t_start, t_end


def subset(v: VideoBatch, b: int) -> VideoBatch:
    n = int(v.mask[b].sum())
    return VideoBatch(v.features[b : b + 1, :n], v.times[b : b + 1, :n])


def chat_batch(tokenizer, video_token_id: int, n_frames: list[int], Q: int, answers: list[str], pad_left=False,
               layout: VideoLayout = VideoLayout(grid=4)):
    """Tokenized user(<video> question) + assistant(answer) chats, labels on the answer tokens only, padded."""
    rows = []
    for n, answer in zip(n_frames, answers):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "<video>\nwhat sound is there?"}], add_generation_prompt=True
        )["input_ids"]
        prompt = expand_video_tokens(prompt, video_token_id, layout.llm_tokens(n, Q))
        reply = tokenizer(answer + "<|im_end|>")["input_ids"] if answer else []
        rows.append((prompt + reply, [IGNORE_INDEX] * len(prompt) + reply))
    T = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id

    def padded(seq, fill):
        return [fill] * (T - len(seq)) + seq if pad_left else seq + [fill] * (T - len(seq))

    input_ids = torch.tensor([padded(ids, pad) for ids, _ in rows])
    labels = torch.tensor([padded(lab, IGNORE_INDEX) for _, lab in rows])
    attention_mask = torch.tensor([padded([1] * len(ids), 0) for ids, _ in rows])
    return input_ids, attention_mask, labels


def side_batch(lengths: list[int], tokens_per_step: int, dim: int, duration: float, seed: int = 0) -> SideBatch:
    return SideBatch.pack([side_sample(n, tokens_per_step, dim, duration, seed + i) for i, n in enumerate(lengths)])
