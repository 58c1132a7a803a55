"""Decoding with PyAV, on the stream's own presentation timeline: every time is pts x time_base in seconds, exactly
what PyAV reports (`frame.time`), so variable frame rates and non-zero start times need no special case.

Sampled frames are found without decoding: one demux pass (no decode) lists every frame's pts and the keyframes.
The frames to keep are chosen on that list, then decoded GOP by GOP: a GOP that holds no wanted frame is skipped
with a seek to the next wanted frame's keyframe, a GOP that holds one is decoded from its keyframe up to the
last wanted frame in it. Sparse sampling (32 frames of a long video) decodes a few GOPs; dense sampling (2 fps)
degenerates into one forward decode with no seeks, which is the cheapest way to get frames from most GOPs.

Frames are resized to the encoder's size by swscale ("swscale-bicubic", in the decode) or by pipelines/frames.py
("torch-bicubic", the transform GPU-decoded frames get too); gpu_decode_plan reads a file's packets and plans a GPU
decode instead (pipelines/nvdec.py). Frames come out as players show them, turned by the stream's display matrix.
Media that would read as something else is refused with the reason (ItemError): a cut MP4 (its header lists more
samples than the file holds), a single frame (an image, whatever its extension), a mirroring display matrix.

A folder of images (jpg, jpeg, png: the 3D tasks' posed_images_new/{scene_id}/) is read as a clip by the video
modality (read_frames with folders=True). A frame folder has no timestamps, so frame k, in the sorted order (by the
number in the file name when every name is a number, as 0.jpg, 20.jpg, 40.jpg; else by name), has t = k seconds:
one frame per second keeps the frames' order, and makes the patch's time neighbourhoods pick view k for frame k, as
the official code's chunk k is view k. Frames are sampled on those times as a video's are (uniform_frames over the
frame count: every frame when the folder holds exactly as many as wanted), and each image is decoded and resized
by PyAV as a video frame is. A frame folder has no audio and no frame rate: audio and hfr refuse it (ItemError)."""
import bisect
import io
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
from av.sidedata.sidedata import Type

from .errors import ItemError
from .frames import COLORSPACES, Colour, nv12_to_input, rgb_to_input
from .settings import RESIZES

# What PyAV and the OS raise for a file that cannot be read (besides ItemError): a failure of that item only.
DECODE_ERRORS = (av.error.FFmpegError, OSError, EOFError)
NVDEC_CODECS = ("h264", "hevc", "av1", "vp9")


def open_media(source: str | bytes):
    """A PyAV input container for a path or the bytes of a file (WebDataset samples, binary reads)."""
    if not (len(source) if isinstance(source, (bytes, bytearray)) else os.path.getsize(source)):
        raise ItemError("zero-length file")
    return av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)


def video_stream(container):
    """The container's first video stream; ItemError when it has none."""
    if not container.streams.video:
        raise ItemError("no video track")
    return container.streams.video[0]


@dataclass(frozen=True)
class FrameIndex:
    pts: np.ndarray  # int64 pts of every frame, sorted (presentation order)
    keyframes: np.ndarray  # int64 pts of the keyframes, sorted
    time_base: Fraction

    @property
    def times(self) -> np.ndarray:
        """Seconds, computed the way PyAV computes `frame.time`, so they are equal to the last bit."""
        return self.pts.astype(np.float64) * self.time_base.numerator / self.time_base.denominator


def is_data(packet) -> bool:
    """False for the empty packet PyAV yields at the end of a stream to flush its decoder."""
    return packet.dts is not None or packet.size > 0


def check_complete(container, stream, packets: int) -> None:
    """Refuse a file cut short. Demuxing just stops where the data ends, so a cut file would read as a shorter one;
    MP4/MOV headers list every sample, so there the cut shows. (Matroska/WebM and AVI headers hold no sample count.)"""
    if "mp4" in container.format.name.split(",") and packets < stream.frames:
        span = f" over {float(stream.duration * stream.time_base):.1f} s" if stream.duration else ""
        raise ItemError(f"truncated: the header lists {stream.frames} {stream.type} packets{span}, "
                        f"the file holds {packets}")


