"""PaveLlava.generate (model/generation.py) on the tiny LLaVA-OneVision with an audio patch and LoRA: prompts of
different lengths batched with left padding, several questions on one video sharing its prefix, give batch 1's
greedy tokens, token by token, and HF generate's on the same embeddings; the batch is collated as `pave eval`
collates it (model/collate.py, from rows as the feature dataset gives them)."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

from model.collate import Collator
from model.llava import PaveLlava, lora_config
from model.patch import PatchConfig, PavePatch

AUDIO_DIM = 12
PAD = 0  # the tiny tokenizer's <|endoftext|>: a padded row is told apart by it after its end token
QUESTIONS = ["<video>\nwhat sound is there?",
             "<video>\nis there a dog or a cat on the left before the loud beep at the end of the video?",
             "<video>\nhow many?",
             "<video>\nwhich object is moving in the first seconds, the red car or the blue bird?"]
VIDEOS, FRAMES = ["v1", "v2", "v1", "v3"], {"v1": 3, "v2": 2, "v3": 1}  # two questions on v1


@pytest.fixture(scope="module")
def model(tiny_dir):
    """An audio patch with a live output and a LoRA whose B is not zero, so that both change what is generated."""
    base = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_dir)
    torch.manual_seed(0)
    config = PatchConfig(side_dim=AUDIO_DIM, query_dim=base.config.vision_config.hidden_size, d_model=16,
                         llm_dim=base.config.text_config.hidden_size, num_heads=2, ffn_dim=32, out_hidden=32)
    patch = PavePatch(config)
    torch.nn.init.normal_(patch.out[-1].weight)
    torch.nn.init.normal_(patch.out[-1].bias)
    pave = PaveLlava(base, {"audio": patch})
    pave.add_lora(lora_config(r=4))
    for name, p in pave.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    return pave.eval(), AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def batch(model) -> dict:
    """Feature-dataset rows (pipelines/training_data.py) of the four questions: each video's own random tokens,
    whichever question asks it."""
    vision = model[0].hf.config.vision_config
    grid, dim = vision.image_size // vision.patch_size, vision.hidden_size
    out = {key: [] for key in ("sample_id", "video_id", "turns", "video_tokens", "video_t", "audio_tokens",
                               "audio_t_start", "audio_t_end")}
    for k, (video, question) in enumerate(zip(VIDEOS, QUESTIONS)):
        rng = np.random.default_rng(int(video[1:]))
        n, steps = FRAMES[video], 3 + int(video[1:])
        out["sample_id"].append(f"s{k}")
        out["video_id"].append(video)
        out["turns"].append(json.dumps([["user", question], ["assistant", "yes"]]))
        out["video_tokens"].append(rng.normal(size=(n, grid * grid, dim)).astype(np.float32))
        out["video_t"].append(np.arange(n, dtype=np.float64))
        out["audio_tokens"].append(rng.normal(size=(steps, 1, AUDIO_DIM)).astype(np.float32))
        out["audio_t_start"].append(np.arange(steps, dtype=np.float64) * n / steps)
        out["audio_t_end"].append(out["audio_t_start"][-1] + 1.0)
    return out


def collate(model, tokenizer, batch: dict) -> dict:
    return Collator(tokenizer, model.hf.config.video_token_id, model.layout, ("audio",),
                    {"video": "float32", "audio": "float32"}, for_generation=True)(batch)


def generate(model, tokenizer, batch: dict, shared: bool, **kwargs) -> torch.Tensor:
    c = collate(model, tokenizer, batch)
    return model.generate(c["input_ids"], c["attention_mask"], c["video"], c["side"], pad_token_id=PAD,
                          video_keys=list(batch["video_id"]) if shared else None, **kwargs)


def one_by_one(model, tokenizer, batch: dict, **kwargs) -> list[list[int]]:
    return [generate(model, tokenizer, {k: v[i:i + 1] for k, v in batch.items()}, False, **kwargs)[0].tolist()
            for i in range(len(batch["sample_id"]))]


@pytest.mark.parametrize("shared", [True, False])
def test_batch_of_4_left_padded_generates_batch_1s_tokens(model, batch, shared):
    """No end token: every row runs 8 steps, so a wrong position, mask or cache slot anywhere shows."""
    model, tokenizer = model
    c = collate(model, tokenizer, batch)
    assert len(set(c["attention_mask"].sum(1).tolist())) == 4  # four prompt lengths: left padding
    alone = one_by_one(model, tokenizer, batch, max_new_tokens=8, eos_token_id=[])
    together = generate(model, tokenizer, batch, shared, max_new_tokens=8, eos_token_id=[])
    assert together.tolist() == alone
    assert len({tuple(t) for t in alone}) == 4  # the answers depend on the prompt: the comparison means something


def test_rows_on_one_video_prefill_its_prefix_once(model, batch):
    """The projector sees each video's frames once: v1's prefix serves both of its questions."""
    model, tokenizer = model
    frames_seen = []
    hook = model.hf.model.multi_modal_projector.register_forward_hook(
        lambda module, args, out: frames_seen.append(args[0].shape[0]))
    try:
        generate(model, tokenizer, batch, True, max_new_tokens=2, eos_token_id=[])
        generate(model, tokenizer, batch, False, max_new_tokens=2, eos_token_id=[])
    finally:
        hook.remove()
    max_frames = max(FRAMES.values())
    assert frames_seen == [3 * max_frames, 4 * max_frames]  # [videos x padded frames]: v1, v2, v3 / all four rows


def test_rows_end_at_their_end_tokens_and_equal_hf_generate(model, batch):
    """With end tokens, a row that ends is padded after it and the batch stops when every row has ended: as HF
    generate does, from the same input embeddings, one prompt at a time."""
    model, tokenizer = model
    free = generate(model, tokenizer, batch, True, max_new_tokens=8, eos_token_id=[]).tolist()
    # each answer's first token that it has not given before ends it (or an earlier one, another row's end token)
    eos = sorted({next(t for k, t in enumerate(row) if k and t not in row[:k]) for row in free})
    ours = generate(model, tokenizer, batch, True, max_new_tokens=8, eos_token_id=eos)
    ends = [next(k for k, t in enumerate(row) if t in eos) for row in free]
    assert ours.shape[1] == max(ends) + 1 < 8
    assert ours.tolist() == [row[:end + 1] + [PAD] * (ours.shape[1] - end - 1) for row, end in zip(free, ends)]
    hf = []
    for i in range(4):
        c = collate(model, tokenizer, {k: v[i:i + 1] for k, v in batch.items()})
        with torch.no_grad():
            embeds = model.embed(c["input_ids"], c["video"], c["side"])
            hf.append(model.hf.generate(inputs_embeds=embeds, attention_mask=c["attention_mask"], max_new_tokens=8,
                                        do_sample=False, eos_token_id=eos, pad_token_id=PAD)[0].tolist())
    assert ours.tolist() == [row + [PAD] * (ours.shape[1] - len(row)) for row in hf]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the decode step compiles into CUDA graphs on GPUs")
def test_compiled_decode_on_a_gpu_generates_the_eager_tokens(model, batch):
    """float32 on the GPU: the compiled step and its kept cache (reset between batches of one shape, replaced for a
    new shape) give the eager batch-1 tokens."""
    model, tokenizer = model
    model.cuda()
    try:
        alone = one_by_one(model, tokenizer, batch, max_new_tokens=8, eos_token_id=[], compile=False)
        for _ in range(2):
            assert generate(model, tokenizer, batch, True, max_new_tokens=8, eos_token_id=[]).tolist() == alone
        halves = [{k: v[i:i + 2] for k, v in batch.items()} for i in (0, 2)]
        assert sum((generate(model, tokenizer, h, True, max_new_tokens=8, eos_token_id=[]).tolist()
                    for h in halves), []) == alone
    finally:
        model.cpu()
