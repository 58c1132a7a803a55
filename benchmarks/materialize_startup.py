"""Where a materialize job's fixed start goes: each step `pave materialize` takes before its first video is encoded,
timed on its own, in the order the job takes them. Against the whole job's fixed start (materialize_bench.py
--steady: the whole job's time minus its steady-state time), it says which step to cut.

    python benchmarks/materialize_startup.py --encoder so400m --encoder-dtype bfloat16 --actors 8   # on a GPU
    .venv/bin/python benchmarks/materialize_startup.py                                            # tiny, CPU

Steps: a fresh process importing what an actor imports; the driver building the encoder (from_pretrained) and
hashing its weights for the version's fingerprint; one Encode actor's constructor in this process (build, hash
check, move to the device) and its first and second encoder calls on `--frames` frames; `ray.init`; Ray Data
starting `--actors` empty actors, then `--actors` Encode actors (each builds and hashes the encoder: the job's
actor start); with PyNvVideoCodec and a GPU, the first and second NVDEC decode of a 1080p clip's sampled frames.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

from materialize_bench import DEVICE, ENCODERS  # noqa: E402
from pipelines import nvdec  # noqa: E402
from pipelines.corpus import PROFILES, load_manifest, make_corpus  # noqa: E402
from pipelines.encoders import Encode  # noqa: E402
from pipelines.materialize import MODALITIES, Settings  # noqa: E402

ACTOR_IMPORTS = "import torch, transformers, av; import pipelines.materialize"


def timed(fn):
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


class Empty:
    """An actor that does nothing: Ray Data's own cost of starting an actor pool."""

    def __call__(self, batch):
        return batch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="tiny", choices=list(ENCODERS))
    p.add_argument("--encoder-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--frames", type=int, default=32)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="materialize_startup."))
    encoder_dir = str(work / "encoder")
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(**ENCODERS[args.encoder])).save_pretrained(encoder_dir)
    rows = []

    def row(step: str, seconds: float, note: str = ""):
        rows.append((step, seconds, note))
        print(f"| {step} | {seconds:.2f} | {note} |", flush=True)

    print(f"{torch.cuda.get_device_name() if DEVICE.type == 'cuda' else 'cpu'}, {os.cpu_count()} cores, encoder "
          f"{args.encoder} ({args.encoder_dtype}), {args.actors} actors\n")
    print("| step | s | note |\n|---|---:|---|")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", ACTOR_IMPORTS], check=True, cwd=Path(__file__).resolve().parents[1])
    row("a fresh process imports torch, transformers, PyAV, pipelines", time.perf_counter() - started)

    resize = "torch-bicubic" if DEVICE.type == "cuda" else "swscale-bicubic"  # as the benchmark's nvdec / pyav jobs
    settings = Settings(frames=args.frames, encoder_dtype=args.encoder_dtype, resize=resize)
    video = MODALITIES["video"]
    build = lambda: video.encoder(encoder_dir, settings)  # noqa: E731
    encoder, seconds = timed(build)
    row("driver: build the encoder (from_pretrained, float32)", seconds)
    (_, fingerprint), seconds = timed(lambda: video.schema_and_fingerprint(settings, encoder))
    row("driver: hash its weights for the fingerprint", seconds,
        f"{sum(t.numel() * t.element_size() for t in encoder.state_dict().values()) / 2**30:.2f} GiB")
    digest = fingerprint.spec["weights_digest"]
    actor, seconds = timed(lambda: Encode(build, digest, "bfloat16", 64, args.encoder_dtype))
    row("one actor: build, hash check, to the device", seconds)
    size = encoder.inputs.size
    frames = torch.randint(0, 256, (args.frames, size, size, 3), dtype=torch.uint8)
    for which in ("first", "second"):
        _, seconds = timed(lambda: actor.encode([frames]))
        row(f"one actor: {which} encoder call ({args.frames} frames)", seconds)
    if nvdec.installed() and DEVICE.type == "cuda":
        manifest = make_corpus(work / "corpus", 1, seed=1, profile=replace(PROFILES["1080p"], seconds=(30.0, 30.0)),
                               workers=os.cpu_count())
        (item,) = load_manifest(manifest.parent)
        item = {**item, "video": str(manifest.parent / item["video"])}
        plan = video.prepare(item, settings, encoder.inputs, gpu_decode=True).plan
        assert plan and actor.gpu_frames.nvdec, "NVDEC cannot take the clip: the rows below would time PyAV"
        for which in ("first", "second"):
            _, seconds = timed(lambda: actor.gpu_frames(plan))
            row(f"one actor: {which} NVDEC decode ({args.frames} frames of a 30 s 1080p clip)", seconds)
    actor = encoder = _ = None  # off the GPU before the Ray actors take it
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()

    import ray

    cpus = max(os.cpu_count(), args.actors + 2)  # the actors and the tasks that feed them
    _, seconds = timed(lambda: ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                                        log_to_driver=False, configure_logging=False))
    row("ray.init (local)", seconds)
    ray.data.DataContext.get_current().enable_progress_bars = False
    gpus = 1 / args.actors if DEVICE.type == "cuda" else 0
    pool = ray.data.ActorPoolStrategy(size=args.actors)
    items = ray.data.range(args.actors, override_num_blocks=args.actors)
    _, seconds = timed(lambda: items.map_batches(Empty, batch_size=1, compute=pool, num_gpus=gpus).take_all())
    row(f"Ray Data: {args.actors} empty actors start and take a row each", seconds)
    skipped = ray.data.from_items([{"id": f"v{i}", "status": "skipped", "reason": "", "decode_s": 0.0,
                                    "inputs": np.zeros((0,), np.uint8), "plan": ""} for i in range(args.actors)],
                                  override_num_blocks=args.actors)
    encode = skipped.map_batches(Encode, batch_size=1, compute=pool, num_gpus=gpus,
                                 fn_constructor_kwargs=dict(build=build, digest=digest, dtype="bfloat16",
                                                            rows_per_forward=64, compute_dtype=args.encoder_dtype))
    _, seconds = timed(encode.take_all)
    row(f"Ray Data: {args.actors} Encode actors start (each builds and hashes) and take a row each", seconds)
    ray.shutdown()
    print(f"\nsum of the job's steps (driver build + hash, Encode actors' start): "
          f"{rows[1][1] + rows[2][1] + rows[-1][1]:.1f} s")


if __name__ == "__main__":
    main()
