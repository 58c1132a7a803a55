"""Synthetic media corpus whose content is known, so every later stage can be tested against ground truth.

Each take is a main H.264/AAC MP4 showing coloured shapes that move linearly over a plain background, while its
audio is a pure tone whose pitch (PITCH_HZ) answers the annotation question. The answers are drawn from their own
random stream, so the frames never reveal them: a model can only answer from the audio side channel. Each take also
gets one or two exo views (the same shapes mirrored / scaled / shifted, filmed by a camera that starts later) and a
posed RGB-D sequence of a small 3D scene (corpus_rgbd.py). truth/<id>.json describes all of it; the media are
rendered from that same dict, so truth and media cannot drift apart.

Layout (paths in the manifest are relative to the corpus directory):
    manifest.jsonl        {"id", "video", "exo": [{"view", "path", "offset_s"}], "rgbd"} per take
    videos/<id>.mp4       main (ego) video, H.264 + AAC
    exo/<id>/view<k>.mp4  exo view k, H.264, no audio
    rgbd/<id>.npz         color, depth, intrinsics, poses, times (see corpus_rgbd)
    truth/<id>.json       ground truth for tests:
        {"id", "answer", "question", "split",
         "video": {"path", "codec", "fps" (int | "vfr"), "time_base", "n_frames", "pts" (seconds), "start_time",
                   "width", "height", "duration"},
         "audio": {"codec", "sample_rate", "channels", "start_time", "duration", "n_samples",
                   "segments": [[t0, t1, hz], ...]},
         "scene": {"t0", "t1", "background", "shapes": [{"kind", "colour", "rgb", "radius", "start", "end"}]},
         "exo": [{"view", "offset_s", <the video keys but duration>, "mirror", "scale", "shift"}],
         "rgbd": {"path", "n_views", "width", "height", "intrinsics", "times", "ground", "cameras",
                  "objects": [{"kind", "colour", "rgb", "centre", "radius" | "half_size"}]}}
    annotations/{train,eval}.json   LLaVA conversations
    shards/shard-%06d.tar WebDataset (only with webdataset=True): __key__ = id, mp4 = main video, json = manifest row

Time: everything is on the main timeline, the seconds of the main video's pts (a take with a non-zero start time
has its first frame and first audio sample at start_time). Exo time tau is main time tau + offset_s.
Shapes: positions are main-view pixels (x right, y down, pixel centres on integers). A shape moves from `start` at
scene t0 to `end` at scene t1 (clamped outside); "circle" is a disc of `radius`, "square" has half-side `radius`;
later shapes are drawn over earlier ones. An exo view maps (x, y, r) to
((W - 1 - x if mirror else x) * scale + shift_x, y * scale + shift_y, r * scale), W the main width.

Deterministic kinds of take, by index, so a corpus of 5 or more has each: index % 6 == 2 has a variable frame
rate, index % 6 == 3 starts at LATE_START_S, and index % 5 == 4 changes pitch at a known time. A take with a pitch
change keeps its annotation but is asked for the pitch at the start, so every question has one answer that the
audio alone determines.

Profiles (PROFILES, `pave make-corpus --profile`): "tiny" is the above (small frames, every kind of take, exo views
and RGB-D scenes). "720p" and "1080p" shoot what users materialize: H.264 at 30 fps, 30-120 s, a keyframe every
2-4 s (a fixed GOP per take, `video.gop_frames` in the truth), AAC audio, over a textured background that pans so
that frames cost a real encoder and decoder what camera footage does; main videos only (no exo, no RGB-D, no VFR or
late-start takes).
"""
import json
import os
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
import webdataset as wds

from pipelines import corpus_rgbd

PITCH_HZ = {"low": 330.0, "high": 1760.0}  # answer -> tone frequency, over two octaves apart
QUESTION = "<video>\nWhat is the pitch of the tone: low or high?"
START_QUESTION = "<video>\nWhat is the pitch of the tone at the start: low or high?"

