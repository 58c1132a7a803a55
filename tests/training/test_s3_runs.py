"""Runs whose store, annotations and --out are all on an S3 server (moto over HTTP, tests/s3server.py): Ray Train
checkpoints, the per-rank logs, metrics, TensorBoard and the export land in the bucket, a resume reads them back from
there, and `pave eval` / `pave report` read and write runs there. Every value is checked against a local run of the
same seed.

The endpoint reaches the driver and the workers through the run config alone (--storage.endpoint-url); the
credentials come from the environment, as on a cluster's nodes (tests/conftest.py sets them for the session)."""
import json
import os
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from featurestore.files import Files
from jobs.cli import main as pave
from pipelines.annotations import AnnotationError, load_annotations
from test_train import config, history
from training.config import RUN_CONFIG, load
from training.launch import fit
from training.lock import HOLDER, STALE_S, RunInUse, RunLock
from training.loop import DATA_ORDER, read_rank_log
from training.rundir import RunDir, local_copy

pytestmark = pytest.mark.timeout(600)
FLAGS = ("--steps", "8", "--checkpoint-every", "4", "--report-every", "2")


@pytest.fixture(scope="module")
def bucket(s3_server):
    return s3_server.bucket()


@pytest.fixture(scope="module")
def s3_store(bucket, tmp_path_factory, store_writer):
    """The synthetic store of tests/training/conftest.py (same seed and size) and its annotations, written into the
    bucket: (store URL, annotations URL)."""
    root = tmp_path_factory.mktemp("s3_store")
    store, annotations = store_writer(root, 16, url=f"{bucket.url}/store", storage_options=bucket.storage_options)
    url = f"{bucket.url}/annotations.json"
    s3(bucket, url).fs.put_file(str(annotations), url)
    return store, url


def endpoint(bucket) -> list[str]:
    return ["--storage.endpoint-url", bucket.storage_options["endpoint_url"]]


def s3(bucket, url: str) -> Files:
    return Files(url, bucket.storage_options)


@pytest.fixture(scope="module")
def runs(bucket, s3_store, synthetic_store, ray_local, tmp_path_factory):
    """A local run and the same run (8 steps) from the S3 store into s3://BUCKET/runs/x."""
    local = tmp_path_factory.mktemp("local")
    fit(config(*synthetic_store, local, *FLAGS))
    out = f"{bucket.url}/runs/x"
    final = fit(config(*s3_store, out, *FLAGS, *endpoint(bucket)))
    return local, out, final


def s3_lines(bucket, url: str) -> list[dict]:
    return [json.loads(line) for line in s3(bucket, url).fs.cat_file(url).decode().splitlines()]


def test_a_run_on_s3_writes_what_the_local_run_writes(runs, bucket, tmp_path):
    local, out, final = runs
    assert final == f"{out}/final"
    reported = s3_lines(bucket, f"{out}/metrics.jsonl")
    assert [m["step"] for m in reported] == [2, 4, 6, 8]
    assert [m["loss"] for m in reported] == pytest.approx([m["loss"] for m in history(local)], rel=1e-5)
    run = RunDir(out, bucket.storage_options)
    for rank in (0, 1):
        assert s3_lines(bucket, f"{out}/ray/pave/{DATA_ORDER}/rank{rank}.jsonl") == \
            read_rank_log(local / "ray" / "pave", DATA_ORDER, rank)
    assert len([d for d in run.directories("ray/pave") if d.startswith("checkpoint_")]) == 2  # steps 4 and 8
    for name in ("loss_curve.png", RUN_CONFIG, "tracking.json", "final/provenance.json", "base_model/config.json"):
        assert run.exists(name), name
    assert run.files.fs.find(f"{run.files.root}/tensorboard/pave")  # event files
    cfg = load(run.pull(RUN_CONFIG), location=out)
    assert cfg.out == out and cfg.model.base == f"{out}/base_model"
    assert cfg.storage.endpoint_url == bucket.storage_options["endpoint_url"]
    exported = load_file(os.path.join(local_copy(final, bucket.storage_options), "lora",
                                      "adapter_model.safetensors"))
    reference = load_file(local / "final" / "lora" / "adapter_model.safetensors")
    assert exported.keys() == reference.keys()
    for key, tensor in reference.items():
        torch.testing.assert_close(exported[key], tensor, rtol=1e-5, atol=1e-6)


