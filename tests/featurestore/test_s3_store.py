"""The store on an S3 server: moto's, over HTTP on loopback, reached through s3fs as any S3 service is
(tests/s3server.py). Values round trip; verify finds lost objects and reads fail on them instead of reading zeros;
an item fetch is one ranged GET per shard it touches (counted at a logging proxy, exactly); a server that ignores
If-None-Match is refused before anything is written; the node cache (featurestore/cache.py) serves later reads,
also to other processes, and never a damaged piece; gc beside a writer never breaks the store. Writers racing on
S3: test_crash_and_concurrency.py."""
import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import fsdata
from s3server import Proxy
from featurestore import FeatureError, FeatureStore, files, fingerprint, layout, reader

REPO = Path(__file__).resolve().parents[2]
IDS = [f"clip/{i:02d}" for i in range(10)]
ROW_BYTES = 4 * 8 * 2  # a token row of fsdata's schema
SHARD_ROWS = 16


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Shards of 16 rows in 8 inner chunks of 2 rows: an item spans several chunks, often two shards."""
    monkeypatch.setattr(layout, "CHUNK_BYTES", 2 * ROW_BYTES)


def _store(bucket, **kw) -> FeatureStore:
    return FeatureStore(bucket.url, bucket.storage_options, **kw)


def _write(bucket):
    """IDS in two parts; the writer's Version."""
    version = fsdata.version(bucket.url, storage_options=bucket.storage_options)
    fsdata.write(version, IDS[:6], shard_bytes=SHARD_ROWS * ROW_BYTES)
    fsdata.write(version, IDS[6:], shard_bytes=SHARD_ROWS * ROW_BYTES)
    return version


def _assert_values(version, ids) -> None:
    for video_id in ids:
        got, want = version.get(video_id), fsdata.rows(version.schema, video_id)
        np.testing.assert_array_equal(got.tokens, want["tokens"])
        np.testing.assert_array_equal(got.t_start, want["t_start"])
        np.testing.assert_array_equal(got.t_end, want["t_end"])
        np.testing.assert_array_equal(got.extras["view"], want["view"])


def test_values_round_trip_and_verify_is_clean(s3_bucket):
    other = {**s3_bucket.storage_options, "max_concurrency": 2}  # another S3 client, as another process has
    writer = fsdata.version(s3_bucket.url, storage_options=other)
    fsdata.write(writer, IDS[:6], shard_bytes=SHARD_ROWS * ROW_BYTES)
    version = _store(s3_bucket).version("video")
    assert version.items() == sorted(IDS[:6])
    fsdata.write(writer, IDS[6:], shard_bytes=SHARD_ROWS * ROW_BYTES)
    assert sorted(version.index(fresh=True).rows) == sorted(IDS)  # listed afresh, not from s3fs's listings cache
    _assert_values(version, IDS)
    want = fsdata.rows(version.schema, IDS[3])
    t0, t1 = want["t_start"][1], want["t_start"][2]
    window = version.get_range(IDS[3], t0, t1)  # rows whose [t_start, t_end] overlaps [t0, t1]
    rows = (want["t_start"] <= t1) & (want["t_end"] >= t0)
    np.testing.assert_array_equal(window.tokens, want["tokens"][rows])
    np.testing.assert_array_equal(window.extras["view"], want["view"][rows])
    assert version.verify() == []