FPS = (10, 15, 24, 30)
SIZES = ((160, 120), (192, 108), (128, 96))
SAMPLE_RATES = (16000, 22050, 44100, 48000)
VFR_TIME_BASE = Fraction(1, 90000)
# A whole second is exact in every time base involved (1/fps, 1/sample_rate and the MP4 movie timescale of 1 ms,
# which rounds the edit list that carries a start time).
LATE_START_S = 1.0
TONE_AMPLITUDE = 0.5
VIDEOS_PER_SHARD = 64
PALETTE = {
    "red": [230, 40, 40], "green": [40, 200, 60], "blue": [50, 90, 230], "yellow": [240, 220, 40],
    "magenta": [220, 60, 200], "cyan": [60, 210, 220], "orange": [250, 140, 30], "white": [240, 240, 240],
}


@dataclass(frozen=True)
class Profile:
    """How a corpus's takes are shot."""

    sizes: tuple = SIZES  # (width, height) choices
    fps: tuple = FPS
    seconds: tuple = (3, 8)  # take length range
    gop_s: tuple | None = None  # a keyframe every this many seconds (range, drawn per take); None: x264's choice
    texture: bool = False  # a panning textured background instead of a plain colour
    side_media: bool = True  # exo views, RGB-D scenes, and the VFR and late-start takes
    pan_px_per_s: float = 60.0  # texture pan speed


REAL = dict(fps=(30,), seconds=(30, 120), gop_s=(2, 4), texture=True, side_media=False)
PROFILES = {"tiny": Profile(), "720p": Profile(sizes=((1280, 720),), **REAL),
            "1080p": Profile(sizes=((1920, 1080),), **REAL)}
TEXTURE_CELL = 6  # pixels per texture cell: detail an encoder has to spend bits on, unlike per-pixel noise


def make_corpus(out_dir: str | Path, n_videos: int, seed: int = 0, webdataset: bool = False,
                profile: Profile = PROFILES["tiny"], workers: int = 1) -> Path:
    """Write a corpus of `n_videos` takes into `out_dir` (new or empty) and return the manifest path; `workers`
    processes write takes at once (each take comes from its own plan, so the corpus is the same).

    The corpus is built in a sibling temporary directory and renamed into place, so `out_dir` never holds half a
    corpus."""
    out = Path(out_dir)
    if n_videos < 1:
        raise ValueError(f"n_videos must be at least 1, got {n_videos}")
    if workers < 1:
        raise ValueError(f"processes must be at least 1, got {workers}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; a corpus goes into a new or empty directory")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; a corpus goes into a new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        work.chmod(0o755)
        takes = _plan_corpus(n_videos, seed, profile)
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(partial(_write_take, work), takes))
        else:
            for take in takes:
                _write_take(work, take)
        rows = [_manifest_row(take) for take in takes]
        _write_jsonl(work / "manifest.jsonl", rows)
        (work / "annotations").mkdir()
        for split in ("train", "eval"):
            entries = [_annotation(take) for take in takes if take["split"] == split]
            (work / "annotations" / f"{split}.json").write_text(json.dumps(entries, indent=1))
        if webdataset:
            _write_shards(work, rows)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out / "manifest.jsonl"


def load_truth(corpus_dir: str | Path, video_id: str) -> dict:
    return json.loads((Path(corpus_dir) / "truth" / f"{video_id}.json").read_text())


