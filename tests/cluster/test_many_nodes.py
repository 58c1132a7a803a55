"""`pave` jobs on a cluster of several nodes (the session's, tests/cluster/conftest.py: a head without CPUs, so
that the work goes to the worker nodes, and two worker nodes, each a separate `ray start`), submitted through the
Jobs API as a user submits them. Where work ran is read from Ray's own state (tasks, actors, nodes); a lost node is
its whole process tree SIGKILLed at once, and the jobs must finish anyway, storing and training exactly what an
undisturbed run does.

The store, the annotations and every --out are on an S3 server (moto, tests/s3server.py: a thread of this pytest
process, up while the jobs run), as on a cluster whose nodes share no disk: Ray Train keeps its checkpoints there and
restarts a lost worker from them (only the materialize that loses a node writes a local store, see there). The nodes
have the credentials from the environment they inherit (tests/conftest.py sets them); every command names the
endpoint (--storage.endpoint-url). What the jobs wrote is read back from there."""
import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from ray.job_submission import JobStatus
from raycluster import WORKER_CPUS, Cluster, submit, wait_job

from featurestore import FeatureStore
from featurestore.files import Files
from training.rundir import local_copy

pytestmark = pytest.mark.timeout(900)

MODALITIES = ("video", "audio")
MATERIALIZE = "--modalities video,audio --frames 4 --items-per-call 1 --part-items 1 --concurrency 2 --strict"


@pytest.fixture(scope="module")
def bucket(s3_server):
    return s3_server.bucket()


def endpoint(bucket) -> str:
    """The flag that names the bucket's server to a pave command; none for local paths (no bucket)."""
    return f"--storage.endpoint-url {bucket.storage_options['endpoint_url']}" if bucket else ""


def files(bucket, url: str) -> Files:
    return Files(url, bucket.storage_options)


def upload(bucket, local: Path, url: str) -> str:
    files(bucket, url).fs.put_file(str(local), url)
    return url


def json_lines(bucket, url: str) -> list[dict]:
    """The JSON lines of the object at `url`; none while it does not exist."""
    fs = files(bucket, url).fs
    return [json.loads(line) for line in fs.cat_file(url).decode().splitlines()] if fs.exists(url) else []


def ray_job_id(cluster: Cluster, submission_id: str) -> str:
    return cluster.client.get_job_info(submission_id).job_id


def task_nodes(cluster: Cluster, submission_id: str) -> Counter:
    """Node name -> how many tasks (actor tasks included) of the job ran there, from Ray's state API."""
    names = cluster.node_names()
    tasks = cluster.list("tasks", ("job_id", "=", ray_job_id(cluster, submission_id)))
    return Counter(names.get(task.node_id, task.node_id) for task in tasks if task.node_id)


def committed(store: str, storage_options: dict) -> Counter:
    """(modality, item) -> how many commit records of the store name it (a part committed twice would count 2)."""
    feature_store = FeatureStore(store, storage_options)
    return Counter((info.modality, item) for info in feature_store.versions()
                   for record in feature_store.version(info.modality).index(fresh=True).records
                   for item in record["items"])


def manifest_ids(manifest: Path) -> set[str]:
    return {json.loads(line)["id"] for line in manifest.read_text().splitlines()}


