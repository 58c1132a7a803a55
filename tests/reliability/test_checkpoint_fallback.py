"""A corrupt latest checkpoint: the resumed run says so, falls back to the previous checkpoint and trains on from
there, instead of crashing, silently starting over, or loading damaged weights. (A worker killed mid-run resumes
from the latest checkpoint: tests/training/test_train.py::test_killed_worker_resumes_from_checkpoint.)"""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from jobruns import REPO

from training.checkpoint import TRAINABLE, TRAINER_STATE
from training.config import RUN_CONFIG, parse
from training.launch import fit

SMALL = ["--workers", "1", "--batch-size", "2", "--patch-d-model", "32", "--lora-r", "8", "--report-every", "1",
         "--checkpoint-every", "2", "--name", "fallback", "--tiny-base"]


@pytest.mark.timeout(300)
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(corpus, reference, ray_address, tmp_path):
    store, annotations, out = str(reference[0]), str(corpus / "annotations" / "train.json"), tmp_path / "run"
    fit(parse(["--store", store, "--annotations", annotations, "--out", str(out), "--steps", "4", *SMALL]))
    checkpoints = {torch.load(path / TRAINER_STATE, weights_only=False)["state"]["step"]: path
                   for path in (out / "ray" / "fallback").glob("checkpoint_*") if path.is_dir()}
    assert sorted(checkpoints) == [2, 4]
    # Flip a byte of a weight: the file still loads (safetensors checks no contents), only its checksum tells.
    weights = checkpoints[4] / TRAINABLE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))

    # Rerun from the run's own saved config, for 2 more steps, as `pave train` (its output is what a user sees).
    assert yaml.safe_load((out / RUN_CONFIG).read_text())["optim"]["steps"] == 4
    rerun = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train", "--config", str(out / RUN_CONFIG), "--optim.steps", "6"],
        cwd=REPO, env={**os.environ, "RAY_ADDRESS": ray_address}, capture_output=True, text=True, timeout=240)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    assert f"checkpoint {checkpoints[4]} is unusable (ValueError: {TRAINABLE}: not the bytes written" in output
    assert f"resumed from {checkpoints[2]} at step 2" in output
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Steps 1-2 come from the step-2 checkpoint; 3 and 4 were trained again after the resume, then 5 and 6.
    assert [(m["step"], m["resumes"]) for m in history] == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 1)]

    # The same --out with other patches (LoRA only: --sides ''): refused before any worker starts, one line.
    other = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train", "--config", str(out / RUN_CONFIG), "--sides", ""],
        cwd=REPO, env={**os.environ, "RAY_ADDRESS": ray_address}, capture_output=True, text=True, timeout=240)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-3000:]
    assert f"run 'fallback' has checkpoints of another model (model.patches differ from {out / RUN_CONFIG})" \
        in other.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6  # nothing trained
