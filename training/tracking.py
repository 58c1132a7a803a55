"""Live training metrics, written by rank 0 at every metrics report: OUT/metrics.jsonl (rewritten whole, so that
`pave report` reads a run that is still going), and the dashboards ML engineers already use, through each library's
own writer: TensorBoard event files (on by default, OUT/tensorboard/NAME), MLflow (a tracking
URI; a directory is MLflow's file store) and Weights & Biases (offline mode writes OUT/wandb, no account needed).
The MLflow and W&B run ids are kept in OUT/tracking.json, so that a resumed run goes on logging into the same run.
On an object store the files are written in rank 0's working mirror and uploaded at every report (training/rundir.py).
Rank 0 also logs a progress line with an ETA at every report.
"""
import json
import logging
import os
import time
from pathlib import Path
from unittest import mock

from training.config import ConfigError, RunConfig, to_dict
from training.rundir import RunDir

METRICS = "metrics.jsonl"  # every report of the run so far, one JSON object per line
TENSORBOARD_DIR = "tensorboard"
RUN_IDS = "tracking.json"
WANDB_DIR = "wandb"
INSTALL = {"mlflow": "mlflow-skinny", "wandb": "wandb"}
log = logging.getLogger(__name__)


def check(cfg: RunConfig) -> None:
    """On the driver, before any worker starts: every tracker asked for can be imported."""
    wanted = [name for name, on in (("mlflow", cfg.tracking.mlflow), ("wandb", cfg.tracking.wandb != "off")) if on]
    for name in wanted:
        try:
            __import__(name)
        except ImportError:
            raise ConfigError(f"--tracking.{name}: the {name} package is not installed; pip install {INSTALL[name]} "
                              f"(or leave --tracking.{name} unset)") from None
    uri = cfg.tracking.mlflow
    if uri.startswith(("http://", "https://")):  # a server down would otherwise fail rank 0 mid-run
        from mlflow import MlflowClient

        quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # not minutes of backoff
        try:
            with mock.patch.dict(os.environ, {k: os.environ.get(k, v) for k, v in quick.items()}):
                MlflowClient(uri).search_experiments(max_results=1)
        except Exception as err:  # MLflow wraps connection errors in several types
            raise ConfigError(f"--tracking.mlflow {uri}: the tracking server does not answer "
                              f"({type(err).__name__}); start it or give a directory") from None


def flat(values: dict, prefix: str = "") -> dict:
    """A nested config as dotted keys (MLflow params are flat)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}


class TensorBoard:
    def __init__(self, cfg: RunConfig, out: Path, ids: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / TENSORBOARD_DIR / cfg.name))
        self.writer.add_text("run_config", "\n".join(f"    {k}: {v}" for k, v in flat(to_dict(cfg)).items()))

    def log(self, metrics: dict) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(f"train/{key}", value, metrics["step"])
        self.writer.flush()  # live: TensorBoard shows each report as it comes

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, cfg: RunConfig, out: str, ids: dict):
        from mlflow import MlflowClient

        uri = cfg.tracking.mlflow
        if "://" not in uri and not uri.startswith("file:"):
            uri = Path(uri).resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps its file store in maintenance mode, behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(uri)
        self.run_id = ids.get("mlflow")
        if not self.run_id:
            experiment = self.client.get_experiment_by_name(cfg.tracking.experiment)
            experiment_id = (experiment.experiment_id if experiment else
                             self.client.create_experiment(cfg.tracking.experiment))
            self.run_id = self.client.create_run(experiment_id, run_name=cfg.name,
                                                 tags={"pave.out": out}).info.run_id
            from mlflow.entities import Param

            params = [Param(k, str(v)) for k, v in flat(to_dict(cfg)).items()]
            for start in range(0, len(params), 100):  # log_batch takes at most 100 params at a time
                self.client.log_batch(self.run_id, params=params[start:start + 100])
        ids["mlflow"] = self.run_id

    def log(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, metrics["step"])
                                                    for k, v in scalars(metrics).items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandB:
    def __init__(self, cfg: RunConfig, out: Path, ids: dict):
        import wandb

        self.run = wandb.init(project=cfg.tracking.experiment, name=cfg.name, id=ids.get("wandb"), resume="allow",
                              dir=str(out), mode=cfg.tracking.wandb, config=to_dict(cfg))
        ids["wandb"] = self.run.id

    def log(self, metrics: dict) -> None:
        self.run.log(scalars(metrics), step=metrics["step"])

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """Rank 0's metric writers (`enabled` False on the other ranks: they do nothing)."""

    def __init__(self, cfg: RunConfig, run: RunDir, enabled: bool):
        self.cfg, self.run, self.enabled, self.writers, self.started = cfg, run, enabled, [], time.perf_counter()
        if not enabled:
            return
        ids_path = run.pull(RUN_IDS)
        all_ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
        ids = all_ids.setdefault(cfg.name, {})
        wanted = [(cfg.tracking.tensorboard, TensorBoard, run.path), (cfg.tracking.mlflow, MLflow, run.url),
                  (cfg.tracking.wandb != "off", WandB, run.path)]
        self.writers = [writer(cfg, where, ids) for on, writer, where in wanted if on]
        ids_path.write_text(json.dumps(all_ids, indent=1))
        run.push(RUN_IDS)

    def log(self, history: list[dict], first_step: int) -> None:
        """Write the newest report of `history` (the run's reports so far) to every tracker and print the progress
        line (`first_step`: where this attempt began)."""
        if not self.enabled:
            return
        partial, metrics = self.run.path / f"{METRICS}.partial", history[-1]
        partial.write_text("".join(json.dumps(m) + "\n" for m in history))
        partial.replace(self.run.path / METRICS)
        for writer in self.writers:
            writer.log(metrics)
        self.run.push(METRICS, f"{TENSORBOARD_DIR}/{self.cfg.name}")
        log.info(progress_line(metrics, self.cfg.optim.steps, first_step, time.perf_counter() - self.started))

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.run.push(WANDB_DIR)  # W&B offline: its run files, complete once closed


def progress_line(metrics: dict, total_steps: int, first_step: int, elapsed_s: float) -> str:
    step = metrics["step"]
    eta_s = elapsed_s / max(step - first_step, 1) * (total_steps - step)
    return (f"step {step}/{total_steps} ({100 * step / total_steps:.0f}%)  loss {metrics['loss']:.4f}  "
            f"{metrics['tokens_per_s']:,.0f} tokens/s  data wait {100 * metrics['data_wait_frac']:.1f}%  "
            f"elapsed {duration(elapsed_s)}  ETA {duration(eta_s)}")


def duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"
