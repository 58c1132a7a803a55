"""Evaluation: greedy generation with a trained PAVE model (or the bare base model) from stored features, split over
Ray Data actors that each build the model on their own device (GPU when given), then scoring on the driver:
exact match after normalisation, and CIDEr (pycocoevalcap) for free-text answers. The driver never builds a model.

A checkpoint carries its run config: base model, side channels and store versions come from it, so an evaluation
needs no training flags repeated; a base model or a store version given explicitly overrides the recorded one. It
also carries its provenance (training/provenance.py): features, token layout and base model other than those it was
trained on are refused before any generation, unless allowed explicitly (--allow-mismatch). The checkpoint, its base
model and the store may be on an object store (URLs, reached with the request's storage options): the driver and
every actor read node-local copies of the checkpoint and base model (training/rundir.py).
"""
import json
import logging
import os
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from featurestore import FeatureStore, Version
from featurestore.files import Files
from pipelines.annotations import load_annotations
from pipelines.training_data import check_samples, feature_dataset, modality_dtypes, open_versions
from training import provenance
from training.config import RUN_CONFIG, ConfigError, RunConfig, StorageConfig, load
from training.provenance import ProvenanceError
from training.rundir import RunDir, local_copy

ACTOR_START_TIMEOUT_S = 1800  # a 7B model loading from network storage
log = logging.getLogger(__name__)


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def score(predictions: list[str], answers: list[str]) -> dict:
    from pycocoevalcap.cider.cider import Cider

    exact = sum(normalise(p) == normalise(a) for p, a in zip(predictions, answers))
    ids = range(len(answers))
    cider, _ = Cider().compute_score({i: [normalise(answers[i])] for i in ids},
                                     {i: [normalise(predictions[i]) or "<empty>"] for i in ids})
    return {"n": len(answers), "exact_match": exact / len(answers), "cider": float(cider)}


@dataclass
class EvalRequest:
    annotations: str
    checkpoint: str = ""  # a `pave train` final/ dir; empty: the base model alone
    store: str = ""  # default: the checkpoint's training store
    base_model: str = ""  # default: the checkpoint's base model
    fingerprints: dict[str, str] = field(default_factory=dict)  # over the checkpoint's
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_size: int = 0  # 0: the run config's eval.batch_size
    max_new_tokens: int = 0  # 0: the run config's eval.max_new_tokens
    allow_mismatch: bool = False  # evaluate on features or a base model other than the checkpoint's, with a warning
    storage: StorageConfig = field(default_factory=StorageConfig)  # how URLs among the above are reached

    def local(self, url: str) -> str:
        """A node-local copy of the directory at `url` (itself when local)."""
        return local_copy(url, self.storage.options(url))

    def resolve(self) -> tuple[RunConfig, "EvalRequest"]:
        """The checkpoint's run config (defaults without one) and this request with its gaps filled from it. A run
        directory given as the checkpoint stands for its export, final/."""
        checkpoint = Files(self.checkpoint, self.storage.options(self.checkpoint)) if self.checkpoint else None
        if checkpoint and checkpoint.exists("ray"):
            final = f"{self.checkpoint.rstrip('/')}/final"
            if not checkpoint.exists(f"final/{RUN_CONFIG}"):
                raise ConfigError(f"--checkpoint {self.checkpoint}: a run directory without a final/ export (the run "
                                  "has not finished); evaluate it once it has, or pass another run's final/")
            log.warning("--checkpoint %s is a run directory: evaluating its export, %s", self.checkpoint, final)
            return replace(self, checkpoint=str(final)).resolve()
        if checkpoint and not checkpoint.exists(RUN_CONFIG):
            raise ConfigError(f"--checkpoint {self.checkpoint}: no {RUN_CONFIG} there; expected the final/ directory "
                              "of a `pave train` run or the output of `pave import-checkpoint`")
        run = load(self.local(self.checkpoint)) if self.checkpoint else RunConfig()
        if not self.checkpoint:
            run.model.patches.sides = []
        filled = replace(self, store=self.store or run.data.store, base_model=self.base_model or run.model.base,
                         fingerprints={**run.data.fingerprints, **self.fingerprints},
                         batch_size=self.batch_size or run.eval.batch_size,
                         max_new_tokens=self.max_new_tokens or run.eval.max_new_tokens)
        for flag, value in {"--store": filled.store, "--base-model": filled.base_model}.items():
            if not value:
                raise ConfigError(f"{flag} is required without a --checkpoint that records it")
        if self.workers < 1 or filled.batch_size < 1 or filled.max_new_tokens < 1:
            raise ConfigError("--workers, --batch-size and --max-new-tokens must be at least 1")
        return run, filled


