"""Video-token materialization: the Ray Data job (pipelines/materialize.py) vs a sequential per-video script in the
style of the reference (dragonlzm/PAVE): decode ALL frames of a video to RGB, take `--frames` uniformly spaced ones
by index, resize, run the encoder on them, torch.save one .pt per video. Same corpus, same encoder weights, one run.

The Ray job runs once per `--jobs` entry (DECODER:ACTORS; default pyav:1,pyav:2: 1 and 2 encoder actors, into
which a CPU-only cluster fuses decoding), each on a fresh local Ray with one more logical CPU than actors on a CPU
machine (every core on a GPU machine). Times include everything a user waits for inside the job (actor start, model
build, decode, encode, write), not `ray.init`. Frames/s counts the input videos' frames processed per second.

    .venv/bin/python benchmarks/materialize_bench.py --videos 24
Prints a table and the ratios; the encoder is a random-init SigLIP (hidden 256, 4 layers, 224 px, patch 16 ->
14x14 patches -> 7x7 pooled), saved with save_pretrained and loaded from that directory by both paths.

At real scale (issue 19, on a GPU machine): `--profile 720p|1080p` makes the corpus camera-like (30 fps H.264 + AAC,
30-120 s, a keyframe every 2-4 s; `--seconds 30,30` fixes the length), `--encoder so400m` is SigLIP-so400m-patch14-384
(LLaVA-OneVision-7B's tower) with random weights, `--encoder-dtype bfloat16` runs both paths' encoder in bf16. With a
GPU both paths encode on it and the table adds the GPU's busy share (sampled every 0.1 s). `--jobs` lists the Ray
job's runs as DECODER:ACTORS: `pyav:1` = CPU tasks decode (swscale resize), one encoder actor on the GPU;
`nvdec:8` = 8 encoder actors sharing the GPU (1/8 each), each decoding its videos with NVDEC (torch resize);
`nvdec:1x8` = one encoder actor on the GPU running 8 calls at once in threads (one encoder load). The
reference runs on the first `--reference-videos` videos only (it is slow at 1080p); rates are per video.
Also printed: frames decoded per video (the reference decodes all; the job the GOPs that hold sampled frames,
counted from each video's frame index), CPU core-seconds per video (all processes: the machine's CPU time over the
run), and the payoff per training sample: the reference's decode CPU-seconds and encoder GPU-ms per video against a
stored video's tokens read back.
"""
import argparse
import bisect
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from transformers import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

from pipelines.corpus import PROFILES, load_manifest, load_truth, make_corpus  # noqa: E402
from pipelines.encoders import vision_encoder  # noqa: E402
from pipelines.media import index_frames, uniform_frames  # noqa: E402

ENCODERS = {
    "tiny": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, image_size=224,
                 patch_size=16),
    # google/siglip-so400m-patch14-384, the vision tower of LLaVA-OneVision-Qwen2-7B (27x27 = 729 patches)
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                   image_size=384, patch_size=14),
}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Usage:
    """What a run costs the machine: CPU core-seconds of every process, and the GPU's busy share (NVML, sampled)."""

    def __enter__(self):
        self.cpu, self.busy, self.stop = sum(psutil.cpu_times()[:2]), [], threading.Event()
        if DEVICE.type == "cuda":
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.1):
            self.busy.append(torch.cuda.utilization(DEVICE))

    def __exit__(self, *exc):
        self.stop.set()
        self.cpu_s = sum(psutil.cpu_times()[:2]) - self.cpu
        self.gpu_busy = sum(self.busy) / len(self.busy) / 100 if self.busy else None


@dataclass
class Run:
    name: str
    videos: int
    frames: int  # in the input videos
    seconds: float
    decoded: int  # frames decoded
    cpu_s: float
    gpu_busy: float | None


def frames_decoded_by_the_job(path: Path, frames: int) -> int:
    """Frames pipelines/media.py decodes to get `frames` uniform frames: in each GOP that holds a sampled frame,
    from its keyframe up to the last sampled frame in it."""
    with av.open(str(path)) as container:
        index = index_frames(container, container.streams.video[0])
    wanted = np.unique(uniform_frames(index.times, frames))
    starts = np.searchsorted(index.pts, index.keyframes).tolist()  # frame position of each keyframe
    last_in_gop = {}
    for position in wanted:
        gop = bisect.bisect_right(starts, position) - 1
        last_in_gop[gop] = max(last_in_gop.get(gop, 0), position)
    return int(sum(last - starts[gop] + 1 for gop, last in last_in_gop.items()))


