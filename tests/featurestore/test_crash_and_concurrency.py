"""Writers in separate processes: one SIGKILLed mid-part (readers never see it, a rerun completes the rest), and two
racing over the same items (claims make each item written exactly once), on a local disk and on an S3 server."""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import fsdata
from writer_proc import LEASE_S
from featurestore import FeatureStore
from s3server import Bucket

SCRIPT = Path(__file__).with_name("writer_proc.py")
IDS = [f"clip/{i:03d}" for i in range(24)]  # ids with "/" on purpose


def _start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _all_committed_ids(version) -> Counter:
    files, commits = version.store.files, f"{version.path}/commits"
    records = (files.read_json(f"{commits}/{name}") for name in files.children(commits, "file"))
    return Counter(item for r in records for item in r["items"])


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path) -> Bucket:
    """A store location: a local directory, or a new bucket on the session's S3 server."""
    if request.param == "s3":
        return request.getfixturevalue("s3_bucket")
    return Bucket(str(tmp_path / "store"), {}, {})


def _assert_values(version, ids):
    for video_id in ids:
        got, want = version.get(video_id), fsdata.rows(version.schema, video_id)
        np.testing.assert_array_equal(got.tokens, want["tokens"])
        np.testing.assert_array_equal(got.t_start, want["t_start"])


@pytest.mark.timeout(120)
def test_sigkill_mid_write_is_invisible_and_a_rerun_completes(tmp_path):
    store_dir = tmp_path / "store"
    version = fsdata.version(store_dir)
    proc = _start(store_dir, "crashy", "crash", *IDS)
    try:
        assert proc.stdout.readline().strip() == "flushed"
        flushed_at = time.time()  # after the claims: their leases run out by flushed_at + LEASE_S
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    parts = [p.name for p in (store_dir / version.path / "parts").iterdir() if p.is_dir()]
    assert len(parts) == 2  # the committed part and the killed writer's part, which has shards on disk
    orphan = next(p for p in parts if p not in {r["id"] for r in version.index(fresh=True).records})
    assert any((store_dir / version.path / "parts" / orphan / "tokens" / "c").rglob("*"))

    reader = FeatureStore(store_dir).version("video")
    assert reader.items() == IDS[:2]
    with pytest.raises(KeyError, match="not committed"):
        reader.get(IDS[5])
    assert reader.verify() == []

    assert reader.claim(IDS, "rerun") == []  # the dead writer's leases are still live
    time.sleep(max(0.0, flushed_at + LEASE_S + 0.1 - time.time()))
    todo = reader.claim(IDS, "rerun")  # expired: taken over; committed items are not offered
    assert todo == IDS[2:]
    fsdata.write(reader, todo, "rerun")
    final = FeatureStore(store_dir).version("video")
    assert final.items() == sorted(IDS) and final.failures() == {}
    _assert_values(final, IDS)
    assert final.verify() == []
    assert set(_all_committed_ids(final).values()) == {1}

    removed = FeatureStore(store_dir).gc([final.fingerprint.id], grace_s=0).removed
    assert f"{final.path}/parts/{orphan}" in removed
    assert sum(p.startswith(f"{final.path}/claims/") for p in removed) == len(IDS)  # committed: claims not needed
    assert not (store_dir / final.path / "parts" / orphan).exists()
    assert FeatureStore(store_dir).version("video").verify() == []


@pytest.mark.timeout(120)
def test_two_concurrent_writers_write_each_item_exactly_once(where):
    version = fsdata.version(where.url, storage_options=where.storage_options)
    go = time.time() + 3.0  # both processes import and open the store first, then start together
    procs = [_start(where.url, owner, "race", go, *IDS, env=where.env) for owner in ("writer-a", "writer-b")]
    written = [json.loads(p.communicate(timeout=90)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(written[0] + written[1]) == sorted(IDS)  # disjoint and complete
    assert written[0] and written[1]  # both really worked
    counts = _all_committed_ids(version)
    assert set(counts) == set(IDS) and set(counts.values()) == {1}
    reader = FeatureStore(where.url, where.storage_options).version("video")
    _assert_values(reader, IDS)
    assert reader.verify() == []


def test_claims_respect_live_leases_and_allow_takeover(tmp_path):
    version = fsdata.version(tmp_path / "store")
    assert version.claim(["a", "b"], "w1", lease_s=0.3) == ["a", "b"]
    assert version.claim(["a", "b", "c"], "w2") == ["c"]
    assert version.claim(["a"], "w1", lease_s=0.3) == ["a"]  # renewal by the owner
    time.sleep(0.35)
    assert version.claim(["a", "b"], "w2", lease_s=60) == ["a", "b"]
    assert version.claim(["a", "b"], "w1") == []  # w2 holds them now
    fsdata.write(version, ["a"], "w2")
    assert version.claim(["a"], "w3") == []  # committed
