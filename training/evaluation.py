"""Evaluation: greedy generation with a trained PAVE model (or the bare base model) from stored features, split over
Ray Data actors that each build the model on their own device (GPU when given), then scoring on the driver:
exact match after normalisation, and CIDEr (pycocoevalcap) for free-text answers. The driver never builds a model.

A checkpoint carries its run config: base model, side channels and store versions come from it, so an evaluation
needs no training flags repeated; a base model or a store version given explicitly overrides the recorded one.
"""
import json
import os
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipelines.annotations import load_annotations
from pipelines.training_data import check_samples, feature_dataset, modality_dtypes, open_versions
from training.config import RUN_CONFIG, ConfigError, RunConfig, load

ACTOR_START_TIMEOUT_S = 1800  # a 7B model loading from network storage


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

    def resolve(self) -> tuple[RunConfig, "EvalRequest"]:
        """The checkpoint's run config (defaults without one) and this request with its gaps filled from it."""
        if self.checkpoint and not (Path(self.checkpoint) / RUN_CONFIG).exists():
            raise ConfigError(f"--checkpoint {self.checkpoint}: no {RUN_CONFIG} there; expected the final/ directory "
                              "of a `pave train` run or the output of `pave import-checkpoint`")
        run = load(self.checkpoint) if self.checkpoint else RunConfig()
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

    def __init__(self, base_model: str, checkpoint: str, newline: str, sides: list[str], dtypes: dict[str, str],
                 max_new_tokens: int):
        import torch
        from transformers import AutoTokenizer

        from model.collate import Collator
        from model.llava import PaveLlava

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = PaveLlava.from_pretrained(base_model, checkpoint or None, dtype=dtype, newline=newline)
        self.model = self.model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.collate = Collator(self.tokenizer, self.model.hf.config.video_token_id, self.model.layout, tuple(sides),
                                dtypes, dtype, for_generation=True)
        self.max_new_tokens = max_new_tokens
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


def evaluate(request: EvalRequest) -> dict:
    """Generate for every sample of request.annotations on request.workers Ray actors and score; the report (a dict)
    holds the metrics, every prediction (sorted by id) and the workers that generated."""
    import ray

    run, request = request.resolve()
    samples = load_annotations(request.annotations)
    versions = open_versions(request.store, run.modalities, request.fingerprints)
    check_samples(samples, versions, request.annotations)
    generation = feature_dataset(samples, versions).map_batches(
        Generate, batch_size=request.batch_size, num_gpus=request.gpus_per_worker, num_cpus=request.cpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=request.workers, max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs=dict(base_model=request.base_model, checkpoint=request.checkpoint,
                                   newline=run.model.newline, sides=run.sides,
                                   dtypes=modality_dtypes(versions), max_new_tokens=request.max_new_tokens),
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


def write_report(report: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    m = report["metrics"]
    lines = [f"# Evaluation: {name}", "", f"checkpoint: `{report['checkpoint'] or '(base model)'}`", "",
             "| samples | exact match | CIDEr |", "|---:|---:|---:|",
             f"| {m['n']} | {m['exact_match']:.3f} | {m['cider']:.3f} |", "",
             "| id | answer | prediction |", "|---|---|---|"]
    lines += [f"| {r['id']} | {r['answer']} | {r['prediction']} |" for r in report["predictions"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
