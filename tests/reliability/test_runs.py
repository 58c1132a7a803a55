"""Training runs never train on or export bad state, and no run overwrites another: one run at a time in a run
directory, non-finite numbers stop a run before they reach the weights, a resume records only what ran, a moved run
continues where it is, and a damaged store or a full disk ends `pave train` with one line, without restarts."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml
from jobruns import REPO

from training.checkpoint import NonFiniteError
from pipelines.annotations import load_annotations
from pipelines.training_data import open_versions
from training.config import RUN_CONFIG, ConfigError, load, parse
from training.launch import fit
from training.lock import HOLDER, STALE_S, RunInUse, RunLock
from training.recipe import Recipe

SMALL = ["--workers", "1", "--batch-size", "2", "--patch-d-model", "32", "--lora-r", "8", "--report-every", "1",
         "--checkpoint-every", "2", "--tiny-base"]
# the lines of Ray's workers, the progress lines among them, tagged by Ray with the worker's name
NOT_PAVE = re.compile(r"\x1b\[36m\(")


def flags(corpus, reference, out, *extra) -> list[str]:
    return ["--store", str(reference[0]), "--annotations", str(corpus / "annotations" / "train.json"), "--out",
            str(out), *SMALL, *extra]


def pave_train(ray_address, *args, wait=True):
    command = [sys.executable, "-m", "jobs.cli", "train", *map(str, args)]
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def own_lines(stderr: str) -> list[str]:
    """What `pave train` itself said on stderr."""
    return [line for line in stderr.strip().splitlines() if not NOT_PAVE.match(line)]


def history(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_a_second_run_into_the_same_out_is_refused_and_a_dead_runs_lock_is_taken_over(corpus, reference, ray_address,
                                                                                        tmp_path):
    out = tmp_path / "run"
    first = pave_train(ray_address, *flags(corpus, reference, out, "--steps", "100000"), wait=False)
    try:
        while not (out / HOLDER).exists():
            assert first.poll() is None, first.stdout.read()[-3000:]
            time.sleep(0.2)
        second = pave_train(ray_address, *flags(corpus, reference, out, "--steps", "4"))
        assert second.returncode == 2 and len(own_lines(second.stderr)) == 1, second.stderr[-3000:]
        assert f"pave train: --out {out} is in use by run pid {first.pid} on host {socket.gethostname()}, started " \
            in second.stderr
        assert "wait for it to finish or stop it, or train into another --out" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)  # a dead run leaves its holder file behind, not its lock
        first.wait()
    assert json.loads((out / HOLDER).read_text())["pid"] == first.pid

    third = pave_train(ray_address, "--config", out / RUN_CONFIG, "--optim.steps", "4")
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock of a run that is no longer running (pid {first.pid} on host" in third.stderr
    steps = [m["step"] for m in history(out)]
    assert steps == sorted(set(steps)) and (out / "final" / RUN_CONFIG).exists()  # each step logged once
    assert not (out / HOLDER).exists()  # released at the end


def test_a_lock_held_on_another_host_counts_until_its_heartbeat_is_stale(tmp_path):
    """flock may not reach other hosts on a shared filesystem: their holder file, heartbeat and all, decides."""
    elsewhere = {"pid": 1, "host": "other-node", "started": "2026-01-01 00:00:00"}
    (tmp_path / HOLDER).write_text(json.dumps({**elsewhere, "heartbeat": time.time()}))
    with pytest.raises(RunInUse, match=f"--out {tmp_path} is in use by run pid 1 on host other-node, started "
                                       "2026-01-01 00:00:00, heartbeat 0 s ago"):
        RunLock(tmp_path).__enter__()
    (tmp_path / HOLDER).write_text(json.dumps({**elsewhere, "heartbeat": time.time() - STALE_S - 1}))
    with RunLock(tmp_path):  # a dead host's lock is taken over
        assert json.loads((tmp_path / HOLDER).read_text())["pid"] == os.getpid()
        with pytest.raises(RunInUse, match=f"pid {os.getpid()}"):  # and held: the next one is refused
            RunLock(tmp_path).__enter__()


@pytest.mark.timeout(600)
def test_a_resume_refuses_what_it_cannot_honour_and_a_moved_run_continues_where_it_is(corpus, reference, ray_address,
                                                                                      tmp_path):
    old, new = tmp_path / "old", tmp_path / "moved" / "run"
    fit(parse(flags(corpus, reference, old, "--steps", "2", "--lr", "3e-3")))
    with pytest.raises(ConfigError, match=re.escape(
            f"{old}: run 'pave' was trained with optim.lr 0.003, now 0.01, optim.weight_decay 0.0, now 0.1; a "
            "resumed run cannot change that")):
        fit(parse(["--config", str(old / RUN_CONFIG), "--lr", "1e-2", "--optim.weight-decay", "0.1"]))
    assert yaml.safe_load((old / RUN_CONFIG).read_text())["optim"]["lr"] == 3e-3  # the record is what ran

    new.parent.mkdir()
    shutil.move(old, new)
    # continued as the README says, from the run's own config; more steps, the one change a resume may make
    resumed = pave_train(ray_address, "--config", new / RUN_CONFIG, "--optim.steps", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming run 'pave' with optim.steps 2, now 4" in resumed.stderr
    assert f"resumed from {new / 'ray' / 'pave'}/checkpoint_" in resumed.stderr and "at step 2" in resumed.stderr
    assert [(m["step"], m["resumes"]) for m in history(new)] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    assert not old.exists()  # nothing written at the old place
    recorded = yaml.safe_load((new / RUN_CONFIG).read_text())
    assert recorded["out"] == str(new) and recorded["model"]["base"] == str(new / "base_model")
    assert recorded["optim"]["steps"] == 4 and recorded["optim"]["lr"] == 3e-3


@pytest.mark.timeout(600)
def test_a_diverging_run_stops_before_non_finite_numbers_reach_the_weights(corpus, reference, ray_address, tmp_path):
    """A finite lr and weight decay (config validation lets them through) whose first update is too large: the next
    step's loss is NaN."""
    out = tmp_path / "run"
    run = pave_train(ray_address, *flags(corpus, reference, out, "--steps", "3", "--checkpoint-every", "10", "--lr",
                                         "3e37", "--optim.weight-decay", "10", "--optim.warmup-ratio", "0"))
    assert run.returncode == 1, run.stderr[-3000:]
    lines = own_lines(run.stderr)
    assert not [line for line in lines if "Traceback" in line or "restarting" in line], lines
    assert lines[-1].startswith("pave train: step 2: loss nan, gradient norm nan; training stopped before the update, the "
                           "weights of step 1 are the last ones")
    assert not (out / "final").exists()

    # Weights that are not finite however they came about are neither checkpointed nor exported, the tensor named.
    cfg = load(out / RUN_CONFIG)
    versions = open_versions(cfg.data.store, cfg.modalities, cfg.data.fingerprints)
    recipe = Recipe(cfg, load_annotations(cfg.data.annotations), versions, torch.device("cpu")).setup()
    name, weight = next((n, p) for n, p in recipe.module.named_parameters() if p.requires_grad)
    with torch.no_grad():
        weight[0] = float("nan")
    for write, directory in ((recipe.save, tmp_path / "checkpoint"), (recipe.export, tmp_path / "final")):
        directory.mkdir()
        with pytest.raises(NonFiniteError, match=f"trainable weight {re.escape(name)} holds NaN or infinite values; "
                                                 "nothing written"):
            write(directory)
        assert not list(directory.iterdir())


