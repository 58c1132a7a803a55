"""Write -> read: values bit-exact for every token dtype, time-range fetches, extras, torch inputs, pickling, URLs."""
import pickle

import numpy as np
import pytest
import torch

import fsdata
from featurestore import FeatureStore, TokenSchema, fingerprint

IDS = [f"vid{i:02d}" for i in range(7)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_values_round_trip_bit_exact(tmp_path, dtype):
    version = fsdata.version(tmp_path / "store", dtype)
    fsdata.write(version, IDS[:4])
    fsdata.write(version, IDS[4:])  # a second part
    reader = FeatureStore(tmp_path / "store").version("video")  # an independent reader
    assert reader.items() == IDS
    for video_id in IDS:
        expected = fsdata.rows(version.schema, video_id)
        got = reader.get(video_id)
        want_bits = fsdata.stored_tokens(expected["tokens"])
        assert got.tokens.dtype == want_bits.dtype and got.tokens.tobytes() == want_bits.tobytes()
        logical = got.to_torch()
        assert logical.dtype == getattr(torch, dtype)
        want = expected["tokens"] if dtype == "bfloat16" else torch.from_numpy(expected["tokens"])
        assert torch.equal(logical, want)
        np.testing.assert_array_equal(got.t_start, expected["t_start"])
        np.testing.assert_array_equal(got.t_end, expected["t_end"])
        np.testing.assert_array_equal(got.extras["view"], expected["view"])
    assert reader.verify() == []


def test_several_shards_per_part_and_shard_aligned_flushes(tmp_path):
    version = fsdata.version(tmp_path / "store")
    fsdata.write(version, IDS)
    (record,) = version.index().records
    n_rows = sum(len(fsdata.rows(version.schema, v)["t_start"]) for v in IDS)
    assert record["rows"] == n_rows and record["shard_rows"] == 4
    assert len(record["checksums"]["tokens"]) == -(-n_rows // 4)
    tokens_dir = tmp_path / "store" / version.path / "parts" / record["id"] / "tokens" / "c"
    assert len([p for p in tokens_dir.rglob("*") if p.is_file()]) == -(-n_rows // 4)  # one file per shard


def _store_with_times(tmp_path, t_start, t_end):
    version = fsdata.version(tmp_path / "store", extras={})
    tokens = np.arange(len(t_start) * 32, dtype=np.float16).reshape(len(t_start), 4, 8)
    with version.writer() as w:
        w.add("v", tokens, t_start, t_end)
    return version, tokens


def test_get_range_point_rows(tmp_path):
    t = np.arange(32) * 0.5  # 2 fps frames, t_end == t_start
    version, tokens = _store_with_times(tmp_path, t, t)
    got = version.get_range("v", 1.0, 2.0)
    np.testing.assert_array_equal(got.t_start, [1.0, 1.5, 2.0])
    np.testing.assert_array_equal(got.tokens, tokens[2:5])
    empty = version.get_range("v", 100.0, 101.0)
    assert empty.tokens.shape == (0, 4, 8) and empty.t_start.shape == (0,)


def test_get_range_windows_overlap(tmp_path):
    t_start = np.arange(10.0)  # 2 s windows, 1 s hop
    version, tokens = _store_with_times(tmp_path, t_start, t_start + 2.0)
    got = version.get_range("v", 3.5, 4.2)  # windows [2,4], [3,5], [4,6] overlap it
    np.testing.assert_array_equal(got.t_start, [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(got.tokens, tokens[2:5])


def test_get_range_rows_not_contiguous(tmp_path):
    version, tokens = _store_with_times(tmp_path, np.array([0.0, 1.0, 2.0]), np.array([10.0, 1.5, 2.5]))
    got = version.get_range("v", 2.2, 2.3)  # row 0 spans it, row 1 ends before it, row 2 covers it
    np.testing.assert_array_equal(got.t_start, [0.0, 2.0])
    np.testing.assert_array_equal(got.tokens, tokens[[0, 2]])


def test_extras_round_trip_multi_view(tmp_path):
    extras = {"view": ((), "int32"), "pose": ((4, 4), "float32"), "valid": ((), "bool")}
    version = fsdata.version(tmp_path / "store", "bfloat16", modality="exo", extras=extras)
    n_views, n_frames = 3, 5
    t = np.repeat(np.arange(n_frames) * 0.5, n_views)  # frame-major: the views of one frame are ties
    rng = np.random.default_rng(0)
    pose = rng.standard_normal((n_views * n_frames, 4, 4)).astype(np.float32)
    view = np.tile(np.arange(n_views, dtype=np.int32), n_frames)
    valid = rng.random(n_views * n_frames) > 0.3
    tokens = torch.randn(n_views * n_frames, 4, 8, dtype=torch.bfloat16)
    with version.writer() as w:
        w.add("scene", tokens, t, t, view=view, pose=pose, valid=valid)
    got = FeatureStore(tmp_path / "store").version("exo").get("scene")
    assert torch.equal(got.to_torch(), tokens)
    np.testing.assert_array_equal(got.extras["pose"], pose)
    np.testing.assert_array_equal(got.extras["view"], view)
    np.testing.assert_array_equal(got.extras["valid"], valid)
    frame2 = version.get_range("scene", 1.0, 1.0)
    np.testing.assert_array_equal(frame2.extras["view"], [0, 1, 2])
    np.testing.assert_array_equal(frame2.extras["pose"], pose[6:9])


def test_torch_inputs_and_safe_casts(tmp_path):
    version = fsdata.version(tmp_path / "store", "float32")
    tokens = torch.randn(4, 4, 8)
    t = torch.arange(4, dtype=torch.float32) * 0.25  # float32 times convert to float64 without loss
    with version.writer() as w:
        w.add("v", tokens, t, t, view=torch.arange(4, dtype=torch.int16))  # int16 -> int32 is safe
    got = version.get("v")
    assert torch.equal(got.to_torch(), tokens)
    assert got.t_start.dtype == np.float64 and got.extras["view"].dtype == np.int32
    np.testing.assert_array_equal(got.extras["view"], [0, 1, 2, 3])


def test_attrs_and_schema_are_stored_with_the_version(tmp_path):
    schema = TokenSchema("audio", 1, 16, "float16", {}, {"window_s": 2.0, "hop_s": 1.0, "time_kind": "span"})
    fp = fingerprint("ast", "d1", {"sr": 16000}, "float16", "t1")
    FeatureStore(tmp_path / "s").create_version(schema, fp)
    (info,) = FeatureStore(tmp_path / "s").versions()
    assert info.schema == schema and info.schema.attrs["window_s"] == 2.0 and info.spec == fp.spec
    import zarr

    attrs = zarr.open_group(str(tmp_path / "s" / "audio" / fp.id), mode="r").attrs
    assert attrs["schema"]["dim"] == 16 and attrs["fingerprint"]["id"] == fp.id


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_fsspec_urls_and_pickled_readers(tmp_path, scheme):
    url = f"file://{tmp_path}/store" if scheme == "file" else f"memory://store-{tmp_path.name}"
    version = fsdata.version(url, "bfloat16")
    fsdata.write(version, IDS[:3])
    reader = FeatureStore(url).version("video")
    reader.get(IDS[0])  # fills the caches, which must not travel
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._parts == {} and clone._index is None
    for video_id in IDS[:3]:
        assert torch.equal(clone.get(video_id).to_torch(), fsdata.rows(version.schema, video_id)["tokens"])


def test_writer_commit_is_visible_to_the_same_version_object(tmp_path):
    version = fsdata.version(tmp_path / "store")
    assert version.committed_items() == set()
    fsdata.write(version, IDS[:2])
    assert version.committed_items() == set(IDS[:2])


def test_real_shapes_get_small_chunks_and_large_shards(tmp_path):
    """Inner chunks of ~1 MiB (2 SigLIP-like frames of 441 KiB, 512 audio steps of 2 KiB), shards of ~64 MiB."""
    import zarr

    shapes = {}
    for modality, tokens_per_step, dim in [("video", 196, 1152), ("audio", 1, 1024)]:
        schema = TokenSchema(modality, tokens_per_step, dim, "float16", {}, {})
        fp = fingerprint("enc", "w", {}, "float16", "t1")
        version = FeatureStore(tmp_path / "s").create_version(schema, fp)
        with version.writer() as w:
            w.add("v", np.zeros((2, tokens_per_step, dim), np.float16), [0.0, 1.0], [0.0, 1.0])
        (record,) = version.index().records
        tokens = zarr.open_array(str(tmp_path / "s" / version.path / "parts" / record["id"] / "tokens"), mode="r")
        shapes[modality] = (tokens.chunks, tokens.shards)
    assert shapes["video"] == ((2, 196, 1152), (128, 196, 1152))
    assert shapes["audio"] == ((512, 1, 1024), (32768, 1, 1024))


def test_bfloat16_accepts_ml_dtypes_and_stored_bits(tmp_path):
    """Features.tokens (uint16 bits) can be written back as is, e.g. to copy items between stores."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    version = fsdata.version(tmp_path / "store", "bfloat16", extras={})
    values = np.random.default_rng(0).standard_normal((3, 4, 8)).astype(ml_dtypes.bfloat16)
    t = np.arange(3.0)
    with version.writer() as w:
        w.add("ml", values, t, t)
    with version.writer() as w:
        w.add("bits", version.get("ml").tokens, t, t)
    assert version.get("bits").tokens.tobytes() == values.view(np.uint16).tobytes()
    assert torch.equal(version.get("bits").to_torch(), torch.from_numpy(values.view(np.uint16)).view(torch.bfloat16))
