"""The training loop that Ray Train runs on every worker, over a Recipe: restore, step through the run's data order,
report metrics every `checkpoint.report_every` steps (rank 0 also writes them live to TensorBoard / MLflow / W&B:
training/tracking.py) and a checkpoint every `checkpoint.every`, and at the end export the final adapter (rank 0, on
its own device) with the metrics and the loss curve.

Each worker also logs its data order, one line per micro-batch (step, micro-batch number, epoch, position, sample
ids), in RUN/data_order/rank<r>.jsonl, and its own metrics reports in RUN/metrics/rank<r>.jsonl (OUT/metrics.jsonl
holds rank 0's): a resumed run first cuts the lines past the step it resumes from, so the files always tell exactly
what each step was trained on and how fast every worker went. On an object store (training/rundir.py) each worker
writes them in its working mirror and uploads them at every report, before the checkpoint of that step is persisted:
the stored logs always reach at least as far as the newest checkpoint, and a restore downloads and cuts them.
"""
import copy
import json
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from training.config import RunConfig, from_dict
from training.recipe import Recipe
from training.rundir import RunDir, local_copy
from training.throughput import flops_per_token, peak_flops
from training.tracking import Trackers

LOSS_CURVE = "loss_curve.png"


DATA_ORDER, WORKER_METRICS = "data_order", "metrics"  # the per-worker logs under RUN/


def rank_log_path(run_dir: Path, kind: str, rank: int) -> Path:
    return run_dir / kind / f"rank{rank}.jsonl"


class RankLog:
    """RUN/<kind>/rank<r>.jsonl, one JSON object per line with its step, kept consistent with the checkpoint a run
    resumes from: the lines past that step are cut."""

    def __init__(self, run: RunDir, name: str, kind: str, rank: int, resumed_step: int):
        self.run, self.name = run, rank_log_path(Path("ray") / name, kind, rank).as_posix()
        self.path = run.pull(self.name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():  # a line cut by a crash does not parse and goes too
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry["step"] <= resumed_step:
                    kept.append(line + "\n")
        self.path.write_text("".join(kept))

    def write(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def push(self) -> None:
        self.run.push(self.name)


def read_rank_log(run_dir: Path, kind: str, rank: int) -> list[dict]:
    return [json.loads(line) for line in rank_log_path(run_dir, kind, rank).read_text().splitlines()]


def write_curves(history: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([m["step"] for m in history], [m["loss"] for m in history], marker="o")
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    fig.tight_layout()
    fig.savefig(out / LOSS_CURVE, dpi=100)
    plt.close(fig)


class Window:
    """Metrics summed over the steps since the last report."""

    def __init__(self):
        self.loss, self.grad_norm, self.samples, self.tokens, self.wait_s, self.steps = 0.0, 0.0, 0, 0, 0.0, 0
        self.start = time.perf_counter()

    def add(self, step_metrics: dict, wait_s: float) -> None:
        self.loss += step_metrics["loss"]
        self.grad_norm += step_metrics["grad_norm"]
        self.samples += step_metrics["samples"]
        self.tokens += step_metrics["tokens"]
        self.wait_s += wait_s
        self.steps += 1

    def metrics(self, recipe: Recipe) -> dict:
        """This worker's means over the window; MFU where the GPU's peak is known (training/throughput.py)."""
        elapsed = time.perf_counter() - self.start
        metrics = {"step": recipe.state.step, "epoch": recipe.state.epoch, "loss": self.loss / self.steps,
                   "grad_norm": self.grad_norm / self.steps, "lr": recipe.lr,
                   "samples_per_s": self.samples / elapsed, "tokens_per_s": self.tokens / elapsed,
                   "step_time_s": elapsed / self.steps, "data_wait_frac": self.wait_s / elapsed,
                   "resumes": recipe.state.resumes}
        if peak := peak_flops(recipe.device):
            dense_flops, _ = flops_per_token(recipe.model, 0)
            metrics["mfu"] = metrics["tokens_per_s"] * dense_flops / peak
        if recipe.on_gpu:
            metrics["gpu_mem_peak_gib"] = torch.cuda.max_memory_allocated(recipe.device) / 2**30
        return metrics


def train_loop_per_worker(config: dict) -> None:
    recorded = from_dict(config["run"], "run config")
    with RunDir(recorded.out, recorded.storage.options(recorded.out)) as run:
        train_worker(recorded, config, run)


def train_worker(recorded: RunConfig, config: dict, run: RunDir) -> None:
    cfg = copy.deepcopy(recorded)  # the run config as it is recorded, but with the base model on this node
    cfg.model.base = local_copy(cfg.model.base, cfg.storage.options(cfg.model.base))
    context = ray.train.get_context()
    rank = context.get_world_rank()
    recipe = Recipe(cfg, config["samples"], config["versions"], ray.train.torch.get_device(), rank,
                    context.get_world_size()).setup()
    recipe.restore(run)
    sample_log = RankLog(run, cfg.name, DATA_ORDER, rank, recipe.state.step)
    metrics_log = RankLog(run, cfg.name, WORKER_METRICS, rank, recipe.state.step)
    batches = recipe.batches()
    trackers, first_step = Trackers(cfg, run, enabled=rank == 0), recipe.state.step
    window = Window()
    while recipe.state.step < cfg.optim.steps:
        started = time.perf_counter()
        micro = [next(batches) for _ in range(cfg.optim.grad_accum)]
        wait_s = time.perf_counter() - started
        for number, batch in micro:
            epoch, position = recipe.order.locate(number)
            sample_log.write({"step": recipe.state.step + 1, "micro": number, "epoch": epoch, "position": position,
                              "ids": list(batch["sample_ids"])})
        window.add(recipe.step([batch for _, batch in micro]), wait_s)
        step = recipe.state.step
        save = step % cfg.checkpoint.every == 0 or step == cfg.optim.steps
        if save or step % cfg.checkpoint.report_every == 0:
            metrics = window.metrics(recipe)
            recipe.state.history.append(metrics)
            metrics_log.write(metrics)
            sample_log.push()
            metrics_log.push()
            trackers.log(recipe.state.history, first_step)
            report(recipe, metrics, save)
            window = Window()
    batches.close()
    recipe.export(run.path / "final", recorded)
    trackers.close()
    if rank == 0:
        write_curves(recipe.state.history, run.path)
        run.push("final", LOSS_CURVE)


def report(recipe: Recipe, metrics: dict, save: bool) -> None:
    """Every worker reports (Ray Train requires it); with save, rank 0 also hands over the checkpoint it wrote."""
    if not save:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        recipe.save(Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if recipe.rank == 0 else None)
