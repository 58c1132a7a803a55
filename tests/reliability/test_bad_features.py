"""Tokens the store must refuse, made inside a real job: an audio encoder checkpoint whose weights went NaN. The
writer refuses them (its rules: tests/featurestore/test_validation.py) and the job records a failure row per item,
instead of storing them or dying."""
import shutil

import torch

from featurestore import FeatureStore
from pipelines.encoders import audio_encoder
from pipelines.materialize import Settings, materialize
from pipelines.sources import read_items

IDS = ["v0000", "v0001"]


def test_nan_tokens_from_a_broken_encoder_become_failure_rows(corpus, ray_local, tmp_path):
    settings = Settings(frames=4)
    broken = audio_encoder(None, settings.audio).model
    with torch.no_grad():
        broken.layernorm.weight.fill_(float("nan"))  # a diverged checkpoint: every output is NaN
    broken.save_pretrained(tmp_path / "encoder")
    videos = tmp_path / "videos"
    videos.mkdir()
    for video_id in IDS:
        shutil.copy(corpus / "videos" / f"{video_id}.mp4", videos)

    summary = materialize(read_items(str(videos)), str(tmp_path / "store"), ["audio"],
                          {"audio": str(tmp_path / "encoder")}, settings)
    assert summary.counts["audio"] == {"ok": 0, "failed": len(IDS), "skipped": 0}
    assert summary.exit_code() == 1
    version = FeatureStore(str(tmp_path / "store")).version("audio")
    assert version.items() == [] and version.verify() == []
    for video_id in IDS:
        assert f"{video_id!r}" in version.failures()[video_id] and "NaN/inf" in version.failures()[video_id]