class Generate:
    """Ray Data callable class: one model per actor, on its GPU when Ray gave it one; a batch of feature rows in,
    one row per sample out (id, answer, prediction, worker)."""

    def __init__(self, request: "EvalRequest", newline: str, sides: list[str], dtypes: dict[str, str]):
        import torch
        from transformers import AutoTokenizer

        from model.collate import Collator
        from model.llava import PaveLlava

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        base_model = request.local(request.base_model)
        checkpoint = request.local(request.checkpoint) if request.checkpoint else None
        self.model = PaveLlava.from_pretrained(base_model, checkpoint, dtype=dtype, newline=newline)
        self.model = self.model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.collate = Collator(self.tokenizer, self.model.hf.config.video_token_id, self.model.layout, tuple(sides),
                                dtypes, dtype, for_generation=True)
        self.max_new_tokens = request.max_new_tokens
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, rows: dict) -> dict:
        batch = self.collate(rows)
        new_tokens = self.model.generate(
            batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
            batch["video"].to(self.device), {k: v.to(self.device) for k, v in batch["side"].items()},
            max_new_tokens=self.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        predictions = [p.strip() for p in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return {"id": batch["sample_ids"], "answer": batch["answers"], "prediction": predictions,
                "worker": [self.worker] * len(predictions)}


def checked_versions(given: EvalRequest, request: EvalRequest, run: RunConfig) -> dict[str, Version]:
    """The store version of each modality to evaluate on (`request`: `given` resolved), checked against what the
    checkpoint was trained on: a difference raises ProvenanceError, or with allow_mismatch logs a warning. A store
    without the recorded version (another store, features materialized again) gives its only version, so that the
    refusal names both. A checkpoint without provenance (written before it was recorded, or imported) is evaluated on
    its run config's versions, with a warning that nothing is checked."""
    trained_on = provenance.load(Path(request.local(request.checkpoint))) if request.checkpoint else None
    if request.checkpoint and trained_on is None:
        log.warning("checkpoint %s records no provenance (written before it was recorded, or imported): the feature "
                    "versions and base model it was trained on are unknown, not checked", request.checkpoint)
    fingerprints = dict(request.fingerprints)  # the given ones over the recorded ones
    if trained_on is not None:
        stored = FeatureStore(request.store, request.storage.options(request.store))
        for m in run.modalities:
            held = {v.fingerprint_id for v in stored.versions(m)}
            if m not in given.fingerprints and fingerprints.get(m) not in held:
                fingerprints.pop(m, None)
    versions = open_versions(request.store, run.modalities, fingerprints,
                             storage_options=request.storage.options(request.store))
    if trained_on is None:
        return versions
    current = provenance.record(request.local(request.base_model), versions, run.model)
    store = f"--store {request.store}" if given.store else f"its store {request.store} now"
    base = f"--base-model {request.base_model}" if given.base_model else f"{request.base_model} now"
    if found := provenance.differences(trained_on, current, store, base):
        message = f"checkpoint {request.checkpoint} was trained on {'; on '.join(found)}"
        if not request.allow_mismatch:
            raise ProvenanceError(f"{message}; pass --allow-mismatch to evaluate across versions deliberately")
        log.warning("%s; evaluating anyway (--allow-mismatch)", message)
    return versions


def evaluate(request: EvalRequest) -> dict:
    """Generate for every sample of request.annotations on request.workers Ray actors and score; the report (a dict)
    holds the metrics, every prediction (sorted by id) and the workers that generated."""
    import ray

    given = request
    run, request = request.resolve()
    samples = load_annotations(request.annotations, request.storage.options(request.annotations))
    versions = checked_versions(given, request, run)
    check_samples(samples, versions, request.annotations)
    generation = feature_dataset(samples, versions).map_batches(
        Generate, batch_size=request.batch_size, num_gpus=request.gpus_per_worker, num_cpus=request.cpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=request.workers, max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs=dict(request=request, newline=run.model.newline, sides=run.sides,
                                   dtypes=modality_dtypes(versions)),
    )
    # Batches of consecutive samples in file order, whatever the number of workers (a prediction can depend on the
    # padding its batch needs), handed out only once every actor has its model (else the first one takes them all).
    generation.context.execution_options.preserve_order = True
    generation.context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    generated = generation.take_all()
    rows = sorted(({k: str(row[k]) for k in ("id", "answer", "prediction")} for row in generated),
                  key=lambda r: r["id"])
    metrics = score([r["prediction"] for r in rows], [r["answer"] for r in rows])
    return {"checkpoint": request.checkpoint, "base_model": request.base_model, "sides": run.sides,
            "metrics": metrics, "predictions": rows, "workers": sorted({str(row["worker"]) for row in generated})}


REPORT = "report.json"


def write_report(report: dict, out: RunDir, name: str) -> None:
    out.path.mkdir(parents=True, exist_ok=True)
    (out.path / REPORT).write_text(json.dumps({"name": name, **report}, indent=2))
    m = report["metrics"]
    lines = [f"# Evaluation: {name}", "", f"checkpoint: `{report['checkpoint'] or '(base model)'}`", "",
             "| samples | exact match | CIDEr |", "|---:|---:|---:|",
             f"| {m['n']} | {m['exact_match']:.3f} | {m['cider']:.3f} |", "",
             "| id | answer | prediction |", "|---|---|---|"]
    lines += [f"| {r['id']} | {r['answer']} | {r['prediction']} |" for r in report["predictions"]]
    (out.path / "report.md").write_text("\n".join(lines) + "\n")
    out.push(REPORT, "report.md")
