"""Raw (uncompressed) token shards are read with preadv straight into the result (featurestore/reader.py): every
row span equals what zarr-python reads, and a damaged shard fails the read naming the rows, never reads as zeros."""
import numpy as np
import pytest
import zarr

import fsdata
from featurestore import FeatureError, FeatureStore, layout, reader


@pytest.fixture
def part(tmp_path, monkeypatch):
    """A part whose shards hold 16 rows in 8 inner chunks of 2 rows; reads cut into pieces of 3 rows or more."""
    monkeypatch.setattr(layout, "CHUNK_BYTES", 2 * 4 * 8 * 2)
    monkeypatch.setattr(reader, "MIN_PIECE_BYTES", 3 * 4 * 8 * 2)
    version = fsdata.version(tmp_path / "store")
    fsdata.write(version, [f"v{i}" for i in range(9)], shard_bytes=16 * 4 * 8 * 2)
    (record,) = version.index().records
    path = f"{version.path}/parts/{record['id']}/tokens"
    array = zarr.open_array(str(tmp_path / "store" / path), mode="r")
    assert array.shards[0] == 16 and array.metadata.codecs[0].chunk_shape[0] == 2 and array.shape[0] > 32
    return version, path, array


def test_every_row_span_equals_zarr_python(part):
    version, path, array = part
    rows = reader.open_rows(version.store.files, path, array)
    assert isinstance(rows, reader.ShardRows)
    expected = array[:]
    n = expected.shape[0]
    for start in range(n):  # spans inside a chunk, across chunks, across shards, empty
        for stop in range(start, n + 1):
            np.testing.assert_array_equal(rows(slice(start, stop)), expected[start:stop])
    for video_id in version.items():
        np.testing.assert_array_equal(version.get(video_id).tokens, fsdata.rows(version.schema, video_id)["tokens"])


@pytest.mark.parametrize("damage", ["cut short", "index bytes flipped", "shard file gone"])
def test_a_damaged_shard_fails_the_read_naming_the_rows(part, damage):
    version, path, array = part
    shard = version.store.files.abs(f"{path}/c/1/0/0")  # rows 16:32
    with open(shard, "r+b") as f:
        size = f.seek(0, 2)
        if damage == "cut short":
            f.truncate(size - 200)
        elif damage == "index bytes flipped":
            f.seek(size - 20)
            f.write(bytes(b ^ 0xFF for b in f.read(4)))
    if damage == "shard file gone":
        import os

        os.unlink(shard)
    fresh = FeatureStore(version.store.files.root).version("video")  # nothing cached from before the damage
    rows = reader.open_rows(fresh.store.files, path, array)
    np.testing.assert_array_equal(rows(slice(0, 16)), array[0:16])  # the other shards still read
    with pytest.raises(FeatureError, match=rf"{path} rows 10:20: .*(index unreadable|is gone).*pave store verify"):
        rows(slice(10, 20))
