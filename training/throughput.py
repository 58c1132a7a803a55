"""Model FLOPs utilisation (MFU) of a training step, counted the same way in `pave train`'s metrics and in
benchmarks/train_bench.py.

Model FLOPs per trained token = 4 N: forward 2 N, backward 2 N for the activation gradients (the frozen weights get
no weight gradients); N = the weights applied at every position (LLM decoder layers with their LoRA, projector,
patches). Not counted: the weight gradients of the trainable weights (LoRA, patches) and the recompute of activation
checkpointing. `with attention` adds causal attention, 6 L d s per token (forward 2 L d s, backward twice that;
s = sequence length). MFU divides by the GPU's dense bf16 peak; GPUs not in PEAK_BF16_FLOPS get no MFU.
"""
import re

import torch

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "A100": 312e12,
                   "A800": 312e12, "B200": 2250e12, "L40S": 362e12}


def flop_params(model) -> int:
    """N: weights applied at every position of a PaveLlava (decoder layers with LoRA, projector, patches; video
    positions are nearly all positions). Embedding lookups do no matmuls; lm_head runs at label positions only."""
    hf = model.hf
    parts = (hf.model.language_model.layers, hf.model.multi_modal_projector, model.patches)
    return sum(p.numel() for part in parts for p in part.parameters())


def flops_per_token(model, seq_len: float) -> tuple[float, float]:
    """(4 N, 4 N + causal attention) model FLOPs per trained token."""
    text = model.hf.config.text_config
    dense = 4 * flop_params(model)
    return dense, dense + 6 * text.num_hidden_layers * text.hidden_size * seq_len


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of `device` by its name; None on a CPU or a GPU not in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for model, peak in PEAK_BF16_FLOPS.items() if re.search(rf"\b{model}\b", name)), None)
