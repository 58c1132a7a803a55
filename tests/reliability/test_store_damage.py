"""The feature store's data-loss and bad-input cases, through `pave store` as users run it (in-process, real store,
real torch files, real Ray for import):

- a part whose commit record is gone: `verify` lists it (items, bytes, idle time), as a problem once it is past the
  grace period; `gc` keeps it within the grace period and says so, and says why it removes it after;
- a lost shard of any array of a part (times, extras, tokens) fails the read naming the item, never reads as zeros;
  `inspect` of such an item, or of a failed one, exits 1;
- a store path that is a file, or missing: one line, exit 2, for every command;
- `pave store import` of a folder with a zero-byte, a cut and a foreign `.pt` file (one of them first) and `.npy`
  files: failure rows naming each bad file, the others imported, the `.npy` files reported as skipped."""
import numpy as np
import pytest
import store_race
import torch

from featurestore import FeatureError, FeatureStore


@pytest.fixture
def store(tmp_path):
    """A version with two parts: a, b (tokens, times) in one, c in the other; shards of 2 rows, several per part."""
    version = store_race.create(str(tmp_path / "store"), "w0")
    for ids in (["a", "b"], ["c"]):
        with version.writer("test", shard_bytes=2 * 4 * 8 * 2) as writer:
            for video_id in ids:
                writer.add(video_id, **store_race.rows(video_id))
    return tmp_path / "store", version


def part_of(store_dir, version, video_id):
    part, _, _ = version.index(fresh=True).rows[video_id]
    return store_dir / version.path / "parts" / part


def test_a_part_whose_commit_record_is_gone_is_reported_and_gc_says_what_it_does(pave, store):
    store_dir, version = store
    part = part_of(store_dir, version, "a")
    (store_dir / version.path / "commits" / f"{part.name}.json").unlink()
    nbytes = sum(f.stat().st_size for f in part.rglob("*") if f.is_file())
    where = f"{version.path}/parts/{part.name}: no commit record (2 items, {nbytes:,} bytes, idle "

    code, out, _ = pave("store", "verify", store_dir)  # within the grace period: a writer may be committing it
    assert code == 0, out
    assert f"warning: {where}" in out and "within the grace period" in out, out
    code, out, _ = pave("store", "verify", store_dir, "--grace-s", 0)  # past it: its items are lost to readers
    assert code == 1 and f"BAD {version.path}" in out, out
    assert f"{where}" in out and "its items ['a', 'b'] are not served" in out and "1 problem(s)" in out, out

    code, out, _ = pave("store", "gc", store_dir, "--keep", version.fingerprint.id)
    assert code == 0 and f"kept {where}" in out and "within the grace period" in out, out
    assert part.exists()
    code, out, _ = pave("store", "gc", store_dir, "--keep", version.fingerprint.id, "--grace-s", 0)
    assert code == 0 and f"removed {where}" in out and "items no commit serves: ['a', 'b']" in out, out
    assert not part.exists()
    np.testing.assert_array_equal(FeatureStore(store_dir).version("video").get("c").tokens,
                                  store_race.rows("c")["tokens"])


@pytest.mark.parametrize("array", ["t_start", "t_end", "tokens"])
def test_a_lost_shard_of_any_array_fails_the_read_and_inspect(pave, store, array):
    store_dir, version = store
    shard = part_of(store_dir, version, "a") / array / "c" / "0"  # rows 0:2, item a's first rows
    (shard if shard.is_file() else shard / "0" / "0").unlink()
    fresh = FeatureStore(store_dir).version("video")
    with pytest.raises(FeatureError, match=rf"item 'a': .*{array} rows .*run `pave store verify`"):
        fresh.get("a")
    with pytest.raises(FeatureError, match=rf"item 'a': .*{array} rows"):
        fresh.get_range("a", 0.0, 100.0)
    code, out, err = pave("store", "inspect", store_dir, "--item", "a")
    assert code == 1 and f"{version.path}: a UNREADABLE: " in out and "Traceback" not in out + err, out + err
    want = store_race.rows("c")
    got = fresh.get("c")  # the other part still serves, with its values
    np.testing.assert_array_equal(got.tokens, want["tokens"])
    np.testing.assert_array_equal(got.t_start, want["t_start"])
    np.testing.assert_array_equal(got.t_end, want["t_end"])


def test_inspect_of_a_failed_item_exits_1(pave, store):
    store_dir, version = store
    with version.writer("test") as writer:
        writer.fail("broken", "decoder error")
    code, out, _ = pave("store", "inspect", store_dir, "--item", "broken")
    assert code == 1 and f"{version.path}: broken FAILED: decoder error" in out, out


@pytest.mark.parametrize("command", ["ls", "verify", "inspect", "gc"])
@pytest.mark.parametrize("target", ["file", "missing"])
def test_a_store_path_that_is_a_file_or_missing_is_one_line_and_exit_2(pave, tmp_path, command, target):
    path = tmp_path / "store.txt"
    if target == "file":
        path.write_text("not a store")
    extra = {"inspect": ["--item", "a"], "gc": ["--keep", "x"]}.get(command, [])
    code, out, err = pave("store", command, path, *extra)
    assert code == 2 and out == "", out
    (line,) = err.strip().splitlines()
    want = ("a file, not a feature store; give the store's folder" if target == "file" else
            "no feature store there; check the path")
    assert line.startswith(f"pave store {command}: {path}: ") and want in line, line


def test_import_names_each_unreadable_file_and_reports_skipped_npy(pave, ray_local, tmp_path):
    release = tmp_path / "Real_feat"
    release.mkdir()
    g = torch.Generator().manual_seed(0)
    good = {"b1": torch.randn(4, 8, generator=g).bfloat16(), "b2": torch.randn(2, 8, generator=g).bfloat16()}
    for name, vectors in good.items():
        torch.save(vectors, release / f"{name}.pt")
    (release / "a0_empty.pt").write_bytes(b"")  # first in order: it cannot set the version's dtype
    cut = (release / "b1.pt").read_bytes()
    (release / "a1_cut.pt").write_bytes(cut[: len(cut) // 2])
    (release / "a2_text.pt").write_bytes(b"not a torch file")
    np.save(release / "c1.npy", np.zeros((3, 8), np.float32))
    np.save(release / "c2.npy", np.zeros((3, 8), np.float32))
    store = tmp_path / "store"

    for run in ("first", "rerun"):
        code, out, err = pave("store", "import", "imagebind-audio", release, "--store", store)
        assert code == 1 and "Traceback" not in out + err, out + err
        assert f"FAILED a0_empty: imagebind-audio {release / 'a0_empty.pt'}: zero-length file" in out, out
        assert f"FAILED a1_cut: imagebind-audio {release / 'a1_cut.pt'}: not a readable torch file (" in out, out
        assert f"FAILED a2_text: imagebind-audio {release / 'a2_text.pt'}: not a readable torch file (" in out, out
        assert (f"skipped 2 file(s) that are not the release's *.pt files: {release / 'c1.npy'}, "
                f"{release / 'c2.npy'}") in out, out
        imported = "2 imported, 0 already there" if run == "first" else "0 imported, 2 already there"
        assert f"{imported}, 3 failed" in out, out
    version = FeatureStore(str(store)).version("audio")
    assert set(version.failures()) == {"a0_empty", "a1_cut", "a2_text"}
    for name, vectors in good.items():
        assert torch.equal(version.get(name).to_torch(), vectors[:, None, :])
