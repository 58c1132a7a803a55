"""Unusual and broken media for the reliability tests, written with PyAV: every file shows the same kind of picture
(an asymmetric one, so that a wrong rotation shows) and, when it has sound, a pure tone of known pitch.

Each case says what the materialization job must do with it, per modality: "ok" (stored, with values the tests
check) or a phrase that its failure reason must contain."""
import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

from pipelines.corpus import PITCH_HZ

WIDTH, HEIGHT, FPS, SECONDS = 64, 48, 10, 3.0
LOW_HZ, HIGH_HZ = PITCH_HZ["low"], PITCH_HZ["high"]
FRAME_TIMES = tuple(k / FPS for k in range(int(SECONDS * FPS)))
# Ten hours in a few sparse frames: a header that promises hours, a file of a few kB.
LONG_TIMES = FRAME_TIMES[:10] + tuple(3600.0 * k for k in range(1, 11))


def picture(t: float) -> np.ndarray:
    """Red left half, blue top band, a white square moving right: no turn or mirror maps it onto itself."""
    image = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    image[:, : WIDTH // 2] = (200, 40, 40)
    image[: HEIGHT // 4] = (40, 40, 200)
    x = int(t / SECONDS * (WIDTH - 12))
    image[HEIGHT // 2 : HEIGHT // 2 + 12, x : x + 12] = 255
    return image


@dataclass(frozen=True)
class Media:
    """One file to write: codecs (None: no such track), container, audio format, frame times, display matrix."""

    video: str | None = "libx264"
    audio: str | None = "aac"
    container: str = "mp4"
    rate: int = 48000
    layout: str = "stereo"
    hz: float = HIGH_HZ
    frame_times: tuple[float, ...] = FRAME_TIMES
    time_base: Fraction = Fraction(1, 1000)
    rotation: int = 0  # counter-clockwise degrees that turn the stored frames upright, as PyAV counts them
    mirror: bool = False
    faststart: bool = False  # the index (moov) before the data, as streaming-friendly MP4s have it

    def write(self, path: Path) -> None:
        options = {"movflags": "faststart"} if self.faststart else {}
        with av.open(str(path), "w", format=self.container, options=options) as container:
            video = self._video_stream(container) if self.video else None
            audio = container.add_stream(self.audio, rate=self.rate, layout=self.layout) if self.audio else None
            if video:
                for t in self.frame_times:
                    # Stored turned the other way, so that the display matrix brings it back upright.
                    image = np.ascontiguousarray(np.rot90(picture(t), -self.rotation // 90))
                    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                    frame.pts, frame.time_base = round(t / self.time_base), self.time_base
                    container.mux(video.encode(frame))
                container.mux(video.encode())
            if audio:
                self._encode_tone(container, audio)

    def _video_stream(self, container):
        # The nominal rate steers the encoders' rate control; the frame pts carry the real timing.
        stream = container.add_stream(self.video, rate=FPS)
        stream.width, stream.height = (HEIGHT, WIDTH) if self.rotation % 180 else (WIDTH, HEIGHT)
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = self.time_base
        stream.thread_count = 1
        if self.video == "libx265":
            stream.codec_context.options = {"x265-params": "log-level=error"}
        if self.rotation or self.mirror:
            stream.set_display_rotation(self.rotation, hflip=self.mirror)
        return stream

    def _encode_tone(self, container, stream) -> None:
        n = round(SECONDS * self.rate)
        wave = (0.5 * np.sin(2 * np.pi * self.hz * np.arange(n) / self.rate)).astype(np.float32)
        samples = np.tile(wave, (stream.layout.nb_channels, 1))  # the same tone on every channel
        step = 1024  # PyAV re-frames to the codec's frame size
        for i in range(0, n, step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i : i + step]), format="fltp",
                                               layout=self.layout)
            frame.sample_rate, frame.pts, frame.time_base = self.rate, i, Fraction(1, self.rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def cut_after(seconds: float) -> Callable[[Path], None]:
    """Cut the file where its data for the first `seconds` ends: with the index first, the header still lists
    every sample, and every packet left is whole."""

    def cut(path: Path) -> None:
        with av.open(str(path)) as container:
            end = max(p.pos + p.size for p in container.demux() if p.size and p.pts is not None
                      and p.pts * p.time_base < seconds)
        path.write_bytes(path.read_bytes()[:end])

    return cut


def cut_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def png(path: Path) -> None:
    buffer = io.BytesIO()
    av.VideoFrame.from_ndarray(picture(0.0), format="rgb24").to_image().save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


@dataclass(frozen=True)
class Case:
    file: str  # the item id is the file name without its suffix
    video: str  # "ok", or a phrase of the failure reason
    audio: str
    media: Media | None = None
    then: Callable[[Path], None] | None = None  # damages the written file, or writes it when there is no media

    @property
    def id(self) -> str:
        return self.file.rsplit(".", 1)[0]

    @property
    def rotation(self) -> int:
        return self.media.rotation if self.media else 0

    @property
    def hz(self) -> float | None:
        """The pitch of the file's tone, when it has one."""
        return self.media.hz if self.media and self.media.audio else None

    def write(self, directory: Path) -> None:
        path = directory / self.file
        if self.media:
            self.media.write(path)
        if self.then:
            self.then(path)


NO_AUDIO, ZERO, INVALID = "no audio track", "zero-length file", "Invalid data found when processing input"
SINGLE_FRAME = "a single video frame: a still image, not a video"

CASES = [
    # Unusable for a modality: a failure row that names the item and says why, nothing stored.
    Case("zero_byte.mp4", ZERO, ZERO, then=lambda path: path.write_bytes(b"")),
    Case("truncated_tail.mp4", INVALID, INVALID, Media(), cut_half),  # the index, at the end, is cut off
    Case("truncated_faststart.mp4", "truncated: the header lists 30 video packets over 3.0 s, the file holds 17",
         "truncated: the header lists 142 audio packets over 3.0 s, the file holds 72", Media(faststart=True),
         cut_after(1.5)),
    Case("long_header.mp4", "truncated: the header lists 20 video packets over 28800.3 s, the file holds 12",
         NO_AUDIO, Media(audio=None, frame_times=LONG_TIMES, faststart=True), cut_after(1.0)),
    Case("not_media.mp4", INVALID, INVALID, then=lambda path: path.write_text("not a video\n" * 40)),
    Case("image_as_mp4.mp4", SINGLE_FRAME, NO_AUDIO, then=png),  # a PNG under a video extension
    Case("one_frame.mp4", SINGLE_FRAME, "ok", Media(frame_times=(0.0,), hz=LOW_HZ)),
    Case("mirrored.mp4", "the display matrix mirrors the picture", "ok", Media(mirror=True)),
    Case("silent.mp4", "ok", NO_AUDIO, Media(audio=None)),
    Case("audio_only.mp4", "no video track", "ok", Media(video=None, hz=LOW_HZ)),
    # Valid but unusual: stored, with values checked against an independent decode and the reference tones.
    Case("hevc.mp4", "ok", "ok", Media(video="libx265")),
    Case("vp9.webm", "ok", "ok", Media(video="libvpx-vp9", audio="libopus", container="webm", hz=LOW_HZ)),
    Case("mpeg4_part2.avi", "ok", "ok", Media(video="mpeg4", audio="libmp3lame", container="avi", rate=44100,
                                              time_base=Fraction(1, FPS))),
    Case("matroska_as_mp4.mp4", "ok", "ok", Media(container="matroska", hz=LOW_HZ)),
    Case("rotated.mp4", "ok", "ok", Media(rotation=90)),
    Case("upright.mp4", "ok", "ok", Media()),  # rotated.mp4 as it should come out
    Case("audio_8khz_mono.mp4", "ok", "ok", Media(rate=8000, layout="mono", hz=LOW_HZ)),
    Case("audio_22khz.mp4", "ok", "ok", Media(rate=22050)),
    Case("audio_44khz_mono.mp4", "ok", "ok", Media(rate=44100, layout="mono", hz=LOW_HZ)),
    Case("audio_48khz_5_1.mp4", "ok", "ok", Media(layout="5.1")),
    # What every other tone is compared with: 48 kHz stereo, one per pitch.
    Case("reference_low.mp4", "ok", "ok", Media(hz=LOW_HZ)),
    Case("reference_high.mp4", "ok", "ok", Media(hz=HIGH_HZ)),
]
