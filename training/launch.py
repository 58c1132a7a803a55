"""The driver side of a training run: check the inputs, then hand the run to Ray Train workers (training/loop.py).
The driver never builds the base model: workers build it on their devices, and rank 0 exports the result."""
import itertools
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from featurestore import TokenSchema, Version
from model.llava import IGNORE_INDEX, VideoLayout, patch_grid
from model.tiny import save_tiny_base
from pipelines.annotations import Sample, load_annotations
from pipelines.training_data import check_samples, open_versions
from training import checkpoint, provenance, tracking
from training.checkpoint import NonFiniteError
from training.config import RUN_CONFIG, ConfigError, RunConfig, load, save, to_dict
from training.data import DataOrder
from training.evaluation import answer_budget
from training.lock import RunLock
from training.provenance import ProvenanceError
from training.rundir import RunDir, local_copy

log = logging.getLogger(__name__)


def check_video_fits(base: str, video: TokenSchema) -> None:
    """The stored video tokens must be those of the base model's vision tower (width and patch grid), or training
    fails in every worker; say so once, here, from the base's config file alone."""
    from transformers import AutoConfig

    vision = AutoConfig.from_pretrained(base).vision_config
    grid = vision.image_size // vision.patch_size
    problem = "" if video.dim == vision.hidden_size else (
        f"the stored video tokens are {video.dim} wide, its vision tower {vision.hidden_size}")
    try:
        VideoLayout(grid).is_full(video.tokens_per_step)
    except ValueError as err:
        problem = str(err)
    if problem:
        raise ConfigError(f"--base-model {base}: {problem}; materialize the video with this model's vision tower "
                          f"(pave materialize --encoder-path video={base})")


# What a resumed run may change (dotted config paths, with everything under them): how long it runs and how it is
# executed, checkpointed and watched, not what its steps compute; and where things are and how they are reached (a
# moved run, a moved store or base model: check_resume_provenance checks that they hold the same features and weights). Any other change could
# not be honoured (the optimizer state and schedule come from the checkpoint, the data order from the data
# settings), so it is refused rather than recorded as if it had run.
CHANGEABLE_ON_RESUME = ("out", "storage", "optim.steps", "optim.epochs", "data.store", "data.fingerprints", "data.pack",
                        "data.prefetch_batches", "data.cache", "data.cache_bytes",
                        "model.base", "model.compile", "model.activation_checkpointing", "model.attention",
                        "scale.gpus_per_worker", "scale.cpus_per_worker", "scale.strategy", "scale.grad_reduce",
                        "checkpoint", "eval", "tracking")


def flat(values: dict, prefix: str = "") -> dict:
    """Nested config values as {dotted path: value}."""
    items = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def check_resume(cfg: RunConfig, run: RunDir) -> None:
    """A run resumed into the same --out and --name must be the run its checkpoints are of: the same model (or they
    cannot load) and the same settings, but for those it may change (CHANGEABLE_ON_RESUME, logged), so that the
    run config it records is what ran."""
    if not run.exists(RUN_CONFIG) or not checkpoint.candidates(run, cfg.name):
        return
    out, saved = run.url, run.location(RUN_CONFIG)
    before, now = flat(to_dict(load(run.pull(RUN_CONFIG), location=run.url))), flat(to_dict(cfg))
    changed = [key for key in sorted(before.keys() | now.keys()) if before.get(key) != now.get(key)]
    fixed = [key for key in changed
             if not any(key == allowed or key.startswith(f"{allowed}.") for allowed in CHANGEABLE_ON_RESUME)]
    if model := sorted({key.split(".")[1] for key in fixed if key.startswith("model.")}):
        raise ConfigError(f"{out}: run {cfg.name!r} has checkpoints of another model (model.{', model.'.join(model)} "
                          f"differ from {saved}); resume with the same model settings, or train into a "
                          "new --out or --name")
    if fixed:
        raise ConfigError(f"{out}: run {cfg.name!r} was trained with {changes(fixed, before, now)}; a resumed run "
                          "cannot change that (its optimizer state, schedule and data order come from its "
                          f"checkpoints): resume with the values of {saved}, or train into a new --out or "
                          "--name")
    if changed:
        log.warning("%s: resuming run %r with %s", out, cfg.name, changes(changed, before, now))


def changes(keys: list[str], before: dict, now: dict) -> str:
    return ", ".join(f"{key} {before.get(key)}, now {now.get(key)}" for key in keys)


