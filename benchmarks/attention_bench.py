"""Causal attention forward + backward at an LLM's head shapes on one GPU: one sequence with SDPA (flash), and
B sequences packed into one with FlexAttention (a block-causal BlockMask, as transformers builds it from packed
position ids) and with torch's flash varlen kernel (torch.nn.attention.varlen: cumulative sequence lengths, GQA
heads as they are). Also checks that the packed kernels give each sample what SDPA gives it alone.

  python benchmarks/attention_bench.py --heads 28 --kv-heads 4 --head-dim 128 --seq 6779 --batch 4
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def timed(fn, iters: int, warmup: int = 3) -> float:
    """Median ms of fn()'s forward + backward."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", type=int, default=28)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--seq", type=int, default=6779)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args(argv)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from torch.nn.attention.varlen import varlen_attn

    H, Hkv, D, S, B = args.heads, args.kv_heads, args.head_dim, args.seq, args.batch
    T = S * B
    dev = torch.device("cuda")
    q, k, v = (torch.randn(T, h, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for h in (H, Hkv, Hkv))
    grad = torch.randn(T, H, D, device=dev, dtype=torch.bfloat16)
    doc = torch.arange(T, device=dev) // S

    def sdpa_one():  # one sample at a time: [1, H, S, D]
        out = F.scaled_dot_product_attention(q[:S].transpose(0, 1)[None], k[:S].transpose(0, 1)[None],
                                             v[:S].transpose(0, 1)[None], is_causal=True, enable_gqa=True)
        out.backward(grad[:S].transpose(0, 1)[None])
        return out[0].transpose(0, 1)

    block_mask = create_block_mask(lambda b, h, i, j: (doc[i] == doc[j]) & (j <= i), 1, None, T, T, device=dev)
    flex = torch.compile(flex_attention)

    def flex_packed():
        out = flex(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=block_mask,
                   enable_gqa=True)
        out.backward(grad.transpose(0, 1)[None])
        return out[0].transpose(0, 1)

    cu = torch.arange(0, T + 1, S, device=dev, dtype=torch.int32)

    def varlen_packed():
        out = varlen_attn(q, k, v, cu, cu, S, S, window_size=(-1, 0))
        out.backward(grad)
        return out

    record = {"bench": "attention", "device": torch.cuda.get_device_name(), "heads": H, "kv_heads": Hkv,
              "head_dim": D, "seq": S, "batch": B}
    reference = sdpa_one().float()
    for name, fn in (("flex", flex_packed), ("varlen", varlen_packed)):
        try:
            out = fn()[:S].float()
            record[f"{name}_max_abs_diff_vs_sdpa"] = round((out - reference).abs().max().item(), 5)
            record[f"{name}_packed_ms"] = round(timed(fn, args.iters), 2)
        except Exception as e:  # noqa: BLE001 - report which kernel refused and why, then go on
            record[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    record["sdpa_one_ms"] = round(timed(sdpa_one, args.iters), 2)
    record["sdpa_x_batch_ms"] = round(B * record["sdpa_one_ms"], 2)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
