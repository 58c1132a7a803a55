"""Decoding and audio windows against an independent full PyAV decode and the corpus truth (no Ray)."""
from functools import partial

import av
import numpy as np
import pytest
import torch
import torchaudio

from pipelines.audio import AudioWindows
from pipelines.corpus import load_truth
from pipelines.media import ItemError, rate_frames, read_audio, read_frames, uniform_frames

IDS = [f"v{i:04d}" for i in range(8)]


def full_decode(path):
    """Every frame's time and pixels, decoding the whole stream the plain way."""
    with av.open(str(path)) as container:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return np.array([t for t, _ in frames]), [image for _, image in frames]


@pytest.mark.parametrize("video_id", IDS)
def test_sampled_frames_are_the_decoded_frames_at_their_true_times(corpus, video_id):
    truth = load_truth(corpus, video_id)["video"]  # CFR at 4 rates, one VFR take, one starting at 1 s
    path = corpus / truth["path"]
    times, images = full_decode(path)
    np.testing.assert_allclose(times, truth["pts"], atol=1e-9)
    for pick, n in ((partial(uniform_frames, n=32), 32), (partial(uniform_frames, n=5), 5),
                    (partial(rate_frames, fps=2.0), None)):
        frames, t = read_frames(str(path), pick, size=None)
        index = np.searchsorted(times, t)
        np.testing.assert_array_equal(times[index], t)  # exactly a decoded frame's time, not a target time
        for k, image in zip(index, frames):
            np.testing.assert_array_equal(image, images[k])
        if n:  # uniform in time from the first to the last frame: each pick is the frame on screen then
            assert len(t) == n and t[0] == times[0] and t[-1] == times[-1]
            targets = np.linspace(times[0], times[-1], n)
            np.testing.assert_array_equal(index, np.searchsorted(times, targets + 1e-9, side="right") - 1)
        else:  # 2 fps: one frame per 0.5 s step, never two at once
            assert len(t) == int((times[-1] - times[0]) * 2 + 1e-9) + 1
            assert np.all(np.diff(t) > 0) and np.all(np.diff(t) < 0.5 + 0.16)  # VFR gaps are up to 150 ms


def test_resized_frames_come_from_swscale(corpus):
    path = corpus / "videos" / "v0000.mp4"
    frames, _ = read_frames(str(path), partial(uniform_frames, n=3), size=24)
    assert frames.shape == (3, 24, 24, 3) and frames.dtype == np.uint8


def test_bad_inputs_raise_item_errors_with_reasons(corpus, tmp_path):
    video = (corpus / "videos" / "v0000.mp4").read_bytes()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ItemError, match="zero-length"):
        read_frames(str(empty), partial(uniform_frames, n=4), None)
    with pytest.raises(ItemError, match="zero-length"):
        read_audio(b"")
    with pytest.raises(ItemError, match="no audio track"):
        read_audio(str(corpus / "exo" / "v0000" / "view1.mp4"))  # exo views are silent
    with pytest.raises(av.error.InvalidDataError):  # the moov atom is at the end: a cut file does not open
        read_frames(video[: len(video) // 2], partial(uniform_frames, n=4), None)


@pytest.mark.parametrize("video_id", IDS)
def test_audio_windows_tile_the_track(corpus, video_id):
    samples, rate, start = read_audio(str(corpus / "videos" / f"{video_id}.mp4"))
    with av.open(str(corpus / "videos" / f"{video_id}.mp4")) as container:
        first = next(container.decode(audio=0)).time  # PyAV's own time of the first sample
    assert start == first
    fbank, t_start, t_end = AudioWindows()(samples, rate, start)
    end = start + samples.shape[1] / rate  # the decoded track's end
    assert fbank.shape == (len(t_start), 204, 128) and fbank.dtype == np.float32
    np.testing.assert_allclose(t_start, start + np.arange(len(t_start)), atol=1e-9)  # 1 s hop from the start
    np.testing.assert_allclose(t_end[:-1] - t_start[:-1], 2.0, atol=1e-9)  # 2 s windows
    assert t_end[-1] == pytest.approx(end, abs=1 / 16000) and t_end[-1] - t_start[-1] <= 2.0
    assert t_start[-1] < end - 1.0 + 1e-9 or len(t_start) == 1  # no window starts in the last second
    # Consecutive windows overlap, so their union is [start, end] with no gap.
    assert np.all(t_start[1:] < t_end[:-1])


def test_fbank_windows_equal_imagebind_per_window_fbank(corpus):
    """Slicing one whole-track fbank equals the fbank of each 2 s clip computed alone, bit for bit. ImageBind's
    waveform2melspec also subtracts the clip's mean first: kaldi's per-frame DC removal cancels it, up to float32
    rounding in near-silent mel bins (log of ~1e-7 energies)."""
    samples, rate, start = read_audio(str(corpus / "videos" / "v0004.mp4"))
    fbank, t_start, _ = AudioWindows()(samples, rate, start)
    wave = torchaudio.functional.resample(torch.from_numpy(samples).mean(0, keepdim=True), rate, 16000)

    def melspec(clip):
        ref = torchaudio.compliance.kaldi.fbank(
            clip, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
            num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10,
        )
        ref = torch.nn.functional.pad(ref, (0, 0, 0, 204 - len(ref))) if len(ref) < 204 else ref[:204]
        return ((ref + 4.268) / 9.138).numpy()

    assert len(t_start) == 7  # 7.4 s: the last window is [6, 7.4] s, zero-padded
    for k in range(len(t_start)):
        clip = wave[:, k * 16000 : k * 16000 + 32000]
        np.testing.assert_array_equal(fbank[k], melspec(clip))
        np.testing.assert_allclose(fbank[k], melspec(clip - clip.mean()), atol=2e-3)
