"""The trained model of a run: the frozen base + one fresh patch per side channel + LoRA, as the module that DDP or
FSDP wraps (TrainingLoss); how much of it recomputes activations and which parts are compiled; batches moved to its
device."""
import logging
import math
from functools import partial

import torch

from model.llava import PaveLlava, lora_config
from model.patch import PatchConfig, PavePatch
from training.config import ConfigError, RunConfig

log = logging.getLogger(__name__)
# Activation memory of one decoder layer per token without checkpointing, in units of (hidden + intermediate) bf16
# elements' bytes: 16.5 fits the 7B anchor (../shared/anchors/llm_lora_levers.py, LoRA r64 + dropout on every
# projection: 77 GiB at 6,332 tokens, 15.5 GiB of it weights); rounded up for the patches' and embeddings' share.
ACTIVATION_BYTES_PER_UNIT = 18
MEMORY_HEADROOM = 0.85  # of the free memory: allocator fragmentation, logits, the collective buffers


def patch_config(cfg: RunConfig, side_dim: int, query_dim: int, llm_dim: int) -> PatchConfig:
    d = cfg.model.patches.d_model
    return PatchConfig(side_dim=side_dim, query_dim=query_dim, llm_dim=llm_dim, d_model=d,
                       num_layers=cfg.model.patches.layers, ffn_dim=2 * d, out_hidden=2 * d)


def build_model(cfg: RunConfig, dims: dict[str, int], dtype: torch.dtype, base=None) -> PaveLlava:
    """Frozen base in `dtype` + one fresh patch per side channel (zero-init: a no-op at step 0) + fresh LoRA.
    Trainable weights stay float32 whatever `dtype` is: they are the optimizer's master copy, since bf16 weights
    would drop AdamW updates at lr 2e-5 (far below half a bf16 ulp of a typical weight); on GPU, TrainingLoss
    computes in bf16. `base`: an HF model already built (e.g. on the meta device; default: loaded from
    cfg.model.base in `dtype`)."""
    torch.manual_seed(cfg.data.seed)
    newline = cfg.model.newline
    model = PaveLlava(base, newline=newline) if base is not None else (
        PaveLlava.from_pretrained(cfg.model.base, dtype=dtype, newline=newline))
    llm_dim = model.hf.config.text_config.hidden_size
    for side in cfg.sides:
        model.add_patch(side, PavePatch(patch_config(cfg, dims[side], dims["video"], llm_dim)))
    if cfg.model.lora.enabled:
        lora = cfg.model.lora
        model.add_lora(lora_config(lora.r, lora.alpha, lora.dropout))
    return model


def attention_kernel(cfg: RunConfig, on_gpu: bool) -> str:
    """The transformers attention implementation of the run's LLM (see ModelConfig.attention)."""
    choice = cfg.model.attention
    if choice == "auto":
        choice = "flex" if cfg.data.pack and on_gpu else "sdpa"
    if choice == "flex" and not on_gpu:
        raise ConfigError("--model.attention flex: FlexAttention has no backward on CPU; use sdpa (or a GPU)")
    return {"flex": "flex_attention", "sdpa": "sdpa"}[choice]


def build_skeleton(cfg: RunConfig, dims: dict[str, int]) -> PaveLlava:
    """The run's model on the meta device: its shapes and parameter names, no weights and no memory."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    with torch.device("meta"):
        base = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig.from_pretrained(cfg.model.base))
        return build_model(cfg, dims, torch.bfloat16, base=base)


class TrainingLoss(torch.nn.Module):
    """`PaveLlava.loss` as a module's forward, so that DDP/FSDP hooks see every training step. With bf16=True it
    runs under bf16 autocast: float32 trainable weights (LoRA, patches) compute in bf16 like the frozen base."""

    def __init__(self, model: PaveLlava, bf16: bool = False):
        super().__init__()
        self.model = model
        self.bf16 = bf16

    def forward(self, batch: dict) -> torch.Tensor:
        with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model.loss(batch["input_ids"], batch["attention_mask"], batch["video"], batch["side"],
                                   batch["labels"], batch.get("position_ids"))


def fsdp(module: TrainingLoss, reduce_dtype: torch.dtype = torch.float32) -> TrainingLoss:
    """FSDP (per-parameter sharding, torch.distributed.fsdp.fully_shard): one unit per LLM decoder layer, the rest
    (embeddings, vision tower, projector, patches, lm_head) in the root unit. Unlike Ray's prepare_model (FSDP1) it
    wraps a single worker too, so the 1-GPU run is the scaling baseline, and it does not flatten a unit's frozen
    bf16 and trainable float32 weights into one tensor (FSDP1 requires one dtype per unit). Gradients are
    reduce-scattered in `reduce_dtype` (the weights keep their own dtypes)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(reduce_dtype=reduce_dtype)
    for layer in module.model.hf.model.language_model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


def checkpointed_layer_count(setting: str, text_config, tokens: int, free_bytes: int | None,
                             optimizer_bytes: int) -> int:
    """How many LLM decoder layers recompute their activations. "auto": the fewest for which the layers that keep
    theirs fit in MEMORY_HEADROOM of `free_bytes` (after the model is on the device) less the optimizer state,
    for a micro-batch of `tokens` tokens; none without a GPU (free_bytes None: host memory is not the limit)."""
    layers = text_config.num_hidden_layers
    if setting == "none":
        return 0
    if setting == "full":
        return layers
    if setting != "auto":
        return min(int(setting), layers)
    if free_bytes is None:
        return 0
    per_layer = ACTIVATION_BYTES_PER_UNIT * (text_config.hidden_size + text_config.intermediate_size) * tokens
    budget = MEMORY_HEADROOM * free_bytes - optimizer_bytes
    return min(layers, max(0, math.ceil(layers - budget / per_layer)))


def apply_checkpointing(model: PaveLlava, count: int) -> list[int]:
    """Wrap `count` decoder layers, spread evenly over the depth, in non-reentrant activation checkpointing
    (torch.distributed's checkpoint_wrapper: it composes with DDP, FSDP and compile); returns their indices."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointImpl,
                                                                             apply_activation_checkpointing,
                                                                             checkpoint_wrapper)

    layers = list(model.hf.model.language_model.layers)
    chosen = sorted({round(i * len(layers) / count) for i in range(count)}) if count else []
    wrapped = {id(layers[i]) for i in chosen}
    apply_activation_checkpointing(
        model.hf.model.language_model, check_fn=lambda module: id(module) in wrapped,
        checkpoint_wrapper_fn=partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
    return chosen


def compile_layers(model: PaveLlava) -> None:
    """torch.compile each LLM decoder layer in place (regional compilation: one compiled graph serves every layer,
    shapes become dynamic after the first length change); recompilations are logged."""
    torch._logging.set_logs(recompiles=True)
    for layer in model.hf.model.language_model.layers:
        layer.compile()


def to_device(batch: dict, device: torch.device) -> dict:
    for key in ("input_ids", "attention_mask", "labels", "position_ids"):  # attention_mask is None when packed
        if batch.get(key) is not None:
            batch[key] = batch[key].to(device, non_blocking=True)
    batch["video"] = batch["video"].to(device)
    batch["side"] = {name: side.to(device) for name, side in batch["side"].items()}
    return batch