def check_resume_provenance(cfg: RunConfig, out: RunDir | Path, current: dict) -> None:
    """A run resumed into the same --out and --name must train on what its checkpoints were trained on (`current`:
    this run's provenance), or the resumed steps would fit one set of weights to two feature versions or two bases.
    Every checkpoint is checked: a worker may fall back to any of them."""
    run = RunDir.of(out)
    unknown = []
    for name in checkpoint.candidates(run, cfg.name):
        directory = run.pull(f"{name}/{provenance.PROVENANCE}").parent
        try:
            recorded = provenance.load(directory)
        except (OSError, ValueError):  # cut short by a crash: the worker skips it as unusable (checksums)
            continue
        if recorded is None:
            unknown.append(directory.name)
            continue
        if found := provenance.differences(recorded, current, f"--store {cfg.data.store}",
                                           f"--base-model {cfg.model.base}"):
            raise ProvenanceError(f"{run}: run {cfg.name!r} has checkpoints ({directory.name}) trained on "
                                  f"{'; on '.join(found)}; resume with the same store versions and base model, or "
                                  "train into a new --out or --name")
    if unknown:
        log.warning("%s: run %r has checkpoints written before provenance was recorded (%s): the feature versions "
                    "and base model they were trained on are unknown, not checked", run, cfg.name, ", ".join(unknown))


@dataclass
class Inputs:
    """What a run trains on, checked before any Ray work: the samples, the store version of each modality, and the
    data order (which says how many micro-batches an epoch is)."""

    samples: list[Sample]
    versions: dict[str, Version]
    order: DataOrder


def fit(cfg: RunConfig, inputs: Inputs | None = None, ray_log_level: str = "WARNING") -> Path | str:
    """Train on the Ray cluster this process is connected to (the caller initialises Ray: jobs/ray_runtime.py);
    returns the exported final directory (`PaveLlava.from_pretrained` layout + the run config): a Path, or its URL
    for a run on an object store. `inputs`: check_inputs(cfg), when the caller checked them already; `ray_log_level`:
    Ray Train's own logs (its INFO lines report every step and checkpoint beside ours). Everything that
    can refuse a new run is checked before its --out is created, so a refused run leaves nothing behind; the run
    directory is then locked for the whole run (training/lock.py): a second run into it is refused."""
    inputs = inputs or check_inputs(cfg)
    tracking.check(cfg)
    with RunDir(cfg.out, cfg.storage.options(cfg.out)) as run:
        run.path.mkdir(parents=True, exist_ok=True)
        with RunLock(run):
            train(cfg, run, inputs, ray_log_level)
        return run.path / "final" if not run.remote else run.location("final")


def check_inputs(cfg: RunConfig) -> Inputs:
    """The run's samples and store versions, checked (every sample's items stored, enough samples for one step, video
    tokens the base model reads); records the versions in cfg (eval and resumed runs read the same ones) and, for
    --optim.epochs, the steps."""
    samples = load_annotations(cfg.data.annotations, cfg.storage.options(cfg.data.annotations))
    versions = open_versions(cfg.data.store, cfg.modalities, cfg.data.fingerprints, **cfg.store_options())
    check_samples(samples, versions, cfg.data.annotations)
    cfg.data.fingerprints = {m: v.fingerprint.id for m, v in versions.items()}
    if not cfg.model.tiny_base:  # a tiny base is made to fit
        check_video_fits(local_copy(cfg.model.base, cfg.storage.options(cfg.model.base)), versions["video"].schema)
    order = DataOrder(len(samples), cfg.scale.workers, cfg.data.batch_size, cfg.data.seed)  # fills one step
    if cfg.optim.epochs:
        cfg.optim.steps = math.ceil(cfg.optim.epochs * order.batches_per_epoch / cfg.optim.grad_accum)
        log.info("--optim.epochs %g: %d optimizer steps (%d samples, %d micro-batches of %d per worker and epoch, "
                 "%d per step)", cfg.optim.epochs, cfg.optim.steps, len(samples), order.batches_per_epoch,
                 cfg.data.batch_size, cfg.optim.grad_accum)
    return Inputs(samples, versions, order)


def tiny_base(directory: Path, cfg: RunConfig, inputs: Inputs) -> Path:
    """The tiny random base of --tiny-base in `directory`: its tokenizer knows the samples' words, its vision tower
    fits the stored video tokens."""
    texts = [text for s in inputs.samples for _, text in s.turns]
    video = inputs.versions["video"].schema
    return save_tiny_base(directory, texts, cfg.data.seed, video.dim, patch_grid(video))


