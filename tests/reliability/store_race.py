"""A writer that creates versions and writes parts in a loop, for the gc race tests (test_store_tools.py); run as

    store_race.py STORE SECONDS LEASE_S

it creates a new version (a new fingerprint) every round, waits a moment, writes two parts of three claimed items
into it, and prints one JSON line per committed part: {"fingerprint", "items"}. When gc removes a version under it
(a FeatureError: gc came before the writer's first claim), it makes the version again and writes what is not
committed yet."""
import json
import random
import sys
import time
import zlib

import numpy as np

from featurestore import FeatureError, FeatureStore, TokenSchema, fingerprint

SCHEMA = TokenSchema("video", tokens_per_step=4, dim=8, dtype="float16", attrs={"fps": 2.0})


def create(url: str, weights: str):
    return FeatureStore(url).create_version(SCHEMA, fingerprint("race", weights, {}, "float16", "1"))


def rows(video_id: str) -> dict:
    """add() arguments for `video_id`: the same values in every process."""
    rng = np.random.default_rng(zlib.crc32(video_id.encode()))
    n = int(rng.integers(2, 6))
    t = np.cumsum(rng.uniform(0.1, 1.0, n))
    return {"tokens": rng.standard_normal((n, 4, 8)).astype("float16"), "t_start": t, "t_end": t + 0.5}


def write_round(url: str, k: int, lease_s: float) -> None:
    owner = f"race-writer-{k}"
    for attempt in range(200):
        try:
            version = create(url, f"w{k}")
            time.sleep(random.uniform(0, 0.01))  # as a job starts its tasks a while after it made its version
            for part in range(2):
                granted = version.claim([f"r{k}/p{part}/{i}" for i in range(3)], owner, lease_s)
                with version.writer(owner) as writer:
                    for video_id in granted:
                        writer.add(video_id, **rows(video_id))
                print(json.dumps({"fingerprint": version.fingerprint.id, "items": granted}), flush=True)
            return
        except FeatureError as e:  # gc removed the version before this writer showed itself: make it again
            print(json.dumps({"retry": str(e)}), flush=True)
    raise RuntimeError(f"round {k}: gc removed the version 200 times in a row")


def main(url: str, seconds: str, lease_s: str) -> None:
    deadline, k = time.time() + float(seconds), 0
    while time.time() < deadline:
        k += 1
        write_round(url, k, float(lease_s))


if __name__ == "__main__":
    main(*sys.argv[1:])
