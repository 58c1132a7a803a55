"""The trained model of a run: the frozen base + one fresh patch per side channel + LoRA, as the module that DDP or
FSDP wraps (TrainingLoss); how much of it recomputes activations and which parts are compiled; batches moved to its
device."""
import logging
import math
from functools import partial

import torch

from model import varlen
from model.llava import PaveLlava, lora_config
from model.patch import PatchConfig, PavePatch
from training.config import ConfigError, RunConfig

log = logging.getLogger(__name__)
# Activation memory of one decoder layer per token without checkpointing, in units of (hidden + intermediate) bf16
# elements' bytes. Eager: 16.5 fits the 7B anchor (plain HF + peft baseline, not shipped; LoRA r64 + dropout on every
# projection: 77 GiB at 6,332 tokens, 15.5 GiB of it weights); rounded up for the patches' and embeddings' share.
# Compiled layers keep less (Inductor fuses the norms and SwiGLU and recomputes their cheap pointwise parts): fitted to
# the compiled 7B steps on an H200 (BENCHMARKS.md, 2026-12-01; 17.4 GiB weights + optimizer): 6.1 units without LoRA
# dropout (B=1 48.4 GiB; packed B=4 with 8 layers checkpointed 115.4 GiB), and LoRA dropout adds 2.7 (B=1 59.1 GiB;
# packed B=2 / B=4 with 12 / 20 checkpointed 72.2 / 85.9 GiB): the masks of every projection's input, 1.5 bytes per
# element kept. Rounded up: 7 + 3.
ACTIVATION_BYTES_PER_UNIT = {"eager": 18, "compiled": 7}
DROPOUT_BYTES_PER_UNIT = {"eager": 0, "compiled": 3}  # eager: the anchor's 18 includes its dropout
# Compiled: memory per token of a micro-batch outside the layers that keep their activations (the inputs the
# checkpointed layers keep, the recompute and backward transients of one layer, the video path): the packed B=2
# and B=4 steps above keep the same token-layers (16 x 13,558 = 8 x 27,116) and peaked 13.7 GiB apart: 1.06 MB per
# token = 47 units at 7B, rounded up to 48. The eager estimate has no such term (18 units already err on the safe
# side: padded B=2 with 12 layers checkpointed peaked at 84 GiB).
TRANSIENT_BYTES_PER_UNIT = {"eager": 0, "compiled": 48}
MEMORY_HEADROOM = 0.85  # of the free memory: allocator fragmentation, logits, the collective buffers


def patch_config(cfg: RunConfig, side_dim: int, query_dim: int, llm_dim: int) -> PatchConfig:
    patches = cfg.model.patches
    return PatchConfig(side_dim=side_dim, query_dim=query_dim, llm_dim=llm_dim, d_model=patches.d_model,
                       num_layers=patches.layers, ffn_dim=2 * patches.d_model, out_hidden=2 * patches.d_model,
                       neighbourhood=patches.neighbourhood, tie_v_to_k=patches.tie_v_to_k)


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
    choice = "sdpa" if cfg.model.attention == "auto" else cfg.model.attention
    if choice == "flex" and not on_gpu:
        raise ConfigError("--model.attention flex: FlexAttention has no backward on CPU; use sdpa (or a GPU)")
    if choice == "varlen" and not (on_gpu and cfg.data.pack):
        raise ConfigError("--model.attention varlen: the flash varlen kernel needs GPUs and --data.pack; use sdpa")
    if choice == "sdpa":
        return varlen.register(varlen.PER_SAMPLE) if cfg.data.pack else "sdpa"
    return {"flex": "flex_attention", "varlen": varlen.register(varlen.VARLEN)}[choice]


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
                                   batch["labels"], batch.get("position_ids"), **batch.get("packing", {}))


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
                             optimizer_bytes: int, compiled: bool = False, dropout: bool = True) -> int:
    """How many LLM decoder layers recompute their activations. "auto": the fewest for which the layers that keep
    theirs fit in MEMORY_HEADROOM of `free_bytes` (after the model is on the device) less the optimizer state,
    for a micro-batch of `tokens` tokens (compiled layers keep less, and less without LoRA dropout: see
    ACTIVATION_BYTES_PER_UNIT); none without a GPU (free_bytes None: host memory is not the limit)."""
    layers = text_config.num_hidden_layers
    if setting == "none":
        return 0
    if setting == "full":
        return layers
    if setting != "auto":
        return min(int(setting), layers)
    if free_bytes is None:
        return 0
    kind = "compiled" if compiled else "eager"
    unit = (text_config.hidden_size + text_config.intermediate_size) * tokens
    per_layer = (ACTIVATION_BYTES_PER_UNIT[kind] + dropout * DROPOUT_BYTES_PER_UNIT[kind]) * unit
    budget = MEMORY_HEADROOM * free_bytes - optimizer_bytes - TRANSIENT_BYTES_PER_UNIT[kind] * unit
    return min(layers, max(0, math.ceil(layers - budget / per_layer)))


def spread(count: int, layers: int) -> list[int]:
    """`count` layer indices spread evenly over the depth."""
    return sorted({round(i * layers / count) for i in range(count)}) if count else []


def _recomputing_forward(layer, *args, **kwargs):
    """A decoder layer's forward that recomputes its activations in the backward while `layer.recompute` is set
    (non-reentrant torch.utils.checkpoint around the compiled or plain forward)."""
    if layer.recompute and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(layer._plain_forward, *args, use_reentrant=False, **kwargs)
    return layer._plain_forward(*args, **kwargs)


def make_checkpointable(model: PaveLlava) -> None:
    """Let every decoder layer switch activation checkpointing on and off per micro-batch (set_checkpointed). The
    layer objects, their parameter names and state dicts stay as they are (no wrapper module): only the instance's
    forward is replaced. Composes with DDP, FSDP (fully_shard's hooks run around it) and per-layer compile."""
    for layer in model.hf.model.language_model.layers:
        if not hasattr(layer, "_plain_forward"):
            layer._plain_forward = layer.forward
            layer.recompute = False
            layer.forward = partial(_recomputing_forward, layer)


def set_checkpointed(model: PaveLlava, count: int) -> list[int]:
    """Checkpoint `count` decoder layers (spread evenly over the depth) from the next forward on; returns their
    indices."""
    layers = model.hf.model.language_model.layers
    chosen = spread(count, len(layers))
    for i, layer in enumerate(layers):
        layer.recompute = i in chosen
    return chosen


def compile_layers(model: PaveLlava) -> None:
    """torch.compile the LLM decoder layers' forward (regional compilation: one compiled graph serves every layer,
    shapes become dynamic after the first length change); recompilations are logged. Activation checkpointing stays
    outside the compiled graph: a checkpoint traced inside it broke Inductor's partitioner once shapes turned
    dynamic ("Node ... was invalid, but is output")."""
    torch._logging.set_logs(recompiles=True)
    make_checkpointable(model)  # the layers call _plain_forward, which the compiled forward replaces
    layers = model.hf.model.language_model.layers
    compiled = torch.compile(type(layers[0]).forward)
    for layer in layers:
        layer._plain_forward = partial(compiled, layer)


def to_device(batch: dict, device: torch.device) -> dict:
    for key in ("input_ids", "attention_mask", "labels", "position_ids"):  # attention_mask is None when packed
        if batch.get(key) is not None:
            batch[key] = batch[key].to(device, non_blocking=True)
    if "packing" in batch:
        batch["packing"] = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                            for k, v in batch["packing"].items()}
    batch["video"] = batch["video"].to(device)
    batch["side"] = {name: side.to(device) for name, side in batch["side"].items()}
    return batch
