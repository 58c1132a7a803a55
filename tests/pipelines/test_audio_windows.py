"""The audio options that reproduce the PAVE release's windowing (--audio-channel, --audio-windows): one channel
against the mean on a stereo file with a different tone per channel, the release's window count and spans, and
their place in the fingerprint and the store listing. Real PyAV, real kaldi fbank, real Ray for the CLI."""
import shutil
from fractions import Fraction

import av
import numpy as np
import pytest

from featurestore import FeatureStore
from jobs.cli import main
from pipelines.audio import AudioWindows
from pipelines.materialize import MODALITIES, Settings
from pipelines.media import ItemError, read_audio

LEFT_HZ, RIGHT_HZ, RATE = 330.0, 1760.0, 48000


def write_stereo(path, seconds: float = 3.0) -> None:
    """AAC stereo, audio only: a LEFT_HZ tone on channel 0, a RIGHT_HZ tone on channel 1, both at amplitude 0.5."""
    t = np.arange(round(seconds * RATE)) / RATE
    samples = (0.5 * np.sin(2 * np.pi * np.array([[LEFT_HZ], [RIGHT_HZ]]) * t)).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=RATE, layout="stereo")
        for i in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i : i + 1024]), format="fltp",
                                               layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = RATE, i, Fraction(1, RATE)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def mel_bin(hz: float, bins: int = 128, low: float = 20.0, high: float = 8000.0) -> int:
    """The kaldi (HTK-mel) filter whose centre is nearest `hz`, for 16 kHz audio."""
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    centres = mel(low) + np.arange(1, bins + 1) * (mel(high) - mel(low)) / (bins + 1)
    return int(np.abs(centres - mel(hz)).argmin())


def test_one_channel_has_its_own_tone_and_the_mean_has_both_at_half_amplitude(tmp_path):
    write_stereo(tmp_path / "stereo.mp4")
    samples, rate, start = read_audio(str(tmp_path / "stereo.mp4"))
    assert samples.shape[0] == 2
    std = AudioWindows().std
    # Mel level of each tone's bin, over the frames of the first window's steady middle.
    level = {channel: AudioWindows(channel=channel)(samples, rate, start)[0][0, 20:180].mean(0)
             for channel in (0, 1, None)}
    left, right = mel_bin(LEFT_HZ), mel_bin(RIGHT_HZ)
    assert level[0].argmax() == left and level[1].argmax() == right
    # Channel 0 alone holds no trace of channel 1's tone: that bin is as quiet as channel 1's own bin at the left tone.
    assert level[0][right] < level[0][left] - 1.5 and level[0][right] == pytest.approx(level[1][left], abs=0.05)
    # The mean has both tones at half amplitude: a quarter of the power, log(4) lower before the normalisation.
    assert level[None][left] == pytest.approx(level[0][left] - np.log(4) / std, abs=0.01)
    assert level[None][right] == pytest.approx(level[1][right] - np.log(4) / std, abs=0.01)
    with pytest.raises(ItemError, match=r"no channel 2 in a track of 2 channels \(--audio-channel 2\)"):
        AudioWindows(channel=2)(samples, rate, start)


def test_official_windows_are_the_releases_count_and_cover_windows_reach_the_end():
    """60.5 s starting at 0.25 s: the release's int(60.5) - 1 = 59 whole windows against 60 that cover the track."""
    noise = np.random.default_rng(0).standard_normal((1, 60 * 16000 + 8000)).astype(np.float32)
    fbank, t_start, t_end = AudioWindows(windows="official")(noise, 16000, 0.25)
    np.testing.assert_array_equal(t_start, 0.25 + np.arange(59))
    np.testing.assert_array_equal(t_end, 2.25 + np.arange(59))
    cover, c_start, c_end = AudioWindows()(noise, 16000, 0.25)
    np.testing.assert_array_equal(c_start, 0.25 + np.arange(60))
    np.testing.assert_array_equal(c_end, np.minimum(2.25 + np.arange(60), 60.75))  # the last: [59.25, 60.75]
    np.testing.assert_array_equal(fbank, cover[:59])  # the same windows, one fewer
    # At the edges: 2 s exactly is one window, 61 s exactly sixty, less than 2 s none (the release has none either).
    assert len(AudioWindows(windows="official")(noise[:, : 2 * 16000], 16000, 0.0)[1]) == 1
    assert len(AudioWindows(windows="official")(np.zeros((1, 61 * 16000), np.float32), 16000, 0.0)[1]) == 60
    with pytest.raises(ItemError, match=r"a track of 1.99994s: the official windows need at least 2s"):
        AudioWindows(windows="official")(noise[:, : 2 * 16000 - 1], 16000, 0.0)


def test_each_option_makes_its_own_version_and_the_defaults_keep_the_earlier_ids():
    audio = MODALITIES["audio"]
    variants = [AudioWindows(), AudioWindows(channel=0), AudioWindows(windows="official"),
                AudioWindows(channel=0, windows="official")]
    ids, attrs = [], []
    for windows in variants:
        settings = Settings(audio=windows)
        schema, fp = audio.schema_and_fingerprint(settings, audio.encoder(None, settings))
        ids.append(fp.id)
        attrs.append({k: schema.attrs.get(k) for k in ("channel", "windows")})
    assert len(set(ids)) == 4
    # Left out at their defaults, so that the versions stored before these options keep their fingerprints.
    assert attrs == [{"channel": None, "windows": None}, {"channel": 0, "windows": None},
                     {"channel": None, "windows": "official"}, {"channel": 0, "windows": "official"}]


def test_cli_options_make_a_second_version_and_a_missing_channel_fails_that_item(corpus, tmp_path, ray_local,
                                                                                  capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_stereo(videos / "stereo.mp4")
    shutil.copy(corpus / "videos" / "v0000.mp4", videos)  # a mono track
    store = tmp_path / "store"
    args = ["materialize", "--input", str(videos), "--store", str(store), "--modalities", "audio"]
    assert main(args + ["--audio-channel", "1", "--audio-windows", "official"]) == 0  # one item stored
    out = capsys.readouterr().out
    assert "FAILED audio x1: no channel 1 in a track of 1 channel (--audio-channel 1); " in out, out
    assert "[v0000]" in out
    assert main(args) == 0
    versions = {tuple(sorted(v.schema.attrs.items() & {("channel", 1), ("windows", "official")})): v
                for v in FeatureStore(str(store)).versions("audio")}
    assert set(versions) == {(), (("channel", 1), ("windows", "official"))}  # two versions, the options recorded
    official = FeatureStore(str(store)).version("audio", versions[(("channel", 1), ("windows", "official"))]
                                                .fingerprint_id)
    assert official.committed_items() == {"stereo"} and set(official.failures()) == {"v0000"}
    assert official.failures()["v0000"].startswith(f"audio of 'v0000' ({videos / 'v0000.mp4'}): no channel 1 in a "
                                                   f"track of 1 channel")
    rows = official.get("stereo")  # 3.008 s: two whole windows, where covering the track takes three
    np.testing.assert_array_equal(rows.t_start, [0.0, 1.0])
    np.testing.assert_array_equal(rows.t_end, [2.0, 3.0])
    assert len(FeatureStore(str(store)).version("audio", versions[()].fingerprint_id).get("stereo").t_start) == 3
    assert main(["store", "ls", str(store)]) == 0
    assert "'channel': 1, 'windows': 'official'" in capsys.readouterr().out
    assert main(args + ["--audio-channel", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pave materialize: audio-channel must be at least 0, got -1"], err
