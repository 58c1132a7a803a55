"""The run config: one nested, typed object for a training run, read from a YAML file plus command-line overrides,
validated once, written into the run directory and read back as the same object by resume, export and eval.

    pave train --config run.yaml --optim.lr 1e-4 --scale.workers 2

Flags are generated from the dataclasses below (training/flags.py: `--section.field`, with the short flags the README
shows as aliases, each field's comment its help); the YAML file and a saved config are loaded by pydantic, which checks types and refuses unknown keys. `validate`
then checks the values together; every problem is a ConfigError naming the field (as its flag) and what to do.

The recipe defaults are the reference PAVE recipe (docs/DESIGN.md): LoRA r=64, alpha=16, dropout 0.05 on every
LLM *_proj; AdamW lr 2e-5, cosine with 3% warmup, weight decay 0, grad clip 0.1; patches d_model 512, 2 layers.
"""
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

from training import flags
from training.flags import Flags

RUN_CONFIG = "run_config.yaml"  # in the run directory and in its exported final/ directory
STRICT = ConfigDict(extra="forbid")  # a misspelt key in a YAML file is an error, not a silent default


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the field and what to do."""


@with_config(STRICT)
@dataclass
class DataConfig:
    store: Annotated[str, Flags("--store")] = ""  # feature store path or fsspec URL
    annotations: Annotated[str, Flags("--annotations")] = ""  # LLaVA conversation JSON (video = store item id)
    # the store version of a modality (MODALITY=FP), for a store with several
    fingerprints: Annotated[dict[str, str], Flags("--fingerprint")] = field(default_factory=dict)
    batch_size: Annotated[int, Flags("--batch-size")] = 4  # per worker and micro-batch
    shuffle: bool = True  # a new seeded permutation of the samples every epoch
    pack: bool = False  # a micro-batch's samples packed into one sequence (block-causal attention), no padding
    seed: Annotated[int, Flags("--seed")] = 0  # data order, and the initial weights of patches and LoRA
    prefetch_batches: int = 2  # fetched ahead by each worker's loader threads
    # a node-local directory where the workers keep what they fetch from a store on an object store (shared by a
    # node's workers; the epochs after the first read it instead of the network), at most cache_bytes of it
    cache: str = ""
    cache_bytes: int = 32 << 30
    # which tokens carry the loss: "answer" (each assistant answer and its end-of-turn tokens) or "llava" (LLaVA-
    # OneVision's convention, the official PAVE recipes': each whole assistant turn with its role header, plus every
    # <|im_start|>, <|im_end|> and newline token of the conversation)
    loss_tokens: Literal["answer", "llava"] = "answer"


@with_config(STRICT)
@dataclass
class PatchesConfig:
    sides: Annotated[list[str], Flags("--sides")] = field(default_factory=lambda: ["audio"])  # one patch each
    d_model: Annotated[int, Flags("--patch-d-model")] = 512
    layers: Annotated[int, Flags("--patch-layers")] = 2
    # which side-channel steps each frame attends to: "time" (the steps whose time spans meet the frame's window) or
    # "official" (the official PAVE code's: the steps split by index into one chunk per frame; checkpoints imported
    # from it need it)
    neighbourhood: Literal["time", "official"] = "time"
    tie_v_to_k: bool = False  # attention values from the key projection, as the official PAVE module computes them


@with_config(STRICT)
@dataclass
class LoraConfig:
    enabled: bool = True
    r: Annotated[int, Flags("--lora-r")] = 64
    alpha: int = 16
    dropout: float = 0.05


@with_config(STRICT)
@dataclass
class ModelConfig:
    base: Annotated[str, Flags("--base-model")] = ""  # local LLaVA-OneVision directory (from_pretrained)
    tiny_base: Annotated[bool, Flags("--tiny-base")] = False  # demo/tests: a tiny random base saved in OUT/base_model
    newline: Literal["grid", "one"] = "grid"  # video newline layout: grid = official PAVE (its checkpoints), one = HF
    patches: PatchesConfig = field(default_factory=PatchesConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # decoder layers that recompute their activations in backward: "auto" (as few as the GPU's free memory allows,
    # planned again for each micro-batch from its token count; none on CPU), "none", "full", or a number of layers
    # (spread evenly)
    activation_checkpointing: str = "auto"
    compile: bool | None = None  # torch.compile each LLM decoder layer (regional); None: on with GPUs
    # LLM attention kernel: "sdpa" (SDPA on each sequence: each row, or with --data.pack each packed sample's span),
    # "varlen" (packed samples through torch's flash varlen kernel, told apart by cumulative lengths; GPU and
    # --data.pack only), "flex" (FlexAttention: packed samples attend block-causally through a block-sparse mask; GPU
    # only, it has no CPU backward); "auto": sdpa
    attention: Literal["auto", "sdpa", "varlen", "flex"] = "auto"


@with_config(STRICT)
@dataclass
class OptimConfig:
    steps: Annotated[int, Flags("--steps")] = 100  # optimizer steps (unless --optim.epochs is given)
    epochs: float = 0.0  # > 0: train this many passes over the samples instead of --optim.steps steps
    grad_accum: Annotated[int, Flags("--grad-accum")] = 1  # micro-batches per optimizer step
    lr: Annotated[float, Flags("--lr")] = 2e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_clip: float = 0.1


@with_config(STRICT)
@dataclass
class ScaleConfig:
    workers: Annotated[int, Flags("--workers")] = 1
    gpus_per_worker: Annotated[float, Flags("--gpus-per-worker")] = 0.0
    # fractional: the loaders need CPUs beside the workers (docs/DESIGN.md, Pitfalls)
    cpus_per_worker: Annotated[float, Flags("--cpus-per-worker")] = 0.5
    strategy: Annotated[Literal["ddp", "fsdp"], Flags("--strategy")] = "ddp"
    grad_reduce: Literal["float32", "bfloat16"] = "float32"  # gradients exchanged in this dtype (bf16: half bytes)


@with_config(STRICT)
@dataclass
class CheckpointConfig:
    every: Annotated[int, Flags("--checkpoint-every")] = 50  # optimizer steps
    keep: int = 3
    # worker-group restarts after a crash, each resuming from the latest checkpoint (-1: unlimited); an error that a
    # restart would repeat (bad input, a non-finite step) stops the run at once
    max_failures: int = 2
    report_every: Annotated[int, Flags("--report-every")] = 10  # metrics window, in optimizer steps


@with_config(STRICT)
@dataclass
class EvalConfig:
    batch_size: int = 8
    # the most new tokens `pave eval` generates for an answer; 0 (auto): `pave train` records here the longest answer
    # of its annotations in tokens plus a margin (training/evaluation.py, answer_budget), so that eval cuts no answer
    # of the length the run was trained to give (runs recorded before auto keep their number, often 16)
    max_new_tokens: int = 0
    compile: bool | None = None  # eval's decode step compiled into CUDA graphs (model/generation.py); None: on GPUs


@with_config(STRICT)
@dataclass
class TrackingConfig:
    """Where rank 0 writes the metrics live, besides OUT/metrics.jsonl (training/tracking.py)."""

    tensorboard: bool = True  # event files in OUT/tensorboard/NAME
    mlflow: str = ""  # MLflow tracking URI: a directory (MLflow's file store), sqlite:///FILE, http(s)://HOST; "": off
    wandb: Literal["off", "offline", "online"] = "off"  # Weights & Biases; offline: files in OUT/wandb, no account
    experiment: str = "pave"  # the MLflow experiment and the W&B project


@with_config(STRICT)
@dataclass
class StorageConfig:
    """How object-store URLs of the run (--data.store, --data.annotations, --out) are reached, on the driver and on
    every worker; an empty field leaves it to the standard AWS environment (AWS_ENDPOINT_URL, AWS_PROFILE,
    credentials, region)."""

    endpoint_url: str = ""  # an S3-protocol server other than AWS's (MinIO, Ceph, ...)
    profile: str = ""  # a profile of the AWS config and credentials files
    anon: bool = False  # unsigned requests (public buckets)

    def options(self, url: str) -> dict:
        """fsspec storage options for `url` (none for a local path or another protocol than S3)."""
        if not url.startswith(("s3://", "s3a://")):
            return {}
        given = {"endpoint_url": self.endpoint_url, "profile": self.profile, "anon": self.anon}
        return {key: value for key, value in given.items() if value}


def add_storage_arguments(parser) -> None:
    """The run config's storage section as argparse flags, spelt as `pave train` spells them (--storage.endpoint-url
    ...), for the commands that take argparse flags; `storage_config(args)` reads them back."""
    group = parser.add_argument_group("object storage (S3 URLs; default: the standard AWS environment)")
    group.add_argument("--storage.endpoint-url", dest="storage_endpoint_url", default="", metavar="URL",
                       help="S3-protocol server other than AWS's")
    group.add_argument("--storage.profile", dest="storage_profile", default="", metavar="NAME",
                       help="profile of the AWS config and credentials files")
    group.add_argument("--storage.anon", dest="storage_anon", action="store_true", help="unsigned requests")


def add_fingerprint_argument(parser, help_text: str) -> None:
    """--fingerprint MODALITY=FP, spelt and read as `pave train` takes it (into a dict, over earlier uses)."""
    parser.add_argument("--fingerprint", nargs="+", type=flags.pair, action=flags.Pairs, default={},
                        metavar="MODALITY=FP", help=help_text)


def storage_config(args) -> "StorageConfig":
    return StorageConfig(args.storage_endpoint_url, args.storage_profile, args.storage_anon)


@with_config(STRICT)
@dataclass
class RunConfig:
    """`pave train`: PAVE patches + LoRA on a frozen LLaVA-OneVision, trained by Ray Train workers from a feature
    store. The flags below override `--config FILE` (a YAML run config, nested like them), which overrides the
    defaults."""

    out: str = ""  # run directory: checkpoints, final/, metrics; an object-store URL (s3://) or a path every node mounts
    name: str = "pave"  # Ray Train run name: rerun with the same --out and --name to resume
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def store_options(self) -> dict:
        """FeatureStore's keyword arguments for --data.store, as every process of the run opens it."""
        return {"storage_options": self.storage.options(self.data.store), "cache_dir": self.data.cache or None,
                "cache_bytes": self.data.cache_bytes}

    @property
    def sides(self) -> list[str]:
        return self.model.patches.sides

    @property
    def modalities(self) -> list[str]:
        return ["video", *self.sides]


