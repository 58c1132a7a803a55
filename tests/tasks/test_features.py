"""`pave store import`: the released feature files of the paper's tasks become store versions whose rows and
timestamps follow from how the files were made (tasks/features.py). Real Ray, real store, real torch files."""
import json

import av
import numpy as np
import pytest
import torch

from featurestore import FeatureStore


def stored(store, modality: str, item: str):
    features = FeatureStore(str(store)).version(modality).get(item)
    return features.to_torch(), features.t_start, features.t_end


def test_imagebind_audio_files_become_2_s_windows_every_second(pave, ray_local, tmp_path):
    real, synthetic = tmp_path / "Real_feat", tmp_path / "Synthetic_feat"
    real.mkdir(), synthetic.mkdir()
    g = torch.Generator().manual_seed(0)
    clips = {"00000001": torch.randn(59, 8, generator=g).bfloat16(),  # a 60 s clip: int(60) - 1 windows
             "00000002": torch.randn(3, 8, generator=g).bfloat16()}
    torch.save(clips["00000001"], real / "00000001.pt")
    torch.save(clips["00000002"], synthetic / "00000002.pt")
    (real / "00000003.pt").write_bytes(b"not a torch file")
    torch.save(torch.zeros(8).bfloat16(), real / "00000004.pt")  # one vector without its window axis
    store = tmp_path / "store"

    code, out, _ = pave("store", "import", "imagebind-audio", real, synthetic, "--store", store)
    assert code == 1  # two files could not be used, each named
    assert f"FAILED 00000003: imagebind-audio {real / '00000003.pt'}: " in out
    assert f"FAILED 00000004: imagebind-audio {real / '00000004.pt'}: shape (8,), expected (K >= 1, D)" in out
    assert "2 imported, 0 already there, 2 failed" in out
    for item, vectors in clips.items():
        tokens, t_start, t_end = stored(store, "audio", item)
        assert torch.equal(tokens, vectors[:, None, :])  # bit for bit, bf16 kept
        np.testing.assert_array_equal(t_start, np.arange(len(vectors)))  # windows start at 0, 1, 2, ...
        np.testing.assert_array_equal(t_end, np.arange(len(vectors)) + 2.0)  # and last 2 s
    version = FeatureStore(str(store)).version("audio")
    assert version.schema.attrs["window_s"] == 2.0 and "PAVE release" in version.fingerprint.spec["encoder"]
    assert set(version.failures()) == {"00000003", "00000004"}

    code, out, _ = pave("store", "import", "imagebind-audio", real, synthetic, "--store", store)
    assert code == 1 and "0 imported, 2 already there, 2 failed" in out  # a rerun retries only the failed


def test_llava_3d_scenes_become_32_views_one_second_apart(pave, ray_local, tmp_path):
    release = tmp_path / "video_features_new"
    features = torch.randn(1, 32 * 576, 8).half()
    (release / "scene0000_00").mkdir(parents=True)
    torch.save(features, release / "scene0000_00" / "video_features.pt")
    code, out, _ = pave("store", "import", "llava-3d", release, "--store", tmp_path / "store")
    assert code == 0 and "1 imported" in out
    tokens, t_start, t_end = stored(tmp_path / "store", "3d", "scene0000_00")
    assert torch.equal(tokens[5], features[0, 5 * 576:6 * 576])  # view 5 = the sixth block of 576 patches
    np.testing.assert_array_equal(t_start, np.arange(32))  # frame k of the scene's folder is at k s
    np.testing.assert_array_equal(t_end, t_start)


def test_languagebind_frames_are_timed_by_the_videos_frames(pave, ray_local, corpus, tmp_path):
    video = corpus / "videos" / "v0000.mp4"
    with av.open(str(video)) as container:
        times = np.array([frame.time for frame in container.decode(video=0)])  # every frame, decoded
    release = tmp_path / "languagebind_feat" / "academic"
    release.mkdir(parents=True)
    features = torch.randn(8, 5, 8).half()  # 8 frames: CLS + 2 x 2 pooled patches each
    torch.save(features, release / "v0000.pt")
    torch.save(features, release / "v9999.pt")  # no video for it in the manifest
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "academic/v0000", "video": str(video)}) + "\n")

    code, out, _ = pave("store", "import", "languagebind", release.parent, "--store", tmp_path / "store",
                        "--manifest", manifest)
    assert code == 1 and "FAILED academic/v9999: " in out and "no video for this id in --manifest" in out
    tokens, t_start, _ = stored(tmp_path / "store", "hfr", "academic/v0000")
    assert torch.equal(tokens, features[:, 1:])  # CLS dropped
    picked = np.round(np.arange(8) * (len(times) - 1) / 7).astype(int)  # linspace over all frames
    np.testing.assert_allclose(t_start, times[picked])
    assert t_start[0] == times[0] and t_start[-1] == times[-1]


@pytest.mark.parametrize("argv, message", [
    (["imagebind", "{tmp}"], "unknown feature release 'imagebind'; one of imagebind-audio, llava-3d, languagebind"),
    (["llava-3d", "{tmp}/nowhere"], "nowhere: no such folder"),
    (["llava-3d", "{tmp}"], "no {scene_id}/video_features.pt there"),
    (["languagebind", "{tmp}"], "languagebind features need --manifest"),
])
def test_wrong_import_arguments_are_one_line(pave, tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, _, err = pave("store", "import", *argv, "--store", tmp_path / "store")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
