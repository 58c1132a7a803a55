"""Audio windows for the audio encoder, the ImageBind recipe PAVE uses: 16 kHz mono, 2 s windows every 1 s,
128-bin kaldi fbank per window padded/cropped to 204 frames, normalised with ImageBind's mean/std. All in float32
from the decoded samples; no lossy intermediate file. Mono is the mean of the channels, or one channel (`channel`);
the windows either cover the whole track or are the PAVE release's (`windows`): channel 0 and "official" make
windows as the released ImageBind features' (docs/PAPER_TASKS.md §1(e))."""
from dataclasses import asdict, dataclass, fields

import numpy as np

from .errors import ItemError

# "cover": windows until one reaches the track's end, the last one possibly shorter (zero-padded like ImageBind's);
# "official": the PAVE release's, whole windows only (AudioWindows.__call__ has the rule).
AUDIO_WINDOWS = ("cover", "official")
# Left out of params() at their defaults, so that versions stored before these options existed keep their ids.
UNLISTED_AT_DEFAULT = ("channel", "windows")


@dataclass(frozen=True)
class AudioWindows:
    sample_rate: int = 16000
    window_s: float = 2.0
    hop_s: float = 1.0
    num_mel_bins: int = 128
    target_length: int = 204
    mean: float = -4.268
    std: float = 9.138
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    channel: int | None = None  # None: the mean of the channels; k: channel k alone (the release read channel 0)
    windows: str = AUDIO_WINDOWS[0]

    def __post_init__(self):
        if round(self.hop_s * 1000) % round(self.frame_shift_ms):
            raise ValueError(f"hop {self.hop_s}s must be a whole number of {self.frame_shift_ms} ms fbank shifts")
        if self.windows not in AUDIO_WINDOWS:
            raise ValueError(f"unknown audio-windows {self.windows!r}; known: {', '.join(AUDIO_WINDOWS)}")
        if self.channel is not None and self.channel < 0:
            raise ValueError(f"audio-channel must be at least 0, got {self.channel}")

    def params(self) -> dict:
        defaults = {f.name: f.default for f in fields(self)}
        return {k: v for k, v in asdict(self).items() if k not in UNLISTED_AT_DEFAULT or v != defaults[k]}

    def __call__(self, samples: np.ndarray, sample_rate: int, start: float):
        """(fbank [N, target_length, num_mel_bins] float32, t_start [N], t_end [N]) for a track of `samples`
        [channels, n] at `sample_rate` whose first sample is at `start` seconds. Window k spans
        [start + k*hop, start + k*hop + window]. "cover": clipped to the track, windows are added until one reaches
        the end of the track, so together they cover all of it (a last, shorter window is zero-padded like
        ImageBind's). "official": only the windows that fit in the track's whole seconds, i.e. the release's
        [i, i + 2] s for i < int(T) - 1 at 2 s every 1 s."""
        import torch  # here: the options above are read by `pave materialize --help`, which imports no torch
        import torchaudio

        channels = len(samples)
        if self.channel is None:
            wave = torch.from_numpy(samples).mean(0, keepdim=True)
        elif self.channel < channels:
            wave = torch.from_numpy(samples[self.channel : self.channel + 1])
        else:
            raise ItemError(f"no channel {self.channel} in a track of {channels} channel{'s' * (channels > 1)} "
                            f"(--audio-channel {self.channel}); give a channel below {channels}, or leave "
                            f"--audio-channel out to average the channels")
        wave = torchaudio.functional.resample(wave, sample_rate, self.sample_rate)
        n = wave.shape[1]
        window, hop = round(self.window_s * self.sample_rate), round(self.hop_s * self.sample_rate)
        frame, shift = (round(ms * self.sample_rate / 1000) for ms in (self.frame_length_ms, self.frame_shift_ms))
        if n < frame:
            raise ItemError(f"audio too short: {n / self.sample_rate:.3f}s, less than one fbank frame")
        # One fbank over the whole track, sliced per window: with dither 0 every fbank frame depends only on its
        # own 25 ms of samples, and the hop is a whole number of frame shifts, so each slice equals the fbank of
        # its window computed alone (tests/pipelines check it) at half the cost for 2 s windows and 1 s hop.
        fbank = torchaudio.compliance.kaldi.fbank(
            wave, sample_frequency=self.sample_rate, htk_compat=True, use_energy=False, window_type="hanning",
            num_mel_bins=self.num_mel_bins, dither=0.0, frame_length=self.frame_length_ms,
            frame_shift=self.frame_shift_ms,
        )
        if self.windows == "cover":
            count = 1 + max(0, -(-(n - window) // hop))
        else:
            # T is the decoded track's own length, n / sample_rate, and the windows count from its first sample: the
            # release made them from the extracted audio file alone. So a track that starts late has its windows
            # from its start on (t_start says where on the video's timeline), and a track shorter or longer than
            # the video has the windows of its own length; the video's duration never enters. (The release measured
            # an mp3 that moviepy re-encoded from the file, whose length need not be the track's to the sample:
            # where the two straddle a whole second, the release has one window more or fewer.)
            whole = n // self.sample_rate * self.sample_rate
            count = (whole - window) // hop + 1 if whole >= window else 0
            if not count:
                raise ItemError(f"a track of {n / self.sample_rate:g}s: the official windows need at least "
                                f"{self.window_s:g}s (the release has no features for it either); use "
                                f"--audio-windows cover")
        starts = np.arange(count) * hop
        ends = np.minimum(starts + window, n)
        frames_per_window = (window - frame) // shift + 1
        out = torch.zeros(count, self.target_length, self.num_mel_bins)
        for k, first in enumerate(starts // shift):
            rows = fbank[first : first + min(frames_per_window, self.target_length)]
            out[k, : len(rows)] = rows
        out = (out - self.mean) / self.std
        return out.numpy(), start + starts / self.sample_rate, start + ends / self.sample_rate
