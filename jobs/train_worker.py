"""The per-worker training recipe that Ray Train runs: build the model, restore the latest usable checkpoint, stream
collated batches from this worker's dataset shard, step, report metrics and checkpoints.

Checkpoints hold only what training changes: the trainable weights (safetensors, full state dict, so a DDP and an
FSDP run read each other's), and optimizer + scheduler + step + loss history (torch.save), with the sha256 of both
files: damaged bytes may still load (neither format checks its contents) and would resume from wrong weights.
"""
import hashlib
import json
import logging
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from jobs.train import TRAINABLE, TRAINER_STATE, TrainConfig
from model.collate import Collator
from model.llava import PaveLlava, lora_config
from model.patch import PatchConfig, PavePatch

log = logging.getLogger(__name__)
CHECKSUMS = "checksums.json"
# Checkpoints hold the trainable weights only. With cpu_offload the full state dict is gathered on rank 0 only
# (it writes the files); every rank loads, non-strictly since frozen weights are absent (load_trainable checks keys).
TO_SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
TRAINABLE_KEYS = StateDictOptions(full_state_dict=True, ignore_frozen_params=True)
TO_LOAD = StateDictOptions(full_state_dict=True, strict=False)


def patch_config(cfg: TrainConfig, side_dim: int, query_dim: int, llm_dim: int) -> PatchConfig:
    d = cfg.patch_d_model
    return PatchConfig(side_dim=side_dim, query_dim=query_dim, llm_dim=llm_dim, d_model=d,
                       num_layers=cfg.patch_layers, ffn_dim=2 * d, out_hidden=2 * d)


