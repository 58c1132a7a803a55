"""All-reduce time of one training step's gradients between the GPUs of one host (NCCL), in float32 and bfloat16:
~170 M values, what LoRA r64 on every projection of a 7B LLM plus one patch exchange per step (BENCHMARKS.md,
"Multi-node model"). Median of 10 after 3 warm-ups; bus bandwidth as nccl-tests counts it (2 (n-1)/n bytes / time).

    torchrun --nproc-per-node 2 benchmarks/allreduce_bench.py [--values 170e6]
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--values", type=float, default=170e6)
    args = parser.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    for dtype in (torch.float32, torch.bfloat16):
        grads = torch.randn(int(args.values), device="cuda", dtype=dtype)
        times = []
        for k in range(13):
            torch.cuda.synchronize()
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(grads)
            torch.cuda.synchronize()
            if k >= 3:
                times.append(time.perf_counter() - start)
        ms = 1000 * statistics.median(times)
        size = grads.numel() * grads.element_size()
        if rank == 0:
            print(json.dumps({"bench": "allreduce", "gpus": world, "dtype": str(dtype).removeprefix("torch."),
                              "gb": round(size / 1e9, 3), "ms": round(ms, 2),
                              "bus_gb_per_s": round(2 * (world - 1) / world * size / 1e9 / (ms / 1000), 1)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
