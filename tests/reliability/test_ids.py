"""Item ids: one rule (featurestore.ids) for `pave materialize`, the store and `pave train`'s annotations.

- Ids users have (spaces, non-ASCII letters in file names) are stored, and annotations may name them.
- An input whose id breaks the rule is a failure row naming its file and the rule: no crash, no silent drop.
- Two inputs with one id (a.mp4 and a.mov) are failure rows naming both, whatever the part size; neither is stored
  (which one is meant is the user's call), no claim stays held, and a rerun reports them again."""
import json
import re
import shutil

import pytest

from featurestore import ID_RULE, FeatureStore
from featurestore.claims import live
from jobs.cli import main
from pipelines.annotations import AnnotationError, check_against_store, load_annotations
from pipelines.materialize import Settings, materialize
from pipelines.sources import read_items

pytestmark = pytest.mark.timeout(300)
SETTINGS = Settings(frames=4)


def annotation(video_id: str) -> dict:
    return {"id": f"{video_id}-q0", "video": video_id,
            "conversations": [{"from": "human", "value": "<video>\nWhat is it?"}, {"from": "gpt", "value": "low"}]}


def test_ids_users_have_are_stored_and_trainable(corpus, ray_local, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    ids = ["clip 01", "café", "ビデオ-2"]
    for k, video_id in enumerate(ids):
        shutil.copy(corpus / "videos" / f"v{k:04d}.mp4", videos / f"{video_id}.mp4")
    summary = materialize(read_items(str(videos)), str(tmp_path / "store"), ["video"], settings=SETTINGS)
    assert summary.counts["video"] == {"ok": 3, "failed": 0, "skipped": 0}, summary.failures
    version = FeatureStore(str(tmp_path / "store")).version("video")
    assert version.items() == sorted(ids)

    path = tmp_path / "train.json"
    path.write_text(json.dumps([annotation(video_id) for video_id in ids]))
    samples = load_annotations(path)  # pave train's loader takes every id the store holds
    assert [s.video_id for s in samples] == ids
    check_against_store(samples, {"video": version.committed_items()}, str(path))


def test_an_id_that_breaks_the_rule_is_a_failure_row_naming_the_file_and_the_rule(corpus, ray_local, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"id": "v0000", "video": "v0000.mp4"}, {"id": "../escape", "video": "v0001.mp4"},
            {"id": "two\nlines", "video": "v0002.mp4"}]
    manifest.write_text("".join(json.dumps({**row, "video": str(corpus / "videos" / row["video"])}) + "\n"
                                for row in rows))
    summary = materialize(read_items(str(manifest)), str(tmp_path / "store"), ["video"], settings=SETTINGS)
    assert summary.counts["video"] == {"ok": 1, "failed": 2, "skipped": 0}
    for line, video_id in ((2, "../escape"), (3, "two\nlines")):
        reason = summary.failures["video"][video_id]
        assert f"{manifest} line {line}" in reason and repr(video_id) in reason and ID_RULE in reason, reason
    version = FeatureStore(str(tmp_path / "store")).version("video")
    assert version.items() == ["v0000"]
    path = tmp_path / "train.json"
    path.write_text(json.dumps([annotation("../escape")]))
    with pytest.raises(AnnotationError, match=re.escape(f"({ID_RULE}), got '../escape'")):  # the same rule
        load_annotations(path)


@pytest.mark.parametrize("part_items", [64, 1])
def test_duplicate_ids_are_failure_rows_naming_both_sources(corpus, ray_local, tmp_path, capsys, part_items):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(corpus / "videos" / "v0000.mp4", videos / "a.mp4")
    shutil.copy(corpus / "videos" / "v0001.mp4", videos / "a.mov")  # another video under the same id
    shutil.copy(corpus / "videos" / "v0002.mp4", videos / "b.mp4")
    store = tmp_path / "store"
    args = ["materialize", "--input", str(videos), "--store", str(store), "--frames", "4",
            "--part-items", str(part_items), "--summary-json", str(tmp_path / "summary.json")]

    for run in ("first", "rerun"):
        main(args)
        out = capsys.readouterr().out
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["counts"]["video"] == {"ok": int(run == "first"), "failed": 2,
                                              "skipped": int(run == "rerun")}, (run, out)
        reason = summary["failures"]["video"]["a"]
        assert str(videos / "a.mp4") in reason and str(videos / "a.mov") in reason, reason
        assert "FAILED video x1: " in out and "duplicate id" in out and "  [a]" in out
        version = FeatureStore(str(store)).version("video")
        assert version.items() == ["b"] and version.failures() == {"a": reason}
        assert "a" not in live(version.store.files, f"{version.path}/claims")  # nothing held for a lease