def reference(corpus: Path, rows: list[dict], out: Path, encoder_dir: str, frames: int,
              encoder_dtype: str) -> tuple[int, float, float, "Usage"]:
    """The sequential script; returns the number of frames decoded, the encoder's seconds (synchronised), and the
    seconds and Usage of its loop over the videos (its steady state: model load and warm-up left out)."""
    torch.set_num_threads(1)
    encoder = vision_encoder(encoder_dir, "full")  # the job's default main-video tokens
    encoder.compute_in(getattr(torch, encoder_dtype))
    encoder = encoder.to(DEVICE)
    with torch.inference_mode():  # warm-up (kernel selection), so that the loop is the steady state
        encoder(torch.zeros(frames, encoder.size, encoder.size, 3, dtype=torch.uint8, device=DEVICE)).cpu()
    out.mkdir(parents=True)
    with Usage() as usage:
        start = time.perf_counter()
        done = [reference_video(corpus / row["video"], out / f"{row['id']}.pt", encoder, frames) for row in rows]
        seconds = time.perf_counter() - start
    return sum(d for d, _ in done), sum(e for _, e in done), seconds, usage


def reference_video(path: Path, out: Path, encoder, frames: int) -> tuple[int, float]:
    """One video the reference's way: every frame decoded to RGB, `frames` picked by index, resized, encoded, saved.
    Returns the frames decoded and the encoder's seconds."""
    with av.open(str(path)) as container:
        video = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]  # all frames
    index = np.linspace(0, len(video) - 1, frames).astype(int)
    pixels = torch.from_numpy(np.stack([video[i][1] for i in index])).permute(0, 3, 1, 2).float()
    pixels = torch.nn.functional.interpolate(pixels, size=(encoder.size,) * 2, mode="bicubic", antialias=True)
    started = time.perf_counter()
    with torch.inference_mode():
        tokens = encoder(pixels.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).to(DEVICE)).cpu()
    encode_s = time.perf_counter() - started
    torch.save({"tokens": tokens.half(), "t": torch.tensor([video[i][0] for i in index])}, out)
    return len(video), encode_s


def ray_job(manifest: Path, store: Path, encoder_dir: str, frames: int, decoder: str, actors: int, calls: int,
            cpus: int, encoder_dtype: str) -> tuple[float, dict]:
    """The job on a fresh local Ray of `cpus` logical CPUs and the machine's GPU, shared by the encoder actors."""
    import ray

    from pipelines.materialize import Resources, Settings, materialize
    from pipelines.sources import read_items

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        resize = "torch-bicubic" if decoder == "nvdec" else "swscale-bicubic"
        gpus = 1 / actors if DEVICE.type == "cuda" else 0
        start = time.perf_counter()
        settings = Settings(frames=frames, encoder_dtype=encoder_dtype, resize=resize)
        summary = materialize(read_items(str(manifest)), str(store), ["video"], {"video": encoder_dir}, settings,
                              Resources(concurrency=actors, calls_per_actor=calls, num_gpus=gpus, batch_size=4,
                                        part_items=16, decoder=decoder))
        return time.perf_counter() - start, summary.counts["video"]
    finally:
        ray.shutdown()