def test_lost_objects_fail_reads_and_verify_names_them(s3_bucket):
    writer = _write(s3_bucket)
    first, second = writer.index().records
    part = f"{writer.path}/parts/{first['id']}"
    fs = writer.store.files.fs
    fs.rm(writer.store.files.abs(f"{part}/tokens/c/1/0/0"))  # token rows 16:32
    fs.rm(writer.store.files.abs(f"{part}/view/c/0"))  # view rows 0:16
    writer.store.files.remove(f"{writer.path}/commits/{second['id']}.json")

    version = _store(s3_bucket).version("video")
    assert version.items() == sorted(IDS[:6])  # the second part's items are no longer served
    for video_id in IDS[:6]:
        _, r0, r1 = version.index().rows[video_id]
        gone = "tokens" if r1 > 16 and r0 < 32 else "view" if r0 < 16 else None
        if gone:
            with pytest.raises(FeatureError, match=rf"item '{video_id}': .*{part}/{gone} rows .* is gone; "
                                                   r"run `pave store verify`"):
                version.get(video_id)
        else:
            _assert_values(version, [video_id])

    # the `pave store` CLI reaches the bucket from the URL and the AWS environment variables alone
    result = subprocess.run([sys.executable, "-m", "jobs.cli", "store", "verify", s3_bucket.url, "--grace-s", "0"],
                            cwd=REPO, env={**os.environ, **s3_bucket.env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"part {first['id']}: tokens shard 1 (rows 16:{min(32, first['rows'])}) checksum mismatch" in result.stdout
    assert f"part {first['id']}: view shard 0 (rows 0:16) checksum mismatch" in result.stdout
    assert f"{writer.path}/parts/{second['id']}: no commit record ({len(IDS) - 6} items" in result.stdout
    assert "3 problem(s)" in result.stdout


@pytest.mark.parametrize("piece_rows", [None, 3], ids=["whole-ranges", "ranges-cut"])
def test_an_item_fetch_is_one_ranged_get_per_shard_and_array(s3_proxy, monkeypatch, piece_rows):
    """Steady state (the part open, its t_start/t_end read): each of tokens and view costs one GET per shard the
    item touches (ranges cut at REMOTE_PIECE_BYTES: one per piece), plus one for each shard index not read before."""
    if piece_rows:
        monkeypatch.setattr(reader, "REMOTE_PIECE_BYTES", piece_rows * ROW_BYTES)
    bucket = s3_proxy.bucket
    _write(s3_proxy.direct)
    version = _store(bucket).version("video")
    rows = version.index().rows
    indexed = set()
    for video_id in [IDS[0], IDS[6]]:  # opens both parts
        _assert_values(version, [video_id])
        part, r0, r1 = rows[video_id]
        indexed |= {(part, shard) for shard in range(r0 // SHARD_ROWS, (r1 - 1) // SHARD_ROWS + 1)}
    for video_id in [v for v in IDS if v not in (IDS[0], IDS[6])]:
        part, r0, r1 = rows[video_id]
        s3_proxy.log.clear()
        _assert_values(version, [video_id])
        expected = Counter()
        for shard in range(r0 // SHARD_ROWS, (r1 - 1) // SHARD_ROWS + 1):
            in_shard = min(r1, (shard + 1) * SHARD_ROWS) - max(r0, shard * SHARD_ROWS)
            expected["tokens", "range"] += math.ceil(in_shard / piece_rows) if piece_rows else 1
            expected["view", "range"] += 1  # compressed: a few bytes
            if (part, shard) not in indexed:
                expected.update([("tokens", "index"), ("view", "index")])
                indexed.add((part, shard))
        got = Counter(_kind(r) for r in s3_proxy.log)
        assert got == expected, video_id
        assert sum(r.nbytes for r in s3_proxy.log if _kind(r) == ("tokens", "range")) == (r1 - r0) * ROW_BYTES


def _kind(request) -> tuple[str, str]:
    """(array, "index" | "range") of a ranged GET of a shard; anything else is reported as itself."""
    if request.method != "GET" or not request.range:
        return request.method, request.path
    array = "tokens" if "/tokens/c/" in request.path else "view" if "/view/c/" in request.path else request.path
    return array, "index" if request.range.startswith("bytes=-") else "range"


def test_a_server_that_ignores_if_none_match_is_refused(s3_server):
    proxy = Proxy(s3_server.endpoint, drop=("If-None-Match",))  # a real server in between: it forwards all else
    try:
        bucket = s3_server.bucket(proxy.endpoint)
        with pytest.raises(FeatureError, match=rf"^{bucket.url}: a second exclusive create \(conditional PUT, "
                                               r"If-None-Match: \*\) of one object succeeded, so concurrent writers' "
                                               r"item claims and version definitions would race\. Write the store"):
            fsdata.version(bucket.url, storage_options=bucket.storage_options)
        assert _store(bucket).files.fs.find(bucket.url) == []  # nothing written, the probe removed
    finally:
        proxy.stop()


def test_the_conditional_put_is_checked_once_per_store_and_never_by_readers(s3_proxy):
    bucket = s3_proxy.bucket
    store = _store(bucket)
    version = fsdata.version(bucket.url, storage_options=bucket.storage_options)
    store.create_version(version.schema, version.fingerprint)
    store.version("video").claim(IDS, "w1")
    probes = [r for r in s3_proxy.log if f"/{files.PROBE_DIR}/" in r.path]
    assert [(r.method, r.status) for r in probes] == [("PUT", 200), ("PUT", 412)] * 2  # fsdata's store, then ours
    s3_proxy.log.clear()
    fsdata.write(store.version("video"), IDS[:2])
    _assert_values(_store(bucket).version("video"), IDS[:2])
    assert not [r for r in s3_proxy.log if files.PROBE_DIR in r.path]


def test_the_node_cache_serves_later_reads_and_refetches_a_damaged_piece(s3_proxy, tmp_path):
    bucket, cache = s3_proxy.bucket, tmp_path / "cache"
    _write(s3_proxy.direct)
    _assert_values(_store(bucket, cache_dir=cache).version("video"), IDS)  # the first epoch fills the cache
    pieces = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    assert pieces and not [p for p in pieces if p.name.endswith(".tmp")]

    s3_proxy.log.clear()
    _assert_values(_store(bucket, cache_dir=cache).version("video"), IDS)  # a new process would do the same
    assert not [r for r in s3_proxy.log if r.range]  # listing and metadata only: no shard bytes

    damaged = max(pieces, key=lambda p: p.stat().st_size)
    blob = bytearray(damaged.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    s3_proxy.log.clear()
    _assert_values(_store(bucket, cache_dir=cache).version("video"), IDS)
    assert len([r for r in s3_proxy.log if r.range]) == 1  # the damaged piece, fetched again
    assert damaged.read_bytes() != bytes(blob)  # and cached anew


def test_processes_share_the_node_cache(s3_proxy, tmp_path):
    bucket, cache = s3_proxy.bucket, tmp_path / "cache"
    _write(s3_proxy.direct)
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).with_name("reader_proc.py")), bucket.url,
                               str(cache), *ids], env={**os.environ, **bucket.env}, stdout=subprocess.PIPE, text=True)
             for ids in (IDS, IDS[::-1])]  # both fill the cache at once, from opposite ends
    digests = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    schema = fsdata.schema()
    want = {v: hashlib.sha256(fsdata.rows(schema, v)["tokens"].tobytes()).hexdigest() for v in IDS}
    assert digests == [want, want]
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    s3_proxy.log.clear()
    _assert_values(_store(bucket, cache_dir=cache).version("video"), IDS)
    assert not [r for r in s3_proxy.log if r.range]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(180)
def test_gc_beside_a_writer_never_breaks_the_store(s3_bucket):
    """The writer (tests/reliability/store_race.py) makes a version and writes two parts into it, again and again;
    gc (no grace period, keeping none of them) runs meanwhile: it may remove a version only before the writer's first
    claim (the writer then makes it again), never anything committed."""
    race = Path(__file__).parents[1] / "reliability" / "store_race.py"
    store_race = _load(race)
    base = _store(s3_bucket).create_version(store_race.SCHEMA, fingerprint("race", "base", {}, "float16", "1"))
    with base.writer("test") as writer:
        writer.add("kept/0", **store_race.rows("kept/0"))
    keep = base.fingerprint.id
    proc = subprocess.Popen([sys.executable, str(race), s3_bucket.url, "5", "120"], env={**os.environ, **s3_bucket.env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, errors, runs = threading.Event(), [], [0]

    def gc_loop():
        try:
            while not stop.is_set():
                _store(s3_bucket).gc([keep], grace_s=0)
                assert _store(s3_bucket).damage() == []
                runs[0] += 1
        except Exception as e:  # surfaced below
            errors.append(e)

    thread = threading.Thread(target=gc_loop)
    thread.start()
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        stop.set()
        thread.join()
    assert proc.returncode == 0, err
    assert not errors, errors
    assert runs[0] >= 2
    committed = {}
    for line in map(json.loads, out.splitlines()):
        if "items" in line:
            committed.setdefault(line["fingerprint"], []).extend(line["items"])
    assert committed, out
    store = _store(s3_bucket)
    assert sorted(info.fingerprint_id for info in store.versions()) == sorted([keep, *committed])
    for fingerprint_id, ids in [(keep, ["kept/0"]), *committed.items()]:
        version = store.version("video", fingerprint_id)
        for video_id in ids:
            got, want = version.get(video_id), store_race.rows(video_id)
            np.testing.assert_array_equal(got.tokens, want["tokens"])
        assert version.verify() == []
