"""Video-token materialization: the Ray Data job (pipelines/materialize.py) vs a sequential per-video script in the
style of the reference (dragonlzm/PAVE): decode ALL frames of a video to RGB, take `--frames` uniformly spaced ones
by index, resize, run the encoder on them, torch.save one .pt per video. Same corpus, same encoder weights, one run.

The Ray job runs with 1 and with 2 (`--workers`) encoder workers (actors; on a CPU-only cluster Ray fuses decoding into them),
each on a fresh local Ray with one more logical CPU than workers for the read and write tasks. Times include
everything a user waits for inside the job (actor start, model build, decode, encode, write), not `ray.init`.
Per-core numbers divide by the worker processes that decode and encode (1 for the script). Frames/s counts the
input videos' frames processed per second (every path reads each video in full).

    .venv/bin/python benchmarks/materialize_bench.py --videos 24
Prints a table and the ratios; the encoder is a random-init SigLIP (hidden 256, 4 layers, 224 px, patch 16 ->
14x14 patches -> 7x7 pooled), saved with save_pretrained and loaded from that directory by both paths.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

from pipelines.corpus import load_manifest, make_corpus  # noqa: E402
from pipelines.encoders import vision_encoder  # noqa: E402

ENCODER = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, image_size=224,
               patch_size=16)


def reference(corpus: Path, out: Path, encoder_dir: str, frames: int) -> int:
    """The sequential script; returns the number of frames decoded."""
    torch.set_num_threads(1)
    encoder = vision_encoder(encoder_dir, "full")  # the job's default main-video tokens
    size, decoded = encoder.size, 0
    out.mkdir(parents=True)
    for row in load_manifest(corpus):
        with av.open(str(corpus / row["video"])) as container:
            video = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]  # all frames
        decoded += len(video)
        index = np.linspace(0, len(video) - 1, frames).astype(int)
        pixels = torch.from_numpy(np.stack([video[i][1] for i in index])).permute(0, 3, 1, 2).float()
        pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True)
        with torch.inference_mode():
            tokens = encoder(pixels.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1))
        torch.save({"tokens": tokens.half(), "t": torch.tensor([video[i][0] for i in index])},
                   out / f"{row['id']}.pt")
    return decoded


def ray_job(corpus: Path, store: Path, encoder_dir: str, frames: int, workers: int) -> tuple[float, dict]:
    import ray

    from pipelines.materialize import Resources, Settings, materialize
    from pipelines.sources import read_items

    ray.init(address="local", num_cpus=workers + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        start = time.perf_counter()
        summary = materialize(read_items(str(corpus / "manifest.jsonl")), str(store), ["video"],
                              {"video": encoder_dir}, Settings(frames=frames),
                              Resources(concurrency=workers, batch_size=4, part_items=16))
        return time.perf_counter() - start, summary.counts["video"]
    finally:
        ray.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=24, help="corpus size when --corpus is not given")
    parser.add_argument("--corpus", type=Path, help="an existing corpus directory (default: a new one in a temp dir)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="encoder worker counts to run the Ray job with (default 1,2)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="materialize_bench."))
    try:
        corpus = args.corpus or make_corpus(work / "corpus", args.videos, seed=1).parent
        rows = load_manifest(corpus)
        encoder_dir = str(work / "encoder")
        torch.manual_seed(0)
        SiglipVisionModel(SiglipVisionConfig(**ENCODER)).save_pretrained(encoder_dir)
        for row in rows:  # the page cache holds the corpus for every path alike
            (corpus / row["video"]).read_bytes()

        start = time.perf_counter()
        total_frames = reference(corpus, work / "pt", encoder_dir, args.frames)
        results = [("reference script (1 process)", time.perf_counter() - start, 1)]
        for workers in map(int, args.workers.split(",")):
            seconds, counts = ray_job(corpus, work / f"store{workers}", encoder_dir, args.frames, workers)
            assert counts == {"ok": len(rows), "failed": 0, "skipped": 0}, counts
            results.append((f"Ray job, {workers} worker{'s' * (workers > 1)}", seconds, workers))

        n = len(rows)
        print(f"{n} videos, {total_frames} frames ({total_frames / n:.0f}/video), {args.frames} sampled per video, "
              f"{os.cpu_count()} cores")
        print("| path | wall s | videos/s | frames/s | videos/s per core | frames/s per core |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, seconds, cores in results:
            print(f"| {name} | {seconds:.1f} | {n / seconds:.2f} | {total_frames / seconds:.0f} | "
                  f"{n / seconds / cores:.2f} | {total_frames / seconds / cores:.0f} |")
        ref, one = results[0][1], results[1][1]
        for name, seconds, cores in results[1:]:
            print(f"{name} / reference: per core {ref / seconds / cores:.2f}x, wall {ref / seconds:.2f}x, "
                  f"wall vs {results[1][0]} {one / seconds:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