def assert_stored_once_and_verified(cluster: Cluster, store: str, ids: set[str], bucket=None) -> None:
    """Every item of `ids` committed once in `store` (in `bucket` when given), and `pave store verify` clean."""
    assert committed(store, bucket.storage_options if bucket else {}) == \
        Counter({(m, item): 1 for m in MODALITIES for item in ids})
    verify = subprocess.run(["pave", "store", "verify", store, *endpoint(bucket).split()], env=cluster.env,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def wait_running(cluster: Cluster, job: str, condition, timeout_s: float = 300) -> None:
    """Poll until `condition()` holds; the job must still be running then."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        status = cluster.client.get_job_status(job)
        assert status in (JobStatus.PENDING, JobStatus.RUNNING), \
            f"the job ended ({status}) before the moment to act on it:\n{cluster.client.get_job_logs(job)[-4000:]}"
        assert time.monotonic() < deadline, f"not reached in {timeout_s} s"
        time.sleep(0.1)


def materialize_command(manifest: Path, store: str, bucket=None) -> str:
    return f"pave materialize --input {manifest} --store {store} {MATERIALIZE} {endpoint(bucket)}"


@pytest.fixture(scope="module")
def materialized(cluster, bucket, corpus):
    """The session corpus (8 takes) materialized by one submitted job into the bucket: (store URL, submission id)."""
    store = f"{bucket.url}/store"
    job = submit(cluster.ensure_workers(2, WORKER_CPUS), materialize_command(corpus / "manifest.jsonl", store, bucket))
    wait_job(cluster, job)
    return store, job


def test_materialize_runs_on_both_worker_nodes_and_stores_every_item_once(nodes, bucket, materialized, corpus):
    store, job = materialized
    ran = task_nodes(nodes, job)
    assert ran["node_a"] > 0 and ran["node_b"] > 0, ran
    assert_stored_once_and_verified(nodes, store, manifest_ids(corpus / "manifest.jsonl"), bucket)


TRAIN_STEPS, CHECKPOINT_EVERY, REPORT_EVERY = 16, 4, 2


def train_command(bucket, store: str, annotations: str, out: str) -> str:
    """`pave train` on 2 workers of a whole node each, a tiny base, a few steps; `out` is the run's --out."""
    return (f"pave train --store {store} --annotations {annotations} --out {out} {endpoint(bucket)} "
            f"--tiny-base --workers 2 --cpus-per-worker {WORKER_CPUS} --steps {TRAIN_STEPS} --batch-size 2 "
            f"--patch-d-model 32 --lora-r 8 --report-every {REPORT_EVERY} --checkpoint-every {CHECKPOINT_EVERY} "
            "--checkpoint.max-failures 2 --name multi")


def reported_steps(bucket, out: str) -> list[dict]:
    """Rank 0's metrics reports so far (OUT/metrics.jsonl)."""
    return json_lines(bucket, f"{out}/metrics.jsonl")


def data_order(bucket, out: str, rank: int) -> list[dict]:
    return json_lines(bucket, f"{out}/ray/multi/data_order/rank{rank}.jsonl")


def actors(cluster: Cluster, submission_id: str, class_name: str) -> list:
    return [actor for actor in cluster.list("actors", ("job_id", "=", ray_job_id(cluster, submission_id)))
            if class_name in actor.class_name]


@pytest.fixture(scope="module")
def train_annotations(bucket, corpus) -> str:
    return upload(bucket, corpus / "annotations" / "train.json", f"{bucket.url}/annotations/train.json")


@pytest.fixture(scope="module")
def train(cluster, bucket, materialized, train_annotations):
    """Submits the run of `trained` into s3://BUCKET/runs/NAME: (out, submission id)."""
    def submit_run(name: str) -> tuple[str, str]:
        out = f"{bucket.url}/runs/{name}"
        command = train_command(bucket, materialized[0], train_annotations, out)
        return out, submit(cluster.ensure_workers(2, WORKER_CPUS), command)
    return submit_run


@pytest.fixture(scope="module")
def trained(cluster, train):
    """An undisturbed `pave train --workers 2` run: (out, submission id)."""
    out, job = train("undisturbed")
    wait_job(cluster, job)
    return out, job


def test_train_places_its_two_workers_on_two_nodes(nodes, bucket, trained):
    out, job = trained
    names = nodes.node_names()
    placed = sorted(names[actor.node_id] for actor in actors(nodes, job, "RayTrainWorker"))
    assert placed == ["node_a", "node_b"]
    assert [m["step"] for m in reported_steps(bucket, out)] == list(range(REPORT_EVERY, TRAIN_STEPS + 1,
                                                                          REPORT_EVERY))
    for rank in (0, 1):
        assert [e["step"] for e in data_order(bucket, out, rank)] == list(range(1, TRAIN_STEPS + 1))
    run = files(bucket, out)
    assert run.exists("final/run_config.yaml") and run.exists("final/lora/adapter_model.safetensors")


def test_eval_generates_on_both_worker_nodes(nodes, bucket, trained, corpus, tmp_path):
    samples = [s for split in ("train", "eval")
               for s in json.loads((corpus / "annotations" / f"{split}.json").read_text())]
    (tmp_path / "all.json").write_text(json.dumps(samples))
    annotations = upload(bucket, tmp_path / "all.json", f"{bucket.url}/annotations/all.json")
    report = f"{bucket.url}/eval"
    job = submit(nodes, f"pave eval --annotations {annotations} --checkpoint {trained[0]}/final --out {report} "
                        f"--workers 2 --batch-size 1 --max-new-tokens 4 {endpoint(bucket)}")
    wait_job(nodes, job)
    result = files(bucket, report).read_json("report.json")
    assert result["metrics"]["n"] == len(samples)
    assert sorted(p["id"] for p in result["predictions"]) == sorted(s["id"] for s in samples)
    # The report names each generating process (host:pid); Ray's state says on which node each of them ran.
    names = nodes.node_names()
    node_of_pid = {actor.pid: names[actor.node_id] for actor in actors(nodes, job, "Generate")}
    generated_on = {node_of_pid[int(worker.rsplit(":", 1)[1])] for worker in result["workers"]}
    assert generated_on == {node.name for node in nodes.workers()}


def test_materialize_survives_a_lost_worker_node(nodes, bucket, corpus, tmp_path):
    # Ray retries the lost node's write tasks, also one whose commit record had landed: it must not commit again
    # (seen once here before write_part checked for it). Half the corpus: 8 items of 2 modalities to kill amid.
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()][:4]
    manifest = tmp_path / "half.jsonl"
    manifest.write_text("".join(json.dumps({"id": row["id"], "video": str(corpus / row["video"])}) + "\n"
                                for row in rows))
    store, ids = f"{bucket.url}/lost-node-store", manifest_ids(manifest)
    job = submit(nodes, f"{materialize_command(manifest, store, bucket)} --owner lost-node")
    wait_running(nodes, job, lambda: len(committed(store, bucket.storage_options)) >= 2)
    victim = nodes.workers()[-1]
    nodes.kill_node(victim.name)
    done_at_kill = len(committed(store, bucket.storage_options))
    assert done_at_kill < len(ids) * len(MODALITIES), "the kill came too late to leave work undone"
    wait_job(nodes, job, timeout_s=240)  # Ray Data retries the lost tasks and restarts the lost actor elsewhere
    assert task_nodes(nodes, job)[victim.name] > 0, "the lost node had none of the job's work"
    assert_stored_once_and_verified(nodes, store, ids, bucket)
    print(f"killed {victim.name} with {done_at_kill} of {len(ids) * len(MODALITIES)} items committed")


