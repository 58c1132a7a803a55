"""One worker's training as a recipe: setup, step, save, load, restore, export. The loop over it (Ray Train's
worker function) is training/loop.py; benchmarks time `Recipe.step` itself. Nothing here needs Ray: a Recipe runs in
any process, distributed when torch.distributed is initialised (Ray Train does that for its workers).

Checkpoints and the export are collective under FSDP (every rank gathers the full state dict); rank 0 writes.
"""
import logging
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from featurestore import Version
from model.collate import Collator, token_count
from pipelines.annotations import Sample
from training import checkpoint, provenance
from training.checkpoint import NonFiniteError, TrainState
from training.config import RunConfig, save
from training.data import DataOrder, FeatureLoader
from training.rundir import RunDir
from training.modeling import (TrainingLoss, attention_kernel, build_model, build_skeleton, checkpointed_layer_count,
                               compile_layers, fsdp, make_checkpointable, set_checkpointed, to_device)

log = logging.getLogger(__name__)
# Checkpoints hold the trainable weights only. With cpu_offload the full state dict is gathered on rank 0 only
# (it writes the files); every rank loads, non-strictly since frozen weights are absent (load checks the keys).
TO_SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
TRAINABLE_KEYS = StateDictOptions(full_state_dict=True, ignore_frozen_params=True)
TO_LOAD = StateDictOptions(full_state_dict=True, strict=False)


