"""Runs whose store and --out are both on an S3 server (moto over HTTP, tests/s3server.py): Ray Train checkpoints,
the per-rank logs, metrics, TensorBoard and the export land in the bucket, a resume reads them back from there, and
`pave eval` / `pave report` read and write runs there. Every value is checked against a local run of the same seed.

The endpoint reaches the driver and the workers through the run config alone (--storage.endpoint-url); the
credentials come from the environment, as on a cluster's nodes, set here before the session's Ray starts so that
its workers inherit them."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from featurestore.files import Files
from jobs.cli import main as pave
from s3server import CREDENTIALS
from test_train import config, history
from training.config import RUN_CONFIG, load
from training.launch import fit
from training.lock import HOLDER, STALE_S, RunInUse, RunLock
from training.loop import DATA_ORDER, read_rank_log
from training.rundir import RunDir, local_copy

from conftest import write_store

for _key, _value in CREDENTIALS.items():
    os.environ.setdefault(_key, _value)
os.environ.pop("AWS_ENDPOINT_URL", None)

pytestmark = pytest.mark.timeout(600)
FLAGS = ("--steps", "8", "--checkpoint-every", "4", "--report-every", "2")


@pytest.fixture(scope="module")
def bucket(s3_server):
    return s3_server.bucket()


@pytest.fixture(scope="module")
def s3_store(bucket, tmp_path_factory):
    """The synthetic store of tests/training/conftest.py (same seed and size) written into the bucket."""
    root = tmp_path_factory.mktemp("s3_store")
    return write_store(root, 16, url=f"{bucket.url}/store", storage_options=bucket.storage_options)


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
