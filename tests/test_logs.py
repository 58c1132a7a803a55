"""`pave` is quiet by default: what a command prints is its own (progress lines, tables, results), while Ray's own
INFO logs (its start-up, Ray Data's plans and progress, Ray Train's controller and its dump of every report) appear
with --verbose only (jobs/ray_runtime.py). Every command here starts its own local Ray, as a user's first command does,
while the session's Ray runs too: two Ray instances on one host."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--workers", "1", "--batch-size", "2", "--patch-d-model", "32", "--lora-r", "8", "--report-every", "1",
         "--checkpoint-every", "2", "--tiny-base", "--steps", "4"]
# Ray's tag on a line of a worker process, printed by the driver
WORKER_TAG = re.compile(r"(\x1b\[\d+m)?\((RayTrainWorker|TrainController) pid=\d+(, ip=[\d.]+)?\)(\x1b\[0m)? ")
OURS = re.compile("|".join([
    r"modality +version +ok +failed +skipped +items/s +decode s +encode s$",  # pave materialize's table
    r"(video|audio) +[0-9a-f]{16}( +[\d.]+){6}$",
    r"[\d.]+s$",
    r"LLM attention: \w+$",  # training/recipe.py, on every worker
    r"activation checkpointing \(auto\): ",
    r"step \d/4 \(\d+%\)  loss [\d.]+  [\d,]+ tokens/s  data wait [\d.]+%  elapsed \dm\d\ds  ETA \dm\d\ds$",
    r"trained 4 steps in \d+ s -> ",
    r"loss curve: ",
]))
# Neither ours nor Ray's INFO, and shown on purpose: Ray's errors from its C++ core (once per process, e.g. for an
# actor whose constructor arguments sit in the object store: no Ray setting drops them but with every other C++ error,
# such as the raylet's report of workers it killed for memory), and warnings raised inside our dependencies.
SHOWN = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+ E \d+ \d+\] \w+\.cc:\d+: |\S+/site-packages/\S+:\d+: \w*Warning: "
                   r"|  warnings\.warn\(")


def pave(*args) -> str:
    """`pave ARGS` on a local Ray of its own: its stdout and stderr, checked to have succeeded."""
    env = {key: value for key, value in os.environ.items()
           # RAY_AUTH_MODE: as the session's Ray set it, Ray would not print its token-auth notice, which quiet hides
           if key not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "PAVE_VERBOSE")}
    result = subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def not_ours(output: str) -> list[str]:
    lines = [WORKER_TAG.sub("", line) for line in output.splitlines() if line.strip()]
    return [line for line in lines if not OURS.match(line) and not SHOWN.match(line)]


@pytest.mark.timeout(900)
def test_a_command_prints_only_its_own_lines_and_with_verbose_rays_too(corpus, ray_local, tmp_path):
    manifest, annotations = corpus / "manifest.jsonl", corpus / "annotations" / "train.json"
    materialized = pave("materialize", "--input", manifest, "--store", tmp_path / "store",
                        "--modalities", "video,audio", "--frames", 4)
    assert not not_ours(materialized), materialized
    trained = pave("train", "--store", tmp_path / "store", "--annotations", annotations, "--out", tmp_path / "run",
                   *TRAIN)
    assert not not_ours(trained), trained
    assert len(re.findall(r"step \d/4 ", trained)) == 4  # one progress line per report

    # the flag after the command, and before it; a rerun (every item done) runs the same Ray Data job
    materialized = pave("materialize", "--input", manifest, "--store", tmp_path / "store",
                        "--modalities", "video,audio", "--frames", 4, "--verbose")
    for ray_line in ("Token authentication is enabled for this Ray cluster", "Started a local Ray instance",
                     "Execution plan of Dataset"):
        assert ray_line in materialized, materialized
    trained = pave("--verbose", "train", "--store", tmp_path / "store", "--annotations", annotations,
                   "--out", tmp_path / "verbose_run", *TRAIN)
    for ray_line in ("Started training worker group of size 1", "Reporting training result 4: TrainingReport(",
                     "Checkpoint successfully created at"):
        assert ray_line in trained, trained
    assert len(re.findall(r"step \d/4 ", trained)) == 4


def test_rays_state_api_finds_the_jobs_own_cluster_from_its_workers(ray_local):
    """Ray Train's placement-group cleaner, a worker of the job, asks Ray's state API whether the run's controller
    lives; without an address the API looks for the cluster on the host, and fails (a traceback) where two run."""
    script = """
import ray
from jobs.ray_runtime import init_ray
from ray.train.v2._internal.state.util import is_actor_alive

init_ray(num_cpus=1)

@ray.remote(num_cpus=0)
class Controller:
    def alive(self):
        return is_actor_alive(ray.get_runtime_context().get_actor_id(), timeout=10)

print(ray.get(Controller.remote().alive.remote()))
"""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.stdout.strip() == "True", result.stderr[-3000:]
