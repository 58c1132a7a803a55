"""The job around the tokens: input formats, failures, resume, concurrent jobs, the CLI. Real Ray, real PyAV."""
import shutil
import threading
from dataclasses import replace

import numpy as np
import pytest

from featurestore import FeatureStore
from jobs.cli import main
from pipelines.materialize import Resources, Summary, materialize
from pipelines.sources import read_items

IDS = [f"v{i:04d}" for i in range(8)]


def item_commits(version) -> list[str]:
    """Every item of every commit record (an item committed twice would appear twice)."""
    return [item for record in version.index(fresh=True).records for item in record["items"]]


# the shards through one actor running two calls at once in threads (one encoder shared), the videos one by one
@pytest.mark.parametrize("source, calls_per_actor", [("videos", 1), ("shards", 2)])
def test_directory_and_webdataset_inputs_give_the_manifest_tokens(corpus, materialized, resources, tmp_path,
                                                                 source, calls_per_actor):
    summary = materialize(read_items(str(corpus / source)), str(tmp_path), ["video", "audio"],
                          resources=replace(resources, calls_per_actor=calls_per_actor))
    assert summary.counts == {m: {"ok": 8, "failed": 0, "skipped": 0} for m in ("video", "audio")}
    for modality in ("video", "audio"):  # where the time went: decoding in the tasks, forwards in the actors
        timing = summary.timing[modality]
        assert 0 < timing["decode_s"] and 0 < timing["encode_s"] and timing["seconds"] <= summary.seconds
    for modality in ("video", "audio"):
        ours = FeatureStore(str(tmp_path)).version(modality)
        manifest = FeatureStore(str(materialized[0])).version(modality)
        assert ours.fingerprint == manifest.fingerprint  # same encoder and settings, whatever the input format
        for video_id in IDS:
            a, b = ours.get(video_id), manifest.get(video_id)
            np.testing.assert_array_equal(a.tokens, b.tokens)
            np.testing.assert_array_equal(a.t_start, b.t_start)
            np.testing.assert_array_equal(a.t_end, b.t_end)