ADAPTER = TypeAdapter(RunConfig)


def validate(cfg: RunConfig) -> RunConfig:
    """Check the values together; raise ConfigError naming the first bad field. Returns cfg, with its side channels
    split at commas (`--sides audio,hfr` as earlier releases took it) and the empty name of `--sides ''` dropped."""
    cfg.model.patches.sides = [name for entry in cfg.model.patches.sides for name in entry.split(",") if name]
    required = {"--data.store (--store)": cfg.data.store, "--data.annotations (--annotations)": cfg.data.annotations,
                "--out": cfg.out}
    for flag, value in required.items():
        if not value:
            raise ConfigError(f"{flag} is required")
    if not cfg.model.base and not cfg.model.tiny_base:
        raise ConfigError("--model.base (--base-model) is required: a local LLaVA-OneVision directory "
                          "(--tiny-base trains a tiny random model instead, for demos and tests)")
    if cfg.model.base and cfg.model.tiny_base:
        raise ConfigError("--model.base and --model.tiny-base exclude each other: give one")
    positive = {"--optim.steps": cfg.optim.steps, "--data.batch-size": cfg.data.batch_size,
                "--optim.grad-accum": cfg.optim.grad_accum, "--scale.workers": cfg.scale.workers,
                "--checkpoint.every": cfg.checkpoint.every, "--checkpoint.keep": cfg.checkpoint.keep,
                "--checkpoint.report-every": cfg.checkpoint.report_every,
                "--model.patches.d-model": cfg.model.patches.d_model,
                "--model.patches.layers": cfg.model.patches.layers,
                "--model.lora.r": cfg.model.lora.r, "--model.lora.alpha": cfg.model.lora.alpha,
                "--data.prefetch-batches": cfg.data.prefetch_batches, "--data.cache-bytes": cfg.data.cache_bytes, "--eval.batch-size": cfg.eval.batch_size}
    for flag, value in positive.items():
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if cfg.eval.max_new_tokens < 0:
        raise ConfigError(f"--eval.max-new-tokens must be 0 (auto: the longest training answer) or more, got "
                          f"{cfg.eval.max_new_tokens}")
    # `not (...)` so that NaN, which fails every comparison, is refused too
    for flag, value in {"--optim.lr": cfg.optim.lr, "--optim.grad-clip": cfg.optim.grad_clip}.items():
        if not 0 < value < math.inf:
            raise ConfigError(f"{flag} must be a positive finite number, got {value}")
    for flag, value in {"--optim.weight-decay": cfg.optim.weight_decay, "--optim.epochs": cfg.optim.epochs,
                        "--scale.gpus-per-worker": cfg.scale.gpus_per_worker,
                        "--scale.cpus-per-worker": cfg.scale.cpus_per_worker}.items():
        if not 0 <= value < math.inf:
            raise ConfigError(f"{flag} must be a finite number, 0 or more, got {value}")
    for flag, value in {"--optim.warmup-ratio": cfg.optim.warmup_ratio,
                        "--model.lora.dropout": cfg.model.lora.dropout}.items():
        if not 0 <= value < 1:
            raise ConfigError(f"{flag} must be in [0, 1), got {value}")
    checkpointing = cfg.model.activation_checkpointing
    if checkpointing not in ("auto", "none", "full") and not checkpointing.isdigit():
        raise ConfigError(f"--model.activation-checkpointing {checkpointing}: expected auto, none, full or a number "
                          "of layers")
    attention = cfg.model.attention
    if attention == "varlen" and not cfg.data.pack:
        raise ConfigError("--model.attention varlen attends across packed samples: add --data.pack, or use sdpa")
    if attention in ("varlen", "flex") and not cfg.scale.gpus_per_worker:
        raise ConfigError(f"--model.attention {attention} trains on GPUs only: set --gpus-per-worker, or use sdpa")
    if "video" in cfg.sides or len(set(cfg.sides)) != len(cfg.sides):
        raise ConfigError(f"--sides {' '.join(cfg.sides)}: side channels must be distinct and not 'video' "
                          "(the main video tokens are the patch queries)")
    if not cfg.sides and not cfg.model.lora.enabled:
        raise ConfigError("nothing to train: no --sides and LoRA disabled (--model.lora.no-enabled)")
    return cfg


