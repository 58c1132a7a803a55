"""Fingerprints: stable ids, coexisting versions that never overwrite each other, idempotent reuse, gc."""
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fsdata
from featurestore import FeatureError, FeatureStore, ItemNotFound, fingerprint

BASE = dict(encoder="siglip", weights_digest="abc", preprocessing={"size": 384, "fps": 2.0}, dtype="float16",
            transform_version="1")


def test_fingerprint_is_stable_and_sensitive():
    fp = fingerprint(**BASE)
    assert fp.id == fingerprint(**{**BASE, "preprocessing": {"fps": 2, "size": 384}}).id  # key order, 2 == 2.0
    assert len(fp.id) == 16 and int(fp.id, 16) >= 0
    # Pinned to the documented canonical form: ids must not change across releases or machines.
    canonical = '{"dtype":"float16","encoder":"siglip","preprocessing":{"fps":2,"size":384},"transform_version":"1",' \
                '"weights_digest":"abc"}'
    assert fp.id == hashlib.sha256(canonical.encode()).hexdigest()[:16] == "2a52a8018d706323"
    changed = [
        {"encoder": "clip"},
        {"weights_digest": "abd"},
        {"preprocessing": {"size": 336, "fps": 2.0}},
        {"dtype": "bfloat16"},
        {"transform_version": "2"},
    ]
    ids = {fingerprint(**{**BASE, **c}).id for c in changed}
    assert len(ids) == len(changed) and fp.id not in ids


def test_two_fingerprints_coexist_and_never_overwrite(tmp_path):
    old = fsdata.version(tmp_path / "store", weights="w0")
    new = fsdata.version(tmp_path / "store", weights="w1")
    assert old.fingerprint.id != new.fingerprint.id
    fsdata.write(old, ["a", "b"])
    with new.writer() as w:  # same ids, other values
        for video_id in ["a", "b"]:
            rows = fsdata.rows(new.schema, video_id)
            w.add(video_id, **{**rows, "tokens": rows["tokens"] * 2})
    store = FeatureStore(tmp_path / "store")
    assert sorted(v.fingerprint_id for v in store.versions("video")) == sorted([old.fingerprint.id, new.fingerprint.id])
    for video_id in ["a", "b"]:
        want = fsdata.rows(old.schema, video_id)["tokens"]
        np.testing.assert_array_equal(store.version("video", old.fingerprint.id).get(video_id).tokens, want)
        np.testing.assert_array_equal(store.version("video", new.fingerprint.id[:6]).get(video_id).tokens, want * 2)
    with pytest.raises(FeatureError, match=old.fingerprint.id):  # ambiguous: the error lists the candidates
        store.version("video")
    with pytest.raises(FeatureError, match=r"has no 'audio' features \(it has: video\)"):
        store.version("audio")


def test_same_fingerprint_is_reused(tmp_path):
    first = fsdata.version(tmp_path / "store")
    fsdata.write(first, ["a"])
    again = fsdata.version(tmp_path / "store")  # e.g. a rerun, or another machine
    assert again.path == first.path and again.committed_items() == {"a"}
    assert len(FeatureStore(tmp_path / "store").versions()) == 1


def test_same_fingerprint_with_another_schema_is_an_error(tmp_path):
    version = fsdata.version(tmp_path / "store")
    other = fsdata.schema(extras={})
    with pytest.raises(FeatureError, match="different definition"):
        FeatureStore(tmp_path / "store").create_version(other, version.fingerprint)
    with pytest.raises(FeatureError, match="dtype"):
        FeatureStore(tmp_path / "store").create_version(fsdata.schema("float32"), version.fingerprint)


def test_failures_are_superseded_by_a_later_success(tmp_path):
    version = fsdata.version(tmp_path / "store")
    with version.writer() as w:
        w.fail("a", "decoder error")
        w.fail("b", "corrupt file")
    fsdata.write(version, ["a"])
    assert version.failures() == {"b": "corrupt file"}
    (info,) = FeatureStore(tmp_path / "store").versions()
    assert (info.n_ok, info.n_failed) == (1, 1)
    with pytest.raises(ItemNotFound, match="'b' failed: corrupt file"):
        version.get("b")
    with pytest.raises(KeyError, match="'zzz' not committed"):
        version.get("zzz")


def test_gc_keeps_only_the_listed_fingerprints(tmp_path):
    keep = fsdata.version(tmp_path / "store", weights="w0")
    drop = fsdata.version(tmp_path / "store", weights="w1")
    fsdata.write(keep, ["a"])
    fsdata.write(drop, ["a"])
    store = FeatureStore(tmp_path / "store")
    with pytest.raises(FeatureError, match="unknown"):
        store.gc([keep.fingerprint.id, "typo"])
    assert list(store.gc([keep.fingerprint.id], grace_s=0, dry_run=True).removed) == [drop.path]
    assert (tmp_path / "store" / drop.path).exists()
    assert list(store.gc([keep.fingerprint.id], grace_s=0).removed) == [drop.path]
    assert not (tmp_path / "store" / drop.path).exists()
    assert [v.fingerprint_id for v in store.versions()] == [keep.fingerprint.id]
    np.testing.assert_array_equal(store.version("video").get("a").tokens, fsdata.rows(keep.schema, "a")["tokens"])


def test_gc_spares_a_live_writer_and_removes_dead_leftovers(tmp_path):
    version = fsdata.version(tmp_path / "store")
    live = version.writer("live", shard_bytes=4 * 8 * 2 * 4)
    live.add("a", **fsdata.rows(version.schema, "a"))  # >= 4 rows: one shard flushed, part on disk, not committed
    leftover = tmp_path / "store" / version.path / "commits" / ".x.json.0123.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("{")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    store = FeatureStore(tmp_path / "store")
    report = store.gc([version.fingerprint.id])
    assert list(report.removed) == [f"{version.path}/commits/.x.json.0123.tmp"]
    assert list(report.kept) == [f"{version.path}/parts/{live.part_id}"]  # and says why
    assert "within the grace period" in report.kept[f"{version.path}/parts/{live.part_id}"]
    assert not leftover.exists() and (tmp_path / "store" / version.path / "parts" / live.part_id).exists()
    live.commit()  # the live writer was not disturbed
    assert store.version("video").items() == ["a"] and store.version("video").verify() == []


def test_jobs_creating_the_same_version_at_once_all_get_it(tmp_path):
    """Two materialize jobs start together on an empty store: both create the version; neither may fail."""
    start = threading.Barrier(8)

    def create(store):
        start.wait()
        return fsdata.version(str(store)).fingerprint.id

    for attempt in range(5):  # the race window is small: several rounds, each on a fresh store
        store = tmp_path / str(attempt)
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _: create(store), range(8)))
        assert len(set(ids)) == 1
        assert [v.fingerprint_id for v in FeatureStore(store).versions("video")] == ids[:1]
