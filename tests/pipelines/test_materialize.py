"""What the materialization job stores, checked against an independent PyAV decode and the corpus truth."""
import av
import numpy as np
import pytest
import torch

from featurestore import FeatureStore
from pipelines.corpus import load_manifest, load_truth
from pipelines.corpus_rgbd import look_at_pose
from pipelines.encoders import vision_encoder

IDS = [f"v{i:04d}" for i in range(8)]


def frame_times(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.array([frame.time for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def store(materialized):
    return FeatureStore(str(materialized[0]))


def test_every_item_of_every_modality_is_stored(materialized, store):
    _, summary = materialized
    assert summary.counts == {m: {"ok": 8, "failed": 0, "skipped": 0} for m in ("video", "audio", "hfr", "exo", "3d")}
    assert summary.exit_code(strict=True) == 0
    for info in store.versions():
        assert info.n_ok == 8 and info.n_failed == 0
        assert "untrained" in info.spec["encoder"] and len(info.spec["weights_digest"]) == 64
        assert info.spec["dtype"] == "float16" and info.spec["transform_version"] == f"{info.modality}/2"
    video = store.version("video")
    assert (video.schema.tokens_per_step, video.schema.dim) == (64, 32)  # every patch of the tiny tower: 8x8
    assert video.fingerprint.spec["preprocessing"]["frames"] == 32
    assert store.version("audio").fingerprint.spec["preprocessing"]["target_length"] == 204


@pytest.mark.parametrize("video_id", IDS)
def test_video_rows_are_32_frames_at_pyav_times(corpus, store, video_id):
    """Includes the VFR take (v0002) and the take starting at 1 s (v0003)."""
    truth = load_truth(corpus, video_id)["video"]
    times = frame_times(corpus / truth["path"])
    np.testing.assert_array_equal(times, truth["pts"])
    rows = store.version("video").get(video_id)
    assert rows.tokens.shape == (32, 64, 32) and rows.tokens.dtype == np.float16
    np.testing.assert_array_equal(rows.t_start, rows.t_end)
    # Each stored time is exactly a decoded frame's time: the frame on screen at 32 uniform times.
    on_screen = np.searchsorted(times, np.linspace(times[0], times[-1], 32) + 1e-9, side="right") - 1
    np.testing.assert_array_equal(rows.t_start, times[on_screen])


def test_video_tokens_are_the_towers_features_of_those_frames_on_the_full_grid(corpus, store):
    """Recomputed here from a plain full decode (PIL-free: swscale resize as the job does) and the tower's own
    hidden states: every patch of the 8x8 grid, unpooled (the model projects, then pools, as HF does)."""
    rows = store.version("video").get("v0002")
    tower = vision_encoder(None, "full").tower
    with av.open(str(corpus / "videos" / "v0002.mp4")) as container:
        frames = {f.time: f.to_ndarray(format="rgb24", width=64, height=64, interpolation="BICUBIC")
                  for f in container.decode(video=0)}
    pixels = torch.from_numpy(np.stack([frames[t] for t in rows.t_start])).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        hidden = tower(pixel_values=(pixels - 0.5) / 0.5, output_hidden_states=True).hidden_states[-1]
    np.testing.assert_allclose(rows.tokens.astype(np.float32), hidden.numpy(), atol=2e-3)
    assert rows.tokens.shape == (32, 64, 32)


@pytest.mark.parametrize("video_id", ["v0002", "v0003", "v0006"])
def test_hfr_rows_are_frames_every_half_second(corpus, store, video_id):
    times = frame_times(corpus / "videos" / f"{video_id}.mp4")
    rows = store.version("hfr").get(video_id)
    assert rows.tokens.shape[1:] == (4, 32)  # 2x2 pooled
    targets = times[0] + np.arange(int((times[-1] - times[0]) * 2 + 1e-9) + 1) / 2
    expected = np.unique(times[np.searchsorted(times, targets + 1e-9, side="right") - 1])
    np.testing.assert_array_equal(rows.t_start, expected)


@pytest.mark.parametrize("video_id", IDS)
def test_audio_spans_tile_the_track_on_pyav_time(corpus, store, video_id):
    path = corpus / "videos" / f"{video_id}.mp4"
    with av.open(str(path)) as container:
        decoded = list(container.decode(audio=0))
    start = decoded[0].time
    end = start + sum(f.samples for f in decoded) / decoded[0].sample_rate
    truth = load_truth(corpus, video_id)["audio"]
    assert start == pytest.approx(truth["start_time"], abs=0.05)  # the late take's AAC priming is on screen time
    rows = store.version("audio").get(video_id)
    n = len(rows.t_start)
    assert rows.tokens.shape == (n, 1, 32) and n == 1 + int(np.ceil(end - start - 2.0 - 1e-6))
    np.testing.assert_allclose(rows.t_start, start + np.arange(n), atol=1e-9)
    np.testing.assert_allclose(rows.t_end[:-1], rows.t_start[:-1] + 2.0, atol=1e-9)
    assert rows.t_end[-1] == pytest.approx(end, abs=1 / 16000)


def full_windows(rows, t0, t1):
    """Tokens of the 2 s windows lying inside [t0, t1]."""
    inside = (rows.t_start >= t0 - 1e-6) & (rows.t_end <= t1 + 1e-6) & (rows.t_end - rows.t_start > 2 - 1e-6)
    return rows.tokens[inside, 0].astype(np.float32)


def test_a_tone_change_changes_the_audio_tokens(corpus, store):
    audio = store.version("audio")
    (t0, change, hz_before), (_, t1, hz_after) = load_truth(corpus, "v0004")["audio"]["segments"]
    rows = audio.get("v0004")
    before, after = full_windows(rows, t0, change), full_windows(rows, change, t1)
    assert len(before) >= 2 and len(after) >= 2 and hz_before != hz_after

    def distances(a, b):
        return np.linalg.norm(a[:, None] - b[None], axis=-1)

    within = max(distances(before, before).max(), distances(after, after).max())
    across = distances(before, after).min()
    assert within < 0.25 * across, (within, across)
    # And the tokens say which tone it is: the nearest window of the other takes (one tone each) has the same pitch.
    references = []
    for video_id in IDS:
        segments = load_truth(corpus, video_id)["audio"]["segments"]
        if video_id != "v0004" and len(segments) == 1:
            references += [(token, segments[0][2]) for token in full_windows(audio.get(video_id), *segments[0][:2])]
    tokens, pitches = np.stack([r[0] for r in references]), np.array([r[1] for r in references])
    assert set(pitches) == {hz_before, hz_after}
    for windows, hz in ((before, hz_before), (after, hz_after)):
        np.testing.assert_array_equal(pitches[distances(windows, tokens).argmin(1)], hz)


@pytest.mark.parametrize("video_id", ["v0000", "v0003"])
def test_exo_rows_are_per_view_frames_on_the_main_timeline(corpus, store, video_id):
    row = next(r for r in load_manifest(corpus) if r["id"] == video_id)
    stored = store.version("exo").get(video_id)
    assert np.all(np.diff(stored.t_start) >= 0)
    assert sorted(set(stored.extras["view"].tolist())) == [v["view"] for v in row["exo"]]
    for view in row["exo"]:
        times = frame_times(corpus / view["path"])
        mine = stored.t_start[stored.extras["view"] == view["view"]]
        assert len(mine) == 32
        on_screen = np.searchsorted(times, np.linspace(times[0], times[-1], 32) + 1e-9, side="right") - 1
        np.testing.assert_allclose(mine, times[on_screen] + view["offset_s"], atol=1e-12)
    # An exo video starts at its own time 0, which is main time offset_s.
    assert stored.t_start[0] == pytest.approx(min(v["offset_s"] for v in row["exo"]))


def surface_of(rgb, scene):
    """The truth surface (ground or object) drawn in colour `rgb`."""
    return next(s for s in [scene["ground"], *scene["objects"]] if list(s["rgb"]) == list(rgb))


def contains(surface, point, tol=1e-3) -> bool:
    """Whether `point` lies in the convex hull of the surface (where a mean of its points must be)."""
    centre = np.asarray(surface["centre"])
    if surface["kind"] == "sphere":
        return np.linalg.norm(point - centre) <= surface["radius"] + tol
    return bool(np.all(np.abs(point - centre) <= np.asarray(surface["half_size"]) + tol))


@pytest.mark.parametrize("video_id", ["v0001", "v0004"])
def test_3d_rows_back_project_onto_the_truth_scene(corpus, store, video_id):
    scene = load_truth(corpus, video_id)["rgbd"]
    with np.load(corpus / scene["path"]) as npz:
        rgbd = dict(npz)
    rows = store.version("3d").get(video_id)
    grid = 8
    assert rows.tokens.shape == (8, grid * grid, 32) and np.isfinite(rows.tokens).all()
    np.testing.assert_array_equal(rows.t_start, scene["times"])
    truth_poses = np.stack([look_at_pose(p, scene["cameras"]["look_at"]) for p in scene["cameras"]["positions"]])
    np.testing.assert_allclose(rows.extras["pose"], truth_poses, atol=1e-6)
    h, w = scene["height"], scene["width"]
    patch = (np.arange(h)[:, None] * grid // h) * grid + np.arange(w)[None] * grid // w
    inv_k = np.linalg.inv(np.asarray(scene["intrinsics"]))
    pure_patches = 0
    for k, pose in enumerate(truth_poses):
        depth, color = rgbd["depth"][k].astype(np.float64), rgbd["color"][k]
        v, u = np.nonzero(depth > 0)
        world = (np.stack([u, v, np.ones_like(u)], -1) @ inv_k.T * depth[v, u, None]) @ pose[:3, :3].T + pose[:3, 3]
        ids = patch[v, u]
        for p in range(grid * grid):
            hits = ids == p
            coverage = hits.sum() / (patch == p).sum()
            assert rows.extras["coverage"][k, p] == pytest.approx(coverage, abs=1e-6)
            if not hits.any():
                np.testing.assert_array_equal(rows.extras["xyz"][k, p], 0)
                continue
            np.testing.assert_allclose(rows.extras["xyz"][k, p], world[hits].mean(0), atol=1e-4)
            colours = np.unique(color[v[hits], u[hits]], axis=0)
            if coverage == 1 and len(colours) == 1:  # the whole patch sees one surface: its mean lies on/in it
                pure_patches += 1
                surface = surface_of(colours[0], scene)
                assert contains(surface, rows.extras["xyz"][k, p]), (k, p, surface["kind"])
                if surface is scene["ground"]:
                    assert abs(rows.extras["xyz"][k, p][2]) < 1e-4
    assert pure_patches > 100