def from_dict(values: dict, source: str) -> RunConfig:
    """A RunConfig from nested plain values (a YAML file's), unset fields at their defaults; types are checked and
    unknown keys refused, each problem named by its dotted path."""
    try:
        return ADAPTER.validate_python(values or {})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load(path: str | Path, location: str | None = None) -> RunConfig:
    """A config file (YAML): a run's saved RUN_CONFIG (in OUT or OUT/final) or a user's recipe file. A run directory
    that was moved is where its saved config now is: `out`, and every path recorded inside the run (its tiny base
    model, an MLflow store under it), are taken from the file's location, not from the record. `location`: the URL
    of the run directory a local copy of its saved config was downloaded from (a run on an object store)."""
    path = Path(path)
    if path.is_dir():
        path = path / RUN_CONFIG
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a readable YAML config: {err}") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(values).__name__}")
    run_dir = location or run_directory(path)
    if run_dir and values.get("out") and values["out"] != str(run_dir):
        values = moved(values, values["out"], str(run_dir))
    return from_dict(values, str(path))


def run_directory(saved: Path) -> Path | None:
    """The run directory a saved config sits in (OUT/RUN_CONFIG or OUT/final/RUN_CONFIG: OUT holds the run's ray/
    directory), None for a config file anywhere else."""
    for directory in (saved.parent, saved.parent.parent):
        if saved.name == RUN_CONFIG and (directory / "ray").is_dir():
            return directory.resolve()
    return None


