"""Evaluation: greedy generation with a trained PAVE model (or the bare base model) from stored features, split over
Ray Data actors that each build the model on their own device (GPU when given), then scoring on the driver:
exact match after normalisation, and CIDEr (pycocoevalcap) for free-text answers. The driver never builds a model.

A checkpoint carries its run config: base model, side channels and store versions come from it, so an evaluation
needs no training flags repeated; a base model or a store version given explicitly overrides the recorded one. It
also carries its provenance (training/provenance.py): features, token layout and base model other than those it was
trained on are refused before any generation, unless allowed explicitly (--allow-mismatch). The checkpoint, its base
model and the store may be on an object store (URLs, reached with the request's storage options): the driver and
every actor read node-local copies of the checkpoint and base model (training/rundir.py).

Speed: the driver orders the samples so that a batch pads little and holds the questions on one video together
(generation_order); each actor generates a batch at once with a KV cache, each video's prompt prefix prefilled once
(model/generation.py). Predictions are reported per id, in id order. Answers are cut at max_new_tokens: the run's
recorded answer length by default (answer_budget); every answer cut there without its end is counted and warned of.
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
from pipelines.annotations import AnnotationError, Sample, load_annotations, overlap
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
    max_new_tokens: int = 0  # 0: the run config's eval.max_new_tokens (auto there: see evaluate)
    limit: int | None = None  # evaluate the first `limit` samples of the annotations only
    compile: bool | None = None  # None: the run config's eval.compile
    allow_mismatch: bool = False  # evaluate on features or a base model other than the checkpoint's, with a warning
    storage: StorageConfig = field(default_factory=StorageConfig)  # how URLs among the above are reached

    def __post_init__(self):  # refused before any work
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: give the number of samples to evaluate (the first of "
                              "--annotations), at least 1; or leave --limit out to evaluate them all")

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
                         max_new_tokens=self.max_new_tokens or run.eval.max_new_tokens,
                         compile=run.eval.compile if self.compile is None else self.compile)
        for flag, value in {"--store": filled.store, "--base-model": filled.base_model}.items():
            if not value:
                raise ConfigError(f"{flag} is required without a --checkpoint that records it")
        if self.workers < 1 or filled.batch_size < 1 or filled.max_new_tokens < 0:
            raise ConfigError("--workers and --batch-size must be at least 1, --max-new-tokens 0 (auto) or more")
        return run, filled


def answer_budget(model_dir: str, samples: list[Sample]) -> int:
    """New tokens for eval to generate at most: the longest assistant turn of `samples` in the tokens of the model in
    `model_dir`, its end token, and a margin of a quarter (at least 8 tokens) for answers a little longer than any
    seen."""
    from transformers import AutoTokenizer

    texts = sorted({text for s in samples for role, text in s.turns if role == "assistant"})
    tokens = AutoTokenizer.from_pretrained(model_dir)(texts, add_special_tokens=False)["input_ids"]
    longest = max(map(len, tokens), default=0)
    return longest + 1 + max(8, longest // 4)


def stored_frames(video: Version, samples: list[Sample]) -> dict[str, int]:
    """The stored frames of each sample's video, from the store's index (no tokens read): generation_order's key."""
    rows = video.index().rows  # item -> (part, first row, end row): a row is a frame
    return {s.video_id: rows[s.video_id][2] - rows[s.video_id][1] for s in samples}


def generation_order(samples: list[Sample], frames: dict[str, int]) -> list[Sample]:
    """The order the samples are generated in, cut into batches: by prompt length, so that a batch pads little, with
    the questions on one video next to each other, so that its prefix is prefilled once (model/generation.py). A
    video's tokens are counted by its stored `frames`, a question's by its characters (a sort key only)."""
    text = {s.id: sum(len(t) for _, t in s.turns[:-1]) for s in samples}
    longest = {}
    for s in samples:
        longest[s.video_id] = max(longest.get(s.video_id, 0), text[s.id])
    return sorted(samples, key=lambda s: (frames[s.video_id], longest[s.video_id], s.video_id, text[s.id], s.id))