def dry_run(cfg: RunConfig, inputs: Inputs) -> str:
    """What `pave train --dry-run` prints: the resolved run config, the sample and step counts, and the token counts
    of rank 0's first micro-batch as the workers will collate it (no Ray, no model weights)."""
    from transformers import AutoConfig, AutoTokenizer

    from model.collate import Collator
    from training.data import FeatureLoader

    order, samples = inputs.order, inputs.samples
    per_step = cfg.data.batch_size * cfg.optim.grad_accum * cfg.scale.workers
    lines = ["# resolved run config", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "",
             f"samples: {len(samples)}; per optimizer step: {per_step} (batch {cfg.data.batch_size} x grad accum "
             f"{cfg.optim.grad_accum} x {cfg.scale.workers} workers)",
             f"micro-batches per worker and epoch: {order.batches_per_epoch}; optimizer steps: {cfg.optim.steps} "
             f"({cfg.optim.steps * cfg.optim.grad_accum / order.batches_per_epoch:.2f} epochs)"]
    with tempfile.TemporaryDirectory() as scratch:
        if cfg.model.tiny_base:
            base = str(tiny_base(Path(scratch) / "base", cfg, inputs))
        else:
            base = local_copy(cfg.model.base, cfg.storage.options(cfg.model.base))
        hf = AutoConfig.from_pretrained(base)
        layout = VideoLayout(hf.vision_config.image_size // hf.vision_config.patch_size, cfg.model.newline)
        collate = Collator(AutoTokenizer.from_pretrained(base), hf.video_token_id, layout, tuple(cfg.sides),
                           {m: v.schema.dtype for m, v in inputs.versions.items()}, loss_tokens=cfg.data.loss_tokens)
        batch = FeatureLoader(samples, inputs.versions, order, 0, collate).load(0)
    lines += ["", "first micro-batch of rank 0:", "| sample | tokens | video tokens | loss tokens |", "|---|---:|---:|---:|"]
    video_id = hf.video_token_id
    for row, sample_id in enumerate(batch["sample_ids"]):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        lines.append(f"| {sample_id} | {len(ids)} | {int((ids == video_id).sum())} | "
                     f"{int((batch['labels'][row] != IGNORE_INDEX).sum())} |")
    return "\n".join(lines)


def train(cfg: RunConfig, run: RunDir, inputs: Inputs, ray_log_level: str = "WARNING") -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    from training.loop import train_loop_per_worker

    samples, versions = inputs.samples, inputs.versions
    if cfg.model.tiny_base:  # saved under --out so that eval and resumed runs load the same one
        tiny_base(run.path / "base_model", cfg, inputs)
        run.push("base_model")
        cfg.model.base, cfg.model.tiny_base = run.location("base_model"), False
    base = local_copy(cfg.model.base, cfg.storage.options(cfg.model.base))
    if not cfg.eval.max_new_tokens:  # auto: eval's answer length, from this run's answers, recorded in its config
        cfg.eval.max_new_tokens = answer_budget(base, samples)
    check_resume(cfg, run)
    check_resume_provenance(cfg, run, provenance.record(base, versions, cfg.model))
    save(cfg, run.path)
    run.push(RUN_CONFIG)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": to_dict(cfg), "samples": samples, "versions": versions},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scale.workers, use_gpu=cfg.scale.gpus_per_worker > 0,
            resources_per_worker={"CPU": cfg.scale.cpus_per_worker, "GPU": cfg.scale.gpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name, **run.ray_storage(),  # checkpoints in OUT/ray/NAME/checkpoint_*
            # restarts are made below, where the errors that a restart would only repeat are told apart
            failure_config=ray.train.FailureConfig(max_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            logging_config=ray.train.LoggingConfig(log_level=ray_log_level),
        ),
    )
    for restart in itertools.count(1):
        try:
            trainer.fit()
            return
        except ray.train.WorkerGroupError as err:
            errors = [getattr(error, "cause", None) or error for error in err.worker_failures.values()]
            if repeated := next((error for error in errors if repeats_on_restart(error)), None):
                raise repeated from None
            if 0 <= cfg.checkpoint.max_failures < restart:
                raise
            log.warning("worker group failed (%s); restarting it from the latest checkpoint (restart %d of %s)",
                        "; ".join(f"{type(e).__name__}: {e}" for e in errors), restart,
                        cfg.checkpoint.max_failures if cfg.checkpoint.max_failures >= 0 else "unlimited")


def repeats_on_restart(error: BaseException) -> bool:
    """Whether a worker's error would only happen again in a restarted worker group: bad input (what `pave` reports
    as such: a damaged store item, a full or read-only disk, ...) or a run that diverged. A crashed or killed worker
    is worth a restart."""
    from jobs.cli import user_error_message

    return isinstance(error, NonFiniteError) or user_error_message(error) is not None