def adapter(bucket, final_url: str) -> dict:
    """Every tensor of an exported run (final/: the peft adapter and the patches), by file and name."""
    from safetensors.torch import load_file

    final = Path(local_copy(final_url, bucket.storage_options))
    return {f"{path.relative_to(final)}:{name}": tensor for path in sorted(final.rglob("*.safetensors"))
            for name, tensor in load_file(path).items()}


@dataclass
class Disturbed:
    out: str
    job: str
    victim: str  # the node killed
    step_at_kill: int  # the last step reported before
    replacement: str  # the node added after


@pytest.fixture(scope="module")
def disturbed(cluster, bucket, train, trained) -> Disturbed:
    """The run of `trained` again, but a worker node is lost after the first checkpoint and a new node is added, as
    an autoscaler replaces a lost node (two workers fit again)."""
    out, job = train("lost-node")
    # A report after the first checkpoint's step: rank 0 persisted that checkpoint in the bucket before going on.
    wait_running(cluster, job, lambda: any(m["step"] > CHECKPOINT_EVERY for m in reported_steps(bucket, out)))
    victim = cluster.node_names()[actors(cluster, job, "RayTrainWorker")[-1].node_id]
    cluster.kill_node(victim)
    step_at_kill = reported_steps(bucket, out)[-1]["step"]
    replacement = cluster.add_node(WORKER_CPUS)
    wait_job(cluster, job, timeout_s=400)
    print(f"killed {victim} after step {step_at_kill} of {TRAIN_STEPS}, replaced by {replacement.name}")
    return Disturbed(out, job, victim, step_at_kill, replacement.name)


def test_training_survives_a_lost_worker_node_with_the_data_order_of_an_undisturbed_run(nodes, bucket, disturbed,
                                                                                         trained):
    assert disturbed.step_at_kill < TRAIN_STEPS, "the kill came too late to leave steps undone"
    reports = reported_steps(bucket, disturbed.out)
    assert [m["step"] for m in reports] == list(range(REPORT_EVERY, TRAIN_STEPS + 1, REPORT_EVERY))
    assert reports[-1]["resumes"] >= 1, "the run did not restart from a checkpoint"
    names = nodes.node_names()
    placed = {names[actor.node_id] for actor in actors(nodes, disturbed.job, "RayTrainWorker")}
    assert disturbed.replacement in placed  # the restarted worker group used the new node
    for rank in (0, 1):  # no step lost or trained twice, each on the samples of the undisturbed run
        expected = data_order(bucket, trained[0], rank)
        assert [e["step"] for e in expected] == list(range(1, TRAIN_STEPS + 1))
        assert data_order(bucket, disturbed.out, rank) == expected
    assert files(bucket, disturbed.out).exists("final/run_config.yaml")


def test_training_after_a_lost_worker_node_exports_the_adapter_of_an_undisturbed_run(bucket, disturbed, trained):
    resumed, expected = adapter(bucket, f"{disturbed.out}/final"), adapter(bucket, f"{trained[0]}/final")
    assert resumed.keys() == expected.keys() and expected
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
