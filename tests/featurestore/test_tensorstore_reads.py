"""A second, independent Zarr v3 implementation (tensorstore, C++) reads the same values from the sharded parts."""
import numpy as np
import pytest
import zarr

import fsdata

ts = pytest.importorskip("tensorstore")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_tensorstore_reads_every_array_of_a_part(tmp_path, dtype):
    ids = [f"v{i}" for i in range(5)]
    version = fsdata.version(tmp_path / "store", dtype, extras={"view": ((), "int32"), "pose": ((4, 4), "float32")})
    fsdata.write(version, ids)
    (record,) = version.index().records
    part = tmp_path / "store" / version.path / "parts" / record["id"]

    def read(name):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(part / name)}}
        array = ts.open(spec, read=True).result()
        return array, array.read().result()

    tokens, values = read("tokens")
    codecs = tokens.spec().to_json()["metadata"]["codecs"]
    assert codecs[0]["name"] == "sharding_indexed" and codecs[0]["configuration"]["chunk_shape"][1:] == [4, 8]
    assert values.dtype == version.schema.stored_dtype and values.shape == (record["rows"], 4, 8)
    offsets = read("offsets")[1]
    items = zarr.open_group(str(part), mode="r").attrs["items"]
    t_start = read("t_start")[1]
    for video_id, r0, r1 in zip(items, offsets[:-1], offsets[1:]):
        want = fsdata.rows(version.schema, video_id)
        np.testing.assert_array_equal(values[r0:r1], fsdata.stored_tokens(want["tokens"]))
        np.testing.assert_array_equal(t_start[r0:r1], want["t_start"])
        np.testing.assert_array_equal(read("pose")[1][r0:r1], want["pose"])
    for name in version.schema.row_arrays():  # and every array equals what zarr-python reads
        np.testing.assert_array_equal(read(name)[1], zarr.open_array(str(part / name), mode="r")[:])


def test_a_lost_chunk_fails_the_read_naming_the_item_instead_of_reading_zeros(tmp_path):
    from featurestore import FeatureError

    ids = [f"v{i}" for i in range(5)]
    version = fsdata.version(tmp_path / "store", extras={"view": ((), "int32")})
    fsdata.write(version, ids)
    zeros = {"tokens": np.zeros((4, 4, 8), np.float16), "t_start": np.arange(4.0), "t_end": np.arange(4.0) + 1,
             "view": np.zeros(4, np.int32)}
    with version.writer() as w:  # an all-zero item: its chunks must be written too, or they would look lost
        w.add("silent", **zeros)
    assert np.array_equal(version.get("silent").tokens, zeros["tokens"])
    (record,) = [r for r in version.index().records if "v0" in r["items"]]
    tokens = tmp_path / "store" / version.path / "parts" / record["id"] / "tokens"
    (tokens / "c" / "0" / "0" / "0").unlink()  # the first shard of the tokens: rows of v0
    with pytest.raises(FeatureError, match=r"item 'v0': .*tokens rows 0:\d+: shard file .* is gone.*pave store verify"):
        version.get("v0")
    assert zarr.open_array(str(tokens), mode="r")[0:1].max() == 0  # where zarr-python reads zeros
    (tokens.parent / "view" / "c" / "1").rename(tokens.parent / "view-lost")  # a compressed array: tensorstore's read
    with pytest.raises(FeatureError, match=r"item 'v1': .*view rows \d+:\d+: NOT_FOUND.*run `pave store verify`"):
        version.get("v1")
