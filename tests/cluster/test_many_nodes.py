"""`pave` jobs on a cluster of several nodes (tests/cluster/raycluster.py: a head without CPUs, so that the work goes
to the worker nodes, and two worker nodes, each a separate `ray start`), submitted through the Jobs API as a user
submits them. Where work ran is read from Ray's own state (tasks, actors, nodes); a lost node is its whole process
tree SIGKILLed at once, and the jobs must finish anyway, storing and training exactly what an undisturbed run does.

`OUT` is where runs write: every node must see it at the same path (one host: a local directory; on a real cluster a
shared mount, or a URL once `--out` takes one)."""
import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from ray.job_submission import JobStatus
from raycluster import Cluster, start_cluster, submit, wait_job

from featurestore import FeatureStore

pytestmark = pytest.mark.timeout(900)

WORKER_CPUS = 2  # per worker node; a training worker asks for all of them, so two workers need two nodes
MODALITIES = ("video", "audio")
MATERIALIZE = "--modalities video,audio --frames 4 --batch-size 1 --part-items 1 --concurrency 2 --strict"


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(head_cpus=0, workers={"node_a": WORKER_CPUS, "node_b": WORKER_CPUS})
    try:
        yield cluster
    finally:
        cluster.close()


def two_workers(cluster: Cluster) -> Cluster:
    """The cluster with two worker nodes: a node an earlier test killed is replaced first."""
    while len(cluster.workers()) < 2:
        cluster.add_node(WORKER_CPUS)
    return cluster


@pytest.fixture
def nodes(cluster) -> Cluster:
    return two_workers(cluster)


def ray_job_id(cluster: Cluster, submission_id: str) -> str:
    return cluster.client.get_job_info(submission_id).job_id


def task_nodes(cluster: Cluster, submission_id: str) -> Counter:
    """Node name -> how many tasks (actor tasks included) of the job ran there, from Ray's state API."""
    names = cluster.node_names()
    tasks = cluster.list("tasks", ("job_id", "=", ray_job_id(cluster, submission_id)))
    return Counter(names.get(task.node_id, task.node_id) for task in tasks if task.node_id)


def committed(store: Path) -> Counter:
    """(modality, item) -> how many commit records of the store name it (a part committed twice would count 2)."""
    feature_store = FeatureStore(str(store))
    return Counter((info.modality, item) for info in feature_store.versions()
                   for record in feature_store.version(info.modality).index(fresh=True).records
                   for item in record["items"])


def manifest_ids(corpus: Path) -> set[str]:
    return {json.loads(line)["id"] for line in (corpus / "manifest.jsonl").read_text().splitlines()}


def assert_stored_once_and_verified(cluster: Cluster, store: Path, ids: set[str]) -> None:
    assert committed(store) == Counter({(m, item): 1 for m in MODALITIES for item in ids})
    verify = subprocess.run(["pave", "store", "verify", str(store)], env=cluster.env, capture_output=True, text=True,
                            timeout=120)
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


@pytest.fixture(scope="module")
def materialized(cluster, corpus, tmp_path_factory):
    """The session corpus (8 takes) materialized by one submitted job: (store, submission id)."""
    store = tmp_path_factory.mktemp("many_nodes") / "store"
    job = submit(two_workers(cluster),
                 f"pave materialize --input {corpus / 'manifest.jsonl'} --store {store} {MATERIALIZE}")
    wait_job(cluster, job)
    return store, job


def test_materialize_runs_on_both_worker_nodes_and_stores_every_item_once(nodes, materialized, corpus):
    store, job = materialized
    ran = task_nodes(nodes, job)
    assert ran["node_a"] > 0 and ran["node_b"] > 0, ran
    assert_stored_once_and_verified(nodes, store, manifest_ids(corpus))


TRAIN_STEPS, CHECKPOINT_EVERY, REPORT_EVERY = 16, 4, 2


def train_command(store: Path, corpus: Path, out) -> str:
    """`pave train` on 2 workers of a whole node each, a tiny base, a few steps; `out` is the run's --out."""
    return (f"pave train --store {store} --annotations {corpus / 'annotations' / 'train.json'} --out {out} "
            f"--tiny-base --workers 2 --cpus-per-worker {WORKER_CPUS} --steps {TRAIN_STEPS} --batch-size 2 "
            f"--patch-d-model 32 --lora-r 8 --report-every {REPORT_EVERY} --checkpoint-every {CHECKPOINT_EVERY} "
            "--checkpoint.max-failures 2 --name multi")


def reported_steps(out: Path) -> list[dict]:
    """Rank 0's metrics reports so far (OUT/metrics.jsonl)."""
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def data_order(out: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out / "ray" / "multi" / "data_order" / f"rank{rank}.jsonl").read_text()
            .splitlines()]


