"""PAVE patch forward+backward: our batched time-window SDPA vs the reference design, on the same weights.

Reference design (dragonlzm/PAVE): a B==1 loop; each sample's side steps are split into F equal chunks BY INDEX
(frame k attends to chunk k); per layer, the chunks are zero-padded into a float32 tensor allocated on the host and
then moved/cast, and attention runs with a key-padding mask. Ours: one batched call, neighbourhoods by timestamps.
The two select slightly different keys (index vs time); the cost comparison is what this measures.

  python benchmarks/patch_bench.py            # 7B patch dims, B=4, 32 frames x 196 tokens, side lengths 60-600
  python benchmarks/patch_bench.py --small    # CPU-sized: B=2, 8 frames x 16 tokens, side lengths 20-100
Prints both timings and the ratio, and one JSON line (appended to --out when given). CUDA runs in bf16.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.patch import PRESETS, PavePatch, SideBatch, VideoBatch  # noqa: E402


def make_inputs(args, device, dtype):
    """Audio-like side channel: 1 s hop, 2 s windows, so a sample with n steps lasts n + 1 s; frames uniform."""
    g = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.min_side, args.max_side + 1, (args.batch,), generator=g).tolist()
    cfg = PRESETS["7b"]
    samples, times = [], []
    for n in lengths:
        t_start = torch.arange(n, dtype=torch.float32)
        samples.append((torch.randn(n, args.tokens_per_step, cfg.side_dim, generator=g, dtype=dtype), t_start, t_start + 2))
        times.append((torch.arange(args.frames) + 0.5) * (n + 1) / args.frames)
    feats = torch.randn(args.batch, args.frames, args.tokens_per_frame, cfg.query_dim, generator=g, dtype=dtype)
    return VideoBatch(feats, torch.stack(times)).to(device), SideBatch.pack(samples).to(device), lengths


def reference_design(patch: PavePatch, video: VideoBatch, side: SideBatch) -> torch.Tensor:
    dtype, outs = patch.query_in.weight.dtype, []
    n_frames, H = video.features.shape[1], patch.config.num_heads
    for b in range(video.features.shape[0]):
        lo, hi = side.offsets[b : b + 2].tolist()
        memory = patch.side_in(side.tokens[lo:hi].to(dtype))  # [S_b, T, d]
        S, T, d = memory.shape
        sizes = [S // n_frames + (i < S % n_frames) for i in range(n_frames)]
        L = max(sizes)
        mask = (torch.arange(L)[None] < torch.tensor(sizes)[:, None]).repeat_interleave(T, 1).to(memory.device)
        x = patch.query_in(video.features[b].to(dtype))  # [F, Q, d]
        for layer in patch.layers:
            attn = layer.attn
            k, v = attn.k(memory), attn.v(memory)
            if S % n_frames == 0:  # the reference reshapes without padding in this case
                k, v = k.view(n_frames, L, T, d), v.view(n_frames, L, T, d)
            else:
                k_pad = torch.zeros(n_frames, L, T, d).to(k.device, dtype=dtype)  # host fp32, then moved
                v_pad = torch.zeros(n_frames, L, T, d).to(k.device, dtype=dtype)
                for i, (kc, vc) in enumerate(zip(k.split(sizes), v.split(sizes))):
                    k_pad[i, : len(kc)], v_pad[i, : len(vc)] = kc, vc
                k, v = k_pad, v_pad
            heads = lambda t: t.reshape(n_frames, -1, H, d // H).transpose(1, 2)  # noqa: E731
            out = F.scaled_dot_product_attention(heads(attn.q(x)), heads(k), heads(v), attn_mask=mask[:, None, None])
            x = out.transpose(1, 2).reshape(x.shape) + x
            x = layer.ffn(x) + x
        outs.append(patch.out(x))
    return torch.stack(outs)


def measure(fns, device, iters, warmup):
    """Median ms of fwd+bwd per function, alternating between them (the CPU may be shared: contention then hits
    both alike), and the peak memory (MiB, CUDA only) of one step of each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(iters):
        for fn, ts in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            ts.append(1000 * (time.perf_counter() - start))
    peaks = [None] * len(fns)
    if device.type == "cuda":
        for i, fn in enumerate(fns):
            torch.cuda.reset_peak_memory_stats()
            fn()
            peaks[i] = torch.cuda.max_memory_allocated() / 2**20
    return [sorted(ts)[len(ts) // 2] for ts in times], peaks


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU-sized shapes (same 7B patch dims)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--tokens-per-frame", type=int, default=196)
    p.add_argument("--tokens-per-step", type=int, default=1, help="1 audio, 4 HFR, H*W for 3D")
    p.add_argument("--min-side", type=int, default=60)
    p.add_argument("--max-side", type=int, default=600)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    p.add_argument("--out", type=Path, help="append the JSON line to this file")
    args = p.parse_args(argv)
    if args.small:
        args.batch, args.frames, args.tokens_per_frame, args.min_side, args.max_side = 2, 8, 16, 20, 100

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(args.seed)
    patch = PavePatch(PRESETS["7b"]).to(device, dtype).train()
    video, side, lengths = make_inputs(args, device, dtype)
    grad_out = torch.randn(args.batch, args.frames, args.tokens_per_frame, PRESETS["7b"].llm_dim, device=device, dtype=dtype)

    def step(forward):
        def run():
            patch.zero_grad(set_to_none=True)
            (forward(patch, video, side) * grad_out).sum().backward()
        return run

    (batched_ms, loop_ms), (batched_peak, loop_peak) = measure(
        [step(lambda p, v, s: p(v, s)), step(reference_design)], device, args.iters, args.warmup
    )
    record = {
        "bench": "patch_fwd_bwd", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "batch": args.batch, "frames": args.frames,
        "tokens_per_frame": args.tokens_per_frame, "tokens_per_step": args.tokens_per_step, "side_lengths": lengths,
        "patch_params": sum(q.numel() for q in patch.parameters()), "threads": torch.get_num_threads(),
        "batched_ms": round(batched_ms, 2), "reference_loop_ms": round(loop_ms, 2),
        "speedup": round(loop_ms / batched_ms, 2), "batched_peak_mib": batched_peak, "reference_peak_mib": loop_peak,
    }
    print(f"batched (time windows, one SDPA call): {batched_ms:9.2f} ms")
    print(f"reference design (B=1 loop, index chunks, fp32 padding): {loop_ms:9.2f} ms   ratio {loop_ms / batched_ms:.2f}x")
    line = json.dumps(record)
    print(line)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
