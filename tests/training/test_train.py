"""Ray Train on CPU: 2 DDP (gloo) workers stream samples joined with stored features. Every run is real: Ray,
Ray Data, transformers, peft; only the model is tiny."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from jobs.evaluate import evaluate, write_report
from jobs.train import TRAIN_CONFIG, TrainConfig, train

pytestmark = pytest.mark.timeout(900)


def config(store, annotations, out, **overrides) -> TrainConfig:
    values = dict(store=store, annotations=str(annotations), out=str(out), workers=2, steps=16, batch_size=4,
                  lr=3e-3, warmup_ratio=0.1, patch_d_model=32, lora_r=8, report_every=4, checkpoint_every=8)
    return TrainConfig(**{**values, **overrides})


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_workers_train_export_and_eval(synthetic_store, ray_local, tmp_path):
    from peft import PeftModel
    from transformers import LlavaOnevisionForConditionalGeneration

    store, annotations = synthetic_store
    final = train(config(store, annotations, tmp_path / "run"))

    losses = [m["loss"] for m in history(tmp_path / "run")]
    assert [m["step"] for m in history(tmp_path / "run")] == [4, 8, 12, 16]
    assert losses[-1] < losses[0] - 0.5, losses
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    trained = json.loads((final / TRAIN_CONFIG).read_text())
    assert trained["sides"] == ["audio"] and trained["workers"] == 2

    # The adapter is a plain peft adapter; the LoRA weights it carries are trained (LoRA B starts at zero).
    base = LlavaOnevisionForConditionalGeneration.from_pretrained(trained["base_model"])
    peft_model = PeftModel.from_pretrained(base, final / "lora")
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)

    report = evaluate(store, str(annotations), str(final), "")
    write_report(report, tmp_path / "eval", "patch+lora")
    assert report["metrics"]["n"] == 16
    assert {r["id"] for r in report["predictions"]} == {f"v{i:03d}-q0" for i in range(16)}
    assert "| 16 |" in (tmp_path / "eval" / "report.md").read_text()


def test_fsdp_two_workers_train(synthetic_store, ray_local, tmp_path):
    """FSDP (fully_shard over gloo): the same recipe learns with sharded weights, gradient checkpointing on and
    gradients accumulated over 2 micro-batches (synced on the second only), and its checkpoints gather into the same
    exportable adapter."""
    store, annotations = synthetic_store
    final = train(config(store, annotations, tmp_path / "run", strategy="fsdp", gradient_checkpointing=True,
                         grad_accum=2))

    losses = [m["loss"] for m in history(tmp_path / "run")]
    assert losses[-1] < losses[0] - 0.5, losses
    assert json.loads((final / TRAIN_CONFIG).read_text())["strategy"] == "fsdp"
    assert (final / "lora" / "adapter_model.safetensors").exists()
    assert (final / "patches" / "audio" / "model.safetensors").exists()


def train_workers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::RayTrainWorker")]


def test_killed_worker_resumes_from_checkpoint(synthetic_store, ray_local, tmp_path):
    store, annotations = synthetic_store
    out = tmp_path / "run"
    cfg = config(store, annotations, out, steps=40, report_every=5, checkpoint_every=5, max_failures=2)
    errors = []
    # Workers of the previous tests' runs may still be exiting: the victim must be one of this run's.
    earlier = {p.pid for p in train_workers()}
    runner = threading.Thread(target=lambda: errors.append(None) if train(cfg) else None, daemon=True)
    runner.start()

    # A checkpoint directory appears while rank 0 persists it (and Ray Train may register it later still): once a
    # second one exists, the first is complete, so the restart must resume from a checkpoint.
    deadline = time.monotonic() + 600
    while len(list((out / "ray").glob("*/checkpoint_*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    victims = [p for p in train_workers() if p.pid not in earlier]
    assert victims, "no Ray Train worker process of this run found"
    os.kill(victims[0].pid, signal.SIGKILL)
    runner.join(timeout=600)

    assert not runner.is_alive() and errors == [None]
    final_metrics = history(out)[-1]
    assert final_metrics["step"] == 40
    assert final_metrics["resumes"] >= 1  # the worker group restarted from a checkpoint, not from step 0
