"""`pave materialize` as separate OS processes, and what the tests compare between the stores they write.

Every run here materializes the corpus manifest (video + audio) with one item per encoder call and per part, so
that the stored values do not depend on how items happened to be batched: stores written by interrupted,
restarted and concurrent runs can be compared bit for bit with one written without interruption."""
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from featurestore import FeatureStore
from pipelines.materialize import Resources, Settings

REPO = Path(__file__).resolve().parents[2]
MODALITIES = ("video", "audio")
SETTINGS = Settings(frames=4)
RESOURCES = Resources(batch_size=1, part_items=1)
# The same job through the CLI.
ARGS = ["--modalities", ",".join(MODALITIES), "--frames", str(SETTINGS.frames), "--items-per-call", "1",
        "--part-items", "1"]


class Run:
    """A `pave materialize` process, driving a job on the Ray cluster at `ray_address` (as a Ray Job's driver does
    on a cluster); its output goes to a log file next to the store."""

    def __init__(self, manifest: Path, store: Path, ray_address: str, *extra: str, name: str = "run"):
        self.store, self.summary_path = store, store.parent / f"{name}.summary.json"
        self.log = store.parent / f"{name}.log"
        command = [sys.executable, "-m", "jobs.cli", "materialize", "--input", str(manifest), "--store", str(store),
                   *ARGS, "--summary-json", str(self.summary_path), *extra]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "RAY_ADDRESS": ray_address})

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGKILL, if it still runs (also how a test crashes the driver)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text())

    def output(self) -> str:
        return self.log.read_text()[-3000:]


def wait_while_running(run: Run, condition) -> None:
    """Poll until `condition()` holds; the run must not end first (pytest's timeout bounds the wait)."""
    while not condition():
        assert run.process.poll() is None, f"the run ended before the moment to act on it:\n{run.output()}"
        time.sleep(0.02)


def committed(store: Path) -> Counter:
    """(modality, item) -> how many commit records name it: what a reader could see, read straight off the disk
    (a part committed twice would count 2)."""
    counts = Counter()
    for record in store.glob("*/*/commits/*.json"):
        modality = record.parts[-4]
        counts.update((modality, item) for item in json.loads(record.read_text())["items"])
    return counts


def checksums(store: Path) -> dict[str, dict[str, str]]:
    """modality -> {"fingerprint": id, item: sha256 of its tokens and times}."""
    feature_store, out = FeatureStore(str(store)), {}
    for modality in MODALITIES:
        version = feature_store.version(modality)
        out[modality] = {"fingerprint": version.fingerprint.id}
        for item in version.items():
            rows = version.get(item)
            out[modality][item] = hashlib.sha256(rows.tokens.tobytes() + rows.t_start.tobytes()
                                                 + rows.t_end.tobytes()).hexdigest()
    return out


def assert_complete_and_equal(store: Path, reference: dict, items: list[str]) -> None:
    """Every item of every modality committed exactly once, values identical to the reference, verify clean."""
    assert committed(store) == Counter({(m, item): 1 for m in MODALITIES for item in items})
    assert checksums(store) == reference
    feature_store = FeatureStore(str(store))
    for modality in MODALITIES:
        assert feature_store.version(modality).verify() == []
