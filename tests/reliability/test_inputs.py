"""What `pave materialize` is given, taken at its word: nothing stale served, nothing dropped or misjoined unsaid.

- A video replaced under the same id is encoded again on the next run and reported (each item records its source
  identity); a touched or copied-back file is not a change; a replacement that cannot be read withdraws the old
  rows. Items stored before identities were recorded are kept, with a note.
- A folder input reads every common video container (.m4v included) and names the files it does not read.
- Manifest rows with unknown or missing keys are failure rows naming their line; the good rows are stored.
- Settings that cannot run, a --store or corpus OUT that is a file, and a full disk inside a Ray task: one line,
  exit 2."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from featurestore import FeatureStore
from jobs.cli import main
from pipelines.materialize import MODALITIES, SOURCE_CHANGED, Resources, Settings, materialize
from pipelines.sources import MANIFEST_ROW, read_items

pytestmark = pytest.mark.timeout(300)
SETTINGS = Settings(frames=4)
RESOURCES = Resources(batch_size=1, part_items=1)  # stored values do not depend on batching: runs compare bit for bit


def tokens(store, video_id: str) -> np.ndarray:
    return FeatureStore(str(store)).version("video").get(video_id).tokens


def test_a_source_that_changed_under_its_id_is_encoded_again_and_reported(corpus, ray_local, tmp_path):
    videos, store = tmp_path / "videos", tmp_path / "store"
    videos.mkdir()
    for name, take in (("a", 0), ("b", 1), ("c", 2), ("old", 3)):
        shutil.copy(corpus / "videos" / f"v{take:04d}.mp4", videos / f"{name}.mp4")
    first = materialize(read_items(str(videos)), str(store), ["video"], settings=SETTINGS, resources=RESOURCES)
    assert first.counts["video"] == {"ok": 4, "failed": 0, "skipped": 0}
    version = FeatureStore(str(store)).version("video")
    recorded = version.sources()["b"][0]
    assert recorded["path"] == str(videos / "b.mp4") and recorded["size"] == (videos / "b.mp4").stat().st_size
    before = {name: tokens(store, name) for name in ("a", "b", "c")}

    # "old" as a store written before identities were recorded holds it: committed again without one, superseding
    old = version.get("old")
    with version.writer("older-pave") as writer:
        writer.add("old", old.tokens, old.t_start, old.t_end, supersedes=True)
    assert FeatureStore(str(store)).version("video").sources()["old"] is None

    shutil.copy(videos / "c.mp4", videos / "b.mp4")  # b is now another video under the same id
    os.utime(videos / "a.mp4", (1e9, 1e9))  # a is touched: same bytes, another mtime
    shutil.copy(corpus / "videos" / "v0000.mp4", videos / "old.mp4")  # changed, but nothing recorded to tell
    rerun = materialize(read_items(str(videos)), str(store), ["video"], settings=SETTINGS, resources=RESOURCES)
    assert rerun.counts["video"] == {"ok": 1, "failed": 0, "skipped": 3}, rerun.failures
    assert rerun.changed == {"video": ["b"]} and rerun.unrecorded == {"video": 1}
    table = rerun.table()
    assert "RE-ENCODED video x1: its source changed since it was stored  [b]" in table, table
    assert "note: video: 1 item(s) stored before source identities were recorded are kept unchecked" in table
    np.testing.assert_array_equal(tokens(store, "b"), before["c"])  # b's tokens are now its new video's
    assert not np.array_equal(before["b"], before["c"])
    np.testing.assert_array_equal(tokens(store, "a"), before["a"])
    assert FeatureStore(str(store)).version("video").sources()["b"][0]["digest"] != recorded["digest"]

    (videos / "b.mp4").write_text("not a video any more")  # a replacement that cannot be read
    broken = materialize(read_items(str(videos)), str(store), ["video"], settings=SETTINGS, resources=RESOURCES)
    assert broken.counts["video"] == {"ok": 0, "failed": 1, "skipped": 3}
    assert SOURCE_CHANGED in broken.failures["video"]["b"] and "withdrawn" in broken.failures["video"]["b"]
    version = FeatureStore(str(store)).version("video")
    assert version.items() == ["a", "c", "old"] and "b" in version.failures()  # no stale rows served for b
    assert version.verify() == []


def test_a_folder_input_reads_m4v_and_names_the_files_it_does_not_read(corpus, ray_local, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(corpus / "videos" / "v0000.mp4", videos / "a.mp4")
    shutil.copy(corpus / "videos" / "v0001.mp4", videos / "c.m4v")
    (videos / "notes.txt").write_text("x")
    (videos / "c.srt").write_text("x")
    code = main(["materialize", "--input", str(videos), "--store", str(tmp_path / "store"), "--frames", "4",
                 "--summary-json", str(tmp_path / "summary.json")])
    out = capsys.readouterr().out
    assert code == 0 and json.loads((tmp_path / "summary.json").read_text())["counts"]["video"]["ok"] == 2, out
    line = (f"not read: 2 file(s) in {videos} that are not videos by their suffix (1 .srt, 1 .txt: c.srt, notes.txt); "
            "videos are mp4, mkv, webm, mov, avi, m4v,")
    assert line in out, out
    assert FeatureStore(str(tmp_path / "store")).version("video").items() == ["a", "c"]


def test_manifest_rows_with_unknown_or_missing_keys_are_failure_rows_naming_their_line(corpus, ray_local, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    video = str(corpus / "videos" / "v0000.mp4")
    rows = [{"id": "good", "video": video}, {"id": "b", "path": video}, {"video": video}, ["not", "a", "row"],
            {"id": "e", "exo": [{"path": video}]}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = materialize(read_items(str(manifest)), str(tmp_path / "store"), ["video"], settings=SETTINGS)
    assert summary.counts["video"] == {"ok": 1, "failed": 4, "skipped": 0}, summary.failures
    failures = summary.failures["video"]
    expected = {"b": (2, "unknown key(s) 'path'"), f"{manifest} line 3": (3, "no 'id'"),
                f"{manifest} line 4": (4, "list, not an object"), "e": (5, "'exo' is not a list of")}
    assert set(failures) == set(expected)
    for video_id, (line, what) in expected.items():
        assert failures[video_id].startswith(f"{manifest} line {line}: {what}"), failures[video_id]
        assert failures[video_id].endswith(f"; a manifest row is {MANIFEST_ROW}")
    version = FeatureStore(str(tmp_path / "store")).version("video")
    assert version.items() == ["good"] and sorted(version.failures()) == ["b", "e"]  # lines without an id: summary
    np.testing.assert_array_equal(version.get("good").t_start, version.get("good").t_end)


MAKE_CORPUS_OUT = "{tmp}/file"
BAD_FLAGS = {  # argv -> the one line
    "materialize --input {tmp} --store {tmp}/s --frames 0": "pave materialize: frames must be at least 1, got 0",
    "materialize --input {tmp} --store {tmp}/s --part-items 0": "pave materialize: part-items must be at least 1, got 0",
    "materialize --input {tmp} --store {tmp}/s --concurrency 0": "pave materialize: concurrency must be at least 1, "
                                                                 "got 0",
    "materialize --input {tmp} --store {tmp}/s --concurrency 4,2": "pave materialize: concurrency 4,2: the minimum is "
                                                                   "above the maximum",
    "materialize --input {tmp} --store {tmp}/s --concurrency x": "pave materialize: --concurrency 'x': expected a "
                                                                 "number N or a range MIN,MAX",
    "materialize --input {tmp} --store {tmp}/s --calls-per-actor 0": "pave materialize: calls-per-actor must be at "
                                                                    "least 1, got 0",
    "materialize --input {tmp} --store {tmp}/s --lease-s -5": "pave materialize: lease-s must be above 0, got -5",
    "materialize --input {tmp} --store {tmp}/file": "pave materialize: --store {tmp}/file: a file, not a feature "
                                                    "store; give a folder (new, or a store to add to)",
    "make-corpus {tmp}/file --num-videos 1": "pave make-corpus: {tmp}/file is a file; a corpus goes into a new or empty "
                                         "directory",
}


@pytest.mark.parametrize("argv", list(BAD_FLAGS))
def test_settings_that_cannot_run_and_outputs_that_are_files_get_one_line(tmp_path, capsys, argv):
    (tmp_path / "file").write_text("x")
    code = main(argv.format(tmp=tmp_path).split())
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [BAD_FLAGS[argv].format(tmp=tmp_path)], err
    assert (tmp_path / "file").read_text() == "x"


def test_a_full_disk_inside_the_job_is_one_line(corpus, ray_local, tmp_path, capsys):
    """The parts land on a full tmpfs (the store's parts folder is a link to it), so ENOSPC is raised inside a Ray
    write task, as on a real full disk; the driver's own writes (definition, claims) succeed."""
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        with pytest.raises(OSError), open(full / "filler", "wb") as filler:
            filler.write(b"\0" * (1 << 20))  # fill it up
        store = tmp_path / "store"
        modality = MODALITIES["video"]
        version = FeatureStore(str(store)).create_version(
            *modality.schema_and_fingerprint(SETTINGS, modality.encoder(None, SETTINGS)))
        (store / version.path / "parts").symlink_to(full, target_is_directory=True)
        code = main(["materialize", "--input", str(corpus / "videos"), "--store", str(store), "--frames", "4"])
        err = capsys.readouterr().err.strip().splitlines()
        lines = [line for line in err if line.startswith("pave ") or "Traceback" in line]
        assert code == 2 and len(lines) == 1, err[-30:]
        assert re.fullmatch(r"pave materialize: No space left on device(: \S+)?; free some space or write elsewhere",
                            lines[0]), lines
    finally:
        subprocess.run(["umount", str(full)], check=True)