def build_model(cfg: TrainConfig, dims: dict[str, int], dtype: torch.dtype, base=None) -> PaveLlava:
    """Frozen base in `dtype` + one fresh patch per side channel (zero-init: a no-op at step 0) + fresh LoRA.
    Trainable weights stay float32 whatever `dtype` is: they are the optimizer's master copy, since bf16 weights
    would drop AdamW updates at lr 2e-5 (far below half a bf16 ulp of a typical weight); on GPU, TrainingLoss
    computes in bf16. `base`: an HF model already built (default: loaded from cfg.base_model in `dtype`)."""
    torch.manual_seed(cfg.seed)
    model = PaveLlava(base) if base is not None else PaveLlava.from_pretrained(cfg.base_model, dtype=dtype)
    llm_dim = model.hf.config.text_config.hidden_size
    for side in cfg.sides:
        model.add_patch(side, PavePatch(patch_config(cfg, dims[side], dims["video"], llm_dim)))
    if cfg.lora:
        model.add_lora(lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
    return model


class TrainingLoss(torch.nn.Module):
    """`PaveLlava.loss` as a module's forward, so that DDP/FSDP hooks see every training step. With bf16=True it
    runs under bf16 autocast: float32 trainable weights (LoRA, patches) compute in bf16 like the frozen base."""

    def __init__(self, model: PaveLlava, bf16: bool = False):
        super().__init__()
        self.model = model
        self.bf16 = bf16

    def forward(self, batch: dict) -> torch.Tensor:
        with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model.loss(batch["input_ids"], batch["attention_mask"], batch["video"], batch["side"],
                                   batch["labels"])


def fsdp(module: TrainingLoss) -> TrainingLoss:
    """FSDP (per-parameter sharding, torch.distributed.fsdp.fully_shard): one unit per LLM decoder layer, the rest
    (embeddings, vision tower, projector, patches, lm_head) in the root unit. Unlike Ray's prepare_model (FSDP1) it
    wraps a single worker too, so the 1-GPU run is the scaling baseline, and it does not flatten a unit's frozen
    bf16 and trainable float32 weights into one tensor (FSDP1 requires one dtype per unit)."""
    from torch.distributed.fsdp import fully_shard

    for layer in module.model.hf.model.language_model.layers:
        fully_shard(layer)
    fully_shard(module)
    return module


def load_trainable(module: torch.nn.Module, directory: Path) -> None:
    state = load_file(directory / TRAINABLE)
    expected = get_model_state_dict(module, options=TRAINABLE_KEYS).keys()
    if state.keys() != expected:
        raise ValueError(f"{directory / TRAINABLE}: trainable weights do not match this model "
                         f"(missing {sorted(expected - state.keys())[:5]}, unexpected {sorted(state.keys() - expected)[:5]})")
    set_model_state_dict(module, state, options=TO_LOAD)


def candidate_checkpoints(run_dir: Path) -> list[Path]:
    """Every checkpoint directory of the run, newest first (their names are timestamps). Not only those Ray Train has
    registered: the controller registers a checkpoint only once it has polled every worker's report, so when a
    worker dies just after rank 0 persisted one, that checkpoint is on disk but unknown to get_checkpoint()."""
    return sorted((p for p in run_dir.glob("checkpoint_*") if p.is_dir()), reverse=True)  # not Ray's snapshot file


def sha256(path: Path) -> str:
    with open(path, "rb") as f:  # streamed: a 7B run's optimizer state is over a GB
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_files(directory: Path) -> None:
    """Raise unless the checkpoint's files are byte for byte those written (CHECKSUMS, recorded when saving)."""
    recorded = json.loads((directory / CHECKSUMS).read_text())
    damaged = [name for name in (TRAINABLE, TRAINER_STATE) if sha256(directory / name) != recorded.get(name)]
    if damaged:
        raise ValueError(f"{', '.join(damaged)}: not the bytes written (sha256 differs from {CHECKSUMS})")


def restore(module, optimizer, scheduler, run_dir: Path) -> tuple[int, list[dict], int]:
    """(step, history, resumes so far) from the newest checkpoint of the run that is intact and loads; (0, [], 0) on
    a fresh start. A corrupt checkpoint is skipped with a warning, never half-loaded: weights and optimizer come from
    one checkpoint."""
    candidates = candidate_checkpoints(run_dir)
    for directory in candidates:
        try:
            check_files(directory)
            state = torch.load(directory / TRAINER_STATE, weights_only=False)
            load_trainable(module, directory)
            set_optimizer_state_dict(module, optimizer, state["optimizer"], options=TO_LOAD)
            scheduler.load_state_dict(state["scheduler"])
            log.info("resumed from %s at step %d", directory, state["step"])
            return state["step"], state["history"], state["resumes"] + 1
        except Exception as err:  # any unreadable piece disqualifies the whole checkpoint
            log.warning("checkpoint %s is unusable (%s: %s); trying an older one", directory, type(err).__name__, err)
    if candidates:
        raise RuntimeError(f"no usable checkpoint among those in {run_dir}; refusing to restart from scratch")
    return 0, [], 0


def to_device(batch: dict, device: torch.device) -> dict:
    batch["input_ids"], batch["attention_mask"], batch["labels"] = (
        batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels"))
    batch["video"] = batch["video"].to(device)
    batch["side"] = {name: side.to(device) for name, side in batch["side"].items()}
    return batch


def train_loop_per_worker(config: dict) -> None:
    cfg = TrainConfig(**config["train"])
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = build_model(cfg, config["dims"], dtype)
    if cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else on_gpu:
        model.hf.model.language_model.gradient_checkpointing_enable({"use_reentrant": False})
    if cfg.strategy == "fsdp":
        if on_gpu:
            torch.cuda.set_device(device)  # fully_shard places shards on the current device
        module = fsdp(TrainingLoss(model, bf16=on_gpu))
    else:
        module = ray.train.torch.prepare_model(TrainingLoss(model, bf16=on_gpu))
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * cfg.steps), cfg.steps)
    step, history, resumes = restore(module, optimizer, scheduler, Path(config["run_dir"]))

    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
    collate = Collator(tokenizer, model.hf.config.video_token_id, tuple(cfg.sides), config["dtypes"], dtype)
    shard = ray.train.get_dataset_shard("train")
    rank = ray.train.get_context().get_world_rank()
    window = {"loss": 0.0, "samples": 0, "tokens": 0, "wait_s": 0.0, "steps": 0}
    window_start = time.perf_counter()
    module.train()
    while step < cfg.steps:  # epochs: each worker sees an equal share of the data (streaming_split(equal=True))
        batches = shard.iter_torch_batches(batch_size=cfg.batch_size, collate_fn=collate, drop_last=True,
                                           prefetch_batches=2)
        micro = 0
        fetch_start = time.perf_counter()
        for batch in batches:
            window["wait_s"] += time.perf_counter() - fetch_start
            batch = to_device(batch, device)
            micro += 1
            last_micro = micro % cfg.grad_accum == 0
            if cfg.strategy == "fsdp":  # fully_shard has no no_sync: reduce-scatter on the last micro-batch only
                module.set_requires_gradient_sync(last_micro)
                sync = nullcontext()
            else:
                sync = nullcontext() if last_micro or not hasattr(module, "no_sync") else module.no_sync()
            with sync:
                loss = module(batch)
                (loss / cfg.grad_accum).backward()
            window["loss"] += loss.item() / cfg.grad_accum
            window["samples"] += len(batch["sample_ids"])
            window["tokens"] += int(batch["attention_mask"].sum())
            if last_micro:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window["steps"] += 1
                if step % cfg.report_every == 0 or step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    elapsed = time.perf_counter() - window_start
                    metrics = {
                        "step": step, "loss": window["loss"] / window["steps"], "lr": scheduler.get_last_lr()[0],
                        "samples_per_s": window["samples"] / elapsed, "tokens_per_s": window["tokens"] / elapsed,
                        "step_time_s": elapsed / window["steps"], "data_wait_frac": window["wait_s"] / elapsed,
                        "resumes": resumes,
                    }
                    if on_gpu:
                        metrics["gpu_mem_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    history.append(metrics)
                    report(module, optimizer, scheduler, step, resumes, history, metrics,
                           checkpoint=step % cfg.checkpoint_every == 0 or step == cfg.steps, rank=rank)
                    window = dict.fromkeys(window, 0.0)
                    window_start = time.perf_counter()
                if step >= cfg.steps:
                    break
            fetch_start = time.perf_counter()


def report(module, optimizer, scheduler, step, resumes, history, metrics, checkpoint: bool, rank: int) -> None:
    """Every worker reports (Ray Train requires it); only rank 0 writes the checkpoint. Gathering the full state
    dict is collective under FSDP, so every rank takes part in it."""
    if not checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_state = get_model_state_dict(module, options=TO_SAVE)
        optim_state = get_optimizer_state_dict(module, optimizer, options=TO_SAVE)
        if rank == 0:
            save_file(model_state, Path(tmp) / TRAINABLE)
            torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict(), "step": step,
                        "resumes": resumes, "history": history}, Path(tmp) / TRAINER_STATE)
            digests = {name: sha256(Path(tmp) / name) for name in (TRAINABLE, TRAINER_STATE)}
            (Path(tmp) / CHECKSUMS).write_text(json.dumps(digests))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