def actors(cluster: Cluster, submission_id: str, class_name: str) -> list:
    return [actor for actor in cluster.list("actors", ("job_id", "=", ray_job_id(cluster, submission_id)))
            if class_name in actor.class_name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Where the training runs write, each into its own --out under it: a location every node sees at the same path.
    On one host a local directory; a shared mount or an object store URL on a real cluster."""
    return tmp_path_factory.mktemp("many_nodes_runs")


@pytest.fixture(scope="module")
def trained(cluster, materialized, corpus, runs):
    """An undisturbed `pave train --workers 2` run: (out, submission id)."""
    out = runs / "undisturbed"
    job = submit(two_workers(cluster), train_command(materialized[0], corpus, out))
    wait_job(cluster, job)
    return out, job


def test_train_places_its_two_workers_on_two_nodes(nodes, trained):
    out, job = trained
    names = nodes.node_names()
    placed = sorted(names[actor.node_id] for actor in actors(nodes, job, "RayTrainWorker"))
    assert placed == ["node_a", "node_b"]
    assert [m["step"] for m in reported_steps(out)] == list(range(REPORT_EVERY, TRAIN_STEPS + 1, REPORT_EVERY))
    for rank in (0, 1):
        assert [e["step"] for e in data_order(out, rank)] == list(range(1, TRAIN_STEPS + 1))
    assert (out / "final" / "run_config.yaml").exists() and (out / "final" / "lora").is_dir()


def test_eval_generates_on_both_worker_nodes(nodes, trained, corpus, tmp_path):
    samples = [s for split in ("train", "eval")
               for s in json.loads((corpus / "annotations" / f"{split}.json").read_text())]
    annotations, report = tmp_path / "all.json", tmp_path / "eval"
    annotations.write_text(json.dumps(samples))
    job = submit(nodes, f"pave eval --annotations {annotations} --checkpoint {trained[0] / 'final'} --out {report} "
                        "--workers 2 --batch-size 1 --max-new-tokens 4")
    wait_job(nodes, job)
    result = json.loads((report / "report.json").read_text())
    assert result["metrics"]["n"] == len(samples)
    assert sorted(p["id"] for p in result["predictions"]) == sorted(s["id"] for s in samples)
    # The report names each generating process (host:pid); Ray's state says on which node each of them ran.
    names = nodes.node_names()
    node_of_pid = {actor.pid: names[actor.node_id] for actor in actors(nodes, job, "Generate")}
    generated_on = {node_of_pid[int(worker.rsplit(":", 1)[1])] for worker in result["workers"]}
    assert generated_on == {node.name for node in nodes.workers()}


def test_materialize_survives_a_lost_worker_node(nodes, corpus, tmp_path):
    store, ids = tmp_path / "store", manifest_ids(corpus)
    job = submit(nodes, f"pave materialize --input {corpus / 'manifest.jsonl'} --store {store} {MATERIALIZE} "
                        "--owner lost-node")
    wait_running(nodes, job, lambda: len(committed(store)) >= 2)
    victim = nodes.workers()[-1]
    nodes.kill_node(victim.name)
    done_at_kill = len(committed(store))
    assert done_at_kill < len(ids) * len(MODALITIES), "the kill came too late to leave work undone"
    wait_job(nodes, job, timeout_s=240)  # Ray Data retries the lost tasks and restarts the lost actor elsewhere
    assert task_nodes(nodes, job)[victim.name] > 0, "the lost node had none of the job's work"
    assert_stored_once_and_verified(nodes, store, ids)
    print(f"killed {victim.name} with {done_at_kill} of {len(ids) * len(MODALITIES)} items committed")


def adapter(final: Path) -> dict:
    """Every tensor of an exported run (final/: the peft adapter and the patches), by file and name."""
    from safetensors.torch import load_file

    return {f"{path.relative_to(final)}:{name}": tensor for path in sorted(final.rglob("*.safetensors"))
            for name, tensor in load_file(path).items()}


@dataclass
class Disturbed:
    out: Path
    job: str
    victim: str  # the node killed
    step_at_kill: int  # the last step reported before
    replacement: str  # the node added after


@pytest.fixture(scope="module")
def disturbed(cluster, materialized, trained, corpus, runs) -> Disturbed:
    """The run of `trained` again, but a worker node is lost after the first checkpoint and a new node is added, as
    an autoscaler replaces a lost node (two workers fit again)."""
    out = runs / "lost-node"
    job = submit(two_workers(cluster), train_command(materialized[0], corpus, out))
    # A report after the first checkpoint's step: rank 0 persisted that checkpoint before going on.
    wait_running(cluster, job, lambda: any(m["step"] > CHECKPOINT_EVERY for m in reported_steps(out)))
    victim = cluster.node_names()[actors(cluster, job, "RayTrainWorker")[-1].node_id]
    cluster.kill_node(victim)
    step_at_kill = reported_steps(out)[-1]["step"]
    replacement = cluster.add_node(WORKER_CPUS)
    wait_job(cluster, job, timeout_s=400)
    print(f"killed {victim} after step {step_at_kill} of {TRAIN_STEPS}, replaced by {replacement.name}")
    return Disturbed(out, job, victim, step_at_kill, replacement.name)


def test_training_survives_a_lost_worker_node_with_the_data_order_of_an_undisturbed_run(nodes, disturbed, trained):
    assert disturbed.step_at_kill < TRAIN_STEPS, "the kill came too late to leave steps undone"
    reports = reported_steps(disturbed.out)
    assert [m["step"] for m in reports] == list(range(REPORT_EVERY, TRAIN_STEPS + 1, REPORT_EVERY))
    assert reports[-1]["resumes"] >= 1, "the run did not restart from a checkpoint"
    names = nodes.node_names()
    placed = {names[actor.node_id] for actor in actors(nodes, disturbed.job, "RayTrainWorker")}
    assert disturbed.replacement in placed  # the restarted worker group used the new node
    for rank in (0, 1):  # no step lost or trained twice, each on the samples of the undisturbed run
        assert data_order(disturbed.out, rank) == data_order(trained[0], rank)
    assert (disturbed.out / "final" / "run_config.yaml").exists()


@pytest.mark.xfail(strict=True, reason="training/ does not restore the RNG on resume: LoRA dropout masks after a "
                                       "restart differ from an undisturbed run's (equal with --model.lora.dropout 0)")
def test_training_after_a_lost_worker_node_exports_the_adapter_of_an_undisturbed_run(disturbed, trained):
    resumed, expected = adapter(disturbed.out / "final"), adapter(trained[0] / "final")
    assert resumed.keys() == expected.keys() and expected
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