def index_frames(container, stream) -> FrameIndex:
    """Every frame's pts from the packets alone (no decoding). Packets the demuxer marks as discarded (before an
    edit list's start) produce no frame, so they are left out."""
    pts, keys, packets = [], [], 0
    for packet in container.demux(stream):
        packets += is_data(packet)
        if packet.pts is None or packet.size == 0 or packet.is_discard:
            continue
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    check_complete(container, stream, packets)
    if len(pts) < 2:  # one frame spans no time: an image, whatever the file's extension says
        raise ItemError("no video frames" if not pts else "a single video frame: a still image, not a video")
    return FrameIndex(np.sort(np.array(pts, np.int64)), np.sort(np.array(keys, np.int64)), stream.time_base)


def on_screen(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the frame being shown at each target time: the last frame whose time is <= the target."""
    eps = 1e-9  # targets computed in float may land a hair before the frame time they were derived from
    return np.clip(np.searchsorted(times, targets + eps, side="right") - 1, 0, len(times) - 1)


def uniform_frames(times: np.ndarray, n: int) -> np.ndarray:
    """`n` frames uniformly spaced in time from the first to the last frame (repeats when the video has fewer
    frames than `n`, so every video yields exactly `n`, as the LLM's frame budget expects)."""
    return on_screen(times, np.linspace(times[0], times[-1], n))


def rate_frames(times: np.ndarray, fps: float) -> np.ndarray:
    """The frames on screen every 1/fps seconds from the first frame, without repeats (a video slower than `fps`
    yields each frame once)."""
    targets = times[0] + np.arange(int(np.floor((times[-1] - times[0]) * fps + 1e-9)) + 1) / fps
    return np.unique(on_screen(times, targets))


def decode_frames(container, stream, index: FrameIndex, wanted: np.ndarray, size: int | None,
                  resize: str = RESIZES[0]) -> np.ndarray:
    """RGB frames [len(wanted), H, W, 3] uint8 for the frame indices `wanted` (repeats allowed), resized to
    size x size by `resize` when `size` is given. Decodes only the GOPs that hold wanted frames."""
    targets = [int(p) for p in np.unique(index.pts[wanted])]
    keyframes = index.keyframes.tolist()
    if not keyframes or keyframes[0] > targets[0]:
        raise ItemError("the first wanted frame has no keyframe before it")
    got, frames, decoded_gop = {}, None, -2
    for target in targets:
        gop = bisect.bisect_right(keyframes, target) - 1
        # the first target always seeks (the demux pass left the file at its end); later ones seek only when a
        # whole GOP with nothing wanted lies ahead
        if frames is None or gop > decoded_gop + 1:
            container.seek(keyframes[gop], stream=stream)
            frames = container.decode(stream)
        for frame in frames:
            if frame.pts is None:
                continue
            decoded_gop = bisect.bisect_right(keyframes, frame.pts) - 1
            if frame.pts >= target:
                break
        else:
            raise ItemError(f"truncated: the stream ends before the frame at t={float(target * index.time_base)}s")
        if frame.pts != target:
            raise ItemError(f"the frame at t={float(target * index.time_base)}s did not decode")
        got[target] = frame_input(frame, size, resize)
    return np.stack([got[int(p)] for p in index.pts[wanted]])


def quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show `frame` as players do: its display matrix's (phones store portrait
    video sideways and say so there). A mirroring matrix, or a turn other than a quarter turn, is refused rather than
    stored the wrong way round."""
    matrix = frame.side_data.get(Type.DISPLAYMATRIX)
    if matrix is None:
        return 0
    a, b, _, c, d = np.frombuffer(bytes(matrix), np.int32)[:5].tolist()
    if a * d - b * c < 0:
        raise ItemError("the display matrix mirrors the picture; only turns by quarter turns are supported")
    turns, rest = divmod(frame.rotation, 90)
    if rest:
        raise ItemError(f"the display matrix turns the picture by {frame.rotation} degrees; only quarter turns are "
                        "supported")
    return turns  # counter-clockwise, as frame.rotation counts and np.rot90 / torch.rot90 turn


def nv12_colour(frame) -> Colour | None:
    """The colour matrix and range of an 8-bit 4:2:0 frame of even size whose matrix frames.py knows (None for any
    other frame: it is converted to RGB by swscale first)."""
    if frame.format.name not in ("yuv420p", "yuvj420p", "nv12") or frame.width % 2 or frame.height % 2:
        return None
    matrix = COLORSPACES.get(int(frame.colorspace))
    full_range = int(frame.color_range) == 2 or frame.format.name == "yuvj420p"  # 2: AVCOL_RANGE_JPEG
    return Colour(matrix, full_range) if matrix else None


def frame_input(frame, size: int | None, resize: str) -> np.ndarray:
    """One decoded frame as the encoder's RGB input [S, S, 3] uint8 (S = size; None: the frame's size), upright."""
    turns = quarter_turns(frame)
    if resize == "swscale-bicubic":
        scale = {"width": size, "height": size, "interpolation": "BICUBIC"} if size else {}
        return np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24", **scale), turns))
    colour = nv12_colour(frame)
    if colour:  # the range stated both ways: swscale keeps the samples as they are (yuvj420p may not say full range)
        rng = 2 if colour.full_range else 1  # AVCOL_RANGE_JPEG / MPEG
        nv12 = frame.to_ndarray(format="nv12", src_color_range=rng, dst_color_range=rng)
        image = nv12_to_input(torch.from_numpy(nv12)[None], colour, size, turns)
    else:
        image = rgb_to_input(torch.from_numpy(frame.to_ndarray(format="rgb24"))[None], size, turns)
    return image[0].numpy()


IMAGE_SUFFIXES = ("jpg", "jpeg", "png")


def is_frame_folder(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and os.path.isdir(source)


def frame_files(folder: str) -> list[str]:
    """The image files of `folder` in frame order: by the number in the file name when every name is a number
    (0.jpg, 20.jpg, 100.jpg), else by name. Hidden files and other files are left out."""
    names = sorted(os.listdir(folder))
    images = [n for n in names if not n.startswith(".") and os.path.splitext(n)[1][1:].lower() in IMAGE_SUFFIXES
              and os.path.isfile(os.path.join(folder, n))]
    if not images:
        raise ItemError("an empty frame folder" if not names else
                        f"a folder with no image files ({', '.join(IMAGE_SUFFIXES)}) among its {len(names)} entries")
    stems = [os.path.splitext(n)[0] for n in images]
    if all(stem.isdigit() for stem in stems):
        images = [n for _, n in sorted(zip(map(int, stems), images))]
    return [os.path.join(folder, n) for n in images]


def read_image(path: str, size: int | None, resize: str = RESIZES[0]) -> np.ndarray:
    """The RGB picture [H, W, 3] uint8 of an image file, upright and resized as decode_frames does a video frame."""
    try:
        with open_media(path) as container:
            if not container.streams.video:
                raise ItemError("no picture in it")
            frame = next(container.decode(container.streams.video[0]), None)
            if frame is None:
                raise ItemError("no picture decoded")
            return frame_input(frame, size, resize)
    except (ItemError, av.error.FFmpegError, OSError) as e:
        raise ItemError(f"image {path} cannot be read: {e}") from e


def read_frame_folder(folder: str, pick, size: int | None, resize: str = RESIZES[0]) -> tuple[np.ndarray, np.ndarray]:
    """read_frames of a frame folder: frame k of frame_files at t = k seconds; only the picked images are read."""
    files = frame_files(folder)
    times = np.arange(len(files), dtype=np.float64)
    wanted = pick(times)
    images = {k: read_image(files[k], size, resize) for k in np.unique(wanted).tolist()}
    shapes = {k: image.shape for k, image in images.items()}
    if len(set(shapes.values())) > 1:
        first = min(shapes)
        other = next(k for k in sorted(shapes) if shapes[k] != shapes[first])
        raise ItemError(f"images of different sizes: {files[first]} is {shapes[first][1]}x{shapes[first][0]}, "
                        f"{files[other]} is {shapes[other][1]}x{shapes[other][0]}")
    return np.stack([images[k] for k in wanted.tolist()]), times[wanted]


def read_frames(source, pick, size: int | None, folders: bool = False,
                resize: str = RESIZES[0]) -> tuple[np.ndarray, np.ndarray]:
    """(frames [N,H,W,3] uint8, times [N] seconds) of the frames `pick(times of all frames) -> indices` selects,
    resized to size x size by `resize`. With `folders`, a frame folder is read as a clip at one frame per second
    (read_frame_folder); without, it is refused."""
    if is_frame_folder(source):
        if not folders:
            raise ItemError("a frame folder has no frame times of its own: only the video modality reads one (at "
                            "one frame per second)")
        return read_frame_folder(source, pick, size, resize)
    with open_media(source) as container:
        stream = video_stream(container)
        index = index_frames(container, stream)
        wanted = pick(index.times)
        return decode_frames(container, stream, index, wanted, size, resize), index.times[wanted]


def gpu_decode_plan(source, pick, size: int) -> tuple[dict | None, np.ndarray | None]:
    """For a video file the GPU's decoder can take (a codec of NVDEC_CODECS, 8-bit 4:2:0 of even size, a
    known colour matrix): (what the GPU is to decode: the file, the frames' positions in presentation order, the
    colour, the quarter turns, the size; the frames' times). Only the packets are read, and the first frame decoded
    for its colour and display matrix. (None, None) for anything else (bytes, frame folders, other codecs): read it
    with read_frames."""
    if not isinstance(source, (str, os.PathLike)) or is_frame_folder(source):
        return None, None
    with open_media(source) as container:
        stream = video_stream(container)
        if stream.codec_context.name not in NVDEC_CODECS:
            return None, None
        index = index_frames(container, stream)
        if not len(index.keyframes):
            raise ItemError("the video has no keyframe to start decoding from")
        container.seek(int(index.keyframes[0]), stream=stream)
        first = next(container.decode(stream), None)
        colour = first and nv12_colour(first)
        if not colour:
            return None, None
        wanted = pick(index.times)
        plan = {"source": str(source), "positions": wanted.tolist(), "frames": len(index.pts),
                "matrix": colour.matrix, "full_range": colour.full_range, "turns": quarter_turns(first), "size": size}
        return plan, index.times[wanted]


def read_audio(source) -> tuple[np.ndarray, int, float]:
    """(samples [channels, n] float32, sample rate, time of the first sample in seconds) of the first audio track,
    decoded whole: audio decoding is cheap, and fbank windows cover the entire track."""
    if is_frame_folder(source):
        raise ItemError("a frame folder has no audio")
    with open_media(source) as container:
        if not container.streams.audio:
            raise ItemError("no audio track")
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")  # sample format only: keeps the rate and the channels
        packets = list(container.demux(stream))
        check_complete(container, stream, sum(map(is_data, packets)))  # before decoding: a cut packet fails there
        chunks, start = [], None
        for packet in packets:
            for frame in packet.decode():
                if start is None:
                    start = frame.time
                chunks += [f.to_ndarray() for f in to_float.resample(frame)]
        if not chunks:
            raise ItemError("the audio track has no samples")
        return np.concatenate(chunks, axis=1), stream.sample_rate, float(start)
