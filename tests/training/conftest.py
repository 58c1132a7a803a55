"""A feature store written directly (no media): main-video tokens carry nothing about the answer, while the audio
tokens do (a class vector plus noise), so a model can only answer from the side channel."""
import json

import numpy as np
import pytest

from featurestore import FeatureStore, TokenSchema, fingerprint

ANSWERS = ("low", "high")
VIDEO_DIM, AUDIO_DIM, FRAMES, TOKENS_PER_FRAME = 32, 16, 4, 4


def write_store(root, n_videos: int, seed: int = 0, url: str = "", storage_options: dict | None = None):
    """The store at `url` (default root/store), the annotations in root."""
    rng = np.random.default_rng(seed)
    store = FeatureStore(url or str(root / "store"), storage_options)
    video = store.create_version(
        TokenSchema("video", TOKENS_PER_FRAME, VIDEO_DIM, "float16", attrs={"time_kind": "point"}),
        fingerprint("test-video", "none", {}, "float16", "1"),
    )
    audio = store.create_version(
        TokenSchema("audio", 1, AUDIO_DIM, "float32", attrs={"time_kind": "span", "window_s": 2.0, "hop_s": 1.0}),
        fingerprint("test-audio", "none", {}, "float32", "1"),
    )
    class_vectors = rng.normal(size=(len(ANSWERS), AUDIO_DIM)).astype(np.float32) * 2
    annotations = []
    with video.writer() as vw, audio.writer() as aw:
        for i in range(n_videos):
            video_id, label = f"v{i:03d}", i % len(ANSWERS)
            duration = 4.0 + i % 3
            frame_t = np.linspace(0, duration, FRAMES, endpoint=False)
            vw.add(video_id, rng.normal(size=(FRAMES, TOKENS_PER_FRAME, VIDEO_DIM)).astype(np.float16), frame_t, frame_t)
            starts = np.arange(0, duration - 1.0, 1.0)
            tokens = class_vectors[label] + 0.1 * rng.normal(size=(len(starts), 1, AUDIO_DIM)).astype(np.float32)
            aw.add(video_id, tokens, starts, starts + 2.0)
            annotations.append({
                "id": f"{video_id}-q0", "video": video_id,
                "conversations": [{"from": "human", "value": "<video>\nWhat is the pitch of the tone: low or high?"},
                                  {"from": "gpt", "value": ANSWERS[label]}],
            })
    path = root / "annotations.json"
    path.write_text(json.dumps(annotations))
    return store.url, path


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("train_store"), n_videos=16)


@pytest.fixture(scope="session")
def store_writer():
    """write_store, for tests that write this store elsewhere (an S3 bucket): a test module cannot import it, since
    `conftest` names another directory's module when several are collected."""
    return write_store