class Generate:
    """Ray Data callable class: one model per actor, on its GPU when Ray gave it one; a batch of feature rows in,
    one row per sample out (id, answer, prediction, whether it hit max_new_tokens without its end, worker)."""

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
        self.max_new_tokens, self.compile = request.max_new_tokens, request.compile
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, rows: dict) -> dict:
        batch = self.collate(rows)  # on the CPU: generate moves what it uses (each shared video once)
        eos = self.tokenizer.eos_token_id
        new_tokens = self.model.generate(
            batch["input_ids"], batch["attention_mask"], batch["video"], batch["side"],
            max_new_tokens=self.max_new_tokens, eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id,
            video_keys=list(rows["video_id"]), compile=self.compile,
        )
        hit_limit = [len(row) == self.max_new_tokens and eos not in row for row in new_tokens.tolist()]
        predictions = [p.strip() for p in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return {"id": batch["sample_ids"], "answer": batch["answers"], "prediction": predictions,
                "hit_limit": hit_limit, "worker": [self.worker] * len(predictions)}


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


def warn_of_training_overlap(run: RunConfig, request: EvalRequest, samples: list[Sample]) -> None:
    """A warning when the checkpoint was trained on questions it is now evaluated on (the same question of the same
    video): its scores would not say how it does on new ones. Its training annotations are those its run config
    records, when they can still be read."""
    if not (request.checkpoint and run.data.annotations):
        return
    try:
        trained = load_annotations(run.data.annotations, request.storage.options(run.data.annotations))
    except (OSError, AnnotationError):
        log.warning("the training annotations of %s (%s) cannot be read: whether it is evaluated on what it was "
                    "trained on is not checked", request.checkpoint, run.data.annotations)
        return
    videos, same = overlap(trained, samples)
    if same:
        log.warning("%d of %d samples ask a question %s was trained on, of the same video (e.g. %r, trained as %r): "
                    "their scores do not measure new questions; evaluate on held-out samples (`pave data check "
                    "--eval-annotations` lists them)", len(same), len(samples), request.checkpoint, *same[0])
    elif videos:
        log.warning("%d of the evaluated videos were trained on (with other questions), e.g. %r", len(videos),
                    sorted(videos)[0])


def evaluate(request: EvalRequest, start_ray=None) -> dict:
    """Generate for every sample of request.annotations (the first request.limit) on request.workers Ray actors and
    score; the report (a dict) holds the metrics (with how many answers hit max_new_tokens without their end), every
    prediction (sorted by id) and the workers that generated. `start_ray`: called once the inputs are checked, before
    any Ray work (a typo costs no Ray start-up); None when the caller's Ray runs already."""
    import ray

    given = request
    run, request = request.resolve()
    samples = load_annotations(request.annotations, request.storage.options(request.annotations))[:request.limit]
    versions = checked_versions(given, request, run)
    check_samples(samples, versions, request.annotations)
    warn_of_training_overlap(run, request, samples)
    if not request.max_new_tokens:  # no answer length recorded: the base model alone, or an imported checkpoint
        request = replace(request, max_new_tokens=answer_budget(request.local(request.base_model), samples))
        log.warning("no answer length recorded in a run config: generating up to %d new tokens, the longest answer "
                    "of %s plus a margin (--max-new-tokens sets it)", request.max_new_tokens, request.annotations)
    if start_ray:
        start_ray()
    order = generation_order(samples, stored_frames(versions["video"], samples))
    generation = feature_dataset(order, versions).map_batches(
        Generate, batch_size=request.batch_size, num_gpus=request.gpus_per_worker, num_cpus=request.cpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=request.workers, max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs=dict(request=request, newline=run.model.newline, sides=run.sides,
                                   dtypes=modality_dtypes(versions)),
    )
    # Batches of consecutive samples in generation order, whatever the number of workers: a prediction equals what
    # its prompt gives alone in exact arithmetic, but in bf16 on a GPU the kernels' rounding follows the batch's
    # shape, so fixed batches keep a report reproducible. Handed out only once every actor has its model (else the
    # first one takes them all).
    generation.context.execution_options.preserve_order = True
    generation.context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    generated = generation.take_all()
    rows = sorted(({k: str(row[k]) for k in ("id", "answer", "prediction")} for row in generated),
                  key=lambda r: r["id"])
    metrics = score([r["prediction"] for r in rows], [r["answer"] for r in rows])
    metrics["hit_limit"] = sum(bool(row["hit_limit"]) for row in generated)
    if metrics["hit_limit"]:
        log.warning("%d of %d answers hit the limit of %d new tokens without their end (cut short); raise it with "
                    "--max-new-tokens", metrics["hit_limit"], len(rows), request.max_new_tokens)
    return {"checkpoint": request.checkpoint, "base_model": request.base_model, "sides": run.sides,
            "max_new_tokens": request.max_new_tokens, "metrics": metrics, "predictions": rows,
            "workers": sorted({str(row["worker"]) for row in generated})}


REPORT = "report.json"


def write_report(report: dict, out: RunDir, name: str) -> None:
    out.path.mkdir(parents=True, exist_ok=True)
    (out.path / REPORT).write_text(json.dumps({"name": name, **report}, indent=2))
    m = report["metrics"]
    lines = [f"# Evaluation: {name}", "", f"checkpoint: `{report['checkpoint'] or '(base model)'}`", "",
             f"| samples | exact match | CIDEr | cut at {report['max_new_tokens']} new tokens |",
             "|---:|---:|---:|---:|",
             f"| {m['n']} | {m['exact_match']:.3f} | {m['cider']:.3f} | {m['hit_limit']} |", "",
             "| id | answer | prediction |", "|---|---|---|"]
    lines += [f"| {r['id']} | {r['answer']} | {r['prediction']} |" for r in report["predictions"]]
    (out.path / "report.md").write_text("\n".join(lines) + "\n")
    out.push(REPORT, "report.md")
