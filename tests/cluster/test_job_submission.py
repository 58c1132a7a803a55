"""`pave` as a user submits it to a cluster: the session's cluster (tests/cluster/conftest.py: real `ray start`
nodes on loopback, token auth), the Jobs API (`JobSubmissionClient`, what `ray job submit` uses), the repo as the
runtime_env working_dir with the excludes of runtime_env.yaml, and `pave` on the nodes' PATH, as the cluster's
setup_commands install it; and a driver started by hand that joins the cluster. No mocks. materialize, train and
eval as submitted jobs on several nodes: tests/cluster/test_many_nodes.py.

The cluster is stopped through the `ray start --block` processes its fixture started, never with `ray stop`: that
one kills every Ray process of this user on the machine, other test sessions' included."""
import json
import re
import subprocess
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from raycluster import BIN, JOB_TIMEOUT_S, REPO, run_job

from featurestore import FeatureStore

pytestmark = pytest.mark.timeout(900)


def test_a_job_makes_a_corpus_and_a_driver_started_by_hand_joins_the_cluster_to_materialize_it(nodes, tmp_path):
    corpus, store = tmp_path / "corpus", tmp_path / "store"
    run_job(nodes, f"pave make-corpus {corpus} --num-videos 2 --seed 1")
    ids = {json.loads(line)["id"] for line in (corpus / "manifest.jsonl").read_text().splitlines()}
    assert len(ids) == 2
    # RAY_ADDRESS names the cluster; --verbose for Ray's line that names the cluster it joined
    joined = subprocess.run(
        ["pave", "--verbose", "materialize", "--input", str(corpus / "manifest.jsonl"), "--store", str(store),
         "--modalities", "video", "--frames", "4", "--strict"],
        env={**nodes.env, "RAY_ADDRESS": nodes.gcs}, cwd=tmp_path, capture_output=True, text=True,
        timeout=JOB_TIMEOUT_S,
    )
    output = joined.stdout + joined.stderr
    assert joined.returncode == 0, output[-8000:]
    # Ray prints the GCS address with the node's resolved IP, so match the cluster by its port.
    port = nodes.gcs.rsplit(":", 1)[1]
    assert re.search(rf"Connecting to existing Ray cluster at address: \S+:{port}\b", output), output[-8000:]
    assert FeatureStore(str(store)).version("video").committed_items() == ids


def test_the_pave_console_script_runs_the_uploaded_working_dir(cluster):
    """`pave` is the console script installed on the node, but the job's copy of the working dir comes first on
    PYTHONPATH, so the submitted code is what runs (and a `pave` installed from an older checkout is shadowed)."""
    logs = run_job(cluster, 'echo "pave=$(command -v pave)" && echo "cwd=$(pwd)" && PYTHONVERBOSE=1 pave --help')
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


def test_relative_output_paths_are_refused_in_a_submitted_job(cluster):
    logs = run_job(cluster, "pave make-corpus corpus --num-videos 1", expect=JobStatus.FAILED)
    assert "OUT corpus: relative paths are not allowed in a submitted job" in logs


def test_the_jobs_api_refuses_a_client_without_the_cluster_token(cluster):
    with pytest.raises(Exception, match="(?i)authenticat"):
        JobSubmissionClient(cluster.dashboard, headers={"Authorization": "Bearer not-the-token"}).list_jobs()