@pytest.fixture
def broken_dir(corpus, tmp_path):
    """Three good takes (CFR, VFR, late start), a silent video, a truncated copy and a zero-byte file."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for video_id in ("v0000", "v0002", "v0003"):
        shutil.copy(corpus / "videos" / f"{video_id}.mp4", videos)
    shutil.copy(corpus / "exo" / "v0001" / "view1.mp4", videos / "silent.mp4")
    data = (corpus / "videos" / "v0001.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (videos / "empty.mp4").write_bytes(b"")
    return videos


def test_bad_inputs_become_failure_rows_and_a_rerun_skips_what_is_done(broken_dir, tmp_path, ray_local,
                                                                      resources):
    store_url = str(tmp_path / "store")
    first = materialize(read_items(str(broken_dir)), store_url, ["video", "audio"], resources=resources)
    assert first.counts == {"video": {"ok": 4, "failed": 2, "skipped": 0},
                            "audio": {"ok": 3, "failed": 3, "skipped": 0}}
    assert (first.exit_code(), first.exit_code(strict=True)) == (0, 1)
    store = FeatureStore(store_url)
    video, audio = store.version("video"), store.version("audio")
    assert video.committed_items() == {"v0000", "v0002", "v0003", "silent"}
    assert audio.committed_items() == {"v0000", "v0002", "v0003"}
    reasons = video.failures()
    assert set(reasons) == {"truncated", "empty"}
    assert "empty.mp4" in reasons["empty"] and "zero-length file" in reasons["empty"]
    assert "truncated.mp4" in reasons["truncated"] and "Invalid data" in reasons["truncated"]
    assert "silent.mp4" in audio.failures()["silent"] and "no audio track" in audio.failures()["silent"]
    assert first.failures["audio"] == audio.failures()
    written = {m: sorted(item_commits(store.version(m))) for m in ("video", "audio")}

    again = materialize(read_items(str(broken_dir)), store_url, ["video", "audio"], resources=resources)
    # Done items are skipped without a write; failed ones are retried (and fail again, for the same reason).
    assert again.counts == {"video": {"ok": 0, "failed": 2, "skipped": 4},
                            "audio": {"ok": 0, "failed": 3, "skipped": 3}}
    assert {m: sorted(item_commits(store.version(m))) for m in ("video", "audio")} == written
    assert again.failures["video"] == reasons


def test_only_failures_exit_non_zero(broken_dir, tmp_path, ray_local, resources):
    for good in ("v0000", "v0002", "v0003", "silent"):
        (broken_dir / f"{good}.mp4").unlink()
    summary = materialize(read_items(str(broken_dir)), str(tmp_path / "store"), ["video"], resources=resources)
    assert summary.counts["video"] == {"ok": 0, "failed": 2, "skipped": 0}
    assert summary.exit_code() == 1


@pytest.mark.timeout(400)
def test_two_concurrent_jobs_write_each_item_once(corpus, tmp_path, ray_local):
    """Two jobs on the same store at once (one driver, two threads, two owners): claims split the items."""
    store_url = str(tmp_path / "store")
    resources = Resources(prepare_batch=1, batch_size=1, part_items=1)  # one item per part: the jobs interleave
    summaries = [None, None]
    # Datasets built here: building them in the threads would import pyarrow's filesystems from two threads at once.
    items = [read_items(str(corpus / "manifest.jsonl")) for _ in range(2)]

    def job(k):
        try:
            summaries[k] = materialize(items[k], store_url, ["video"], resources=resources, owner=f"job{k}")
        except Exception as e:  # surfaced below: a thread's exception would otherwise only be printed
            summaries[k] = e

    threads = [threading.Thread(target=job, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [s for s in summaries if isinstance(s, Exception)], summaries
    counts = [s.counts["video"] for s in summaries]
    assert sum(c["ok"] for c in counts) == 8 and sum(c["skipped"] for c in counts) == 8
    assert sorted(item_commits(FeatureStore(store_url).version("video"))) == IDS  # each exactly once


def test_cli_exit_status_and_strict(broken_dir, tmp_path, ray_local, capsys):
    for name in ("v0002", "v0003", "silent", "truncated"):
        (broken_dir / f"{name}.mp4").unlink()
    args = ["materialize", "--input", str(broken_dir), "--store", str(tmp_path / "store"), "--modalities",
            "video", "--frames", "4", "--part-items", "2"]
    assert main(args) == 0  # one good, one empty file
    out = capsys.readouterr().out
    assert "FAILED video x1: zero-length file  [empty]" in out
    assert main(args + ["--strict"]) == 1  # the rerun retries the empty file, which fails again
    assert FeatureStore(str(tmp_path / "store")).version("video").get("v0000").tokens.shape == (4, 64, 32)


def test_gpu_options_that_cannot_run_here_say_so_in_one_line(corpus, tmp_path, ray_local, capsys):
    """On this GPU-less local Ray: NVDEC without the torch transform, NVDEC without GPUs, and GPUs per actor
    (which would otherwise leave the job waiting forever) each exit 2 with their line, storing nothing."""
    args = ["materialize", "--input", str(corpus / "manifest.jsonl"), "--store", str(tmp_path / "store")]
    cases = {("--decoder", "nvdec"): "pave materialize: decoder 'nvdec' needs resize 'torch-bicubic'",
             ("--decoder", "nvdec", "--resize", "torch-bicubic"): "needs GPU encoder actors, and this cluster has no",
             ("--num-gpus", "0.125"): "pave materialize: --num-gpus 0.125: this machine has no GPU; leave --num-gpus"}
    for extra, message in cases.items():
        assert main(args + list(extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1], err
    assert not (tmp_path / "store").exists()


def test_an_error_inside_an_encoder_stops_the_job_instead_of_failing_items(corpus, tmp_path, ray_local, resources):
    """Layer 9 of a 2-layer vision tower: the encoder raises IndexError on its first forward. That is our bug or the
    encoder's, not the input's: the job stops with the error, and no item is recorded as failed."""
    from pipelines.materialize import Settings

    store_url = str(tmp_path / "store")
    with pytest.raises(Exception, match="IndexError"):
        materialize(read_items(str(corpus / "videos")), store_url, ["video"], settings=Settings(vision_layer=9),
                    resources=resources)
    index = FeatureStore(store_url).version("video").index(fresh=True)
    assert not index.failed and not index.rows


def test_a_modality_that_stores_nothing_fails_the_job_even_when_another_succeeds(corpus, tmp_path, ray_local,
                                                                               resources):
    summary = materialize(read_items(str(corpus / "videos")), str(tmp_path / "store"), ["video", "exo"],
                          resources=resources)
    assert summary.counts == {"video": {"ok": 8, "failed": 0, "skipped": 0},
                              "exo": {"ok": 0, "failed": 0, "skipped": 8}}  # a directory lists no exo views
    assert summary.exit_code() == 1
    assert "NOTHING STORED for exo" in summary.table()
    rerun = materialize(read_items(str(corpus / "videos")), str(tmp_path / "store"), ["video"], resources=resources)
    assert rerun.counts["video"]["skipped"] == 8 and rerun.exit_code() == 0  # all done before: nothing to store


def test_the_summary_groups_failures_by_their_reason_without_the_items_names():
    reasons = {  # two files cut short, one without a video stream, one with an unusable id
        "clip a": "video of 'clip a' (/data/clip a.mp4): Invalid data found when processing input: '/data/clip a.mp4'",
        "b": "video of 'b' (/data/b.mkv): Invalid data found when processing input: '/data/b.mkv'",
        "c": "video of 'c' (/data/c.mp4): no video stream",
        "../d": "id '../d' is not usable: it escapes the store",
        "e": "duplicate id 'e': /data/e.mov and /data/e.mp4 (one id per video: rename or remove all but one)",
        "f": "duplicate id 'f': /data/f.mov and /data/f.mp4 (one id per video: rename or remove all but one)",
    }
    summary = Summary({"video": {"ok": 4, "failed": 8, "skipped": 0}}, {"video": reasons}, {"video": "fp"}, 2.0,
                      timing={"video": {"seconds": 2.0, "decode_s": 1.5, "encode_s": 0.5}})
    lines = summary.table().splitlines()
    assert lines[1].split() == ["video", "fp", "4", "8", "0", "2.00", "1.5", "0.5"]  # 4 items stored in 2 s
    assert lines[2:6] == [
        "FAILED video x2: Invalid data found when processing input: '<source>'  [b, clip a]",
        "FAILED video x2: duplicate id '<id>': <path> and <path> (one id per video: rename or remove all but one)"
        "  [e, f]",
        "FAILED video x1: id '<id>' is not usable: it escapes the store  [../d]",
        "FAILED video x1: no video stream  [c]"]
