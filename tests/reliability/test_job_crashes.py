"""`pave materialize` crashed or raced, each run a separate OS process driving a job on the session's Ray cluster:
nothing is lost, nothing is written twice, and the values are bit for bit those of an uninterrupted run."""
import os
import signal

import psutil
import pytest
from jobruns import MODALITIES, Run, assert_complete_and_equal, committed, wait_while_running

from featurestore import FeatureStore

pytestmark = pytest.mark.timeout(400)

IDS = [f"v{i:04d}" for i in range(8)]


@pytest.fixture
def manifest(corpus):
    return corpus / "manifest.jsonl"


def encoder_actors() -> list[psutil.Process]:
    """The Ray Data actors that decode and encode (prepare is fused into them on a CPU cluster), among this
    session's Ray processes: descendants of the pytest process, which started that cluster."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            title = process.cmdline()[0]
        except (psutil.Error, IndexError):
            continue
        if title.startswith("ray::MapWorker(") and "Encode" in title:
            found.append(process)
    return found


def test_a_killed_driver_is_finished_by_a_rerun(manifest, reference, ray_address, tmp_path):
    store = tmp_path / "store"
    crashed = Run(manifest, store, ray_address, "--owner", "nightly", name="crashed")
    try:
        wait_while_running(crashed, lambda: committed(store))  # at least one part committed
    finally:
        crashed.stop()  # SIGKILL: no cleanup of any kind runs
    assert len(committed(store)) < len(IDS) * len(MODALITIES), "the kill came too late to leave work undone"
    crashed_store = FeatureStore(str(store))
    for info in crashed_store.versions():  # readable and consistent as the crash left it
        assert crashed_store.version(info.modality).verify() == []

    # Rerun under the same owner, as after a crash: it takes the dead job's claims back at once.
    rerun = Run(manifest, store, ray_address, "--owner", "nightly", name="rerun")
    assert rerun.wait() == 0, rerun.output()
    for modality in MODALITIES:
        counts = rerun.summary()["counts"][modality]
        assert counts["failed"] == 0 and counts["ok"] + counts["skipped"] == len(IDS)
    assert_complete_and_equal(store, reference[1], IDS)


def test_a_killed_encoder_actor_is_restarted_and_the_job_completes(manifest, reference, ray_address, tmp_path):
    store = tmp_path / "store"
    run = Run(manifest, store, ray_address)
    try:
        wait_while_running(run, lambda: committed(store) and encoder_actors())
        victim = encoder_actors()[0]
        os.kill(victim.pid, signal.SIGKILL)
        done_at_kill = len(committed(store))
        assert run.wait() == 0, run.output()  # Ray Data restarts the actor and retries its tasks
    finally:
        run.stop()
    assert done_at_kill < len(IDS) * len(MODALITIES), "the kill came too late to leave work undone"
    assert run.summary()["counts"] == {m: {"ok": len(IDS), "failed": 0, "skipped": 0} for m in MODALITIES}
    assert_complete_and_equal(store, reference[1], IDS)


def test_two_jobs_in_two_processes_write_each_item_once(manifest, reference, ray_address, tmp_path):
    store = tmp_path / "store"
    runs = [Run(manifest, store, ray_address, name=f"job{k}") for k in range(2)]
    try:
        codes = [run.wait() for run in runs]
    finally:
        for run in runs:
            run.stop()
    assert codes == [0, 0], [run.output() for run in runs]
    for modality in MODALITIES:
        counts = [run.summary()["counts"][modality] for run in runs]
        # Each item is written by one job; the other skips it (claimed by the first, or already committed).
        assert sum(c["ok"] for c in counts) == len(IDS) and sum(c["skipped"] for c in counts) == len(IDS)
    assert_complete_and_equal(store, reference[1], IDS)
