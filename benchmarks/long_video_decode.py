"""Sparse sampling of a long video: 32 uniform frames of a 10-minute clip (a keyframe every 2 s: 32 of 300 GOPs hold
a sampled frame), read by pipelines/media.py (PyAV, seeking GOP by GOP), by NVDEC (pipelines/nvdec.py, when a GPU
and PyNvVideoCodec are here), and by decoding every frame, as the reference does. Prints wall and CPU seconds of
each (CPU: this process, every thread).

    python benchmarks/long_video_decode.py [--minutes 10] [--size 640x360]
"""
import argparse
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines import nvdec  # noqa: E402
from pipelines.media import gpu_decode_plan, read_frames, uniform_frames  # noqa: E402

FPS, GOP_S = 30, 2


def write_clip(path: Path, minutes: float, width: int, height: int) -> None:
    """A clip that costs a decoder what camera footage does (a random texture panning 2 px per frame): H.264, a
    keyframe every GOP_S seconds exactly."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = FPS * GOP_S
        stream.options = {"preset": "ultrafast", "sc_threshold": "0"}
        texture = np.random.default_rng(0).integers(0, 256, (height, 3 * width, 3), np.uint8)
        for k in range(int(minutes * 60 * FPS)):
            shift = (2 * k) % (2 * width)
            image = np.ascontiguousarray(texture[:, shift : shift + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def decode_all(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def timed(name: str, run) -> None:
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    frames = run()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    print(f"| {name} | {frames} | {wall:.2f} | {cpu_s:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--size", default="640x360")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "long.mp4"
        write_clip(path, args.minutes, width, height)
        pick = partial(uniform_frames, n=32)
        print(f"{args.minutes:g} min at {width}x{height}, {FPS} fps, a keyframe every {GOP_S} s; 32 frames sampled")
        print("| path | frames returned | wall s | CPU s |\n|---|---:|---:|---:|")
        timed("every frame decoded (the reference's decode, without its RGB conversion)", lambda: decode_all(path))
        timed("PyAV, GOP by GOP (media.read_frames)", lambda: len(read_frames(str(path), pick, None)[0]))
        if torch.cuda.is_available() and nvdec.installed():
            plan, _ = gpu_decode_plan(str(path), pick, 384)
            device = torch.device("cuda", 0)
            nvdec.nvdec_nv12(str(path), plan["positions"][:1], plan["frames"], device)  # decoder start-up
            timed("NVDEC (nvdec.nvdec_nv12)",
                  lambda: len(nvdec.nvdec_nv12(str(path), plan["positions"], plan["frames"], device)))
            timed("planning pass (media.gpu_decode_plan)",
                  lambda: len(gpu_decode_plan(str(path), pick, 384)[0]["positions"]))


if __name__ == "__main__":
    main()