def load_manifest(corpus_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(corpus_dir) / "manifest.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------- planning


def _plan_corpus(n_videos: int, seed: int, profile: Profile) -> list[dict]:
    rng = np.random.default_rng(seed)
    # Balanced answers (counts differ by at most one) from the corpus stream; each take's content comes from its
    # own stream, so what the frames show is independent of the answer.
    answers = rng.permutation(np.resize(list(PITCH_HZ), n_videos))
    # Container formats cycle through seed-shuffled orders, so any 4 consecutive takes cover every fps and rate.
    formats = {"fps": rng.permutation(profile.fps), "size": rng.permutation(len(profile.sizes)),
               "rate": rng.permutation(SAMPLE_RATES)}
    return [
        _plan_take(index, str(answer), split, formats, np.random.default_rng([seed, index]), profile)
        for index, (answer, split) in enumerate(zip(answers, _stratified_splits(answers)))
    ]


def _stratified_splits(answers) -> list[str]:
    """The 2nd of every 4 takes with the same answer goes to eval, so both splits stay balanced."""
    seen, splits = Counter(), []
    for answer in answers:
        splits.append("eval" if seen[answer] % 4 == 1 else "train")
        seen[answer] += 1
    return splits


def _plan_take(index: int, answer: str, split: str, formats: dict, rng: np.random.Generator,
               profile: Profile) -> dict:
    video_id = f"v{index:04d}"
    fps = int(formats["fps"][index % len(profile.fps)])
    width, height = profile.sizes[formats["size"][index % len(profile.sizes)]]
    start = LATE_START_S if index % 6 == 3 and profile.side_media else 0.0
    duration = round(float(rng.uniform(*profile.seconds)), 1)
    end = start + duration
    path = f"videos/{video_id}.mp4"
    if index % 6 == 2 and profile.side_media:  # variable frame rate: irregular 20-150 ms gaps on a 90 kHz clock
        pts_ms = np.concatenate([[0], np.cumsum(rng.integers(20, 151, size=int(duration * 50) + 1))])
        pts = [start + ms / 1000 for ms in pts_ms[pts_ms < duration * 1000]]
        video = _stream_truth(path, "vfr", VFR_TIME_BASE, pts, width, height)
    else:
        video = _stream_truth(path, fps, Fraction(1, fps), _frame_times(start, end, fps), width, height)
    video["duration"] = duration

    change = index % 5 == 4
    if change:  # the other pitch from a known time on
        pitches = [answer, next(other for other in PITCH_HZ if other != answer)]
        bounds = [start, round(start + duration * float(rng.uniform(0.4, 0.6)), 2), end]
    else:
        pitches, bounds = [answer], [start, end]
    rate = int(formats["rate"][index % len(SAMPLE_RATES)])
    audio = {
        "codec": "aac", "sample_rate": rate, "channels": 1 + (index // 4) % 2, "start_time": start,
        "duration": duration, "n_samples": round(duration * rate),
        "segments": [[t0, t1, PITCH_HZ[p]] for t0, t1, p in zip(bounds, bounds[1:], pitches)],
    }

    take = {"id": video_id, "answer": answer, "question": START_QUESTION if change else QUESTION, "split": split,
            "video": video, "audio": audio, "scene": _plan_shapes(rng, video), "exo": [], "rgbd": None}
    if profile.side_media:
        exo_formats = [
            (int(formats["fps"][(index + k) % len(FPS)]), SIZES[formats["size"][(index + k) % len(SIZES)]])
            for k in range(1, 2 + (index % 3 == 0))  # every 3rd take has two exo views
        ]
        times = [round(start + (k + 0.5) * duration / corpus_rgbd.N_VIEWS, 6) for k in range(corpus_rgbd.N_VIEWS)]
        take["exo"] = [_plan_exo(rng, video_id, k, fmt, video) for k, fmt in enumerate(exo_formats, start=1)]
        take["rgbd"] = corpus_rgbd.plan_scene(rng, PALETTE, times, f"rgbd/{video_id}.npz")
    if profile.gop_s:
        video["gop_frames"] = int(round(float(rng.uniform(*profile.gop_s)) * fps))
    if profile.texture:
        take["scene"]["texture"] = {"seed": int(rng.integers(2**31)), "cell": TEXTURE_CELL,
                                    "pan_px_per_s": profile.pan_px_per_s}
    return take


def _plan_shapes(rng: np.random.Generator, video: dict) -> dict:
    width, height, start = video["width"], video["height"], video["start_time"]
    scene = {"t0": start, "t1": start + video["duration"], "background": rng.integers(0, 64, size=3).tolist(),
             "shapes": []}
    for colour in rng.choice(list(PALETTE), size=int(rng.integers(2, 4)), replace=False):
        radius = float(rng.uniform(0.12, 0.2)) * height
        # Every shape crosses at least 30% of the width, so a wrong time offset shows as a clear displacement.
        x0, x1 = rng.uniform(radius, 0.35 * width), rng.uniform(0.65 * width, width - radius)
        if rng.random() < 0.5:
            x0, x1 = width - 1 - x0, width - 1 - x1
        y0, y1 = rng.uniform(radius, height - radius, size=2)
        scene["shapes"].append({
            "kind": str(rng.choice(["circle", "square"])), "colour": str(colour), "rgb": PALETTE[colour],
            "radius": round(radius, 3), "start": [round(x0, 3), round(y0, 3)], "end": [round(x1, 3), round(y1, 3)],
        })
    return scene


def _plan_exo(rng: np.random.Generator, video_id: str, view: int, fmt: tuple, video: dict) -> dict:
    fps, (width, height) = fmt
    scale = min(width / video["width"], height / video["height"]) * float(rng.uniform(0.7, 0.9))
    # The shift keeps the scaled main frame, and so every shape, inside the exo frame.
    shift = [rng.uniform(0, width - video["width"] * scale), rng.uniform(0, height - video["height"] * scale)]
    offset = round(video["start_time"] + float(rng.uniform(0.5, 1.5)), 2)
    end = video["start_time"] + video["duration"]
    stream = _stream_truth(f"exo/{video_id}/view{view}.mp4", fps, Fraction(1, fps),
                           _frame_times(0.0, end - offset, fps), width, height)
    return {"view": view, "offset_s": offset, **stream, "mirror": view == 1, "scale": round(scale, 4),
            "shift": [round(float(s), 3) for s in shift]}


def _frame_times(start: float, end: float, fps: int) -> list[float]:
    first = round(start * fps)
    # round() before ceil: end * fps is a whole number up to float noise for the 0.1 s durations used here.
    return [k / fps for k in range(first, int(np.ceil(round(end * fps, 6))))]


def _stream_truth(path: str, fps, time_base: Fraction, pts: list[float], width: int, height: int) -> dict:
    return {"path": path, "codec": "h264", "fps": fps, "time_base": str(time_base), "n_frames": len(pts),
            "pts": pts, "start_time": pts[0], "width": width, "height": height}


def _manifest_row(take: dict) -> dict:
    return {"id": take["id"], "video": take["video"]["path"],
            "exo": [{"view": e["view"], "path": e["path"], "offset_s": e["offset_s"]} for e in take["exo"]],
            "rgbd": take["rgbd"]["path"] if take["rgbd"] else ""}


def _annotation(take: dict) -> dict:
    return {"id": f"{take['id']}-q0", "video": take["id"],
            "conversations": [{"from": "human", "value": take["question"]}, {"from": "gpt", "value": take["answer"]}]}


# ----------------------------------------------------------------------------------------------------- writing


def _write_take(root: Path, take: dict) -> None:
    video, scene = take["video"], take["scene"]
    main_view = _View(video["width"], video["height"], main_width=video["width"])
    background = _panning_texture(scene["texture"], video) if "texture" in scene else None
    _write_mp4(root / video["path"], video, lambda t: _draw(scene, main_view, t, background), take["audio"])
    for exo in take["exo"]:
        view = _View(exo["width"], exo["height"], video["width"], exo["mirror"], exo["scale"], tuple(exo["shift"]))
        # Exo time tau shows the scene at main time tau + offset_s.
        _write_mp4(root / exo["path"], exo, lambda tau, v=view, offset=exo["offset_s"]: _draw(scene, v, tau + offset))
    if take["rgbd"]:
        (root / "rgbd").mkdir(exist_ok=True)
        np.savez_compressed(root / take["rgbd"]["path"], **corpus_rgbd.render(take["rgbd"]))
    (root / "truth").mkdir(exist_ok=True)
    (root / "truth" / f"{take['id']}.json").write_text(json.dumps(take, indent=1))


@dataclass(frozen=True)
class _View:
    """Where a camera sees the shapes: a possibly mirrored, scaled and shifted copy of the main view."""

    width: int
    height: int
    main_width: int
    mirror: bool = False
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    def project(self, x: float, y: float, radius: float) -> tuple[float, float, float]:
        x = self.main_width - 1 - x if self.mirror else x
        return x * self.scale + self.shift[0], y * self.scale + self.shift[1], radius * self.scale


def _panning_texture(texture: dict, video: dict):
    """t -> the background at main-timeline time t: a random texture of `cell`-pixel cells, wider than the frame,
    that pans left at pan_px_per_s (built once per take; each frame is a slice of it)."""
    cell, width, height = texture["cell"], video["width"], video["height"]
    pan = int(np.ceil(texture["pan_px_per_s"] * (video["start_time"] + video["duration"])))
    rng = np.random.default_rng(texture["seed"])
    cells = rng.integers(0, 256, size=(-(-height // cell), -(-(width + pan) // cell), 3), dtype=np.uint8)
    wide = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)[:height]
    return lambda t: wide[:, int(texture["pan_px_per_s"] * t):][:, :width]


def _draw(scene: dict, view: _View, t: float, background=None) -> np.ndarray:
    """The RGB frame that `view` sees at main-timeline time t (over `background(t)` when given)."""
    frame = np.empty((view.height, view.width, 3), np.uint8)
    frame[:] = scene["background"] if background is None else background(t)
    y, x = np.ogrid[: view.height, : view.width]
    for shape in scene["shapes"]:
        cx, cy = (np.interp(t, [scene["t0"], scene["t1"]], [a, b]) for a, b in zip(shape["start"], shape["end"]))
        cx, cy, r = view.project(cx, cy, shape["radius"])
        if shape["kind"] == "circle":
            mask = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        else:
            mask = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
        frame[mask] = shape["rgb"]
    return frame


def _write_mp4(path: Path, stream: dict, draw, audio: dict | None = None) -> None:
    """Encode frames draw(t) at the stream's pts (H.264), plus the audio tone (AAC) if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    time_base = Fraction(stream["time_base"])
    with av.open(str(path), "w") as container:
        # A nominal rate for the VFR take only steers x264's rate control; its pts carry the real timing.
        options = {"preset": "veryfast"}
        if "gop_frames" in stream:  # a fixed GOP: keyframes exactly every gop_frames frames, no scene-cut ones
            gop = str(stream["gop_frames"])
            options.update({"g": gop, "keyint_min": gop, "sc_threshold": "0"})
        video = container.add_stream("libx264", rate=30 if stream["fps"] == "vfr" else stream["fps"],
                                     options=options)
        video.width, video.height, video.pix_fmt = stream["width"], stream["height"], "yuv420p"
        video.time_base = video.codec_context.time_base = time_base
        # small frames: one thread, which also leaves the shared cores alone; HD frames: x264's own threading
        video.thread_count = 1 if stream["width"] * stream["height"] < 640 * 480 else 0
        if audio is not None:  # every stream must exist before the first packet is muxed
            layout = ("mono", "stereo")[audio["channels"] - 1]
            sound = container.add_stream("aac", rate=audio["sample_rate"], layout=layout)
        for t in stream["pts"]:
            frame = av.VideoFrame.from_ndarray(draw(t), format="rgb24")
            frame.pts, frame.time_base = round(t / time_base), time_base
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            _encode_tone(container, sound, audio)


def _encode_tone(container, stream, audio: dict) -> None:
    rate, samples = audio["sample_rate"], _tone(audio)
    first, step = round(audio["start_time"] * rate), stream.codec_context.frame_size
    for i in range(0, samples.shape[1], step):
        chunk = np.ascontiguousarray(samples[:, i : i + step])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=stream.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = rate, first + i, Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def _tone(audio: dict) -> np.ndarray:
    """[channels, n_samples] float32 tone following audio["segments"]."""
    rate = audio["sample_rate"]
    t = audio["start_time"] + np.arange(audio["n_samples"]) / rate
    freq = np.zeros_like(t)
    for t0, t1, hz in audio["segments"]:
        freq[(t >= t0) & (t < t1)] = hz
    # Integrating the frequency keeps the phase continuous across a pitch change, so there is no click.
    phase = 2 * np.pi * np.cumsum(freq) / rate
    return np.tile((TONE_AMPLITUDE * np.sin(phase)).astype(np.float32), (audio["channels"], 1))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _write_shards(root: Path, rows: list[dict]) -> None:
    (root / "shards").mkdir()
    # mtime=0 makes the tars byte-identical across runs.
    pattern = str(root / "shards" / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=VIDEOS_PER_SHARD, verbose=0, mtime=0) as sink:
        for row in rows:
            sink.write({"__key__": row["id"], "mp4": (root / row["video"]).read_bytes(), "json": row})
