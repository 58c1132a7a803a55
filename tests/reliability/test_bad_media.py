"""One materialization job (video + audio) over good corpus takes mixed with unusual and broken media
(media_cases.py): every unusable item is a failure row that names it and says why, every usable one is stored with
the values an independent decode gives, and nothing is stored in place of anything else."""
import shutil

import av
import numpy as np
import pytest
import torch
from media_cases import CASES, HIGH_HZ, LOW_HZ

from featurestore import FeatureStore
from pipelines.corpus import load_truth
from pipelines.encoders import audio_encoder, vision_encoder
from pipelines.materialize import Resources, Settings, materialize
from pipelines.media import read_audio
from pipelines.sources import read_items

pytestmark = pytest.mark.timeout(300)

GOOD = ["v0000", "v0001", "v0002", "v0003"]  # CFR takes, the VFR one (v0002), the one starting at 1 s (v0003)
SETTINGS = Settings(frames=4)
MODALITIES = ("video", "audio")
BY_ID = {case.id: case for case in CASES}


def expected(modality: str, outcome: str) -> list[str]:
    """Ids of the items whose `modality` must be stored ("ok"), or must fail ("failed")."""
    ids = [c.id for c in CASES if (getattr(c, modality) == "ok") == (outcome == "ok")]
    return sorted(ids + GOOD) if outcome == "ok" else sorted(ids)


@pytest.fixture(scope="module")
def media_dir(corpus, tmp_path_factory):
    directory = tmp_path_factory.mktemp("media")
    for video_id in GOOD:
        shutil.copy(corpus / "videos" / f"{video_id}.mp4", directory)
    for case in CASES:
        case.write(directory)
    return directory


@pytest.fixture(scope="module")
def job(media_dir, ray_local, tmp_path_factory):
    """Small parts and batches, so that bad items share prepare tasks, encoder batches and parts with good ones."""
    store = tmp_path_factory.mktemp("store")
    summary = materialize(read_items(str(media_dir)), str(store), MODALITIES, settings=SETTINGS,
                          resources=Resources(part_items=3, batch_size=4))
    return FeatureStore(str(store)), summary


def test_every_item_is_accounted_for(job):
    store, summary = job
    for modality in MODALITIES:
        version = store.version(modality)
        assert version.items() == expected(modality, "ok")
        assert sorted(version.failures()) == expected(modality, "failed")
        assert summary.counts[modality] == {"ok": len(expected(modality, "ok")),
                                            "failed": len(expected(modality, "failed")), "skipped": 0}
        assert summary.failures[modality] == version.failures()
        assert version.verify() == []
    assert (summary.exit_code(), summary.exit_code(strict=True)) == (0, 1)


@pytest.mark.parametrize("case,modality", [(c, m) for c in CASES for m in MODALITIES if getattr(c, m) != "ok"],
                         ids=lambda value: getattr(value, "id", value))
def test_a_failure_row_names_the_item_and_the_reason(job, media_dir, case, modality):
    reason = job[0].version(modality).failures()[case.id]
    assert reason.startswith(f"{modality} of {case.id!r} ({media_dir / case.file}): ")
    assert getattr(case, modality) in reason


@pytest.fixture(scope="module")
def encoders():
    return vision_encoder(None, "full", seed=SETTINGS.seed), audio_encoder(None, SETTINGS.audio, SETTINGS.seed)


def decode_upright(path, rotation: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's PyAV time and pixels (resized as the job resizes), turned upright by the rotation the test
    wrote: a plain full decode, independent of the job's index-and-seek decoder."""
    with av.open(str(path)) as container:
        frames = [(f.time, f.to_ndarray(format="rgb24", width=size, height=size, interpolation="BICUBIC"))
                  for f in container.decode(video=0)]
    return np.array([t for t, _ in frames]), np.stack([np.rot90(image, rotation // 90) for _, image in frames])


def media_path(media_dir, video_id):
    return next(media_dir.glob(f"{video_id}.*"))


@pytest.mark.parametrize("video_id", expected("video", "ok"))
def test_stored_video_is_the_frames_pyav_decodes_at_their_times(job, media_dir, encoders, video_id):
    """HEVC, VP9, MPEG-4 Part 2 in AVI, Matroska under .mp4, a turned video, VFR and late-start takes alike."""
    rotation = BY_ID[video_id].rotation if video_id in BY_ID else 0
    times, images = decode_upright(media_path(media_dir, video_id), rotation, encoders[0].size)
    rows = job[0].version("video").get(video_id)
    picks = np.searchsorted(times, np.linspace(times[0], times[-1], SETTINGS.frames) + 1e-9, side="right") - 1
    np.testing.assert_array_equal(rows.t_start, times[picks])
    with torch.no_grad():
        tokens = encoders[0](torch.from_numpy(images[picks])).numpy()
    np.testing.assert_allclose(rows.tokens.astype(np.float32), tokens, atol=2e-3)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_a_turned_video_is_stored_upright(job):
    """The display matrix of rotated.mp4 turns its sideways frames upright: its tokens are those of the same
    picture filmed upright (upright.mp4), up to coding noise."""
    video = job[0].version("video")
    turned, upright = (video.get(name).tokens.astype(np.float32) for name in ("rotated", "upright"))
    assert relative(turned, upright) < 0.15  # sideways: about 1.0; another frame of the same video: about 0.4


@pytest.mark.parametrize("video_id", expected("audio", "ok"))
def test_stored_audio_is_the_items_own_windows(job, media_dir, encoders, video_id):
    rows = job[0].version("audio").get(video_id)
    fbank, t_start, t_end = SETTINGS.audio(*read_audio(str(media_path(media_dir, video_id))))
    np.testing.assert_array_equal(rows.t_start, t_start)
    np.testing.assert_array_equal(rows.t_end, t_end)
    with torch.no_grad():
        tokens = encoders[1](torch.from_numpy(fbank)).numpy()
    np.testing.assert_allclose(rows.tokens.astype(np.float32), tokens, atol=2e-3)


def pitch(corpus, video_id: str) -> float:
    return BY_ID[video_id].hz if video_id in BY_ID else load_truth(corpus, video_id)["audio"]["segments"][0][2]


@pytest.mark.parametrize("video_id", expected("audio", "ok"))
def test_audio_of_any_rate_and_layout_has_the_pitch_of_its_48khz_stereo_reference(job, corpus, video_id):
    """8 / 16 / 22.05 / 44.1 / 48 kHz, mono, stereo and 5.1, AAC, Opus and MP3, all resampled to 16 kHz mono:
    each full 2 s window is within 3% of the reference tone of its pitch, and less than half as far from it as
    from the other."""
    audio = job[0].version("audio")
    references = {hz: audio.get(name).tokens[0].astype(np.float32)
                  for hz, name in ((LOW_HZ, "reference_low"), (HIGH_HZ, "reference_high"))}
    rows = audio.get(video_id)
    full = np.isclose(rows.t_end - rows.t_start, SETTINGS.audio.window_s)
    assert full.sum() >= 1
    hz = pitch(corpus, video_id)
    other = next(h for h in references if h != hz)
    for token in rows.tokens[full].astype(np.float32):
        near, far = relative(token, references[hz]), relative(token, references[other])
        assert near < 0.03 and near < 0.5 * far, (near, far)
