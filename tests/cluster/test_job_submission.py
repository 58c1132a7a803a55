"""Every `pave` job as a user submits it to a cluster: a real Ray head (`ray start --head`, loopback, its own ports
and temp dir), the Jobs API (`JobSubmissionClient`, what `ray job submit` uses), the repo as the runtime_env
working_dir with the excludes of runtime_env.yaml, and `pave` on the node's PATH, as the cluster's setup_commands
install it. No mocks.

The head is stopped through the `ray start --block` process this module started, never with `ray stop`: that one
kills every Ray process of this user on the machine, other test sessions' included."""
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from featurestore import FeatureStore

pytestmark = pytest.mark.timeout(1200)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: `ray` and the `pave` console script
JOB_TIMEOUT_S = 420


@dataclass
class Head:
    gcs: str  # what RAY_ADDRESS holds for a driver that joins the cluster
    dashboard: str  # the Jobs API, what `ray job submit --address` takes
    client: JobSubmissionClient
    env: dict  # environment of a standalone driver on this machine (PATH has `pave`, RAY_AUTH_TOKEN the token)


def free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def stop_head(proc: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` stops the processes it started; then anything of its process tree still
    alive (workers, job drivers) is killed by pid."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def head():
    # Short temp dir: Ray's unix sockets live under it (107-byte path limit). Its own temp dir also keeps the
    # head out of /tmp/ray/ray_current_cluster, so nobody's `ray.init()` attaches to it by accident.
    temp = Path(tempfile.mkdtemp(prefix="pave-rc-", dir="/tmp"))
    gcs, dash, client_port, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = free_ports(9)
    # Token auth, as Ray 2.60 turns on for new clusters, with this cluster's own token (not ~/.ray/auth_token):
    # every client must present it, the Jobs API as a bearer header and a joining driver through RAY_AUTH_TOKEN.
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    log = open(temp / "ray_start.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--num-cpus=4", "--num-gpus=0", f"--object-store-memory={1 << 30}", f"--temp-dir={temp}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={agent_http}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
         f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        dashboard, deadline, client = f"http://127.0.0.1:{dash}", time.monotonic() + 180, None
        while client is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{(temp / 'ray_start.log').read_text()[-5000:]}")
            try:
                client = JobSubmissionClient(dashboard, headers={"Authorization": f"Bearer {token}"})
                client.list_jobs()
            except Exception:
                client = None
                time.sleep(1)
        yield Head(f"127.0.0.1:{gcs}", dashboard, client, env)
    finally:
        stop_head(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def runtime_env(**extra) -> dict:
    """What `ray job submit --working-dir <repo> --runtime-env runtime_env.yaml` sends."""
    return {**yaml.safe_load((REPO / "runtime_env.yaml").read_text()), "working_dir": str(REPO), **extra}


def run_job(head: Head, entrypoint: str, expect: JobStatus = JobStatus.SUCCEEDED, **submit) -> str:
    """Submit, wait (bounded), check the final status; the job's logs."""
    job_id = head.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env(), **submit)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := head.client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                  JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            head.client.stop_job(job_id)
            pytest.fail(f"{entrypoint}: still {status} after {JOB_TIMEOUT_S} s\n"
                        f"{head.client.get_job_logs(job_id)[-8000:]}")
        time.sleep(1)
    logs = head.client.get_job_logs(job_id)
    assert status == expect, f"{entrypoint}: {status}, {head.client.get_job_info(job_id).message}\n{logs[-8000:]}"
    return logs


def test_corpus_materialize_train_eval_as_submitted_jobs(head, tmp_path):
    corpus, store, run, report = tmp_path / "corpus", tmp_path / "store", tmp_path / "run", tmp_path / "eval"
    timings = {}

    def job(name, entrypoint, **submit):
        started = time.monotonic()
        logs = run_job(head, entrypoint, **submit)
        timings[name] = time.monotonic() - started
        return logs

    job("make-corpus", f"pave make-corpus {corpus} --videos 6 --seed 1")
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

    # Standalone: a driver started by hand joins the cluster in RAY_ADDRESS (a rerun: every item is done).
    started = time.monotonic()
    rerun = subprocess.run(
        ["pave", "materialize", "--input", str(corpus / "manifest.jsonl"), "--store", str(store),
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
    logs = run_job(head, "pave make-corpus corpus --videos 1", expect=JobStatus.FAILED)
    assert "OUT corpus: relative paths are not allowed in a submitted job" in logs


def test_the_jobs_api_refuses_a_client_without_the_cluster_token(head):
    with pytest.raises(Exception, match="(?i)authenticat"):
        JobSubmissionClient(head.dashboard, headers={"Authorization": "Bearer not-the-token"}).list_jobs()
