"""Packed-sequence attention for transformers' LLMs: samples packed one after another into one row attend causally
within their own span, and no mask is built.
- PER_SAMPLE: SDPA on each sample's span (the same kernels as one unpadded sequence per row; CPU and GPU).
- VARLEN: torch's flash varlen kernel (torch.nn.attention.varlen) over all spans at once, told apart by cumulative
  sequence lengths, the kwargs transformers' own flash-attention path takes (FlashAttentionKwargs: cu_seq_lens_q/k,
  max_length_q/k). CUDA only.
Both take grouped-query heads as they are. `register(name)` adds one to transformers' attention and mask interfaces,
for `set_attn_implementation`."""
import torch
import torch.nn.functional as F

VARLEN = "pave_varlen"
PER_SAMPLE = "pave_packed_sdpa"


def packing_kwargs(lengths: list[int]) -> dict:
    """FlashAttentionKwargs for samples of `lengths` tokens packed into one row (computed on the host once per batch:
    the kernel takes the longest sample's length as a Python int), and the lengths themselves for PER_SAMPLE."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths),
            "sample_lengths": tuple(lengths)}


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """transformers' attention-function interface: query [1, H, T, D], key/value [1, Hkv, T, D] -> ([1, T, H, D],
    None)."""
    from torch.nn.attention.varlen import varlen_attn

    if cu_seq_lens_q is None:
        raise ValueError(f"{VARLEN} attention needs a packed batch's cu_seq_lens (model.collate with pack=True)")
    if dropout:
        raise ValueError(f"{VARLEN} attention has no attention dropout (got {dropout})")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, scale=scaling,
                      window_size=(-1, 0))  # (-1, 0): causal
    return out[None], None


def per_sample_sdpa_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            sample_lengths=None, **kwargs):
    """transformers' attention-function interface for a packed row: SDPA on each sample's span, causal, grouped-query
    heads as they are; on GPUs each call takes SDPA's fastest kernel for one sequence (cuDNN's on an H200, ~1.4x
    the flash varlen kernel at 7B's 128-dim heads). The lengths are Python ints: compiled layers recompile once
    when they change, then treat them as symbols."""
    if sample_lengths is None:
        raise ValueError(f"{PER_SAMPLE} attention needs a packed batch's sample_lengths (model.collate pack=True)")
    outputs, start = [], 0
    for length in sample_lengths:
        span = slice(start, start + length)
        outputs.append(F.scaled_dot_product_attention(query[:, :, span], key[:, :, span], value[:, :, span],
                                                      dropout_p=dropout, is_causal=True, scale=scaling,
                                                      enable_gqa=True))
        start += length
    return torch.cat(outputs, dim=2).transpose(1, 2), None


def no_mask(*args, **kwargs):
    """The packed samples' boundaries travel as packing_kwargs: no mask to build."""
    return None


def register(name: str) -> str:
    """Add VARLEN or PER_SAMPLE to transformers' attention functions (and a mask function that builds none)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, {VARLEN: varlen_attention_forward, PER_SAMPLE: per_sample_sdpa_forward}[name])
    AttentionMaskInterface.register(name, no_mask)
    return name