def store_read_s(store: Path, ids: list[str]) -> float:
    """Seconds per video to read a stored video's tokens back (what a training step reads instead)."""
    from featurestore import FeatureStore

    version = FeatureStore(str(store)).version("video")
    start = time.perf_counter()
    for video_id in ids:
        version.get(video_id).tokens
    return (time.perf_counter() - start) / len(ids)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=24, help="corpus size when --corpus is not given")
    parser.add_argument("--corpus", type=Path, help="an existing corpus directory (default: a new one in a temp dir)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--jobs", default="pyav:1,pyav:2",
                        help="the Ray job's runs, DECODER:ACTORS[xCALLS] each (default pyav:1,pyav:2)")
    parser.add_argument("--cpus", type=int, help="logical CPUs of the job's Ray (default: actors + 1 on a CPU "
                                                 "machine, every core on a GPU machine)")
    parser.add_argument("--reference-videos", type=int, help="videos the reference script runs on (default all)")
    parser.add_argument("--encoder-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steady", action="store_true",
                        help="also run each job on the first half of the videos: the difference of the two runs is "
                             "the job's steady state (what it adds per video once started), printed as its own row")
    parser.add_argument("--repeat", type=int, default=1, help="list each video this many times (default 1)")
    parser.add_argument("--corpus-workers", type=int, default=os.cpu_count(), help="processes writing the corpus")
    parser.add_argument("--profile", default="tiny", choices=list(PROFILES),
                        help="corpus profile (pipelines/corpus.py)")
    parser.add_argument("--seconds", help="MIN,MAX take length, over the profile's")
    parser.add_argument("--encoder", default="tiny", choices=list(ENCODERS), help="SigLIP size, random weights")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="materialize_bench."))
    try:
        profile = PROFILES[args.profile]
        if args.seconds:
            profile = replace(profile, seconds=tuple(float(x) for x in args.seconds.split(",")))
        corpus = args.corpus or make_corpus(work / "corpus", args.videos, seed=1, profile=profile,
                                            workers=args.corpus_workers).parent
        # each video listed --repeat times under its own id: a long job's steady state without making more videos
        rows = [{**row, "id": f"{row['id']}-{r}"} for r in range(args.repeat) for row in load_manifest(corpus)]
        manifest = work / "items.jsonl"
        manifest.write_text("".join(json.dumps({**row, "video": str(corpus / row["video"])}) + "\n" for row in rows))
        encoder_dir = str(work / "encoder")
        torch.manual_seed(0)
        SiglipVisionModel(SiglipVisionConfig(**ENCODERS[args.encoder])).save_pretrained(encoder_dir)
        frames_in, job_decodes = {}, {}  # per distinct video: its frames, and the frames the job decodes
        for row in load_manifest(corpus):
            (corpus / row["video"]).read_bytes()  # the page cache holds the corpus for every path alike
            frames_in[row["video"]] = load_truth(corpus, row["id"])["video"]["n_frames"]
            job_decodes[row["video"]] = frames_decoded_by_the_job(corpus / row["video"], args.frames)

        ref_rows = rows[: args.reference_videos or len(rows)]
        decoded, encode_s, seconds, usage = reference(corpus, ref_rows, work / "pt", encoder_dir, args.frames,
                                                      args.encoder_dtype)
        total = lambda done: sum(frames_in[row["video"]] for row in done)  # noqa: E731
        job_decoded = lambda done: sum(job_decodes[row["video"]] for row in done)  # noqa: E731
        results = [Run("reference script (1 process, steady state)", len(ref_rows), total(ref_rows), seconds,
                       decoded, usage.cpu_s, usage.gpu_busy)]
        stores, half = [], rows[: len(rows) // 2]
        half_manifest = work / "half.jsonl"
        half_manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[: len(half)]))
        for job in args.jobs.split(","):
            decoder, actors = job.split(":")
            actors, _, calls = actors.partition("x")
            name = f"Ray job, {decoder}, {actors} encoder actor(s)" + (f" x {calls} calls" if calls else "")
            cpus = args.cpus or (os.cpu_count() if DEVICE.type == "cuda" else int(actors) + 1)
            runs = [(manifest, rows)] + [(half_manifest, half)] * args.steady
            for items, done in runs:
                stores.append(work / f"store-{decoder}-{actors}x{calls or 1}-{len(done)}")
                with Usage() as usage:
                    seconds, counts = ray_job(items, stores[-1], encoder_dir, args.frames, decoder, int(actors),
                                              int(calls or 1), cpus, args.encoder_dtype)
                assert counts == {"ok": len(done), "failed": 0, "skipped": 0}, counts
                results.append(Run(name, len(done), total(done), seconds, job_decoded(done), usage.cpu_s,
                                   usage.gpu_busy))
            if args.steady:  # the second half alone: the difference of the two runs
                whole, first = results[-2], results[-1]
                results.append(Run(f"{name}, steady state ({whole.videos} - {first.videos} videos)",
                                   whole.videos - first.videos, whole.frames - first.frames,
                                   whole.seconds - first.seconds, whole.decoded - first.decoded,
                                   whole.cpu_s - first.cpu_s, None))

        print(f"{len(rows)} videos ({args.profile}, {total(rows) / len(rows):.0f} frames/video), "
              f"{args.frames} sampled per video, encoder {args.encoder} ({args.encoder_dtype}) on {DEVICE}, "
              f"{os.cpu_count()} cores")
        print("| path | videos | wall s | videos/s | frames/s | frames decoded/video | CPU core-s/video | "
              "frames per CPU-s | GPU busy |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for run in results:
            busy = "-" if run.gpu_busy is None else f"{100 * run.gpu_busy:.0f}%"
            print(f"| {run.name} | {run.videos} | {run.seconds:.1f} | {run.videos / run.seconds:.2f} | "
                  f"{run.frames / run.seconds:.0f} | {run.decoded / run.videos:.0f} | {run.cpu_s / run.videos:.2f} | "
                  f"{run.frames / run.cpu_s:.0f} | {busy} |")
        ref = results[0]
        for run in results[1:]:
            print(f"{run.name} / reference: videos/s {run.videos / run.seconds / (ref.videos / ref.seconds):.2f}x, "
                  f"frames per CPU-s {run.frames / run.cpu_s / (ref.frames / ref.cpu_s):.2f}x")
        ref_rate, ref_cpu = ref.videos / ref.seconds, ref.cpu_s / ref.videos
        read_s = store_read_s(stores[0], [row["id"] for row in rows])
        print(f"payoff per training sample: the reference spends {ref_cpu:.2f} CPU-s decoding and "
              f"{1000 * encode_s / len(ref_rows):.0f} GPU-ms encoding (wall {1000 / ref_rate:.0f} ms per video); the "
              f"store reads a video's tokens in {1000 * read_s:.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