def moved(values, old: str, new: str):
    """`values` with every path inside the run directory `old` moved into `new`."""
    if isinstance(values, dict):
        return {key: moved(value, old, new) for key, value in values.items()}
    if isinstance(values, list):
        return [moved(value, old, new) for value in values]
    if isinstance(values, str) and (values == old or values.startswith(old.rstrip("/") + "/")):
        return new + values[len(old.rstrip("/")):]
    return values


def to_dict(cfg: RunConfig) -> dict:
    return ADAPTER.dump_python(cfg, mode="json")


def save(cfg: RunConfig, directory: str | Path) -> Path:
    path = Path(directory) / RUN_CONFIG
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def add_arguments(parser) -> None:
    """`--config FILE` and a flag for every run-config field (training/flags.py)."""
    parser.add_argument("--config", metavar="FILE", help="a YAML run config (a recipe, or a run's run_config.yaml); "
                        "the flags override it, it overrides the defaults")
    flags.add_arguments(parser, RunConfig)


def from_args(args) -> RunConfig:
    """The run config of parsed flags: the --config file (or the defaults) with the given flags over it, checked."""
    base = load(args.config) if getattr(args, "config", None) else RunConfig()
    return validate(from_dict(merged(to_dict(base), flags.given(args, RunConfig)), "the command line"))


def merged(values: dict, over: dict) -> dict:
    """`values` with `over`'s entries put in, section by section."""
    out = dict(values)
    for key, value in over.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) and key in SECTIONS else value
    return out


SECTIONS = {f.name for f in fields(RunConfig) if is_dataclass(f.type)}


def parse(argv: list[str], prog: str = "pave train") -> RunConfig:
    """The run config of a command line: --config FILE (optional), then every other flag over it."""
    parser = flags.OneLineParser(prog=prog)
    add_arguments(parser)
    return from_args(parser.parse_args(argv))