@pytest.mark.timeout(600)
def test_a_damaged_shard_or_a_full_disk_stops_pave_train_with_one_line_and_no_restart(corpus, reference,
                                                                                      ray_address, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(reference[0], store)
    trained = {sample["video"] for sample in json.loads((corpus / "annotations" / "train.json").read_text())}
    # parts hold one item each here, named at random: damage one that training reads
    (shard, *_) = [part / "tokens/c/0/0/0" for part in sorted(store.glob("audio/*/parts/*/"))
                   if set(json.loads((part / "zarr.json").read_text())["attributes"]["items"]) <= trained]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # in the shard's index: its crc32c no longer matches
    shard.write_bytes(bytes(data))
    damaged = pave_train(ray_address, *flags(corpus, (store,), tmp_path / "damaged", "--steps", "4"))
    lines = own_lines(damaged.stderr)
    assert damaged.returncode == 2, damaged.stderr[-3000:]
    assert not [line for line in lines if "Traceback" in line or "restarting" in line], lines
    assert re.match(r"pave train: audio/\w+: item '[^']+': audio/\w+/parts/\w+/tokens rows \d+:\d+: shard 0 index "
                    r"unreadable \(Stored and computed crc32c checksum do not match", lines[-1]), lines

    full = tmp_path / "full"
    full.mkdir()
    (full / "metrics.jsonl.partial").symlink_to("/dev/full")  # rank 0's first metrics report meets a full disk
    run = pave_train(ray_address, *flags(corpus, reference, full, "--steps", "2"))
    lines = own_lines(run.stderr)
    assert run.returncode == 2 and not [line for line in lines if "Traceback" in line], run.stderr[-3000:]
    assert lines[-1] == "pave train: No space left on device; free some space or write elsewhere", lines