class Recipe:
    def __init__(self, cfg: RunConfig, samples: list[Sample], versions: dict[str, Version], device: torch.device,
                 rank: int = 0, world_size: int = 1):
        self.cfg, self.samples, self.versions = cfg, samples, versions
        if device.type == "cuda" and device.index is None:  # "cuda": the current one, named (set_device needs it)
            device = torch.device("cuda", torch.cuda.current_device())
        self.device, self.rank, self.world_size = device, rank, world_size
        self.dims = {m: v.schema.dim for m, v in versions.items()}
        self.order = DataOrder(len(samples), world_size, cfg.data.batch_size, cfg.data.seed, cfg.data.shuffle)
        self.state = TrainState()
        # what the weights are trained on, recorded with every checkpoint and the export
        self.provenance = provenance.record(cfg.model.base, versions, cfg.model)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def setup(self) -> "Recipe":
        cfg = self.cfg
        dtype = torch.bfloat16 if self.on_gpu else torch.float32
        self.model = build_model(cfg, self.dims, dtype)
        self.attention = attention_kernel(cfg, self.on_gpu)
        self.model.hf.model.language_model.set_attn_implementation(self.attention)  # the vision tower is not run
        log.info("LLM attention: %s", self.attention)
        dtypes = {m: v.schema.dtype for m, v in self.versions.items()}
        self.collate = Collator(AutoTokenizer.from_pretrained(cfg.model.base), self.model.hf.config.video_token_id,
                                self.model.layout, tuple(cfg.sides), dtypes, dtype, pack=cfg.data.pack,
                                loss_tokens=cfg.data.loss_tokens)
        if self.on_gpu:
            torch.cuda.set_device(self.device)  # fully_shard and DDP place their buffers on the current device
            self.model.to(self.device)
        self.compiled = bool(cfg.model.compile if cfg.model.compile is not None else self.on_gpu)
        self._setup_checkpointing()
        if self.compiled:
            compile_layers(self.model)
        module = TrainingLoss(self.model, bf16=self.on_gpu)
        reduce_dtype = getattr(torch, cfg.scale.grad_reduce)
        if cfg.scale.strategy == "fsdp":
            self.module = fsdp(module, reduce_dtype)
        else:
            module.to(self.device)
            distributed = torch.distributed.is_initialized() and self.world_size > 1
            self.module = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device] if self.on_gpu else None) if distributed else module
            if distributed and reduce_dtype == torch.bfloat16:  # half the bytes on the wire; summed in bf16
                self.module.register_comm_hook(None, bf16_compress_hook)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        # fused AdamW: one kernel for all LoRA + patch tensors (hundreds of small ones) instead of foreach's several;
        # FSDP's DTensor parameters keep the default (foreach)
        fused = self.on_gpu and cfg.scale.strategy != "fsdp"
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                           fused=fused or None)
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, math.ceil(cfg.optim.warmup_ratio * cfg.optim.steps), cfg.optim.steps)
        self.module.train()
        return self

    def _setup_checkpointing(self) -> None:
        """Activation checkpointing per decoder layer, switched per micro-batch: a fixed setting (none, full, N) is
        set once; "auto" on a GPU re-plans for every micro-batch from its own token count (plan_checkpointing), so
        a short batch recomputes nothing and a long packed one only as many layers as its length needs, without
        sizing every batch for the longest one expected."""
        make_checkpointable(self.model)
        # Checkpoints stash the RNG state of the default device type, which is the host's accelerator, not this
        # recipe's device: a CPU recipe on a GPU host would track CUDA, which the first compile initialises inside a
        # checkpointed forward, and torch refuses that ("device state was initialized in the forward pass").
        torch.utils.checkpoint.DefaultDeviceType.set_device_type(self.device.type)
        self.checkpointed: list[int] = []
        self._free = torch.cuda.mem_get_info(self.device)[0] if self.on_gpu else None
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self._optimizer_bytes = 12 * trainable  # grad + Adam's two moments, float32
        self._planned_for: int | None = None
        setting = self.cfg.model.activation_checkpointing
        if setting != "auto" or not self.on_gpu:
            self.plan_checkpointing(0)

    def plan_checkpointing(self, tokens: int) -> list[int]:
        """Checkpoint as few decoder layers as a micro-batch of `tokens` tokens needs (see checkpointed_layer_count);
        the choice is logged when it changes. Called by `step` for every micro-batch."""
        setting = self.cfg.model.activation_checkpointing
        text = self.model.hf.config.text_config
        dropout = self.cfg.model.lora.enabled and self.cfg.model.lora.dropout > 0
        count = checkpointed_layer_count(setting, text, tokens, self._free, self._optimizer_bytes, self.compiled,
                                         dropout)
        if count != self._planned_for:
            self.checkpointed = set_checkpointed(self.model, count)
            self._planned_for = count
            log.info("activation checkpointing (%s): %d of %d decoder layers %s, for a micro-batch of %d tokens "
                     "with %s GiB free", setting, count, text.num_hidden_layers, self.checkpointed, tokens,
                     "-" if self._free is None else f"{self._free / 2**30:.1f}")
        return self.checkpointed

    def loader(self) -> FeatureLoader:
        return FeatureLoader(self.samples, self.versions, self.order, self.rank, self.collate,
                             self.cfg.data.prefetch_batches)

    def batches(self):
        """(micro-batch number, batch) of this worker from the state's data position on, in the run's DataOrder."""
        return self.loader().iterate(self.state.micro)

    def step(self, micro_batches: list[dict]) -> dict:
        """One optimizer step over the given micro-batches (gradients reduced across workers on the last only);
        returns the mean loss, the samples and tokens it saw, and the gradient norm."""
        loss_sum, samples, tokens = 0.0, 0, 0
        # Dropout (LoRA's) draws from torch's generators seeded by (run seed, rank, step), as the data order is: a
        # worker group restarted from a checkpoint draws what the undisturbed run drew, and ranks draw differently.
        torch.manual_seed(int(np.random.SeedSequence([self.cfg.data.seed, self.rank, self.state.step])
                              .generate_state(1)[0]))
        for k, batch in enumerate(micro_batches):
            last = k == len(micro_batches) - 1
            batch = to_device(batch, self.device)
            n = token_count(batch)
            if self.cfg.model.activation_checkpointing == "auto" and self.on_gpu:
                self.plan_checkpointing(self._planning_tokens(n))
            with self._gradient_sync(last):
                loss = self.module(batch)
                (loss / len(micro_batches)).backward()
            loss_sum = loss_sum + loss.detach()  # on the device: no host sync per micro-batch
            samples += len(batch["sample_ids"])
            tokens += n
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        # the step's one sync, before the update: NaN or inf never reaches the weights. The gradient norm is of the
        # reduced gradients, the same on every worker, so all stop at the same step (a non-finite loss anywhere
        # makes the reduced gradients non-finite too).
        loss_sum, grad_norm = torch.stack([loss_sum.float(), grad_norm.float()]).tolist()
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
            raise NonFiniteError(f"step {self.state.step + 1}: loss {loss_sum / len(micro_batches)}, gradient norm "
                                 f"{grad_norm}; training stopped before the update, the weights of step "
                                 f"{self.state.step} are the last ones (lower --optim.lr or --optim.grad-clip, and "
                                 "check the features of the samples this step trained on in RUN/data_order/)")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.micro += len(micro_batches)
        self.state.epoch, self.state.position = self.order.locate(self.state.micro)
        return {"loss": loss_sum / len(micro_batches), "samples": samples, "tokens": tokens,
                "grad_norm": grad_norm}  # before clipping

    def _planning_tokens(self, tokens: int) -> int:
        """The token count to plan checkpointing for: this micro-batch's; under FSDP with several workers the longest
        of the workers' micro-batches (one small all-reduce), so that every rank recomputes the same layers and
        their parameter all-gathers stay in step."""
        if self.cfg.scale.strategy != "fsdp" or not torch.distributed.is_initialized() or self.world_size == 1:
            return tokens
        longest = torch.tensor([tokens], device=self.device)
        torch.distributed.all_reduce(longest, op=torch.distributed.ReduceOp.MAX)
        return int(longest.item())

    def _gradient_sync(self, sync: bool):
        if self.cfg.scale.strategy == "fsdp":  # fully_shard has no no_sync: reduce-scatter on the last micro only
            self.module.set_requires_gradient_sync(sync)
        elif not sync and isinstance(self.module, torch.nn.parallel.DistributedDataParallel):
            return self.module.no_sync()
        return nullcontext()

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, directory: Path) -> None:
        """Write a checkpoint into `directory` (rank 0; every rank must call: the gather is collective)."""
        weights = self._gathered_weights(f"checkpoint of step {self.state.step}")
        optimizer = get_optimizer_state_dict(self.module, self.optimizer, options=TO_SAVE)
        if self.rank == 0:
            checkpoint.write(Path(directory), weights, optimizer, self.scheduler.state_dict(), self.state,
                             self.provenance)

    def _gathered_weights(self, what: str) -> dict:
        """The full trainable state dict, gathered on rank 0 (empty elsewhere; collective), refused when not
        finite."""
        weights = get_model_state_dict(self.module, options=TO_SAVE)
        checkpoint.check_finite(weights, what)
        return weights

    def load(self, directory: Path) -> None:
        """Weights, optimizer, scheduler and TrainState of an intact checkpoint; raises (loading nothing of it)
        when a file is damaged or the weights are not this model's."""
        weights, trainer = checkpoint.read(Path(directory))
        expected = get_model_state_dict(self.module, options=TRAINABLE_KEYS).keys()
        if weights.keys() != expected:
            missing, unexpected = sorted(expected - weights.keys())[:5], sorted(weights.keys() - expected)[:5]
            raise ValueError(f"{directory}: trainable weights do not match this model (missing {missing}, "
                             f"unexpected {unexpected})")
        set_model_state_dict(self.module, weights, options=TO_LOAD)
        set_optimizer_state_dict(self.module, self.optimizer, trainer["optimizer"], options=TO_LOAD)
        self.scheduler.load_state_dict(trainer["scheduler"])
        self.state = trainer["state"]

    def restore(self, run: RunDir) -> bool:
        """Resume from the newest checkpoint of the run (self.cfg.name in `run`) that is intact and loads (its resume
        count + 1); False on a fresh start. A corrupt checkpoint is skipped with a warning, never half-loaded."""
        found = checkpoint.candidates(run, self.cfg.name)
        for name in found:
            directory = run.pull(name)  # from an object store: into this process's working mirror first
            try:
                self.load(directory)
            except Exception as err:  # any unreadable piece disqualifies the whole checkpoint
                log.warning("checkpoint %s is unusable (%s: %s); trying an older one", run.location(name),
                            type(err).__name__, err)
                continue
            self.state.resumes += 1
            log.info("resumed from %s at step %d (epoch %d, batch %d of %d)", run.location(name), self.state.step,
                     self.state.epoch, self.state.position, self.order.batches_per_epoch)
            return True
        if found:
            raise RuntimeError(f"no usable checkpoint among those in {run.location(f'ray/{self.cfg.name}')}; refusing "
                               "to restart from scratch")
        return False

    def export(self, final: Path, recorded: RunConfig | None = None) -> None:
        """The trained weights as a `PaveLlava.from_pretrained` directory (peft adapter + patches) with the run
        config (`recorded`, default self.cfg) and the provenance. Rank 0 writes it from the gathered state dict into a weightless copy of the model
        (meta device), so DDP and FSDP runs export alike and no second base model is built. Every rank must call
        it."""
        weights = self._gathered_weights(f"export to {final}")
        if self.rank != 0:
            return
        skeleton = TrainingLoss(build_skeleton(self.cfg, self.dims))
        skeleton.load_state_dict(weights, strict=False, assign=True)
        if empty := [n for n, p in skeleton.named_parameters() if p.requires_grad and p.is_meta]:
            raise RuntimeError(f"export: trainable weights missing from the gathered state: {empty[:5]}")
        final.mkdir(parents=True, exist_ok=True)
        skeleton.model.save_pretrained(final)
        save(recorded or self.cfg, final)
        provenance.save(final, self.provenance)
