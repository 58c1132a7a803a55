"""Decode the corpus fixture's MP4s with PyAV and check them against truth/<id>.json."""
import numpy as np
import pytest

from corpus_probe import colour_centroid, decode_audio, decode_video, dominant_hz, expected_centre
from pipelines.corpus import FPS, PITCH_HZ, SAMPLE_RATES, load_manifest, load_truth

IDS = [f"v{i:04d}" for i in range(8)]  # the `corpus` fixture has 8 takes


@pytest.fixture(scope="module")
def truths(corpus):
    return {video_id: load_truth(corpus, video_id) for video_id in IDS}


def test_the_fixture_covers_every_kind_of_take(corpus, truths):
    assert [row["id"] for row in load_manifest(corpus)] == IDS
    videos = [t["video"] for t in truths.values()]
    assert {v["fps"] for v in videos} == {*FPS, "vfr"}
    assert any(v["start_time"] > 0 for v in videos)
    assert {t["audio"]["sample_rate"] for t in truths.values()} == set(SAMPLE_RATES)
    assert {t["audio"]["channels"] for t in truths.values()} == {1, 2}
    assert any(len(t["audio"]["segments"]) == 2 for t in truths.values())
    assert any(len(t["exo"]) == 2 for t in truths.values())
    assert all(3 <= v["duration"] <= 8 for v in videos)


@pytest.mark.parametrize("video_id", IDS)
def test_main_video_stream_matches_truth(corpus, truths, video_id):
    truth = truths[video_id]["video"]
    info, times, frames = decode_video(corpus / truth["path"])
    assert (info["codec"], info["width"], info["height"]) == ("h264", truth["width"], truth["height"])
    assert info["n_audio"] == 1
    assert len(frames) == truth["n_frames"]
    np.testing.assert_allclose(times, truth["pts"], atol=1e-6)
    assert times[0] == pytest.approx(truth["start_time"], abs=1e-6)
    if truth["fps"] == "vfr":
        assert len(set(np.round(np.diff(times), 4))) > 5  # really irregular
    else:
        assert info["average_rate"] == truth["fps"]
        np.testing.assert_allclose(np.diff(times), 1 / truth["fps"], atol=1e-6)


@pytest.mark.parametrize("video_id", IDS)
def test_main_frames_show_the_top_shape_where_truth_says(corpus, truths, video_id):
    truth = truths[video_id]
    scene, top = truth["scene"], truth["scene"]["shapes"][-1]  # drawn last, so never covered
    _, times, frames = decode_video(corpus / truth["video"]["path"])
    for t, image in list(zip(times, frames))[::5]:
        centre = colour_centroid(image, top["rgb"])
        assert centre is not None, f"{top['colour']} shape missing at t={t}"
        np.testing.assert_allclose(centre, expected_centre(scene, top, t, truth["video"]["width"]), atol=1.5)


@pytest.mark.parametrize("video_id", IDS)
def test_exo_views_show_the_scene_offset_s_later(corpus, truths, video_id):
    truth = truths[video_id]
    scene, top, main_width = truth["scene"], truth["scene"]["shapes"][-1], truth["video"]["width"]
    row = next(r for r in load_manifest(corpus) if r["id"] == video_id)
    assert row["exo"] == [{"view": v["view"], "path": v["path"], "offset_s": v["offset_s"]} for v in truth["exo"]]
    for view in truth["exo"]:
        assert view["offset_s"] > truth["video"]["start_time"]
        info, times, frames = decode_video(corpus / view["path"])
        assert info == {"codec": "h264", "width": view["width"], "height": view["height"], "average_rate": view["fps"],
                        "n_audio": 0}
        np.testing.assert_allclose(times, np.arange(view["n_frames"]) / view["fps"], atol=1e-6)
        assert view["offset_s"] + times[-1] <= truth["video"]["start_time"] + truth["video"]["duration"]
        errors, errors_without_offset = [], []
        for tau, image in list(zip(times, frames))[::5]:
            centre = colour_centroid(image, top["rgb"])
            assert centre is not None, f"{top['colour']} shape missing at tau={tau}"
            errors.append(np.abs(centre - expected_centre(scene, top, tau + view["offset_s"], main_width, view)).max())
            errors_without_offset.append(np.abs(centre - expected_centre(scene, top, tau, main_width, view)).max())
        assert max(errors) < 1.5
        assert np.mean(errors_without_offset) > 2 * max(errors)  # the offset is visible in the content


@pytest.mark.parametrize("video_id", IDS)
def test_audio_is_the_truth_tone(corpus, truths, video_id):
    truth = truths[video_id]
    audio = truth["audio"]
    info, t0, samples = decode_audio(corpus / truth["video"]["path"])
    rate = audio["sample_rate"]
    assert info == {"codec": "aac", "sample_rate": rate, "channels": audio["channels"]}
    assert audio["segments"][0][2] == PITCH_HZ[truth["answer"]]
    first = round((audio["start_time"] - t0) * rate)  # AAC priming before a late start stays in the stream
    assert 0 <= samples.shape[1] - first - audio["n_samples"] < 2048  # at most the encoder's last-frame padding
    onset = t0 + np.argmax(np.abs(samples[0]) > 0.25) / rate
    assert onset == pytest.approx(audio["start_time"], abs=0.002)
    for start, end, hz in audio["segments"]:
        # 0.1 s margins keep the pitch change and the codec's edges out of the window.
        window = slice(round((start + 0.1 - t0) * rate), round((end - 0.1 - t0) * rate))
        for channel in samples:
            assert dominant_hz(channel[window], rate) == pytest.approx(hz, abs=2.0)
