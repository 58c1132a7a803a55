"""A tiny LLaVA-OneVision (SigLIP hidden 32, Qwen2 hidden 64) with a locally trained tokenizer, for tests and demos
that must run offline on CPU. The pair saves with save_pretrained, so `from_pretrained(dir)` works like a real
checkpoint, and `LlavaOnevisionForConditionalGeneration.from_pretrained(dir).model.vision_tower` is a plain
SiglipVisionModel for feature extraction."""
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, PreTrainedTokenizerFast

from model.collate import QWEN2_CHAT_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
DEFAULT_WORDS = (
    "system user assistant You are a helpful assistant . , ? ! yes no what which when where how many is are was the "
    "a an of in on at to and or video audio sound sounds hear see there left right up down before after first last "
    "start end beginning middle dog cat car bird music speech silence beep loud quiet red green blue black white "
    "zero one two three four five six seven eight nine ten seconds object camera view scene moving static"
).split()


def build_tiny_tokenizer(words=DEFAULT_WORDS, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE (like Qwen2's, so any text round-trips) trained on `words`, with Qwen2's special tokens and
    chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([" " + w for w in words] * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<image>", "<video>"], chat_template=QWEN2_CHAT_TEMPLATE,
    )


def tiny_config(tokenizer, vision_hidden: int = 32, text_hidden: int = 64, num_layers: int = 2,
                image_size: int = 32, patch_size: int = 8) -> LlavaOnevisionConfig:
    """image_size / patch_size = a 4x4 patch grid by default, i.e. 2x2 = 4 tokens per frame after 2x2 pooling."""
    return LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
            num_hidden_layers=num_layers, num_attention_heads=2, image_size=image_size, patch_size=patch_size,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2", hidden_size=text_hidden, intermediate_size=2 * text_hidden,
            num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
            max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[image_size, image_size]],
    )


def build_tiny_llava_onevision(save_dir=None, words=DEFAULT_WORDS, vocab_size: int = 512, seed: int = 0, **dims):
    """(model, tokenizer) with random weights from `seed`; `dims` go to `tiny_config`. With save_dir, both are
    saved there so that from_pretrained(save_dir) loads them offline."""
    tokenizer = build_tiny_tokenizer(words, vocab_size)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(tiny_config(tokenizer, **dims)).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if save_dir is not None:
        model.save_pretrained(Path(save_dir))
        tokenizer.save_pretrained(Path(save_dir))
    return model, tokenizer


def save_tiny_base(base_dir, texts, seed: int = 0, video_dim: int | None = None, grid: int | None = None) -> Path:
    """A tiny random LLaVA-OneVision whose tokenizer knows the words of `texts`, whose projector reads
    `video_dim`-wide tokens (default: its own vision tower's) and whose tower has `grid` x `grid` patches per frame
    (default 4), saved in base_dir; kept when it exists there, so eval and resumed runs load the same one. Returns the
    resolved directory."""
    base_dir = Path(base_dir)
    if not (base_dir / "config.json").exists():
        words = sorted(set(DEFAULT_WORDS) | {w for text in texts for w in text.split()})
        dims = {} if video_dim is None else {"vision_hidden": video_dim}
        if grid is not None:
            dims["image_size"] = grid * 8  # tiny_config's patch size
        build_tiny_llava_onevision(base_dir, words=words, seed=seed, **dims)
    return base_dir.resolve()
