"""The vision encoder's forward alone on a GPU: SigLIP-so400m-patch14-384 shapes, random weights, through
pipelines.encoders.VisionTokens ("full": every patch of one hidden layer), frames already on the GPU. Per case:
ms per forward and frames/s, medians of --iters after --warmup. Cases: compute dtype, frames per forward, the
attention implementation (sdpa, eager), and torch.compile of the tower.

    python benchmarks/encoder_bench.py [--iters 10]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

from pipelines.encoders import VisionTokens  # noqa: E402

SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
              patch_size=14)


def time_forward(encoder, frames: torch.Tensor, iters: int, warmup: int) -> float:
    times = []
    with torch.inference_mode():
        for k in range(warmup + iters):
            torch.cuda.synchronize()
            start = time.perf_counter()
            encoder(frames)
            torch.cuda.synchronize()
            if k >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda")
    print("| dtype | attention | compiled | frames per forward | ms per forward | frames/s |")
    print("|---|---|---|---:|---:|---:|")
    for dtype, attention, compiled, batch in [("float32", "sdpa", False, 32), ("bfloat16", "sdpa", False, 32),
                                              ("bfloat16", "sdpa", False, 128), ("bfloat16", "eager", False, 128),
                                              ("bfloat16", "sdpa", True, 128)]:
        torch.manual_seed(0)
        tower = SiglipVisionModel(SiglipVisionConfig(**SO400M, attn_implementation=attention))
        encoder = VisionTokens(tower.eval(), "so400m", -1, "full", "full", [0.5] * 3, [0.5] * 3)
        encoder.compute_in(getattr(torch, dtype))
        encoder = encoder.to(device)
        if compiled:
            encoder.tower = torch.compile(encoder.tower)
        frames = torch.randint(0, 256, (batch, 384, 384, 3), dtype=torch.uint8, device=device)
        seconds = time_forward(encoder, frames, args.iters, args.warmup)
        print(f"| {dtype} | {attention} | {compiled} | {batch} | {1000 * seconds:.1f} | {batch / seconds:.0f} |")


if __name__ == "__main__":
    main()
