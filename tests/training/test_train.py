"""Ray Train on CPU: 2 DDP (gloo) workers train from stored features, export on rank 0, and evaluation splits
generation over Ray actors. Every run is real: Ray, Ray Data, transformers, peft; only the model is tiny."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from jobs.cli import main as pave
from pipelines.annotations import load_annotations
from training.config import RUN_CONFIG, load, parse
from training.evaluation import answer_budget
from training.launch import fit
from training.loop import DATA_ORDER, WORKER_METRICS, read_rank_log
from training.tracking import METRICS

pytestmark = pytest.mark.timeout(900)


def config(store, annotations, out, *flags):
    """A run config as `pave train` flags would give it: a small recipe of 16 steps on 2 workers."""
    return parse(["--store", store, "--annotations", str(annotations), "--out", str(out), "--tiny-base",
                  "--workers", "2", "--steps", "16", "--batch-size", "4", "--lr", "3e-3", "--optim.warmup-ratio",
                  "0.1", "--patch-d-model", "32", "--lora-r", "8", "--report-every", "4", "--checkpoint-every", "8",
                  *flags])


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS).read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(synthetic_store, ray_local, tmp_path_factory):
    store, annotations = synthetic_store
    out = tmp_path_factory.mktemp("run")
    # every tracker on: TensorBoard (the default), an MLflow file store, W&B offline
    return fit(config(store, annotations, out, "--tracking.mlflow", str(out / "mlruns"),
                      "--tracking.wandb", "offline")), out


def test_two_workers_learn_and_rank_0_exports_a_peft_adapter_with_the_run_config(trained):
    from peft import PeftModel
    from transformers import LlavaOnevisionForConditionalGeneration

    final, out = trained
    losses = [m["loss"] for m in history(out)]
    assert [m["step"] for m in history(out)] == [4, 8, 12, 16]
    assert losses[-1] < losses[0] - 0.5, losses
    assert (out / "loss_curve.png").stat().st_size > 1000
    run = load(final)
    assert run == load(out / RUN_CONFIG)  # the resolved config, as the run directory holds it
    assert run.sides == ["audio"] and run.scale.workers == 2 and not run.model.tiny_base
    assert run.model.base == str(out / "base_model")  # the tiny base the flag asked for, now a plain base dir
    assert set(run.data.fingerprints) == {"video", "audio"}  # the store versions it was trained on
    # The adapter is a plain peft adapter; the LoRA weights it carries are trained (LoRA B starts at zero).
    base = LlavaOnevisionForConditionalGeneration.from_pretrained(run.model.base)
    peft_model = PeftModel.from_pretrained(base, final / "lora")
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)
    # each worker logged its 16 micro-batches of 4 samples, the two disjoint within every step
    logs = [read_rank_log(out / "ray" / run.name, DATA_ORDER, rank) for rank in (0, 1)]
    assert [e["step"] for e in logs[0]] == [e["step"] for e in logs[1]] == list(range(1, 17))
    assert all(not set(a["ids"]) & set(b["ids"]) for a, b in zip(*logs))
    # and its own metrics: rank 0's are the run's; both saw 4 samples a step at every report
    reports = [read_rank_log(out / "ray" / run.name, WORKER_METRICS, rank) for rank in (0, 1)]
    assert reports[0] == history(out)
    assert [m["step"] for m in reports[1]] == [4, 8, 12, 16] and reports[1] != reports[0]
    assert all(m["samples_per_s"] * m["step_time_s"] == pytest.approx(4) for m in reports[0] + reports[1])


def test_rank_0_writes_the_reported_metrics_to_tensorboard_mlflow_and_wandb(trained, monkeypatch):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = trained
    reported = history(out)
    assert all(m["grad_norm"] > 0 for m in reported)
    events = EventAccumulator(str(out / "tensorboard" / "pave")).Reload()  # the run's --name
    ids = json.loads((out / "tracking.json").read_text())["pave"]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only with this
    client = MlflowClient((out / "mlruns").as_uri())
    run = client.get_run(ids["mlflow"])
    assert run.info.run_name == "pave" and run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["scale.workers"] == "2"
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "samples_per_s", "data_wait_frac", "step_time_s"):
        steps, values = [m["step"] for m in reported], [m[key] for m in reported]
        scalars = events.Scalars(f"train/{key}")  # float32 in the event file
        assert [e.step for e in scalars] == steps and [e.value for e in scalars] == pytest.approx(values, rel=1e-6)
        logged = sorted((m.step, m.value) for m in client.get_metric_history(ids["mlflow"], key))
        assert [step for step, _ in logged] == steps and [v for _, v in logged] == pytest.approx(values, rel=1e-12)
    # wandb 0.31 has no Python reader for its offline run file: its history values are JSON text inside it
    (wandb_run,) = (out / "wandb").glob(f"offline-run-*-{ids['wandb']}/run-{ids['wandb']}.wandb")
    logged = wandb_run.read_bytes()
    assert all(json.dumps(m[key]).encode() in logged for m in reported for key in ("loss", "grad_norm"))


def test_eval_needs_only_the_checkpoint_and_two_workers_give_the_one_worker_report(trained, synthetic_store, tmp_path,
                                                                                  caplog):
    final, _ = trained
    _, annotations = synthetic_store
    reports = {}
    for workers in (1, 2):
        argv = ["eval", "--annotations", str(annotations), "--checkpoint", str(final), "--out",
                str(tmp_path / f"eval{workers}"), "--workers", str(workers), "--batch-size", "2"]
        assert pave(argv) == 0
        reports[workers] = json.loads((tmp_path / f"eval{workers}" / "report.json").read_text())
    # 8 batches over 2 actors: Ray Data hands each batch to an idle actor as its rows arrive, and with 4 batches a
    # loaded CI machine once let the first actor take them all before the second had one
    assert len(reports[1]["workers"]) == 1 and len(reports[2]["workers"]) == 2
    for report in reports.values():
        del report["workers"]
    assert reports[1] == reports[2]
    assert reports[1]["metrics"]["n"] == 16
    # the answer length `pave train` recorded (its longest answer plus a margin) is the one eval generates up to
    run = load(final)
    assert reports[1]["max_new_tokens"] == run.eval.max_new_tokens == answer_budget(run.model.base,
                                                                                      load_annotations(annotations))
    assert [r["id"] for r in reports[1]["predictions"]] == [f"v{i:03d}-q0" for i in range(16)]
    # evaluated on its own training questions: said, naming an example
    assert f"16 of 16 samples ask a question {final} was trained on, of the same video (e.g. 'v000-q0', trained as " \
        "'v000-q0')" in caplog.text
    assert "| 16 |" in (tmp_path / "eval2" / "report.md").read_text()


LMMS_EVAL = Path(sys.prefix, "lmms-eval")  # installed there by `make test` (Makefile: LMMS_EVAL)
TINY_TASK = """task: pave_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: question
doc_to_target: answer
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""


