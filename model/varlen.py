"""Packed-sequence attention for transformers' LLMs with torch's flash varlen kernel (torch.nn.attention.varlen):
samples packed one after another into one row attend causally within their own span, told apart by cumulative
sequence lengths, the kwargs transformers' own flash-attention path takes (FlashAttentionKwargs: cu_seq_lens_q/k,
max_length_q/k). Unlike FlexAttention's block mask it runs the same flash kernel as SDPA on one sequence, and it
takes grouped-query heads as they are. CUDA only (the kernel has no CPU implementation).

`register()` adds it to transformers' attention and mask interfaces as VARLEN, for `set_attn_implementation`."""
import torch

VARLEN = "pave_varlen"


def packing_kwargs(lengths: list[int]) -> dict:
    """FlashAttentionKwargs for samples of `lengths` tokens packed into one row (computed on the host once per batch:
    the kernel takes the longest sample's length as a Python int)."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths)}


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


def no_mask(*args, **kwargs):
    """The packed samples' boundaries travel as cu_seq_lens: no mask to build."""
    return None


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, no_mask)
    return VARLEN