def test_eval_and_report_read_and_write_runs_on_s3(runs, bucket, s3_store):
    _, out, final = runs
    _, annotations = s3_store
    assert pave(["eval", "--annotations", str(annotations), "--checkpoint", final, "--out", f"{out}/eval",
                 "--batch-size", "8", *endpoint(bucket)]) == 0
    report = json.loads(s3(bucket, out).fs.cat_file(f"{out}/eval/report.json"))
    assert report["checkpoint"] == final and report["metrics"]["n"] == 16
    assert [r["id"] for r in report["predictions"]] == [f"v{i:03d}-q0" for i in range(16)]
    assert pave(["report", out, f"{out}/eval", "--out", f"{out}/report", *endpoint(bucket)]) == 0
    page = RunDir(f"{out}/report", bucket.storage_options)
    assert all(page.exists(name) for name in ("index.html", "loss.png", "throughput.png", "time.png"))
    html = page.files.fs.cat_file(f"{page.files.root}/index.html").decode()
    assert "<td>x</td><td>8/8</td>" in html  # the run, labelled by its directory, and its steps
    assert f"<td>{report['metrics']['n']}</td>" in html


def test_a_resume_reads_its_checkpoints_and_cuts_its_logs_on_s3(runs, bucket, s3_store):
    """The run of 8 steps resumed to 12 from its checkpoint in the bucket: the stored rank log, given a line past
    that checkpoint, is cut back to it; the steps it trains continue the local run's data order."""
    local, out, _ = runs
    log = f"{out}/ray/pave/{DATA_ORDER}/rank0.jsonl"
    files = s3(bucket, out)
    files.fs.pipe_file(log, files.fs.cat_file(log) + json.dumps({"step": 99, "ids": []}).encode() + b"\n")
    fit(config(*s3_store, out, *FLAGS, "--steps", "12", *endpoint(bucket)))
    reported = s3_lines(bucket, f"{out}/metrics.jsonl")
    assert [m["step"] for m in reported] == [2, 4, 6, 8, 10, 12]
    assert [m["resumes"] for m in reported] == [0, 0, 0, 0, 1, 1]
    for rank in (0, 1):
        logged = s3_lines(bucket, f"{out}/ray/pave/{DATA_ORDER}/rank{rank}.jsonl")
        assert [e["step"] for e in logged] == list(range(1, 13))
        assert logged[:8] == read_rank_log(local / "ray" / "pave", DATA_ORDER, rank)


def test_annotations_on_s3_read_as_a_local_file_and_a_missing_one_named(s3_store, synthetic_store, bucket):
    _, url = s3_store
    assert load_annotations(url, bucket.storage_options) == load_annotations(synthetic_store[1])
    with pytest.raises(AnnotationError, match=f"^{bucket.url}/missing.json: not a readable JSON file: [^\n]*$"):
        load_annotations(f"{bucket.url}/missing.json", bucket.storage_options)


def test_a_second_run_into_an_s3_out_is_refused_and_a_stale_lock_taken_over(s3_bucket, synthetic_store):
    out = f"{s3_bucket.url}/runs/locked"
    run = RunDir(out, s3_bucket.storage_options)
    with RunLock(run):
        holder = run.files.read_json(HOLDER)
        with pytest.raises(RunInUse, match=f"--out {out} is in use by run pid {holder['pid']}"):
            fit(config(*synthetic_store, out, *FLAGS, *endpoint(s3_bucket)))
    assert not run.exists(HOLDER)
    run.files.put_json(HOLDER, {**holder, "host": "gone", "heartbeat": holder["heartbeat"] - STALE_S - 1})
    with RunLock(run):
        assert run.files.read_json(HOLDER)["host"] == holder["host"]


def test_a_second_epoch_reads_the_node_cache_not_the_store(s3_proxy, synthetic_store, ray_local, tmp_path,
                                                            store_writer):
    """--data.cache: every byte range of the items' tokens is fetched from the server once over two epochs (16
    samples, 2 workers of 4 a step: 4 steps); without the cache the second epoch fetched each again. (Shard indexes,
    suffix ranges, and the parts' row times are read once per process that opens the store, whatever the epochs.)"""
    store_writer(tmp_path, 16, url=f"{s3_proxy.direct.url}/store", storage_options=s3_proxy.direct.storage_options)
    cache = tmp_path / "cache"
    cfg = config(f"{s3_proxy.bucket.url}/store", tmp_path / "annotations.json", tmp_path / "run", "--steps", "4",
                 "--data.cache", str(cache), *endpoint(s3_proxy.bucket))
    before = len(s3_proxy.requests(s3_proxy.bucket, "GET"))
    fit(cfg)
    ranged = Counter((r.path, r.range) for r in s3_proxy.requests(s3_proxy.bucket, "GET")[before:]
                     if "/tokens/" in r.path and r.range and not r.range.startswith("bytes=-"))
    assert ranged and set(ranged.values()) == {1}, ranged.most_common(3)
    assert load(tmp_path / "run" / RUN_CONFIG).data.cache == str(cache)
    assert len(list(cache.iterdir())) > 1  # the pieces, beside its byte count