def lmms_eval(samples: list, videos: list[str], out: Path, model_args: str) -> subprocess.CompletedProcess:
    """The lmms-eval command line, offline, on a task of the samples' questions whose videos are the `videos` paths
    (as lmms-eval's tasks name them; the files need not exist: their names are the store ids)."""
    docs = [{"video": video, "question": s.turns[0][1].removeprefix("<video>\n"), "answer": s.answer}
            for s, video in zip(samples, videos)]
    tasks = out / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "docs.json").write_text(json.dumps(docs))
    (tasks / "pave_tiny.yaml").write_text(TINY_TASK.format(docs=tasks / "docs.json"))
    (tasks / "utils.py").write_text("def doc_to_visual(doc):\n    return [doc['video']]\n")
    env = {**os.environ, "PYTHONPATH": str(LMMS_EVAL), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(out / "hf")}
    argv = [sys.executable, "-m", "lmms_eval", "--model", "pave", "--model_args", model_args, "--tasks", "pave_tiny",
            "--include_path", str(tasks), "--batch_size", "4", "--output_path", str(out / "results"), "--log_samples"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def lmms_eval_predictions(samples: list, out: Path) -> tuple[dict, float]:
    """What lmms-eval logged: each sample's prediction (by sample id) and the task's exact match (in a folder named
    after the model's arguments)."""
    (logged,) = (out / "results").rglob("*_samples_pave_tiny.jsonl")
    by_doc = {(doc := json.loads(line))["doc_id"]: doc["filtered_resps"] for line in logged.read_text().splitlines()}
    (results,) = (out / "results").rglob("*_results.json")
    return {s.id: by_doc[k] for k, s in enumerate(samples)}, \
        json.loads(results.read_text())["results"]["pave_tiny"]["exact_match,none"]


@pytest.mark.skipif(not LMMS_EVAL.is_dir(), reason=f"lmms-eval is not installed at {LMMS_EVAL} (`make test` does)")
def test_lmms_eval_runs_a_checkpoint_or_base_model_from_the_store_and_answers_as_pave_eval(trained, synthetic_store,
                                                                                          tmp_path):
    final, out = trained
    store, annotations = synthetic_store
    samples = load_annotations(annotations)
    clips = [f"{tmp_path}/clips/{s.video_id}.mp4" for s in samples]
    # the trained export (its audio patch and LoRA), and the base model alone, whose answers differ by video
    runs = {"checkpoint": ([f"checkpoint={final}"], ["--checkpoint", str(final)]),
            "base": ([f"store={store}", f"base_model={out / 'base_model'}", "max_new_tokens=8"],
                     ["--store", store, "--base-model", str(out / "base_model"), "--max-new-tokens", "8"])}
    for name, (model_args, flags) in runs.items():
        assert pave(["eval", "--annotations", str(annotations), "--out", str(tmp_path / name / "eval"),
                     "--batch-size", "4", *flags]) == 0
        ours = json.loads((tmp_path / name / "eval" / "report.json").read_text())
        done = lmms_eval(samples, clips, tmp_path / name / "lmms", ",".join(model_args))
        predictions, exact = lmms_eval_predictions(samples, tmp_path / name / "lmms")
        assert predictions == {r["id"]: r["prediction"] for r in ours["predictions"]}, done.stdout[-3000:]
        assert exact == ours["metrics"]["exact_match"]
    assert len(set(predictions.values())) > 1  # the base model's answers tell the videos apart
    # refused before any generation, naming them: a task video the store lacks, two paths read as one store item
    refusals = {"missing": ([*clips[:3], "clips/not_materialized.mp4", *clips[4:]],
                            ["have no 'video' or 'audio' features: not_materialized"]),
                "same_name": ([*clips[:5], "elsewhere/v000.mp4", *clips[6:]],
                              ["elsewhere/v000.mp4 and", "are both read as store item 'v000'"])}
    for name, (videos, said) in refusals.items():
        done = lmms_eval(samples, videos, tmp_path / name, f"checkpoint={final}")
        assert "Error during evaluation: " in done.stdout and all(s in done.stdout for s in said), done.stdout[-3000:]
        assert not list((tmp_path / name).rglob("*_results.json"))  # lmms-eval exits 0 after any error


def test_eval_of_a_run_directory_evaluates_its_final_export(trained, synthetic_store, tmp_path, capsys):
    final, out = trained
    _, annotations = synthetic_store
    argv = ["eval", "--annotations", str(annotations), "--out", str(tmp_path / "eval"), "--batch-size", "8"]
    assert pave([*argv, "--checkpoint", str(out)]) == 0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["metrics"]["n"] == 16
    unfinished = tmp_path / "unfinished"
    (unfinished / "ray").mkdir(parents=True)
    (unfinished / RUN_CONFIG).write_text((out / RUN_CONFIG).read_text())
    capsys.readouterr()
    assert pave([*argv, "--checkpoint", str(unfinished)]) == 2
    assert capsys.readouterr().err == (f"pave eval: --checkpoint {unfinished}: a run directory without a final/ export "
                                       "(the run has not finished); evaluate it once it has, or pass another run's "
                                       "final/\n")


def test_fsdp_two_workers_train(synthetic_store, ray_local, tmp_path):
    """FSDP (fully_shard over gloo): the same recipe learns with sharded weights, gradient checkpointing on,
    gradients accumulated over 2 micro-batches (synced on the second only) and reduce-scattered in bfloat16, and
    rank 0 exports the gathered weights into the same adapter layout."""
    store, annotations = synthetic_store
    final = fit(config(store, annotations, tmp_path / "run", "--scale.strategy", "fsdp",
                       "--model.activation-checkpointing", "full", "--grad-accum", "2",
                       "--scale.grad-reduce", "bfloat16"))
    losses = [m["loss"] for m in history(tmp_path / "run")]
    assert losses[-1] < losses[0] - 0.5, losses
    assert load(final).scale.strategy == "fsdp"
    assert (final / "lora" / "adapter_model.safetensors").exists()
    assert (final / "patches" / "audio" / "model.safetensors").exists()


def test_bf16_gradient_reduction_leaves_the_losses_as_they_were(trained, synthetic_store, tmp_path):
    """DDP exchanging bfloat16 gradients (half the bytes of float32): the same run's losses, to 2%; not bit for bit,
    since the reduction rounds."""
    store, annotations = synthetic_store
    fit(config(store, annotations, tmp_path / "bf16", "--scale.grad-reduce", "bfloat16"))
    float32, bfloat16 = ([m["loss"] for m in history(out)] for out in (trained[1], tmp_path / "bf16"))
    assert bfloat16 != float32 and bfloat16 == pytest.approx(float32, rel=0.02)


def train_workers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::RayTrainWorker")]


def test_a_killed_run_resumes_the_exact_data_sequence(synthetic_store, ray_local, tmp_path):
    """14 samples, batch 2 on 2 workers: 3 micro-batches per epoch and worker, 2 per optimizer step, so steps
    straddle epochs; 8 epochs are 12 steps. A run whose worker is SIGKILLed after its second checkpoint restarts from
    a checkpoint and logs exactly the (step, samples) sequence of an uninterrupted run."""
    store, annotations = synthetic_store
    subset = tmp_path / "annotations14.json"
    subset.write_text(json.dumps(json.loads(Path(annotations).read_text())[:14]))
    flags = ["--optim.epochs", "8", "--batch-size", "2", "--grad-accum", "2", "--checkpoint-every", "3",
             "--report-every", "3", "--checkpoint.max-failures", "2"]
    reference = config(store, subset, tmp_path / "reference", *flags)
    fit(reference)
    recorded = load(tmp_path / "reference" / RUN_CONFIG).optim
    assert (recorded.epochs, recorded.steps) == (8, 12)

    killed = config(store, subset, tmp_path / "killed", *flags)
    out = tmp_path / "killed"
    errors = []
    earlier = {p.pid for p in train_workers()}  # workers of earlier runs may still be exiting
    runner = threading.Thread(target=lambda: errors.append(None) if fit(killed) else None, daemon=True)
    runner.start()
    # A checkpoint directory appears while rank 0 persists it: once a second one exists, the first is complete.
    deadline = time.monotonic() + 600
    while len(list((out / "ray").glob("*/checkpoint_*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    victims = [p for p in train_workers() if p.pid not in earlier]
    assert victims, "no Ray Train worker process of this run found"
    os.kill(victims[0].pid, signal.SIGKILL)
    runner.join(timeout=600)
    assert not runner.is_alive() and errors == [None]

    assert history(out)[-1]["step"] == 12 and history(out)[-1]["resumes"] >= 1  # restarted from a checkpoint
    for rank in (0, 1):
        resumed = read_rank_log(out / "ray" / killed.name, DATA_ORDER, rank)
        expected = read_rank_log(tmp_path / "reference" / "ray" / reference.name, DATA_ORDER, rank)
        assert resumed == expected
        assert [e["step"] for e in expected] == [s for s in range(1, 13) for _ in range(2)]  # 2 micro-batches each
        assert [(e["epoch"], e["position"]) for e in expected[:4]] == [(0, 0), (0, 1), (0, 2), (1, 0)]
        assert (expected[-1]["epoch"], expected[-1]["position"]) == (7, 2)  # 24 micro-batches at 3 per epoch
    # each epoch is a new permutation: the first two epochs differ in order
    epochs = [[i for e in expected if e["epoch"] == k for i in e["ids"]] for k in (0, 1)]
    assert epochs[0] != epochs[1]
