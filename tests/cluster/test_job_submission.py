"""Every `pave` job as a user submits it to a cluster: a real Ray head (`ray start --head`, loopback, its own ports
and temp dir), the Jobs API (`JobSubmissionClient`, what `ray job submit` uses), the repo as the runtime_env
working_dir with the excludes of runtime_env.yaml, and `pave` on the node's PATH, as the cluster's setup_commands
install it. No mocks.

The head (tests/cluster/raycluster.py) is stopped through the `ray start --block` process the fixture started, never
with `ray stop`: that one kills every Ray process of this user on the machine, other test sessions' included."""
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from raycluster import BIN, JOB_TIMEOUT_S, REPO, run_job, start_cluster

from featurestore import FeatureStore

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def head():
    """One node: the head, with 4 CPUs for the jobs."""
    cluster = start_cluster(head_cpus=4, object_store_bytes=1 << 30)
    try:
        yield cluster
    finally:
        cluster.close()


def test_corpus_materialize_train_eval_as_submitted_jobs(head, tmp_path):
    corpus, store, run, report = tmp_path / "corpus", tmp_path / "store", tmp_path / "run", tmp_path / "eval"
    timings = {}

    def job(name, entrypoint, **submit):
        started = time.monotonic()
        logs = run_job(head, entrypoint, **submit)
        timings[name] = time.monotonic() - started
        return logs

    job("make-corpus", f"pave make-corpus {corpus} --num-videos 6 --seed 1")
    ids = {json.loads(line)["id"] for line in (corpus / "manifest.jsonl").read_text().splitlines()}
    assert len(ids) == 6

    logs = job("materialize", f"pave materialize --input {corpus / 'manifest.jsonl'} --store {store} "
                              "--modalities video,audio --frames 8 --strict")
    fs = FeatureStore(str(store))
    for modality in ("video", "audio"):
        assert fs.version(modality).committed_items() == ids, logs[-4000:]

    logs = job("train", f"pave train --store {store} --annotations {corpus / 'annotations' / 'train.json'} "
                        f"--out {run} --steps 4 --batch-size 2 --workers 1 --gpus-per-worker 0 --patch-d-model 32 "
                        "--lora-r 8 --report-every 2 --checkpoint-every 4 --name cluster --tiny-base")
    assert (run / "final" / "run_config.yaml").exists(), logs[-4000:]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    assert any((run / "ray" / "cluster").glob("checkpoint_*")), "the Ray Train run keeps its checkpoints in --out"

    logs = job("eval", f"pave eval --annotations {corpus / 'annotations' / 'eval.json'} "
                       f"--checkpoint {run / 'final'} --out {report} --max-new-tokens 4")  # store: the run's
    n_eval = len(json.loads((corpus / "annotations" / "eval.json").read_text()))
    assert json.loads((report / "report.json").read_text())["metrics"]["n"] == n_eval, logs[-4000:]
    assert (report / "report.md").exists()

    # Standalone: a driver started by hand joins the cluster in RAY_ADDRESS (a rerun: every item is done); --verbose
    # for Ray's line that names the cluster it joined.
    started = time.monotonic()
    rerun = subprocess.run(
        ["pave", "--verbose", "materialize", "--input", str(corpus / "manifest.jsonl"), "--store", str(store),
         "--modalities", "video,audio", "--frames", "8"],
        env={**head.env, "RAY_ADDRESS": head.gcs}, cwd=tmp_path, capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
    )
    timings["standalone materialize"] = time.monotonic() - started
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-8000:]
    # Ray prints the GCS address with the node's resolved IP, so match the cluster by its port.
    port = head.gcs.rsplit(":", 1)[1]
    assert re.search(rf"Connecting to existing Ray cluster at address: \S+:{port}\b", output), output[-8000:]
    print("job wall times:", ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def test_the_pave_console_script_runs_the_uploaded_working_dir(head):
    """`pave` is the console script installed on the node, but the job's copy of the working dir comes first on
    PYTHONPATH, so the submitted code is what runs (and a `pave` installed from an older checkout is shadowed)."""
    logs = run_job(head, 'echo "pave=$(command -v pave)" && echo "cwd=$(pwd)" && PYTHONVERBOSE=1 pave --help')
    lines = logs.splitlines()  # Ray's own lines ("Runtime env is setting up.") may come first
    found = dict(line.split("=", 1) for line in lines if line.startswith(("pave=", "cwd=")))
    assert found["pave"] == str(BIN / "pave")
    working_dir = Path(found["cwd"])
    assert working_dir != REPO and "runtime_resources" in working_dir.parts and (working_dir / "jobs").is_dir()
    loaded = [line for line in lines if "jobs/cli.py" in line]
    assert loaded and all(str(working_dir) in line for line in loaded), loaded
    assert "usage: pave" in logs
    # runtime_env.yaml's excludes (and .gitignore) kept the upload to the code
    assert not (working_dir / ".git").exists() and not (working_dir / ".venv").exists()


def test_relative_output_paths_are_refused_in_a_submitted_job(head):
    logs = run_job(head, "pave make-corpus corpus --num-videos 1", expect=JobStatus.FAILED)
    assert "OUT corpus: relative paths are not allowed in a submitted job" in logs


def test_the_jobs_api_refuses_a_client_without_the_cluster_token(head):
    with pytest.raises(Exception, match="(?i)authenticat"):
        JobSubmissionClient(head.dashboard, headers={"Authorization": "Bearer not-the-token"}).list_jobs()
