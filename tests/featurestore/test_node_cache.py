"""NodeCache on its own (featurestore/cache.py): bounded, least recently used first, never serves a damaged piece.
Through the store, with an S3 server and several processes: test_s3_store.py."""
import os

from featurestore.cache import NodeCache


def test_evicts_the_least_recently_used_down_to_the_low_water_mark(tmp_path):
    cache = NodeCache(tmp_path, max_bytes=350)  # 3 pieces of 100 bytes (+4 for the crc32c) fit, 4 do not
    for k, name in enumerate("abc"):
        cache.put(name, name.encode() * 100)
        os.utime(cache._file(name), (1000 + k, 1000 + k))  # used long ago, a first
    assert cache.get("a") == b"a" * 100  # used now: b is the least recently used
    cache.put("d", b"d" * 100)  # 416 bytes > 350: evict down to 315
    assert [cache.get(name) is not None for name in "abcd"] == [True, False, True, True]
    assert (tmp_path / ".used").read_text() == "312"
    assert sorted(os.listdir(tmp_path)) == sorted([".used", *(os.path.basename(cache._file(n)) for n in "acd")])


def test_a_damaged_piece_is_removed_not_served(tmp_path):
    cache = NodeCache(tmp_path, max_bytes=1 << 20)
    cache.put("piece", bytes(range(256)))
    path = cache._file("piece")
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    assert cache.get("piece") is None and not os.path.exists(path)
    cache.put("piece", bytes(range(256)))
    assert cache.get("piece") == bytes(range(256))
