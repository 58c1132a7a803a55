"""The checkpoint format. A checkpoint holds only what training changes: the trainable weights (safetensors, full
state dict, so a DDP and an FSDP run read each other's) and trainer_state.pt (optimizer, scheduler, TrainState:
step, data position, resumes, loss history), plus provenance.json (what the run trains on: training/provenance.py;
its own file, so that the driver checks a resume against it without loading the optimizer state), with the sha256 of
every file: damaged bytes may still load (neither format checks its contents) and would resume from wrong weights.
Checkpoints written before provenance was recorded lack that file and its checksum, and still load."""
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from training.provenance import PROVENANCE
from training.provenance import save as save_provenance

if TYPE_CHECKING:
    from training.rundir import RunDir

TRAINABLE = "trainable.safetensors"
TRAINER_STATE = "trainer_state.pt"
CHECKSUMS = "checksums.json"


@dataclass
class TrainState:
    """Where a run is: everything besides weights and optimizer that a resumed run needs to continue exactly."""

    step: int = 0  # optimizer steps taken
    micro: int = 0  # micro-batches each worker has consumed (step x grad_accum); the data position
    epoch: int = 0  # of the next micro-batch (DataOrder.locate(micro)), recorded for people and tools
    position: int = 0  # its index in that epoch
    resumes: int = 0
    history: list[dict] = field(default_factory=list)  # the metrics windows so far


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss, gradient or weight; the message names the step or the tensor."""


def check_finite(weights: dict, what: str) -> None:
    """Raise NonFiniteError naming the first trainable tensor with a NaN or infinite value: such weights are never
    written, so neither a resume nor the export starts from them."""
    for name, tensor in weights.items():
        if not torch.isfinite(tensor).all():
            raise NonFiniteError(f"{what}: trainable weight {name} holds NaN or infinite values; nothing written "
                                 "(lower --optim.lr, or resume from an earlier checkpoint)")


def sha256(path: Path) -> str:
    with open(path, "rb") as f:  # streamed: a 7B run's optimizer state is over a GB
        return hashlib.file_digest(f, "sha256").hexdigest()


def write(directory: Path, weights: dict, optimizer: dict, scheduler: dict, state: TrainState,
          provenance: dict) -> None:
    save_file(weights, directory / TRAINABLE)
    torch.save({"optimizer": optimizer, "scheduler": scheduler, "state": asdict(state)}, directory / TRAINER_STATE)
    save_provenance(directory, provenance)
    digests = {name: sha256(directory / name) for name in (TRAINABLE, TRAINER_STATE, PROVENANCE)}
    (directory / CHECKSUMS).write_text(json.dumps(digests))


def check_files(directory: Path) -> None:
    """Raise unless the checkpoint's files are byte for byte those written (CHECKSUMS, recorded when saving)."""
    recorded = json.loads((directory / CHECKSUMS).read_text())
    names = dict.fromkeys([TRAINABLE, TRAINER_STATE, *recorded])  # PROVENANCE: in those written since it exists
    damaged = [name for name in names if sha256(directory / name) != recorded.get(name)]
    if damaged:
        raise ValueError(f"{', '.join(damaged)}: not the bytes written (sha256 differs from {CHECKSUMS})")


def read(directory: Path) -> tuple[dict, dict]:
    """(trainable weights, {optimizer, scheduler, state: TrainState}) of an intact checkpoint."""
    check_files(directory)
    trainer = torch.load(directory / TRAINER_STATE, weights_only=False)
    trainer["state"] = TrainState(**trainer["state"])
    return load_file(directory / TRAINABLE), trainer


def candidates(run: "RunDir", name: str) -> list[str]:
    """Every checkpoint directory of run `name` in `run` (OUT/ray/NAME/checkpoint_*, as names inside OUT; on an
    object store `run.pull` fetches one), newest first (their names are timestamps). Not only those Ray Train has
    registered: the controller registers a checkpoint only once it has polled every worker's report, so when a
    worker dies just after rank 0 persisted one, that checkpoint is stored but unknown to get_checkpoint()."""
    found = [d for d in run.directories(f"ray/{name}") if d.startswith("checkpoint_")]  # not Ray's snapshot file
    return [f"ray/{name}/{d}" for d in sorted(found, reverse=True)]
